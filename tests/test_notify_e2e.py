"""The notifier as a process, on the real broker, delivering to real servers started by the
tests: signed webhooks in order per alert, a receiver outage, a SIGKILL mid-queue, e-mail over
SMTP, and SMS and Zalo ZNS gateways that check each request's documented shape and answer with
their documented errors (rate limiting included); dead letters listed and replayed."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from alerts.events import AlertEvent
from floodwatch.errors import PublishDenied
from floodwatch.localservices import Service, free_port
from floodwatch.mqtt import MqttConnection
from notify.channels import Outgoing, ZaloOaAdapter, ZnsAdapter
from notify.render import Message
from notify.routing import Channel
from notify.signing import verify
from tests.conftest import admin_endpoint, fresh_login, own_login, wait_until
from tests.notify_process import NotifierProcess, notifier_env
from tests.notify_servers import Answer, HttpReceiver, Request, SmtpServer, TlsSmtpServer

pytestmark = pytest.mark.services

T0 = 1_796_000_000 * 10**9
SECRET = "webhook-secret-for-tests"


def event(sensor: str, number: int, seq: int, change: str, level: int = 1) -> AlertEvent:
    """The engine's event `seq` of alert `number` of a sensor (what ingest publishes)."""
    raised = T0 + number * 10**9
    at = raised + seq * 60 * 10**9
    return AlertEvent(
        event_id=f"{sensor}:flood:{raised}:{change}:{at}",
        alert_id=f"{sensor}:flood:{raised}",
        seq=seq,
        sensor_id=sensor,
        street="Quoc Huong",
        kind="flood",
        change=change,  # type: ignore[arg-type]
        state="active_ack" if change == "acknowledged" else "active_unack",
        level=level,
        level_name=("normal", "flooded", "hazard", "impassable", "closed")[level],
        at_ns=at,
        raised_ns=raised,
        reading_time_ns=None if change == "acknowledged" else at,
        depth_cm=10.0 + 10 * level,
        who="Nguyễn Văn A" if change == "acknowledged" else None,
    )


LIFE = [("raised", 1), ("escalated", 2), ("acknowledged", 2), ("cleared", 1)]


def lifetimes(sensors: list[str], alerts_per_sensor: int = 1) -> list[AlertEvent]:
    """Each alert's four events, alerts interleaved as a storm would interleave them."""
    out = []
    for seq, (change, level) in enumerate(LIFE, start=1):
        for sensor in sensors:
            for number in range(alerts_per_sensor):
                out.append(event(sensor, number, seq, change, level))
    return out


class Notifier(NotifierProcess):
    """`python -m notify` on the session's broker with a login of its own and `routing`."""

    def __init__(
        self, broker: Service, root: str, routing: str, workdir: Path, *extra: str
    ) -> None:
        self.routing_file = workdir / "routing.toml"
        self.routing_file.write_text(routing)
        self.state = workdir / "notify.sqlite"
        env = notifier_env(
            root, self.routing_file, self.state, PAGE_URL="http://ioc.example.vn/?sensor={sensor}"
        )
        own_login(broker, env, "notify")
        super().__init__(env, workdir, "notify", *extra)


@pytest.fixture
def notifiers() -> Iterator[list[Notifier]]:
    started: list[Notifier] = []
    yield started
    for n in started:
        n.stop()


@pytest.fixture
def publisher(broker: Service) -> Iterator[MqttConnection]:
    conn = MqttConnection(admin_endpoint(broker))
    conn.start()
    yield conn
    conn.stop()


def publish(conn: MqttConnection, root: str, events: list[AlertEvent]) -> None:
    for e in events:
        conn.publish(f"{root}/v1/events/{e.sensor_id}", e.to_json(), qos=1)
    wait_until(lambda: conn.pending_publishes() == 0, 30, "the broker to take every event")


