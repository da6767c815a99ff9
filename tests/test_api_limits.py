"""API limits on the real broker, influxd and API (issue 12 section 5): a bucket InfluxDB
cannot hold, acknowledgement notes with control characters, security headers, a deleted keys
file, and the cap on /v1/stream clients."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import httpx
import orjson
import pytest

from api.__main__ import build_parser
from api.app import create_app
from api.config import ApiOptions, options_from_args
from api.security import image_origin
from floodwatch.errors import SettingsError
from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service
from floodwatch.mqtt import MqttConnection
from floodwatch.settings import env_name
from floodwatch.topics import Topics
from tests.conftest import admin_endpoint, mosquitto_pub
from tests.test_api_support import (
    DEPTH_SENSOR,
    Keys,
    TestClient,
    api_settings,
    bearer,
    engine_alert,
    live_server,
    publish,
    publisher,
    wait_for,
    write_keys,
    write_readings,
)

pytestmark = pytest.mark.services

T0 = 1_795_651_200 * 10**9  # 2026-11-26T00:00:00Z
RANGE = "start=2026-11-26T00:00:00Z&end=2026-11-26T01:00:00Z"


@pytest.fixture
def api(
    broker: Service, influxd: Service, influx: InfluxClient, unique: str, tmp_path: Path
) -> Iterator[tuple[TestClient, Keys]]:
    write_readings(influx, DEPTH_SENSOR, [(T0 + n * 60 * 10**9, float(n)) for n in range(60)])
    keys = write_keys(tmp_path / "keys")
    app = create_app(api_settings(broker, influxd, unique), ApiOptions(api_keys=keys.path))
    with TestClient(app) as client:
        yield client, keys


def _one_sentence(detail: object) -> str:
    """The message of a 422 in either of the API's shapes (a string, or FastAPI's list)."""
    if isinstance(detail, list):
        assert len(detail) == 1, detail
        detail = detail[0]["msg"]
    assert isinstance(detail, str)
    return detail


@pytest.mark.parametrize("every", ["20000w", "15251w", "999999d", "106752d"])
def test_a_bucket_influxdb_cannot_hold_is_422_not_502(
    api: tuple[TestClient, Keys], every: str, caplog: pytest.LogCaptureFixture
) -> None:
    """InfluxDB refuses a GROUP BY time() longer than its int64 nanoseconds (about 15,250
    weeks: "overflowed duration"); the API says so itself, and logs no error."""
    client, keys = api
    with caplog.at_level(logging.WARNING):
        response = client.get(
            f"/v1/sensors/{DEPTH_SENSOR}/readings?{RANGE}&every={every}",
            headers=bearer(keys.viewer),
        )
    assert response.status_code == 422, response.text
    message = _one_sentence(response.json()["detail"])
    assert "every" in message and "15250w" in message
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_the_longest_bucket_influxdb_holds_still_works(api: tuple[TestClient, Keys]) -> None:
    client, keys = api
    response = client.get(
        f"/v1/sensors/{DEPTH_SENSOR}/readings?{RANGE}&every=15250w&agg=max",
        headers=bearer(keys.viewer),
    )
    assert response.status_code == 200, response.text
    assert [p["level_cm"] for p in response.json()["points"]] == [59.0]


def test_too_many_buckets_for_the_range_is_422(api: tuple[TestClient, Keys]) -> None:
    client, keys = api
    response = client.get(
        f"/v1/sensors/{DEPTH_SENSOR}/readings?start=2000-01-01T00:00:00Z"
        "&end=2026-01-01T00:00:00Z&every=1s",
        headers=bearer(keys.viewer),
    )
    assert response.status_code == 422, response.text
    assert "buckets" in _one_sentence(response.json()["detail"])


@pytest.mark.parametrize(
    ("note", "named"),
    [
        ("crew\nsent, road closed", "line break"),
        ("crew\r\nsent", "line break"),
        ("crew\x00sent", "NUL"),
        ("crew\x1bsent", "U+001B"),
        ("crew\x7fsent", "U+007F"),
        ("crew\u0085sent", "U+0085"),
    ],
)
def test_an_ack_note_with_control_characters_is_422_saying_which(
    api: tuple[TestClient, Keys], note: str, named: str
) -> None:
    """Refused before the alert engine is asked (so no alert is touched); the answer names
    the character and where it is."""
    client, keys = api
    response = client.post(
        "/v1/alerts/qh-02:flood:1/ack", json={"note": note}, headers=bearer(keys.operator)
    )
    assert response.status_code == 422, response.text
    message = _one_sentence(response.json()["detail"])
    assert "note" in message and named in message and "character 5" in message


def test_an_ack_note_survives_the_command_path_and_influxdb_intact(
    broker: Service, influxd: Service, influx: InfluxClient, unique: str, tmp_path: Path
) -> None:
    """Quotes, backslashes, commas, equals signs, tabs, diacritics and emoji reach the
    engine over MQTT, are stored in InfluxDB's alert_event and come back unchanged."""
    note = 'Đội "cứu hộ" đến\tĐường 12, a=b \\ c \\" ✓ 🚧'
    keys = write_keys(tmp_path / "keys")
    app = create_app(api_settings(broker, influxd, unique), ApiOptions(api_keys=keys.path))
    with (
        engine_alert(broker, influxd, unique, tmp_path) as alert_id,
        TestClient(app) as client,
    ):
        wait_for(
            lambda: (
                client.get(f"/v1/alerts/{alert_id}", headers=bearer(keys.viewer)).status_code == 200
            ),
            what="the API to hold the alert",
        )
        bad = client.post(
            f"/v1/alerts/{alert_id}/ack", json={"note": "a\x00b"}, headers=bearer(keys.operator)
        )
        assert bad.status_code == 422, bad.text
        response = client.post(
            f"/v1/alerts/{alert_id}/ack", json={"note": note}, headers=bearer(keys.operator)
        )
        assert response.status_code == 200, response.text
        assert response.json()["note"] == note

        def stored() -> list[object]:
            rows = influx.query(
                'SELECT "note" FROM "alert_event" WHERE "note" <> \'\'', {}, epoch="ns"
            )
            return [v[1] for s in rows for v in s["values"]]

        wait_for(lambda: stored() != [], what="the acknowledgement in InfluxDB")
        assert stored() == [note]
        wait_for(
            lambda: (
                client.get(f"/v1/alerts/{alert_id}", headers=bearer(keys.viewer)).json()["note"]
                == note
            ),
            what="the republished alert with its note",
        )


SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


def _csp(headers: Mapping[str, str]) -> dict[str, list[str]]:
    policy = headers["content-security-policy"]
    return {d.split()[0]: d.split()[1:] for d in policy.split("; ")}


def test_every_answer_carries_the_security_headers(api: tuple[TestClient, Keys]) -> None:
    """The page, its files, data, errors (401, 404, 413, 422) and the docs: same-origin CSP
    with frame-ancestors 'none', nosniff, X-Frame-Options DENY, no referrer."""
    client, keys = api
    answers = {
        "/": client.get("/"),
        "/static/app.js": client.get("/static/app.js"),
        "/v1/sensors": client.get("/v1/sensors", headers=bearer(keys.viewer)),
        "/openapi.json": client.get("/openapi.json"),
        "401": client.get("/v1/sensors"),
        "404": client.get("/nowhere"),
        "413": client.post(
            "/v1/alerts/x/ack", content=b"x" * 20_000, headers=bearer(keys.operator)
        ),
        "422": client.get(
            f"/v1/sensors/{DEPTH_SENSOR}/readings?every=20000w", headers=bearer(keys.viewer)
        ),
        "/docs": client.get("/docs"),
        "/redoc": client.get("/redoc"),
    }
    assert answers["413"].status_code == 413 and answers["422"].status_code == 422
    for what, response in answers.items():
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (what, name)
        csp = _csp(response.headers)
        assert csp["default-src"] == ["'self'"], what
        assert csp["frame-ancestors"] == ["'none'"], what
        assert (
            "'unsafe-inline'" not in csp["script-src"] and "'unsafe-eval'" not in csp["script-src"]
        ), what
    page = _csp(answers["/"].headers)
    assert page["script-src"] == ["'self'"] and page["img-src"] == ["'self'", "data:"]
    assert page["style-src"] == ["'self'"] and page["connect-src"] == ["'self'"]
    # The docs' one inline start-up script is allowed by its hash, nothing else inline.
    docs = _csp(answers["/docs"].headers)
    assert len(docs["script-src"]) == 2 and docs["script-src"][1].startswith("'sha256-")


