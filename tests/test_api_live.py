"""The API's current state and live stream on the real broker and influxd: readings and alerts
arrive over MQTT, the start-up snapshot comes from InfluxDB, /v1/stream replays what a
reconnecting client missed."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, Unpack

import httpx
import orjson
import pytest

from api.app import create_app
from api.config import ApiOptions
from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service
from floodwatch.mqtt import MqttConnection
from tests.test_api_support import (
    DEPTH_SENSOR,
    DISTANCE_SENSOR,
    Keys,
    TestClient,
    api_settings,
    bearer,
    live_server,
    publish,
    publisher,
    wait_for,
    write_keys,
    write_readings,
)

pytestmark = pytest.mark.services


@dataclass
class Live:
    url: str
    keys: Keys
    pub: MqttConnection
    root: str
    http: httpx.Client

    def sensor(self, sensor_id: str) -> dict[str, object]:
        response = self.http.get(
            f"{self.url}/v1/sensors/{sensor_id}", headers=bearer(self.keys.viewer)
        )
        assert response.status_code == 200, response.text
        props: dict[str, object] = response.json()["properties"]
        return props

    def reading(self, sensor_id: str, payload: object) -> None:
        publish(self.pub, f"{self.root}/v1/sensors/{sensor_id}/reading", payload)


class _Options(TypedDict, total=False):
    """The ApiOptions fields these tests vary."""

    heartbeat_s: float
    stream_buffer: int


@contextlib.contextmanager
def _live(
    broker: Service, influxd: Service, unique: str, tmp_path: Path, **options: Unpack[_Options]
) -> Iterator[Live]:
    keys = write_keys(tmp_path / "keys")
    app = create_app(
        api_settings(broker, influxd, unique),
        ApiOptions(api_keys=keys.path, **options),
    )
    with (
        live_server(app) as url,
        publisher(broker) as pub,
        httpx.Client(timeout=10) as http,
    ):
        yield Live(url, keys, pub, unique, http)


@pytest.fixture
def live(broker: Service, influxd: Service, unique: str, tmp_path: Path) -> Iterator[Live]:
    with _live(broker, influxd, unique, tmp_path, heartbeat_s=0.3) as running:
        yield running


@dataclass
class SseEvent:
    event: str
    id: str | None
    data: dict[str, object]


@dataclass
class SseReader:
    """Reads a text/event-stream response event by event, noting heartbeat comments."""

    lines: Iterator[str]
    comments: list[str] = field(default_factory=list)

    def next(self, timeout_s: float = 10.0) -> SseEvent:
        """The next event; fails after `timeout_s` (heartbeats keep lines coming meanwhile)."""
        deadline = time.monotonic() + timeout_s
        event = "message"
        event_id: str | None = None
        data: list[str] = []
        for line in self.lines:
            if time.monotonic() > deadline:
                raise AssertionError(f"no event within {timeout_s:g} s")
            if not line:
                if data:
                    return SseEvent(event, event_id, orjson.loads("\n".join(data)))
                continue
            if line.startswith(":"):
                self.comments.append(line)
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "id":
                event_id = value
            elif name == "data":
                data.append(value)
        raise AssertionError("the stream ended")


@contextlib.contextmanager
def stream(live: Live, last_event_id: str | None = None) -> Iterator[SseReader]:
    headers = bearer(live.keys.viewer)
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    with live.http.stream("GET", f"{live.url}/v1/stream", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = SseReader(response.iter_lines())
        # The opening comment means the server has placed this client in the event log.
        next(reader.lines)
        yield reader


def test_reading_on_mqtt_becomes_the_current_state(live: Live) -> None:
    """A reading published on MQTT shows in /v1/sensors with its level, battery and signal."""
    live.reading(DEPTH_SENSOR, {"level_cm": 23.5, "battery_v": 3.71, "rssi": -87, "seq": 1})
    wait_for(lambda: live.sensor(DEPTH_SENSOR)["level_cm"] == 23.5, what="the reading")
    props = live.sensor(DEPTH_SENSOR)
    # The raw rung beside the engine's verdict: no engine runs here, so no alert, level 0.
    assert props["reading_level"] == 2 and props["reading_level_name"] == "hazard"
    assert props["level"] == 0 and props["verdict_note"] == "unconfirmed"
    assert props["battery_v"] == 3.71 and props["rssi"] == -87
    assert props["stale"] is False
    assert str(props["time"]).endswith("+00:00")


def test_readings_are_decoded_by_ingests_decoder(live: Live) -> None:
    """distance_mm becomes depth via the registry's mount height; bad payloads change nothing."""
    live.reading(DISTANCE_SENSOR, {"distance_mm": 1500})  # 1800 mm mount: 30 cm of water
    wait_for(lambda: live.sensor(DISTANCE_SENSOR)["level_cm"] == 30.0, what="the distance reading")
    live.reading(DISTANCE_SENSOR, {"level_cm": "deep"})
    live.reading(DISTANCE_SENSOR, {"distance_mm": 1500, "ts": "2026-11-26T18:05:00"})  # no offset
    live.reading(DISTANCE_SENSOR, b"not json")

    def rejected() -> float:
        text = live.http.get(f"{live.url}/metrics").text
        line = next((x for x in text.splitlines() if 'kind="rejected"' in x), "x 0")
        return float(line.split()[-1])

    wait_for(lambda: rejected() == 3, what="three rejected messages counted")
    assert live.sensor(DISTANCE_SENSOR)["level_cm"] == 30.0