def webhook_routing(url: str, concurrency: int = 8) -> str:
    return f"""
[channels.gis]
type = "webhook"
url = "{url}"
secret = "{SECRET}"
concurrency = {concurrency}

[recipients.ioc_gis]
name = "Nền tảng GIS"
channels = ["gis"]

[[rules]]
kinds = ["flood"]
min_level = 1
notify = ["ioc_gis"]
"""


def bodies(requests: list[Request]) -> list[dict[str, object]]:
    return [orjson.loads(r.body) for r in requests]


def assert_in_order_per_alert(requests: list[Request], expected: list[AlertEvent]) -> None:
    """Every expected event was delivered, and per alert in the order of its events (first
    receipt of each notification id counts: a resend after a crash is a duplicate)."""
    seen: dict[str, list[int]] = {}
    ids: set[str] = set()
    for doc in bodies(requests):
        if doc["notification_id"] in ids:
            continue
        ids.add(str(doc["notification_id"]))
        alert = doc["alert"]
        assert isinstance(alert, dict)
        seen.setdefault(str(alert["alert_id"]), []).append(int(alert["seq"]))
    wanted: dict[str, list[int]] = {}
    for e in expected:
        wanted.setdefault(e.alert_id, []).append(e.seq)
    assert seen == {a: sorted(s) for a, s in wanted.items()}


def test_webhooks_are_signed_in_order_and_recorded(
    broker: Service,
    unique: str,
    tmp_path: Path,
    publisher: MqttConnection,
    notifiers: list[Notifier],
) -> None:
    """Each event reaches the webhook once, signed, in order per alert; the retained record
    on notifications/{alert_id} says who was told and when, readable by the API's user."""
    receiver = HttpReceiver().start()
    notifier = Notifier(broker, unique, webhook_routing(receiver.url), tmp_path)
    metrics_port = free_port()
    notifier.env["FLOODWATCH_METRICS_PORT"] = str(metrics_port)
    notifiers.append(notifier.start())
    events = lifetimes(["qh-01", "qh-02", "nvh-03"])
    publish(publisher, unique, events)
    receiver.wait_for(lambda got: len(got) >= len(events), 30, "every notification")
    assert len({r.headers["X-Floodwatch-Delivery"] for r in receiver.accepted}) == len(events)
    for r in receiver.accepted:
        assert verify(
            SECRET,
            r.headers["X-Floodwatch-Timestamp"],
            r.body,
            r.headers["X-Floodwatch-Signature"],
            now_s=time.time(),
        )
    assert_in_order_per_alert(receiver.accepted, events)
    # Alerts go out side by side: pick qh-01's first notification.
    first = next(
        b for b in bodies(receiver.accepted) if str(b["notification_id"]).startswith("qh-01:")
    )
    assert first["type"] == "floodwatch.notification" and first["language"] == "vi"
    assert first["title"] == "Ngập tại Quốc Hương"
    assert first["link"] == "http://ioc.example.vn/?sensor=qh-01"

    records: dict[str, dict[str, object]] = {}
    api_login = fresh_login(broker, "api")
    api = MqttConnection(
        api_login,
        api_login.username or "",
        subscriptions=[(f"{unique}/v1/notifications/#", 1)],
        on_delivery=lambda d: records.__setitem__(d.topic, orjson.loads(d.payload)),
    )
    api.start()
    try:
        topic = f"{unique}/v1/notifications/{events[0].alert_id}"

        def complete() -> bool:
            items = records.get(topic, {}).get("notifications", [])
            return (
                isinstance(items, list)
                and len(items) == 4
                and all(i["status"] == "delivered" for i in items)
            )

        wait_until(complete, 20, "the retained notification record")
    finally:
        api.stop()

    def scrape() -> str:
        return httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text

    # The receiver answers before the notifier records the delivery: wait for the last mark.
    wanted = 'floodwatch_notify_notifications{status="delivered"} 12'
    wait_until(lambda: wanted in scrape(), 10, "the metrics to count every delivery")
    assert "floodwatch_notify_events_total 12" in scrape()
    record = records[topic]
    items = record["notifications"]
    assert isinstance(items, list)
    assert [i["message"] for i in items] == ["raised", "escalated", "acknowledged", "cleared"]
    assert items[0]["recipient_name"] == "Nền tảng GIS" and items[0]["channel_type"] == "webhook"
    assert record["escalation"] == {
        "waiting": False,
        "next_tier": None,
        "next_at": None,
        "next_notify": [],
        "stopped_by": "cleared",
    }