def test_tile_and_wms_origins_are_allowed_images(
    broker: Service, influxd: Service, unique: str
) -> None:
    options = ApiOptions(tile_url="https://{s}.tile.example.org/{z}/{x}/{y}.png")
    app = create_app(api_settings(broker, influxd, unique), options)
    with TestClient(app) as client:
        img = _csp(client.get("/").headers)["img-src"]
    assert img == ["'self'", "data:", "https://*.tile.example.org"]


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://tile.example.org/{z}/{x}/{y}.png", "https://tile.example.org"),
        ("http://10.0.0.5:8080/tiles/{z}/{x}/{y}.png", "http://10.0.0.5:8080"),
        ("https://{s}.tile.example.org/{z}/{x}/{y}.png", "https://*.tile.example.org"),
        ("https://maps.{s}.example.org/{z}/{x}/{y}.png", "https:"),
        ("https://wms.example.org/geoserver/wms?SERVICE=WMS", "https://wms.example.org"),
        ("", None),
        ("ftp://x/{z}", None),
    ],
)
def test_image_origin_of_a_tile_or_wms_url(url: str, origin: str | None) -> None:
    assert image_origin(url) == origin


def test_deleting_the_keys_file_revokes_every_key_and_says_so(
    api: tuple[TestClient, Keys], caplog: pytest.LogCaptureFixture
) -> None:
    """Fail closed: within a second of the file's deletion every key is refused (401), one
    log line names the file and how to restore keys; putting it back restores them."""
    client, keys = api
    assert client.get("/v1/sensors", headers=bearer(keys.operator)).status_code == 200
    saved = keys.path.read_bytes()
    keys.path.unlink()
    with caplog.at_level(logging.INFO, logger="api.auth"):
        wait_for(
            lambda: client.get("/v1/sensors", headers=bearer(keys.viewer)).status_code == 401,
            what="the keys to be revoked",
        )
        for _ in range(3):
            assert client.get("/v1/sensors", headers=bearer(keys.operator)).status_code == 401
    said = [r.getMessage() for r in caplog.records if r.name == "api.auth"]
    assert len(said) == 1 and said[0].count(str(keys.path)) == 2, said
    assert "revoked" in said[0] and "python -m api keys add" in said[0]
    keys.path.write_bytes(saved)
    wait_for(
        lambda: client.get("/v1/sensors", headers=bearer(keys.operator)).status_code == 200,
        what="the restored keys",
    )


def _sse_clients(http: httpx.Client, url: str) -> float:
    text = http.get(f"{url}/metrics").text
    line = next(x for x in text.splitlines() if x.startswith("floodwatch_api_sse_clients "))
    return float(line.split()[-1])


