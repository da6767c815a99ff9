"""Alerts while InfluxDB is stopped, shutdown in every outage mode, restart safety when alerts
went out before their readings were stored, and retained states in state order: real
mosquitto, a real influxd of each test's own (paused with SIGSTOP or killed with SIGKILL)
and `python -m ingest`.

Each outage case prints one line (mode, alert delay, stale or not, SIGTERM stop time) for the
README and the report; nothing here asserts a tight time, only the bounds the issue sets."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service, influxd_service, wait_influx_ready
from floodwatch.mqtt import Delivery, MqttConnection
from floodwatch.settings import parse_influx_url
from floodwatch.topics import Topics
from tests.conftest import IngestProcess, admin_endpoint, grant, wait_until

pytestmark = pytest.mark.slow

SHUTDOWN_S = 3.0
# Sensors that report every second, so "stale" (3 intervals of silence) shows within seconds.
LIVE, SILENT = "ow-live", "ow-silent"


def registry(path: Path) -> Path:
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [106.73 + k * 0.001, 10.80]},
            "properties": {
                "id": sensor_id,
                "name": f"outage test {sensor_id}",
                "street": "Đường 12",
                "ward": "An Khanh",
                "kind": "street",
                "interval_s": 1,
            },
        }
        for k, sensor_id in enumerate((LIVE, SILENT))
    ]
    path.write_bytes(orjson.dumps({"type": "FeatureCollection", "features": features}))
    return path


class Watch:
    """Every message under a topic filter, with its arrival time, and the latest per topic."""

    def __init__(self, broker: Service, topic_filter: str) -> None:
        self.messages: list[tuple[float, Delivery]] = []
        self.latest: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.conn = MqttConnection(
            admin_endpoint(broker), subscriptions=[(topic_filter, 1)], on_delivery=self._on
        )
        self.conn.start()

    def _on(self, d: Delivery) -> None:
        with self._lock:
            self.messages.append((time.monotonic(), d))
            self.latest[d.topic] = d.payload

    def events(self, change: str | None = None) -> list[tuple[float, dict[str, object]]]:
        with self._lock:
            found = [(t, orjson.loads(d.payload)) for t, d in self.messages if d.payload]
        return [(t, e) for t, e in found if change is None or e.get("change") == change]


@pytest.fixture
def own_influxd(tmp_path: Path, influxd: Service, unique: str) -> Iterator[Service]:
    (tmp_path / "influx").mkdir()
    svc = influxd_service(tmp_path / "influx", credentials=influxd.credentials)
    svc.start()
    wait_influx_ready(svc.port)
    grant(svc, unique)
    yield svc
    if svc.proc is not None and svc.proc.poll() is None:
        svc.proc.send_signal(signal.SIGCONT)
    svc.stop()


@pytest.fixture
def watches(broker: Service) -> Iterator[Callable[[str], Watch]]:
    made: list[Watch] = []

    def make(topic_filter: str) -> Watch:
        made.append(Watch(broker, topic_filter))
        return made[-1]

    yield make
    for w in made:
        w.conn.stop()


@pytest.fixture
def publisher(broker: Service) -> Iterator[MqttConnection]:
    conn = MqttConnection(admin_endpoint(broker))
    conn.start()
    yield conn
    conn.stop()


@pytest.fixture
def ingests() -> Iterator[list[IngestProcess]]:
    made: list[IngestProcess] = []
    yield made
    for proc in made:
        if proc.running():
            proc.stop(signal.SIGKILL)


def outage_env(
    ingest_env: dict[str, str], own_influxd: Service, tmp_path: Path, outbox: bool
) -> dict[str, str]:
    return {
        **ingest_env,
        "FLOODWATCH_REGISTRY": str(registry(tmp_path / "sensors.geojson")),
        "FLOODWATCH_INFLUX_URL": own_influxd.url("writer"),
        "FLOODWATCH_INFLUX_READ_URL": own_influxd.url("reader"),
        "FLOODWATCH_OUTBOX": str(tmp_path / "outbox.sqlite") if outbox else "off",
        "FLOODWATCH_OUTBOX_AFTER": "1",
        "FLOODWATCH_SHUTDOWN_TIMEOUT": str(SHUTDOWN_S),
    }


def send(conn: MqttConnection, topics: Topics, level_cm: float, at_ms: int | None = None) -> None:
    ts = int(time.time() * 1000) if at_ms is None else at_ms
    conn.publish(topics.reading(LIVE), orjson.dumps({"ts": ts, "level_cm": level_cm}))


def stop_influxd(svc: Service, mode: signal.Signals) -> None:
    assert svc.proc is not None
    svc.proc.send_signal(mode)
    if mode == signal.SIGKILL:
        svc.proc.wait(10)


@pytest.mark.parametrize("outbox", [False, True], ids=["outbox-off", "outbox-on"])
@pytest.mark.parametrize("mode", [signal.SIGSTOP, signal.SIGKILL], ids=["SIGSTOP", "SIGKILL"])
def test_alerts_go_out_while_influxd_is_stopped_and_sigterm_stops_ingest(
    mode: signal.Signals,
    outbox: bool,
    own_influxd: Service,
    unique: str,
    tmp_path: Path,
    ingest_env: dict[str, str],
    watches: Callable[[str], Watch],
    publisher: MqttConnection,
    ingests: list[IngestProcess],
) -> None:
    """With influxd paused or killed, a flood reading raises its alert on MQTT within 1 s, a
    sensor that keeps reporting does not go stale (a silent one does: the stale check runs),
    and SIGTERM stops ingest within --shutdown-timeout."""
    topics = Topics(unique)
    events = watches(f"{unique}/v1/events/+")
    ingest = IngestProcess(outage_env(ingest_env, own_influxd, tmp_path, outbox), tmp_path)
    ingests.append(ingest)
    ingest.start()
    send(publisher, topics, 1.0)
    wait_until(
        lambda: any(e["sensor_id"] == SILENT for _, e in events.events("raised")),
        20,
        "the silent sensor's stale alert (the tick runs)",
    )

    stop_influxd(own_influxd, mode)
    outage_began = time.monotonic()
    send(publisher, topics, 12.0)
    time.sleep(0.3)  # two readings of one sensor, in time order
    sent = time.monotonic()
    send(publisher, topics, 14.0)
    wait_until(
        lambda: any(
            e["sensor_id"] == LIVE and e["kind"] == "flood" for _, e in events.events("raised")
        ),
        10,
        "the flood alert while influxd is stopped",
    )
    [(arrived, _)] = [
        (t, e)
        for t, e in events.events("raised")
        if e["sensor_id"] == LIVE and e["kind"] == "flood"
    ]
    delay_s = arrived - sent
    assert delay_s < 1.0, f"the alert took {delay_s:.2f} s with influxd stopped"

    # Keep reporting through more than 3 intervals of the outage: no stale for LIVE.
    while time.monotonic() - outage_began < 5.0:
        send(publisher, topics, 14.0)
        time.sleep(0.4)
    went_stale = [
        e for _, e in events.events("raised") if e["sensor_id"] == LIVE and e["kind"] == "stale"
    ]
    assert not went_stale, "a reporting sensor went stale because influxd was stopped"

    asked = time.monotonic()
    code = ingest.stop(signal.SIGTERM)
    took = time.monotonic() - asked
    log = ingest.log.read_text()
    assert code == 0, log
    assert took < SHUTDOWN_S + 1.5, f"SIGTERM took {took:.1f} s against --shutdown-timeout 3"
    print(
        f"\noutage {mode.name} outbox {'on' if outbox else 'off'}: alert after "
        f"{delay_s * 1000:.0f} ms, reporting sensor stale: no, SIGTERM stopped ingest in "
        f"{took:.2f} s (--shutdown-timeout {SHUTDOWN_S:g})"
    )


def stored_raises(svc: Service, db: str) -> list[str]:
    with InfluxClient(parse_influx_url(svc.url("admin")), db) as client:
        series = client.query(
            'SELECT "event_id" FROM "alert_event" WHERE "change" = $c AND "kind" = $k',
            {"c": "raised", "k": "flood"},
        )
    return [row[1] for s in series for row in s["values"]]


def test_a_kill_after_the_alert_went_out_but_before_it_was_stored_raises_it_once(
    own_influxd: Service,
    unique: str,
    tmp_path: Path,
    ingest_env: dict[str, str],
    watches: Callable[[str], Watch],
    publisher: MqttConnection,
    ingests: list[IngestProcess],
) -> None:
    """influxd down, a flood alert published but neither its readings nor its event stored,
    then ingest killed (-9). After influxd and ingest come back, the broker redelivers the
    readings, the rebuilt engine judges them into the same ids: one raised event stored, the
    retained state holds that alert once, and its event on MQTT carries the same id.

    influxd is killed, not paused: a paused influxd still holds the write ingest sent it in its
    socket and stores it when let go on, so "not stored" would depend on the machine's load."""
    topics = Topics(unique)
    events = watches(f"{unique}/v1/events/+")
    alerts = watches(f"{unique}/v1/alerts/+")
    env = outage_env(ingest_env, own_influxd, tmp_path, outbox=False)
    first = IngestProcess(env, tmp_path)
    ingests.append(first)
    first.start()
    now_ms = int(time.time() * 1000)
    send(publisher, topics, 1.0, now_ms - 3000)
    wait_until(lambda: first.log.read_text().count("readings_stored=1 ") > 0, 20, "a dry reading")

    stop_influxd(own_influxd, signal.SIGKILL)
    send(publisher, topics, 12.0, now_ms - 2000)
    send(publisher, topics, 14.0, now_ms - 1000)

    def flood_raises() -> list[dict[str, object]]:
        return [e for _, e in events.events("raised") if e["kind"] == "flood"]

    wait_until(lambda: bool(flood_raises()), 10, "the alert while influxd is down")
    [raised] = flood_raises()
    first.stop(signal.SIGKILL)

    own_influxd.start()
    wait_influx_ready(own_influxd.port)
    assert stored_raises(own_influxd, unique) == [], "stored before the kill: nothing to test"
    second = IngestProcess(env, tmp_path)
    ingests.append(second)
    second.start()
    wait_until(
        lambda: stored_raises(own_influxd, unique) == [raised["event_id"]],
        20,
        "the redelivered readings judged and stored with their event",
    )
    again = flood_raises()
    assert {e["event_id"] for e in again} == {raised["event_id"]}
    state = orjson.loads(alerts.latest[topics.alert(LIVE)])
    floods = [a for a in state["alerts"] if a["kind"] == "flood"]
    assert [a["alert_id"] for a in floods] == [raised["alert_id"]]
    print(f"\nkill -9 before storing: {len(again)} raise(s) on MQTT, all {raised['event_id']}")