@pytest.mark.slow
def test_receiver_down_until_the_retries_are_capped_then_back(
    broker: Service,
    unique: str,
    tmp_path: Path,
    publisher: MqttConnection,
    notifiers: list[Notifier],
) -> None:
    """The webhook receiver is down while a storm's events arrive, until the retries are at
    their production cap (10 s apart: what issue 13's minute-long outage reaches, and nothing
    else changes with its length); once it is back, every notification arrives exactly once,
    in order per alert."""
    receiver = HttpReceiver()  # not started: connection refused
    notifier = Notifier(broker, unique, webhook_routing(receiver.url), tmp_path)
    notifier.env["FLOODWATCH_RETRY_MAX"] = "10"  # probes at most 10 s apart, as in production
    notifiers.append(notifier.start())
    events = lifetimes(["qh-01", "qh-02", "qh-03", "qh-04", "d12-01"], alerts_per_sensor=4)
    publish(publisher, unique, events)
    # 1, 2, 4 and 8 s apart, then the cap: about 15 s of outage.
    wait_until(lambda: notifier.said("next try in 10 s"), 60, "the retries at their cap")
    receiver.start()
    receiver.wait_for(lambda got: len(got) >= len(events), 60, "the backlog")
    ids = [r.headers["X-Floodwatch-Delivery"] for r in receiver.accepted]
    assert len(ids) == len(set(ids)) == len(events)
    assert_in_order_per_alert(receiver.accepted, events)


def test_sigkill_mid_queue_loses_nothing(
    broker: Service,
    unique: str,
    tmp_path: Path,
    publisher: MqttConnection,
    notifiers: list[Notifier],
) -> None:
    """SIGKILL while the queue is being delivered, more events while it is down: after a
    restart every notification arrives (a few twice, with the same id), in order per alert."""

    def slow(request: Request) -> Answer:
        time.sleep(0.02)
        return 200, {}, b"{}"

    receiver = HttpReceiver(slow).start()
    notifier = Notifier(
        broker, unique, webhook_routing(receiver.url, concurrency=2), tmp_path
    ).start()
    notifiers.append(notifier)
    sensors = ["qh-01", "qh-02", "qh-03", "qh-04", "nvh-01", "nvh-02", "nvh-03", "nvh-04"]
    events = lifetimes(sensors, alerts_per_sensor=6)  # 192 notifications
    publish(publisher, unique, events)
    receiver.wait_for(lambda got: len(got) >= 30, 30, "the first deliveries")
    notifier.kill(signal.SIGKILL)
    assert len({r.headers["X-Floodwatch-Delivery"] for r in receiver.accepted}) < len(events)
    # Events that arrive while it is down wait in its broker session.
    later = lifetimes(["d12-01", "d12-02"], alerts_per_sensor=2)
    publish(publisher, unique, later)
    events += later
    notifier.start()
    receiver.wait_for(
        lambda got: len({r.headers["X-Floodwatch-Delivery"] for r in got}) >= len(events),
        60,
        "every notification after the restart",
    )
    assert_in_order_per_alert(receiver.accepted, events)