def _open_stream(url: str, key: str, rcvbuf: int | None = None) -> socket.socket:
    """A raw client of /v1/stream that has read the response head and nothing more."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        # Set before connecting, so the window it advertises stays small.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    host, port = url.removeprefix("http://").split(":")
    sock.connect((host, int(port)))
    sock.sendall(
        f"GET /v1/stream HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    sock.settimeout(10)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "the server closed the stream before answering"
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def test_streams_past_the_cap_get_503_with_retry_after(
    broker: Service, influxd: Service, unique: str, tmp_path: Path
) -> None:
    """--max-streams 2: a third client is refused at once with Retry-After and one sentence;
    when a client leaves, its place is free again."""
    keys = write_keys(tmp_path / "keys")
    options = ApiOptions(api_keys=keys.path, max_streams=2)
    app = create_app(api_settings(broker, influxd, unique), options)
    with live_server(app) as url, httpx.Client(timeout=10) as http:
        first = _open_stream(url, keys.viewer)
        second = _open_stream(url, keys.viewer)
        refused = http.get(f"{url}/v1/stream", headers=bearer(keys.viewer))
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "30"
        assert "at most 2 live streams" in refused.json()["detail"]
        assert refused.headers["x-frame-options"] == "DENY"
        first.close()
        wait_for(lambda: _sse_clients(http, url) == 1, what="the first stream to end")
        third = _open_stream(url, keys.viewer)
        third.close()
        second.close()


def test_a_client_that_does_not_read_is_dropped_and_the_others_keep_streaming(
    broker: Service, influxd: Service, unique: str, tmp_path: Path
) -> None:
    """A real socket that never reads: once the server's bounded buffers for it are full it
    is dropped after --stream-send-timeout, while a reading client keeps getting events."""
    keys = write_keys(tmp_path / "keys")
    options = ApiOptions(api_keys=keys.path, stream_send_timeout_s=0.5, heartbeat_s=0.25)
    app = create_app(api_settings(broker, influxd, unique), options)
    levels: list[object] = []
    with (
        live_server(app) as url,
        httpx.Client(timeout=30) as http,
        http.stream("GET", f"{url}/v1/stream", headers=bearer(keys.viewer)) as fast,
    ):
        assert fast.status_code == 200
        lines = fast.iter_lines()
        next(lines)

        def read_fast() -> None:
            with contextlib.suppress(httpx.HTTPError):
                for line in lines:
                    if line.startswith("data:"):
                        levels.append(orjson.loads(line[5:]).get("level_cm"))

        threading.Thread(target=read_fast, daemon=True).start()
        slow = _open_stream(url, keys.viewer, rcvbuf=4096)
        assert _sse_clients(http, url) == 2
        topic = f"{unique}/v1/sensors/{DEPTH_SENSOR}/reading"
        sent = 0
        # About 1 MB of events a round, until the server gives up on the slow client.
        for _round in range(40):
            batch = b"\n".join(
                orjson.dumps({"level_cm": float(n % 300), "seq": sent + n}) for n in range(2000)
            )
            mosquitto_pub(broker, topic, lines=batch)
            sent += 2000
            if _eventually(lambda: _sse_clients(http, url) == 1, 1.5):
                break
        assert _sse_clients(http, url) == 1, f"the slow client was not dropped after {sent}"
        # What the server had sent it before giving up is bounded (socket buffers), and the
        # connection is closed.
        unread = 0
        while chunk := slow.recv(65536):
            unread += len(chunk)
        slow.close()
        assert unread < 8 * 2**20, f"{unread} bytes were held for a client that did not read"
        # The reading client is still served: a new reading reaches it.
        mosquitto_pub(broker, topic, message=orjson.dumps({"level_cm": 123.5}).decode())
        wait_for(lambda: 123.5 in levels, timeout_s=30, what="a new event at the reading client")
        print(f"slow client dropped after {sent} events, {unread} bytes unread")


def _eventually(predicate: Callable[[], bool], timeout_s: float) -> bool:
    """Whether `predicate` holds within `timeout_s` (the thing waited on is in a thread)."""
    try:
        wait_for(predicate, timeout_s)
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--max-streams", "0"], "--max-streams"),
        (["--max-streams", "many"], "--max-streams"),
        (["--stream-send-timeout", "0"], "--stream-send-timeout"),
    ],
)
def test_stream_limits_are_checked_at_start(args: list[str], flag: str) -> None:
    with pytest.raises(SettingsError) as caught:
        options_from_args(build_parser().parse_args(args))
    assert flag in str(caught.value) and env_name(flag) in str(caught.value)


def test_stream_limit_defaults() -> None:
    options = options_from_args(build_parser().parse_args([]))
    assert options.max_streams == 50 and options.stream_send_timeout_s == 15.0


def test_the_engine_refuses_a_bad_note_before_changing_the_alert(
    broker: Service, influxd: Service, unique: str, tmp_path: Path
) -> None:
    """A command that bypasses the API (any client allowed on commands/ack) with a NUL in
    its note is refused by ingest's engine with the same sentence, and the alert is left
    unacknowledged: the operator's proper acknowledgement afterwards succeeds (before, the
    engine acknowledged in memory, failed to store the event, and answered the retry
    "already acknowledged")."""
    keys = write_keys(tmp_path / "keys")
    app = create_app(api_settings(broker, influxd, unique), ApiOptions(api_keys=keys.path))
    replies: list[bytes] = []
    reply_to = f"{unique}/v1/commands/ack/reply/test-{unique}"
    with (
        engine_alert(broker, influxd, unique, tmp_path) as alert_id,
        TestClient(app) as client,
        publisher(broker) as pub,
    ):
        watcher = MqttConnection(
            admin_endpoint(broker),
            subscriptions=[(reply_to, 1)],
            on_delivery=lambda d: replies.append(d.payload),
        )
        watcher.start()
        try:
            command = {
                "alert_id": alert_id,
                "who": "mallory",
                "note": "a\x00b",
                "reply_to": reply_to,
            }
            publish(pub, Topics(unique).ack_commands, command)
            wait_for(lambda: bool(replies), what="the engine's answer")
        finally:
            watcher.stop()
        answer = orjson.loads(replies[0])
        assert answer["ok"] is False
        response = client.post(
            f"/v1/alerts/{alert_id}/ack", json={"note": "crew sent"}, headers=bearer(keys.operator)
        )
        assert response.status_code == 200, response.text
        assert response.json()["acked_by"] == "otto"
        assert "NUL (U+0000) at character 2" in answer["error"]