def test_backfill_array_updates_to_its_newest_reading(live: Live) -> None:
    """An array of readings leaves the newest one (by time) as the sensor's current state."""
    now_ms = int(time.time() * 1000)
    live.reading(
        DEPTH_SENSOR,
        [
            {"ts": now_ms - 120_000, "level_cm": 11.0},
            {"ts": now_ms - 60_000, "level_cm": 33.0},
            {"ts": now_ms - 90_000, "level_cm": 22.0},
        ],
    )
    wait_for(lambda: live.sensor(DEPTH_SENSOR)["level_cm"] == 33.0, what="the newest of the array")


def test_status_and_retained_alert_show_on_the_sensor(live: Live) -> None:
    """`offline` status and a retained alert payload appear as online, alert_level, alert_state."""
    publish(live.pub, f"{live.root}/v1/sensors/{DEPTH_SENSOR}/status", b"offline", retain=True)
    alert = {"alert_id": "qh-02-flood-1", "kind": "flood", "level": 3, "state": "active_unack"}
    publish(live.pub, f"{live.root}/v1/alerts/{DEPTH_SENSOR}", alert, retain=True)
    wait_for(lambda: live.sensor(DEPTH_SENSOR)["alert_level"] == 3, what="the alert")
    props = live.sensor(DEPTH_SENSOR)
    assert props["alert_state"] == "active_unack"
    assert props["online"] is False
    publish(live.pub, f"{live.root}/v1/alerts/{DEPTH_SENSOR}", b"", retain=True)
    wait_for(lambda: live.sensor(DEPTH_SENSOR)["alert_state"] is None, what="the alert to clear")


def test_a_replayed_old_reading_is_live_until_the_engine_says_stale(live: Live) -> None:
    """Staleness is by arrival (CONTRACT rule 7): a reading timed 10 minutes ago that arrives
    now is live; the engine's retained verdict makes it stale; its street keeps the depth."""
    old_ms = int(time.time() * 1000) - 10 * 60_000
    live.reading("nvh-03", {"ts": old_ms, "level_cm": 41.0})
    wait_for(lambda: live.sensor("nvh-03")["level_cm"] == 41.0, what="the old reading")
    assert live.sensor("nvh-03")["stale"] is False
    verdict = {
        "sensor": "nvh-03",
        "stale": True,
        "alerts": [{"alert_id": "nvh-03:stale:1", "kind": "stale", "state": "active_unack"}],
    }
    publish(live.pub, f"{live.root}/v1/alerts/nvh-03", verdict, retain=True)
    wait_for(lambda: live.sensor("nvh-03")["stale"] is True, what="the engine's stale verdict")
    streets = live.http.get(f"{live.url}/v1/streets", headers=bearer(live.keys.viewer)).json()
    street = next(f for f in streets["features"] if f["id"] == "Nguyễn Văn Hưởng")
    assert street["geometry"]["type"] == "LineString"
    assert street["properties"]["worst_sensor"] == "nvh-03"
    # One truth: no flood alert, so level 0 whatever the depth; the depth stays beside it.
    assert street["properties"]["level"] == 0 and street["properties"]["reading_level"] == 3
    assert street["properties"]["stale"] is True
    assert street["properties"]["level_cm"] == 41.0
    publish(live.pub, f"{live.root}/v1/alerts/nvh-03", b"", retain=True)