def test_email_over_smtp_in_vietnamese_and_english(
    broker: Service,
    unique: str,
    tmp_path: Path,
    publisher: MqttConnection,
    notifiers: list[Notifier],
) -> None:
    """A real SMTP server receives plain text and HTML, Vietnamese or English per recipient."""
    with SmtpServer() as smtp:
        routing = f"""
[channels.mail]
type = "email"
smtp_host = "127.0.0.1"
smtp_port = {smtp.port}
from = "Floodwatch <floodwatch@example.vn>"

[recipients.officer]
channels = ["mail"]
email = "officer@example.vn"

[recipients.chief]
language = "en"
channels = ["mail"]
email = "chief@example.vn"

[[rules]]
notify = ["officer", "chief"]
"""
        notifiers.append(Notifier(broker, unique, routing, tmp_path).start())
        publish(publisher, unique, [event("qh-03", 0, 1, "raised", 2)])
        smtp.wait_for(2, 30)
        mails = {rcpt[0]: msg for rcpt, msg in smtp.messages}
    vi, en = mails["officer@example.vn"], mails["chief@example.vn"]
    assert (
        vi["Subject"] == "Ngập tại Quốc Hương" and en["Subject"] == "Flooding on Quoc Huong"
    )  # the registry's name_en
    assert vi["Content-Language"] == "vi" and vi["X-Floodwatch-Delivery"]
    parts = {
        p.get_content_type(): p.get_payload(decode=True) for p in vi.walk() if not p.is_multipart()
    }
    assert set(parts) == {"text/plain", "text/html"}
    plain, page = parts["text/plain"], parts["text/html"]
    assert isinstance(plain, bytes) and isinstance(page, bytes)
    assert "Độ sâu: 30 cm" in plain.decode() and "Ngập nguy hiểm" in page.decode()  # the page's


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_email_with_starttls_and_login(
    broker: Service,
    unique: str,
    tmp_path: Path,
    publisher: MqttConnection,
    notifiers: list[Notifier],
) -> None:
    """A server that requires STARTTLS (a private CA, named by ca_file) and a login gets the
    mail once the notifier has done both."""
    with TlsSmtpServer(tmp_path, "floodwatch", "mail-secret") as smtp:
        routing = f"""
[channels.mail]
type = "email"
smtp_host = "127.0.0.1"
smtp_port = {smtp.port}
starttls = true
ca_file = "{smtp.ca_file}"
username = "floodwatch"
password = "env:SMTP_PASSWORD"
from = "floodwatch@example.vn"

[recipients.officer]
channels = ["mail"]
email = "officer@example.vn"

[[rules]]
notify = ["officer"]
"""
        notifier = Notifier(broker, unique, routing, tmp_path)
        notifier.env["SMTP_PASSWORD"] = "mail-secret"
        notifiers.append(notifier.start())
        publish(publisher, unique, [event("d12-02", 0, 1, "raised", 1)])
        smtp.wait_for(1, 30)
    assert smtp.logins == ["floodwatch"]
    [(rcpt, mail)] = smtp.messages
    # The registry's street for d12-02, whatever the event spells.
    assert rcpt == ["officer@example.vn"] and mail["Subject"] == "Ngập tại Đường 12"


def sms_gateway(max_length: int) -> tuple[HttpReceiver, list[str]]:
    """An SMS gateway that checks the documented request, rate-limits the first one (429 with
    Retry-After) and refuses a number it does not serve (400)."""
    problems: list[str] = []
    calls = {"n": 0}

    def answer(request: Request) -> Answer:
        calls["n"] += 1
        if request.headers.get("Authorization") != "Bearer sms-token":
            problems.append("no bearer token")
            return 401, {}, b'{"error": "unauthorized"}'
        doc = orjson.loads(request.body)
        if set(doc) != {"to", "text", "sender", "reference"}:
            problems.append(f"fields {sorted(doc)}")
        if len(doc["text"]) > max_length or not doc["text"].isascii():
            problems.append(f"text {doc['text']!r}")
        if calls["n"] == 1:
            return 429, {"Retry-After": "1"}, b'{"error": "rate limited"}'
        if doc["to"] == "+84900000000":
            return 400, {}, b'{"error": "number not served"}'
        return 200, {}, b'{"id": "m-1"}'

    return HttpReceiver(answer), problems


