"""Notification text (Vietnamese by default, English), the shapes of SMS and Zalo ZNS, webhook
signatures, and how service answers map to delivered / retry / dead. Pure."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts.events import AlertEvent
from floodwatch.registry import load_registry
from notify.channels import (
    ZALO_OA_RATE_LIMIT_CODES,
    ZALO_OA_RETRY_CODES,
    ZNS_RATE_LIMIT_CODES,
    ZNS_RETRY_CODES,
    Outcome,
    Outgoing,
    http_outcome,
    smtp_outcome,
    zalo_oa_request,
    zalo_outcome,
    zns_request,
)
from notify.model import AlertFacts, Send, facts_from_episode, facts_from_event, street_names
from notify.plan import notification_id, outgoing, plan
from notify.render import (
    MESSAGES,
    Message,
    clip,
    render,
    sms_text,
    strip_diacritics,
    zalo_phone,
    zns_template_data,
)
from notify.routing import Channel, parse_routing
from notify.signing import signature, verify
from notify.store import Delivery
from tests.conftest import ROOT

T0 = 1_796_000_000 * 10**9  # 2026-11-30 00:53:20 UTC, 07:53 in Ho Chi Minh City
PAGE = "http://ioc.example.vn/?sensor={sensor}"


REGISTRY = load_registry(ROOT / "sensors.geojson")


def flood(level: int = 2, change: str = "raised", sensor: str = "nvh-03") -> AlertFacts:
    """The facts the notifier makes of an engine event: names from the shipped registry (the
    event spells the street without diacritics, as a registry without them would)."""
    event = AlertEvent(
        event_id=f"{sensor}:flood:{T0}:{change}:{T0}",
        alert_id=f"{sensor}:flood:{T0}",
        seq=1,
        sensor_id=sensor,
        street="Nguyen Van Huong",
        kind="flood",
        change=change,  # type: ignore[arg-type]
        state="active_unack",
        level=level,
        level_name=("normal", "flooded", "hazard", "impassable", "closed")[level],
        at_ns=T0,
        raised_ns=T0,
        reading_time_ns=T0,
        depth_cm=23.5,
    )
    return facts_from_event(event, REGISTRY)


def test_vietnamese_is_the_default_with_full_diacritics() -> None:
    """Street, depth, level, since when, the link and what to do, in correct Vietnamese."""
    m = render(Send("officer", "raised", 0, flood(), False), "vi", "Asia/Ho_Chi_Minh", PAGE)
    assert m.title == "Ngập tại Nguyễn Văn Hưởng"
    assert "Tuyến đường: Nguyễn Văn Hưởng (phường An Khánh)" in m.text
    assert "Độ sâu: 23,5 cm" in m.text
    # The page's words for the level (api/static/i18n/vi.json `level.street.hazard`).
    assert "Mức cảnh báo: Ngập nguy hiểm" in m.text
    assert "Từ lúc: 07:53 ngày 30/11/2026" in m.text
    assert "Cần làm: Bật đèn cảnh báo; hướng dẫn xe máy tránh tuyến đường." in m.text
    assert "http://ioc.example.vn/?sensor=nvh-03" in m.text
    assert '<a href="http://ioc.example.vn/?sensor=nvh-03">' in m.html
    assert m.html.startswith('<!doctype html><html lang="vi">')


def test_english_and_other_streets() -> None:
    """English for recipients who want it; Đường 12 and Quốc Hương get their diacritics."""
    m = render(
        Send("chief", "unacknowledged", 1, flood(3, sensor="d12-01"), False, 10),
        "en",
        "Asia/Ho_Chi_Minh",
        PAGE,
    )
    assert m.title == "Not acknowledged after 10 min: Flooding on Duong 12"
    assert "Depth: 23.5 cm" in m.text and "Alert level: Impassable" in m.text
    assert "Nobody acknowledged this alert within 10 minutes" in m.text
    vi = render(Send("x", "cleared", 0, flood(sensor="qh-02"), False), "vi", "Asia/Ho_Chi_Minh", "")
    assert vi.title == "Đã hết cảnh báo: Ngập tại Quốc Hương"


def test_catalogues_have_the_same_keys() -> None:
    """Every string in vi.json has its English twin and the reverse."""

    def keys(doc: object, prefix: str = "") -> set[str]:
        if isinstance(doc, dict):
            return set().union(*(keys(v, f"{prefix}.{k}") for k, v in doc.items()))
        return {prefix}

    vi = json.loads((MESSAGES / "vi.json").read_text("utf-8"))
    en = json.loads((MESSAGES / "en.json").read_text("utf-8"))
    assert keys(vi) == keys(en)


def test_sms_fits_its_length_and_can_drop_diacritics() -> None:
    """SMS text is cut to the gateway's limit; `ascii` gives GSM-7 text (đ -> d)."""
    m = render(Send("crew", "raised", 0, flood(), False), "vi", "Asia/Ho_Chi_Minh", PAGE)
    short = sms_text(m, 70, ascii_only=False)
    assert len(short) == 70 and short.endswith("…")
    plain = sms_text(m, 400, ascii_only=True)
    assert plain.startswith("[Floodwatch] Ngap tai Nguyen Van Huong. Sau 23,5 cm")
    assert plain.isascii()
    assert strip_diacritics("Đường Quốc Hương") == "Duong Quoc Huong"