def test_concurrent_acks_stale_ticks_and_batches_leave_the_latest_state_retained(
    broker: Service,
    unique: str,
    tmp_path: Path,
    ingest_env: dict[str, str],
    watches: Callable[[str], Watch],
    publisher: MqttConnection,
    ingests: list[IngestProcess],
) -> None:
    """Readings escalating and easing a flood, a stream of acknowledgements of it and a
    silence long enough for the stale tick, all at once: afterwards the retained
    `alerts/{id}` message is the engine's last state (each alert's latest event by seq, the
    sensor's level and stale flag), never an older one published late."""
    topics = Topics(unique)
    events = watches(f"{unique}/v1/events/+")
    env = {
        **ingest_env,
        "FLOODWATCH_REGISTRY": str(registry(tmp_path / "sensors.geojson")),
        "FLOODWATCH_OUTBOX": "off",
    }
    ingest = IngestProcess(env, tmp_path)
    ingests.append(ingest)
    ingest.start()
    start_ms = int(time.time() * 1000) - 6 * 3600 * 1000
    # Two minutes apart in reading time: up, up a level (escalation; rises under 15 cm, so
    # no obstruction), then down for over ten minutes (de-escalation), again and again.
    cycle = [12.0, 12.5, 22.0, 22.6, 12.0, 12.2, 12.4, 12.6, 12.8, 13.0, 13.2]
    send(publisher, topics, cycle[0], start_ms)
    send(publisher, topics, cycle[1], start_ms + 120_000)

    def flood_raises() -> list[dict[str, object]]:
        return [e for _, e in events.events("raised") if e["kind"] == "flood"]

    wait_until(lambda: bool(flood_raises()), 20, "the flood alert")
    first = flood_raises()[0]
    alert_id = str(first["alert_id"])
    done = threading.Event()

    def acknowledge() -> None:
        conn = MqttConnection(admin_endpoint(broker))
        conn.start()
        request = orjson.dumps({"alert_id": alert_id, "who": "Lan (IOC)", "note": ""})
        while not done.is_set():
            conn.publish(topics.ack_commands, request)
            time.sleep(0.002)
        conn.stop()

    acker = threading.Thread(target=acknowledge)
    acker.start()
    try:
        k = 2
        for burst in range(3):
            ends = time.monotonic() + 1.5
            while time.monotonic() < ends:
                send(publisher, topics, cycle[k % len(cycle)], start_ms + k * 120_000)
                k += 1
                time.sleep(0.01)
            if burst == 1:
                time.sleep(3.5)  # more than 3 intervals of silence: the tick raises stale
    finally:
        done.set()
        acker.join(10)
    changes = {str(e["change"]) for _, e in events.events()}
    assert {"escalated", "acknowledged", "deescalated"} <= changes, changes
    assert any(e["kind"] == "stale" for _, e in events.events("raised"))

    def settled() -> bool:
        count = len(events.events())
        time.sleep(1.0)
        return len(events.events()) == count

    wait_until(settled, 20, "ingest to finish the storm")
    latest: dict[str, dict[str, object]] = {}
    for _, e in events.events():
        if e["sensor_id"] != LIVE:
            continue
        seq = e["seq"]
        assert isinstance(seq, int)
        held = latest.get(str(e["alert_id"]))
        if held is None or seq > int(str(held["seq"])):
            latest[str(e["alert_id"])] = e
    active = {
        (alert_id, str(e["state"]))
        for alert_id, e in latest.items()
        if str(e["state"]).startswith("active")
    }
    last_flood = max(
        (e for e in latest.values() if e["kind"] == "flood"), key=lambda e: int(str(e["seq"]))
    )

    fresh = Watch(broker, topics.alert(LIVE))  # a new subscriber gets the retained message
    try:
        wait_until(lambda: topics.alert(LIVE) in fresh.latest, 10, "the retained state")
        retained = orjson.loads(fresh.latest[topics.alert(LIVE)])
    finally:
        fresh.conn.stop()
    assert {(a["alert_id"], a["state"]) for a in retained["alerts"]} == active
    assert retained["level"] == last_flood["level"]
    assert retained["stale"] == any(a["kind"] == "stale" for a in retained["alerts"])
    print(f"\nstorm: {len(events.events())} events, retained state is the latest: {active}")