ZNS_PARAMS = {"duong": 30, "do_sau": 10, "can_lam": 40}


def zns_gateway() -> tuple[HttpReceiver, list[str]]:
    """Zalo ZNS as documented: access_token header; phone, template_id, template_data (the
    approved template's parameters, each within its limit), tracking_id; answers error -32
    (rate limit) to the first request and 0 after."""
    problems: list[str] = []
    calls = {"n": 0}

    def answer(request: Request) -> Answer:
        calls["n"] += 1
        if request.headers.get("access_token") != "zalo-token":
            return 200, {}, b'{"error": -124, "message": "Access token invalid"}'
        doc = orjson.loads(request.body)
        if set(doc) != {"phone", "template_id", "template_data", "tracking_id"}:
            problems.append(f"fields {sorted(doc)}")
        if not re.fullmatch(r"84\d{9,10}", doc["phone"]) or doc["template_id"] != "231":
            problems.append(f"phone/template {doc['phone']} {doc['template_id']}")
        data = doc["template_data"]
        if set(data) != set(ZNS_PARAMS) or any(len(data[k]) > n for k, n in ZNS_PARAMS.items()):
            problems.append(f"template_data {data}")
        if not 0 < len(doc["tracking_id"]) <= 48:
            problems.append("tracking_id")
        if calls["n"] == 1:
            return 200, {}, b'{"error": -32, "message": "Exceed limit request per minute"}'
        return 200, {}, b'{"error": 0, "message": "Success", "data": {"msg_id": "z1"}}'

    return HttpReceiver(answer), problems


OA_USER = "2512345678901234567"


def zalo_oa_gateway(codes: list[int] | None = None) -> tuple[HttpReceiver, list[str]]:
    """A Zalo OA consultation message as documented: POST with the `access_token` header and a
    JSON body of exactly {"recipient": {"user_id"}, "message": {"text"}}, text at most 2,000
    characters; answers each request with the next of `codes` (Zalo's `error`), then 0. A
    wrong token is refused as Zalo would (an error code, HTTP 200)."""
    problems: list[str] = []
    todo = list(codes if codes is not None else [-32])

    def answer(request: Request) -> Answer:
        if request.headers.get("access_token") != "oa-token":
            return 200, {}, b'{"error": -216, "message": "Access token is invalid"}'
        if not request.headers.get("Content-Type", "").startswith("application/json"):
            problems.append(f"content type {request.headers.get('Content-Type')}")
        doc = orjson.loads(request.body)
        if set(doc) != {"recipient", "message"} or set(doc["message"]) != {"text"}:
            problems.append(f"fields {doc}")
        elif doc["recipient"] != {"user_id": OA_USER}:
            problems.append(f"recipient {doc['recipient']}")
        elif not 0 < len(doc["message"]["text"]) <= 2000:
            problems.append(f"text of {len(doc['message']['text'])} characters")
        code = todo.pop(0) if todo else 0
        if code == 0:
            return 200, {}, b'{"error": 0, "message": "Success", "data": {"message_id": "m1"}}'
        return 200, {}, orjson.dumps({"error": code, "message": f"error {code}"})

    return HttpReceiver(answer), problems