def test_zns_request_has_the_documented_shape_within_limits() -> None:
    """phone (84...), template_id, template_data with each parameter cut to its limit, and a
    tracking id."""
    channel = Channel(
        "zalo",
        "zalo_zns",
        {
            "url": "http://127.0.0.1:9/zns",
            "access_token": "tok",
            "template_id": "231",
            "params": {
                "duong": {"field": "street", "max": 30},
                "can_lam": {"field": "action", "max": 20},
            },
        },
    )
    m = render(Send("crew", "raised", 0, flood(), False), "vi", "Asia/Ho_Chi_Minh", PAGE)
    request = zns_request(channel, Outgoing("n-1", "0912345678", m, b"{}"))
    assert set(request) == {"phone", "template_id", "template_data", "tracking_id"}
    assert request["phone"] == "84912345678"
    assert request["template_data"] == {
        "duong": "Nguyễn Văn Hưởng",
        "can_lam": "Bật đèn cảnh báo; h…",
    }
    assert len(str(request["tracking_id"])) <= 48
    assert zalo_phone("+84912345678") == "84912345678"


def test_zalo_oa_request_has_the_documented_shape_within_the_text_limit() -> None:
    """recipient.user_id and message.text (the plain-text notification), at most 2,000
    characters whatever max_length says."""
    m = render(Send("crew", "raised", 0, flood(), False), "vi", "Asia/Ho_Chi_Minh", PAGE)
    long = Message(m.language, m.title, m.text * 40, m.html, m.sms, m.fields)
    channel = Channel("oa", "zalo_oa", {"url": "http://127.0.0.1:9/cs", "max_length": 5000})
    request = zalo_oa_request(channel, Outgoing("n-1", "1234567890123456789", long, b"{}"))
    assert request["recipient"] == {"user_id": "1234567890123456789"}
    message = request["message"]
    assert isinstance(message, dict) and set(message) == {"text"}
    assert len(message["text"]) == 2000 and message["text"].startswith(m.title)
    short = Channel("oa", "zalo_oa", {"url": "http://127.0.0.1:9/cs"})
    assert zalo_oa_request(short, Outgoing("n-1", "1", m, b"{}"))["message"] == {"text": m.text}


@given(st.text(max_size=200), st.integers(1, 100))
def test_clip_never_exceeds_the_limit(text: str, limit: int) -> None:
    """Any text clipped to a limit fits it, and text that fits is untouched."""
    out = clip(text, limit)
    assert len(out) <= limit
    assert out == text or len(text) > limit