def test_start_up_snapshot_comes_from_influxdb(
    broker: Service, influxd: Service, influx: InfluxClient, unique: str, tmp_path: Path
) -> None:
    """Each sensor's last stored reading is current state at once, before any MQTT message."""
    now = time.time_ns()
    write_readings(influx, "nvh-01", [(now - 120 * 10**9, 8.0), (now - 60 * 10**9, 18.0)])
    write_readings(influx, "phu-an", [(now - 60 * 10**9, 152.0)])
    keys = write_keys(tmp_path / "keys")
    app = create_app(api_settings(broker, influxd, unique), ApiOptions(api_keys=keys.path))
    with TestClient(app) as client:
        features = client.get("/v1/sensors", headers=bearer(keys.viewer)).json()["features"]
    by_id = {f["id"]: f["properties"] for f in features}
    assert by_id["nvh-01"]["level_cm"] == 18.0 and by_id["nvh-01"]["battery_v"] == 3.7
    assert by_id["phu-an"]["reading_level_name"] == "alarm_2"
    assert by_id["qh-04"]["level_cm"] is None and by_id["qh-04"]["stale"] is True


def test_stream_sends_reading_and_alert_events_with_ids(live: Live) -> None:
    """/v1/stream delivers `reading` and `alert` events, each with an id, plus heartbeats."""
    with stream(live) as events:
        live.reading(DEPTH_SENSOR, {"level_cm": 12.0})
        reading = events.next()
        assert reading.event == "reading" and reading.id
        assert reading.data["id"] == DEPTH_SENSOR and reading.data["level_cm"] == 12.0
        alert = {"alert_id": "x-1", "kind": "flood", "level": 1, "state": "active_unack"}
        publish(live.pub, f"{live.root}/v1/alerts/{DEPTH_SENSOR}", alert, retain=True)
        event = events.next()
        assert event.event == "alert" and event.id and event.id != reading.id
        assert event.data["sensor"] == DEPTH_SENSOR and event.data["alert_level"] == 1
        alerts = event.data["alerts"]
        assert isinstance(alerts, list) and alerts[0]["alert_id"] == "x-1"
        properties = event.data["properties"]
        assert isinstance(properties, dict) and properties["id"] == DEPTH_SENSOR
        assert properties["alert_level"] == 1 and properties["stale"] is False
        time.sleep(0.7)  # idle for two heartbeat periods
        live.reading(DEPTH_SENSOR, {"level_cm": 13.0})
        events.next()
        assert any(c.startswith(": ping") for c in events.comments), events.comments


def test_client_that_drops_and_resumes_misses_nothing(live: Live) -> None:
    """Events published while a client is away come first when it resumes with Last-Event-ID."""
    start_ms = int(time.time() * 1000) - 60_000
    with stream(live) as events:
        live.reading("qh-01", {"ts": start_ms - 1000, "level_cm": 1.0})
        last_id = events.next().id
    assert last_id is not None
    # 30 s of a sensor reporting every second while the client is away.
    for n in range(30):
        live.reading("qh-01", {"ts": start_ms + n * 1000, "level_cm": 2.0 + n})
    with stream(live, last_id) as events:
        # A resume may repeat what arrived up to 2 s before the last id (api.eventlog), then
        # every event after it, in order.
        missed = [events.next() for _ in range(30)]
        while missed[0].id != last_id and missed[0].data.get("level_cm") != 2.0:
            missed = [*missed[1:], events.next()]
        if missed[0].id == last_id:
            missed = [*missed[1:], events.next()]
    assert [e.event for e in missed] == ["reading"] * 30
    assert [e.data["level_cm"] for e in missed] == [2.0 + n for n in range(30)]


def test_resuming_past_the_buffer_is_told_with_a_gap_event(
    broker: Service, influxd: Service, unique: str, tmp_path: Path
) -> None:
    """Asking for more than the server holds brings a `gap` event first, then what is held."""
    with _live(broker, influxd, unique, tmp_path, stream_buffer=5) as live:
        start_ms = int(time.time() * 1000) - 60_000
        with stream(live) as events:
            live.reading("qh-01", {"ts": start_ms - 1000, "level_cm": 1.0})
            last_id = events.next().id
        assert last_id is not None
        for n in range(8):
            live.reading("qh-01", {"ts": start_ms + n * 1000, "level_cm": 10.0 + n})
        wait_for(lambda: live.sensor("qh-01")["level_cm"] == 17.0, what="the last reading")
        with stream(live, last_id) as events:
            gap = events.next()
            held = [events.next() for _ in range(5)]
        assert gap.event == "gap" and "keeps only the last 5" in str(gap.data["reason"])
        assert [e.data["level_cm"] for e in held] == [13.0, 14.0, 15.0, 16.0, 17.0]
        with stream(live, "0123abcd-7") as events:
            foreign = events.next()
        assert foreign.event == "gap" and "not an id" in str(foreign.data["reason"])