def test_sms_and_zalo_follow_the_documented_shapes_and_errors(
    broker: Service,
    unique: str,
    tmp_path: Path,
    publisher: MqttConnection,
    notifiers: list[Notifier],
) -> None:
    """SMS, ZNS and Zalo OA requests have their documented shape and limits; a rate limit is
    retried; a refused number becomes a dead letter that `deadletters` lists and `replay` sends
    again."""
    sms, sms_problems = sms_gateway(max_length=120)
    zns, zns_problems = zns_gateway()
    oa, oa_problems = zalo_oa_gateway()
    sms.start()
    zns.start()
    oa.start()
    routing = f"""
[channels.sms]
type = "sms"
url = "{sms.url}"
token = "sms-token"
sender = "FLOODWATCH"
max_length = 120
ascii = true

[channels.zalo]
type = "zalo_zns"
url = "{zns.url}"
access_token = "zalo-token"
template_id = "231"
rate_limit_s = 1
params.duong = {{ field = "street", max = 30 }}
params.do_sau = {{ field = "depth", max = 10 }}
params.can_lam = {{ field = "action", max = 40 }}

[channels.oa]
type = "zalo_oa"
url = "{oa.url}"
access_token = "oa-token"
rate_limit_s = 1

[recipients.crew]
channels = ["sms", "zalo", "oa"]
phone = "0912345678"
zalo_user_id = "{OA_USER}"

[recipients.unserved]
channels = ["sms"]
phone = "+84900000000"

[[rules]]
notify = ["crew", "unserved"]
"""
    notifier = Notifier(broker, unique, routing, tmp_path).start()
    notifiers.append(notifier)
    publish(publisher, unique, [event("qh-02", 0, 1, "raised", 3)])
    # ZNS answers HTTP 200 either way: the first carries error -32, the retry error 0.
    zns.wait_for(lambda got: len(got) >= 2, 30, "the ZNS message after its rate limit")
    sms.wait_for(lambda got: len(got) >= 1, 30, "the crew's SMS after the rate limit")
    wait_until(lambda: "1 dead letters" in notifier.tool("deadletters").stderr, 30, "a dead letter")
    oa.wait_for(lambda got: len(got) >= 1, 30, "the OA message after its rate limit")
    assert not sms_problems and not zns_problems and not oa_problems
    assert len(oa.requests) == 2 and oa.requests[0].body == oa.requests[1].body
    oa_text = orjson.loads(oa.accepted[0].body)["message"]["text"]
    assert (
        oa_text.startswith("Ngập tại Quốc Hương\n") and "Mức cảnh báo: Không thể đi qua" in oa_text
    )
    first, retry = (orjson.loads(r.body) for r in zns.requests)
    assert len(zns.requests) == 2 and first == retry  # the same request, sent again
    listed = notifier.tool("deadletters").stdout
    assert "unserved" in listed and "HTTP 400" in listed and "number not served" in listed
    sent = orjson.loads(sms.accepted[0].body)
    assert sent["to"] == "0912345678" and sent["text"].startswith(
        "[Floodwatch] Ngap tai Quoc Huong"
    )
    assert retry["template_data"]["duong"] == "Quốc Hương"

    # The gateway now serves the number: replaying the dead letter delivers it.
    dead_id = listed.split("\t", 1)[0]
    sms.responder = lambda request: (200, {}, b'{"id": "m-2"}')
    replayed = notifier.tool("replay", dead_id)
    assert replayed.returncode == 0 and "1 dead letters queued again" in replayed.stdout
    sms.wait_for(
        lambda got: any(orjson.loads(r.body)["to"] == "+84900000000" for r in got), 30, "the replay"
    )
    assert "0 dead letters" in notifier.tool("deadletters").stderr


def test_a_wrong_routing_file_stops_the_notifier_naming_the_line(
    broker: Service, unique: str, tmp_path: Path
) -> None:
    """Exit code 2 and one sentence with the file and the line."""
    notifier = Notifier(
        broker, unique, '[[rules]]\nkinds = ["flood"]\nnotify = ["nobody"]\n', tmp_path
    )
    result = notifier.tool()
    assert result.returncode == 2
    assert f"{notifier.routing_file}, line 3: recipient 'nobody' is not defined" in result.stderr