def test_template_data_never_exceeds_any_parameter_limit() -> None:
    """Whatever the field, the ZNS value is at most its parameter's length."""
    m = render(Send("crew", "raised", 0, flood(4), False), "vi", "Asia/Ho_Chi_Minh", PAGE)
    params = {f: {"field": f, "max": 12} for f in m.fields if f != "at"}
    assert all(len(v) <= 12 for v in zns_template_data(m, params).values())


@given(st.binary(max_size=300), st.text(min_size=1, max_size=40), st.integers(0, 2**31))
def test_signatures_verify_and_tampering_fails(body: bytes, secret: str, ts: int) -> None:
    """A signature verifies for its body and time, and fails for any other body or secret."""
    header = signature(secret, ts, body)
    assert verify(secret, str(ts), body, header, now_s=ts)
    assert not verify(secret, str(ts), body + b"x", header, now_s=ts)
    assert not verify(secret + "x", str(ts), body, header, now_s=ts)
    assert not verify(secret, str(ts), body, header, now_s=ts + 301)


def test_readme_verification_snippet_works() -> None:
    """The Python snippet in the README verifies a real signed body."""
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"```python\n(# Verify a Floodwatch webhook.*?)```", readme, re.S)
    assert snippet, "README has no webhook verification snippet"
    scope: dict[str, object] = {}
    exec(snippet.group(1), scope)
    body = b'{"type": "floodwatch.notification"}'
    header = signature("s3cret", 1_796_000_000, body)
    check = scope["verify_floodwatch"]
    assert callable(check)
    headers = {"X-Floodwatch-Timestamp": "1796000000", "X-Floodwatch-Signature": header}
    assert check(body, headers, "s3cret", now=1_796_000_010)
    assert not check(body + b" ", headers, "s3cret", now=1_796_000_010)


def zns(doc: object) -> Outcome:
    return zalo_outcome(doc, "ZNS", ZNS_RATE_LIMIT_CODES, ZNS_RETRY_CODES)


def oa(doc: object) -> Outcome:
    return zalo_outcome(doc, "Zalo OA", ZALO_OA_RATE_LIMIT_CODES, ZALO_OA_RETRY_CODES)


OUTCOMES = [
    (http_outcome(200, "", None), "delivered", None),
    (http_outcome(204, "", None), "delivered", None),
    (http_outcome(429, "slow down", "7"), "retry", 7.0),
    (http_outcome(503, "", None), "retry", None),
    (http_outcome(400, "bad phone", None), "dead", None),
    (http_outcome(401, "", None), "dead", None),
    # ZNS, https://zalo.cloud/zns/guidelines/handle-error-code
    (zns({"error": 0, "message": "Success"}), "delivered", None),
    (zns({"error": -32, "message": "Exceed limit"}), "retry", 60.0),
    (zns({"error": -100, "message": "Unknown error"}), "retry", None),
    (zns({"error": -103, "message": "Application not activated"}), "dead", None),
    (zns({"error": -108, "message": "Phone number invalid"}), "dead", None),
    (zns({"error": -109, "message": "Template ID invalid"}), "dead", None),
    (zns({"error": -110, "message": "Zalo version unsupported"}), "dead", None),
    (zns({"error": -112, "message": "Template data invalid"}), "dead", None),
    (zns("garbage"), "retry", None),
    # Zalo OA: only 0 is known for sure; -32 is the shared rate-limit default
    (oa({"error": 0, "message": "Success"}), "delivered", None),
    (oa({"error": -32, "message": "Exceed limit"}), "retry", 60.0),
    (oa({"error": -213, "message": "User has not followed OA"}), "dead", None),
    (oa({"message": "no code"}), "retry", None),
    (smtp_outcome(451, "try later"), "retry", None),
    (smtp_outcome(550, "no such user"), "dead", None),
]