def test_alerts_raised_before_it_started_episodes_and_garbage(
    broker: Service,
    unique: str,
    tmp_path: Path,
    publisher: MqttConnection,
    notifiers: list[Notifier],
) -> None:
    """A notifier starting afresh announces the unacknowledged alerts it finds retained (once,
    even when their `raised` event comes later), summarises a finished flood episode, and
    ignores malformed messages without stopping."""
    raised = event("qh-03", 0, 1, "raised", 2)
    state = {
        "sensor": "qh-03",
        "street": "Quoc Huong",
        "level": 2,
        "level_name": "hazard",
        "stale": False,
        "depth_cm": 31.5,
        "alerts": [
            {"alert_id": raised.alert_id, "kind": "flood", "state": "active_unack", "level": 2},
            {"alert_id": "qh-03:battery_low:1", "kind": "battery_low", "state": "active_ack"},
        ],
    }
    assert publisher.publish_and_wait(
        f"{unique}/v1/alerts/qh-03", orjson.dumps(state), qos=1, retain=True
    )
    receiver = HttpReceiver().start()
    notifiers.append(Notifier(broker, unique, webhook_routing(receiver.url), tmp_path).start())
    receiver.wait_for(lambda got: len(got) >= 1, 20, "the retained alert's notification")
    for topic in ("events/qh-01", "alerts/qh-01", "episodes"):
        publisher.publish(f"{unique}/v1/{topic}", b"{not json", qos=1)
    publisher.publish(f"{unique}/v1/events/qh-01", b'{"seq": "one"}', qos=1)
    publish(publisher, unique, [raised])  # already announced: nothing new
    episode = {
        "episode_id": f"flood:{T0}",
        "start_ns": T0,
        "end_ns": T0 + 95 * 60 * 10**9,
        "peak_cm": 41.5,
        "peak_ns": T0 + 30 * 60 * 10**9,
        "peak_sensor_id": "qh-03",
        "max_level": 3,
        "max_level_name": "impassable",
        "streets": ["Quoc Huong", "Duong 12"],
        "sensors": ["qh-03", "d12-01"],
    }
    publisher.publish(f"{unique}/v1/episodes", orjson.dumps(episode), qos=1)
    receiver.wait_for(lambda got: len(got) >= 2, 20, "the episode's summary")
    publisher.publish_and_wait(f"{unique}/v1/alerts/qh-03", b"", qos=1, retain=True)
    first, summary = bodies(receiver.accepted)
    assert first["message"] == "raised" and first["title"] == "Ngập tại Quốc Hương"
    assert first["alert"]["alert_id"] == raised.alert_id  # type: ignore[index]
    assert summary["message"] == "episode"
    assert summary["title"] == "Đợt ngập đã kết thúc: Quốc Hương, Đường 12"
    assert "sâu nhất 41,5 cm" in str(summary["text"])
    assert len(receiver.requests) == 2


def test_one_failing_notification_does_not_hold_up_other_alerts(
    broker: Service,
    unique: str,
    tmp_path: Path,
    publisher: MqttConnection,
    notifiers: list[Notifier],
) -> None:
    """A receiver that keeps answering 503 for one alert's notification still gets every
    other alert's; the failing one is retried with its own backoff, its alert's later
    notifications wait behind it."""
    stuck = event("qh-04", 0, 1, "raised")

    def answer(request: Request) -> Answer:
        if orjson.loads(request.body)["alert"]["alert_id"] == stuck.alert_id:
            return 503, {}, b'{"error": "try later"}'
        return 200, {}, b"{}"

    receiver = HttpReceiver(answer).start()
    notifiers.append(Notifier(broker, unique, webhook_routing(receiver.url), tmp_path).start())
    others = lifetimes(["qh-01", "qh-02", "qh-03"], alerts_per_sensor=2)
    publish(publisher, unique, [stuck, event("qh-04", 0, 2, "escalated", 2), *others])
    receiver.wait_for(lambda got: len(got) >= len(others), 30, "the other alerts")
    assert_in_order_per_alert(receiver.accepted, others)
    tried = [
        r for r in receiver.requests if orjson.loads(r.body)["alert"]["alert_id"] == stuck.alert_id
    ]
    assert tried and all(orjson.loads(r.body)["alert"]["seq"] == 1 for r in tried)