@pytest.mark.parametrize(("outcome", "status", "after"), OUTCOMES)
def test_answers_map_to_outcomes(outcome: object, status: str, after: float | None) -> None:
    """The documented mapping of HTTP, ZNS and SMTP answers."""
    assert isinstance(outcome, Outcome) and outcome.status == status
    assert outcome.retry_after_s == after


def test_plan_renders_per_recipient_language_and_channel() -> None:
    """One delivery per channel of the recipient, with a stable id and a signed-body payload."""
    routing = parse_routing(
        """
[channels.hook]
type = "webhook"
url = "http://127.0.0.1:9/"
secret = "s"
[channels.log]
type = "log"
[recipients.gis]
language = "en"
channels = ["hook", "log"]
[[rules]]
notify = ["gis"]
""",
        "r.toml",
        {},
    )
    send = Send("gis", "raised", 0, flood(), False)
    planned = plan([send], routing, PAGE, T0)
    assert [d.channel for d in planned] == ["hook", "log"]
    assert planned[0].notification_id == notification_id(send, "hook")
    row = Delivery(
        1,
        planned[0].notification_id,
        planned[0].dest,
        "hook",
        "gis",
        send.facts.alert_id,
        "raised",
        0,
        planned[0].payload,
        T0,
        T0,
        0,
        "pending",
        "",
        None,
    )
    item = outgoing(row)
    body = orjson.loads(item.body)
    assert body["language"] == "en" and body["title"] == "Flooding on Nguyen Van Huong"
    assert body["alert"]["street"] == "Nguyễn Văn Hưởng" and body["alert"]["depth_cm"] == 23.5


def test_tide_gauge_and_stale_sensor_wording() -> None:
    """The Phu An gauge speaks of high tide and river stage; a silent sensor's SMS has no
    empty depth."""
    tide = replace(
        flood(sensor="phu-an"),
        tide=True,
        depth_cm=152.0,
        level=2,
        level_name="alarm_2",
    )
    m = render(Send("x", "raised", 0, tide, False), "vi", "Asia/Ho_Chi_Minh", "")
    assert m.title == "Triều cường tại Sông Sài Gòn"
    assert "Mực nước sông: 152 cm" in m.text and "Mức cảnh báo: Báo động II" in m.text
    assert m.sms.startswith("[Floodwatch] Triều cường tại Sông Sài Gòn. Mực nước 152 cm, từ 07:53")
    stale = replace(flood(), kind="stale", depth_cm=None)
    sms = render(Send("x", "raised", 0, stale, True), "en", "Asia/Ho_Chi_Minh", "").sms
    assert sms == (
        "[Floodwatch] Sensor silent on Nguyen Van Huong. Since 07:53 on 2026-11-30. "
        "Check the sensor's power and connection."
    )


def test_english_messages_use_the_registrys_english_names_when_it_has_them() -> None:
    """With `name_en`/`street_en` in the registry, English says them; Vietnamese never does."""
    named = flood()
    en = render(Send("x", "raised", 0, named, False), "en", "Asia/Ho_Chi_Minh", "")
    vi = render(Send("x", "raised", 0, named, False), "vi", "Asia/Ho_Chi_Minh", "")
    assert en.title == "Flooding on Nguyen Van Huong"
    assert "Sensor: Nguyen Van Huong middle (nvh-03)" in en.text
    assert vi.title == "Ngập tại Nguyễn Văn Hưởng"
    assert "Cảm biến: Nguyễn Văn Hưởng, đoạn giữa (nvh-03)" in vi.text