def test_the_notifier_login_may_publish_only_its_records(broker: Service, unique: str) -> None:
    """The `notify` role lets `notify` write notification records and nothing the engine owns."""
    login = fresh_login(broker, "notify")
    conn = MqttConnection(login, login.username or "")
    conn.start()
    try:
        assert conn.publish_and_wait(f"{unique}/v1/notifications/x:flood:1", b"{}", retain=True)
        conn.publish_and_wait(f"{unique}/v1/notifications/x:flood:1", b"", retain=True)
        for topic in ("alerts/qh-01", "events/qh-01", "commands/ack"):
            with pytest.raises(PublishDenied):
                conn.publish_and_wait(f"{unique}/v1/{topic}", b"{}")
    finally:
        conn.stop()


def test_zns_reads_a_refreshed_access_token_without_a_restart(tmp_path: Path) -> None:
    """With access_token_file, each request carries the token the file holds now."""
    tokens: list[str] = []

    def answer(request: Request) -> Answer:
        tokens.append(request.headers.get("access_token", ""))
        return 200, {}, b'{"error": 0, "message": "Success"}'

    gateway = HttpReceiver(answer).start()
    token_file = tmp_path / "zalo-token"
    token_file.write_text("token-1\n")
    channel = Channel(
        "zalo",
        "zalo_zns",
        {
            "url": gateway.url,
            "access_token_file": str(token_file),
            "template_id": "231",
            "params": {"duong": {"field": "street", "max": 30}},
        },
    )
    adapter = ZnsAdapter(channel)
    message = Message("vi", "t", "t", "<p>t</p>", "t", {"street": "Quốc Hương"})
    try:
        assert adapter.send(Outgoing("n-1", "0912345678", message, b"{}")).status == "delivered"
        token_file.write_text("token-2\n")
        os.utime(token_file, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        assert adapter.send(Outgoing("n-2", "0912345678", message, b"{}")).status == "delivered"
    finally:
        adapter.close()
        gateway.stop()
    assert tokens == ["token-1", "token-2"]


def test_zalo_oa_answers_map_to_retry_rate_limit_and_dead_letters(tmp_path: Path) -> None:
    """Against a real gateway: a rate-limit code waits `rate_limit_s`, a configured retry code
    and HTTP 429 are retried (Retry-After honoured), an unknown code or a refused token is a
    dead letter with Zalo's message, success is delivered; the text is cut to max_length."""
    gateway, problems = zalo_oa_gateway([-32, -100, -213])
    gateway.start()
    options: dict[str, object] = {
        "url": gateway.url,
        "access_token": "oa-token",
        "max_length": 300,
        "rate_limit_s": 7,
        "retry_codes": [-100],
    }
    adapter = ZaloOaAdapter(Channel("oa", "zalo_oa", options))
    long = Message("vi", "t", "Ngập tại Quốc Hương\n" * 100, "<p>t</p>", "t", {})
    item = Outgoing("n-1", OA_USER, long, b"{}")
    try:
        outcomes = [adapter.send(item) for _ in range(4)]
        gateway.responder = lambda request: (429, {"Retry-After": "3"}, b"{}")
        throttled = adapter.send(item)
        wrong = ZaloOaAdapter(Channel("oa", "zalo_oa", {**options, "access_token": "old"}))
        gateway.responder = zalo_oa_gateway()[0].responder
        refused = wrong.send(item)
        wrong.close()
    finally:
        adapter.close()
        gateway.stop()
    assert [(o.status, o.retry_after_s) for o in outcomes] == [
        ("retry", 7.0),
        ("retry", None),
        ("dead", None),
        ("delivered", None),
    ]
    assert "Zalo OA error -213" in outcomes[2].detail
    assert (throttled.status, throttled.retry_after_s) == ("retry", 3.0)
    assert refused.status == "dead" and "-216" in refused.detail
    assert not problems
    texts = {len(orjson.loads(r.body)["message"]["text"]) for r in gateway.requests[:4]}
    assert texts == {300}