def test_names_come_from_the_registry_whichever_way_a_message_spells_them() -> None:
    """A street the engine or an episode spells without marks is the registry's, with its
    diacritics in Vietnamese and its `name_en` in English; an unknown name is kept as is."""
    assert street_names(REGISTRY, "quoc huong") == ("Quốc Hương", "Quoc Huong")
    assert street_names(REGISTRY, "Sông Sài Gòn") == ("Sông Sài Gòn", "Saigon River")
    assert street_names(REGISTRY, "Lê Lợi") == ("Lê Lợi", "Le Loi")
    facts = flood(sensor="phu-an")
    assert (facts.street, facts.street_en, facts.ward) == (
        "Sông Sài Gòn",
        "Saigon River",
        "An Khánh",
    )
    episode = facts_from_episode(
        {
            "episode_id": "ep-1",
            "streets": ["Quoc Huong", "Duong 12"],
            "peak_sensor_id": "qh-02",
            "start_ns": T0,
            "end_ns": T0 + 3600 * 10**9,
            "max_level": 2,
            "peak_cm": 31.0,
        },
        REGISTRY,
    )
    assert episode is not None
    assert (episode.street, episode.street_en) == ("Quốc Hương, Đường 12", "Quoc Huong, Duong 12")
    vi = render(Send("x", "episode", 0, episode, False), "vi", "Asia/Ho_Chi_Minh", "")
    assert vi.title == "Đợt ngập đã kết thúc: Quốc Hương, Đường 12"


def test_level_names_are_the_pages_words_in_both_languages() -> None:
    """Every level a notification can name reads as the IOC page's catalogue says (one set of
    words for the operator and the field crew), and titles name them."""
    page = {
        lang: json.loads((ROOT / "api/static/i18n" / f"{lang}.json").read_text())
        for lang in ("vi", "en")
    }
    for lang in ("vi", "en"):
        for level in range(1, 5):
            m = render(Send("x", "escalated", 0, flood(level), False), lang, "Asia/Ho_Chi_Minh", "")
            name = ("normal", "flooded", "hazard", "impassable", "closed")[level]
            assert m.fields["level_name"] == page[lang][f"level.street.{name}"]
            assert m.title.endswith(page[lang][f"level.street.{name}"])
    en = render(Send("x", "escalated", 0, flood(2), False), "en", "Asia/Ho_Chi_Minh", "")
    assert en.title == "Flooding on Nguyen Van Huong rose to: Hazardous"
    vi = render(Send("x", "deescalated", 0, flood(1), False), "vi", "Asia/Ho_Chi_Minh", "")
    assert vi.title == "Ngập tại Nguyễn Văn Hưởng giảm xuống mức: Ngập"


def test_every_kind_of_alert_event_the_engine_publishes_is_read_by_the_notifier() -> None:
    """The engine's own events, through their JSON: rising, battery and stale events carry no
    level (CONTRACT section 3) and must still reach the notifier (they were ignored once)."""
    import numpy as np

    from alerts import ReadingArrays, check_stale, new_state, step
    from notify.plan import event_from_payload

    sensor = REGISTRY.sensors["qh-02"]
    index = list(REGISTRY.sensors).index("qh-02")
    minute = 60 * 10**9
    depths = [0.0, 0.0, 12.0, 24.0, 35.0, 35.0, 8.0, 2.0, 0.0, 0.0, 0.0, 0.0]
    volts = [3.7, 3.2, 3.2, 3.2, 3.7, 3.7, 3.7, 3.7, 3.7, 3.7, 3.7, 3.7]
    times = T0 + np.arange(len(depths), dtype=np.int64) * int(sensor.interval_s * 10**9)
    batch = ReadingArrays(
        np.full(len(depths), index, dtype=np.int32),
        times,
        np.array(depths, dtype=np.float64),
        np.array(volts, dtype=np.float64),
    )
    state, events = step(new_state(REGISTRY, T0), batch, int(times[-1]) + 1)
    _, stale = check_stale(state, int(times[-1]) + 60 * minute)
    alert_events = [e for e in [*events, *stale] if isinstance(e, AlertEvent)]
    kinds = {e.kind for e in alert_events}
    assert {"flood", "battery_low", "stale"} <= kinds, kinds
    for event in alert_events:
        read = event_from_payload(event.to_json())
        assert read == event, f"the notifier ignored a {event.kind} {event.change} event"
    assert event_from_payload(b'{"kind": "flood"}') is None
