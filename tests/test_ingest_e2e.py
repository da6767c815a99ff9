"""Ingest end to end: real mosquitto, real influxd, `python -m ingest` as a process."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service, free_port, influxd_service, wait_influx_ready
from floodwatch.mqtt import Delivery, MqttConnection
from floodwatch.settings import parse_influx_url
from tests.conftest import ROOT, IngestProcess, admin_endpoint, grant, mosquitto_pub, wait_until

EXAMPLE = (
    '{"ts": "2026-11-25T18:05:00.000+07:00", "level_cm": 23.5, "battery_v": 3.71, '
    '"rssi": -87, "seq": 1042}'
)


@pytest.fixture
def ingest(ingest_env: dict[str, str], tmp_path: Path) -> Iterator[IngestProcess]:
    proc = IngestProcess(ingest_env, tmp_path)
    proc.start()
    yield proc
    if proc.running():
        proc.stop(signal.SIGKILL)


@pytest.fixture
def db(influxd: Service, unique: str) -> Iterator[InfluxClient]:
    client = InfluxClient(parse_influx_url(influxd.url("admin")), unique)
    yield client
    client.close()


@pytest.fixture
def listen(broker: Service) -> Iterator[Callable[[str], list[Delivery]]]:
    """Subscribe to a topic filter; returns the live list of what arrives."""
    conns: list[MqttConnection] = []

    def subscribe(topic_filter: str) -> list[Delivery]:
        got: list[Delivery] = []
        lock = threading.Lock()

        def on(d: Delivery) -> None:
            with lock:
                got.append(d)

        conn = MqttConnection(
            admin_endpoint(broker),
            subscriptions=[(topic_filter, 1)],
            on_delivery=on,
        )
        conn.start()
        conns.append(conn)
        return got

    yield subscribe
    for conn in conns:
        conn.stop()


def count(
    db: InfluxClient, field: str = "level_cm", where: str = "", params: dict[str, str] | None = None
) -> int:
    series = db.query(f'SELECT count("{field}") FROM "water_level" {where}', params)
    return int(series[0]["values"][0][1]) if series else 0


def test_readme_example_is_stored_once_even_when_sent_twice(
    broker: Service, db: InfluxClient, ingest: IngestProcess, unique: str
) -> None:
    """The README's mosquitto_pub example lands in InfluxDB once; sending it again keeps one."""
    topic = f"{unique}/v1/sensors/qh-02/reading"
    mosquitto_pub(broker, topic, message=EXAMPLE)
    wait_until(lambda: count(db) == 1, 20, "the example reading in InfluxDB")
    mosquitto_pub(broker, topic, message=EXAMPLE)
    wait_until(lambda: b"messages=2 " in ingest.log.read_bytes(), 20, "the second message")
    [series] = db.query('SELECT * FROM "water_level"', epoch="ns")
    row = dict(zip(series["columns"], series["values"][0], strict=True))
    assert len(series["values"]) == 1
    assert row == {
        "time": 1_795_604_700_000_000_000,
        "sensor": "qh-02",
        "level_cm": 23.5,
        "battery_v": 3.71,
        "rssi": -87,
        "seq": 1042,
    }


def test_bad_readings_are_dead_lettered_and_ingest_keeps_going(
    broker: Service,
    db: InfluxClient,
    ingest: IngestProcess,
    unique: str,
    listen: Callable[[str], list[Delivery]],
) -> None:
    """Malformed, unknown-sensor and out-of-range readings reach deadletter with reasons."""
    dead = listen(f"{unique}/v1/deadletter")
    bad = [
        ("qh-02", "{not json", "not valid JSON"),
        ("ghost-sensor", '{"level_cm": 5}', "unknown sensor 'ghost-sensor'"),
        ("qh-02", '{"ts": 1795000000000, "level_cm": 999}', "outside the physical range"),
        ("qh-02", '{"ts": "2026-11-25T18:05:00", "level_cm": 5}', "no UTC offset"),
    ]
    for sensor, payload, _ in bad:
        mosquitto_pub(broker, f"{unique}/v1/sensors/{sensor}/reading", message=payload)
    mosquitto_pub(broker, f"{unique}/v1/sensors/qh-02/reading", message=EXAMPLE)
    wait_until(lambda: len(dead) >= len(bad), 20, "four dead letters")
    wait_until(lambda: count(db) == 1, 20, "the good reading after the bad ones")
    letters = [orjson.loads(d.payload) for d in dead]
    for (sensor, payload, hint), letter in zip(bad, letters, strict=True):
        assert letter["topic"] == f"{unique}/v1/sensors/{sensor}/reading"
        assert letter["payload"] == payload
        assert hint in letter["reason"]
        assert letter["received_at"].endswith("+00:00")
    stored = db.query('SELECT count("reason") FROM "deadletter" GROUP BY "code"')
    by_code = {s["tags"]["code"]: s["values"][0][1] for s in stored}
    assert by_code == {"bad_json": 1, "unknown_sensor": 1, "out_of_range": 1, "bad_ts": 1}
    assert ingest.running()


def test_lines_influx_refuses_are_dead_lettered_and_the_rest_stored(
    broker: Service,
    db: InfluxClient,
    ingest: IngestProcess,
    unique: str,
    listen: Callable[[str], list[Delivery]],
) -> None:
    """A batch in which InfluxDB refuses some lines is split: those go to deadletter only."""
    # Field types are fixed per measurement and shard (a week): make rssi a float in the
    # week of 2026-09-21, so an integer rssi conflicts there and only there.
    db.write(["water_level,sensor=qh-03 level_cm=0.0,rssi=1.5 1790000000000000000"])
    dead = listen(f"{unique}/v1/deadletter")
    lines = b"\n".join(
        orjson.dumps({"ts": 1795000000000 + k * 1000, "level_cm": 5, "rssi": -80})
        for k in range(50)
    )
    mosquitto_pub(broker, f"{unique}/v1/sensors/qh-02/reading", lines=lines + b"\n")
    mosquitto_pub(
        broker,
        f"{unique}/v1/sensors/qh-03/reading",
        message='{"ts": 1790000001000, "level_cm": 5, "rssi": -80}',
    )
    wait_until(lambda: len(dead) == 1, 20, "the refused reading on deadletter")
    assert "field type conflict" in orjson.loads(dead[0].payload)["reason"]
    assert orjson.loads(dead[0].payload)["code"] == "influx_refused"
    wait_until(lambda: count(db, where="WHERE sensor = 'qh-02'") == 50, 20, "the 50 good ones")


def test_influx_down_means_retry_not_loss(
    broker: Service, unique: str, tmp_path: Path, ingest_env: dict[str, str]
) -> None:
    """While InfluxDB is down nothing is acknowledged; when it returns, everything is stored."""
    (tmp_path / "influx").mkdir()
    own = influxd_service(tmp_path / "influx", credentials=broker.credentials)
    own.start()
    wait_influx_ready(own.port)
    grant(own, unique)
    env = dict(
        ingest_env,
        FLOODWATCH_INFLUX_URL=own.url("writer"),
        FLOODWATCH_INFLUX_READ_URL=own.url("reader"),
    )
    proc = IngestProcess(env, tmp_path)
    proc.start()
    db = InfluxClient(parse_influx_url(own.url("admin")), unique)
    try:
        own.stop()
        lines = (
            b"\n".join(
                orjson.dumps({"ts": 1795000000000 + k * 1000, "level_cm": 1.5}) for k in range(500)
            )
            + b"\n"
        )
        mosquitto_pub(broker, f"{unique}/v1/sensors/qh-02/reading", lines=lines)
        wait_until(
            lambda: b"InfluxDB unavailable" in proc.log.read_bytes(),
            20,
            "ingest to notice InfluxDB is down",
        )
        own.start()
        wait_influx_ready(own.port)
        wait_until(lambda: count(db) == 500, 30, "the readings after InfluxDB returned")
        assert proc.running()
    finally:
        proc.stop(signal.SIGKILL)
        own.stop()
        db.close()


def test_sigterm_stops_cleanly(ingest: IngestProcess) -> None:
    """SIGTERM ends ingest with exit code 0 and a final summary line."""
    assert ingest.stop(signal.SIGTERM) == 0
    assert b"stopped; messages=" in ingest.log.read_bytes()


@pytest.mark.parametrize(
    ("env", "hint"),
    [
        ({"FLOODWATCH_MQTT_URL": "http://x"}, "mqtt://"),
        ({"FLOODWATCH_INFLUX_URL": "ftp://x"}, "http://"),
        ({"FLOODWATCH_REGISTRY": "/nonexistent.geojson"}, "does not exist"),
        ({"FLOODWATCH_TOPIC_ROOT": "a/#"}, "topic root"),
        ({"FLOODWATCH_MAX_BATCH": "0"}, "--max-batch"),
    ],
)
def test_bad_settings_fail_at_start_with_one_sentence(
    ingest_env: dict[str, str], env: dict[str, str], hint: str
) -> None:
    """A wrong setting stops ingest at once with exit 2 and one line naming the fix."""
    done = subprocess.run(
        [sys.executable, "-m", "ingest"],
        env={**ingest_env, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and hint in lines[0] and lines[0].startswith("ingest: ")


def test_backfill_arrays_and_live_statuses_are_stored(
    broker: Service, db: InfluxClient, ingest: IngestProcess, unique: str
) -> None:
    """A 1000-reading backfill array is stored whole; a live status change is stored too."""
    items = [
        {"ts": 1795000000000 + k * 60_000, "distance_mm": 1500 + k % 7, "battery_v": 3.9}
        for k in range(1000)
    ]
    mosquitto_pub(
        broker, f"{unique}/v1/sensors/qh-01/reading", message=orjson.dumps(items).decode()
    )
    mosquitto_pub(broker, f"{unique}/v1/sensors/qh-01/status", message="offline")
    wait_until(lambda: count(db) == 1000, 20, "the backfill")

    def statuses() -> list[object]:
        got = db.query('SELECT "online" FROM "sensor_status" WHERE "sensor" = $s', {"s": "qh-01"})
        return [row[1] for row in got[0]["values"]] if got else []

    wait_until(lambda: bool(statuses()), 20, "the status change")
    assert statuses() == [False]
    [first] = db.query('SELECT first("distance_mm"), first("level_cm") FROM "water_level"')
    # qh-01 hangs 2200 mm above the road: 1500 mm to the water is 70 cm deep.
    assert first["values"][0][1:] == [1500, 70]


def test_metrics_endpoint_counts_what_happened(
    broker: Service, db: InfluxClient, ingest_env: dict[str, str], tmp_path: Path, unique: str
) -> None:
    """Ingest's /metrics shows received, stored and dead-lettered counts that add up."""
    port = free_port()
    proc = IngestProcess({**ingest_env, "FLOODWATCH_METRICS_PORT": str(port)}, tmp_path)
    proc.start()
    try:
        topic = f"{unique}/v1/sensors/qh-02/reading"
        mosquitto_pub(broker, topic, message=EXAMPLE)
        mosquitto_pub(broker, topic, message="{broken")
        mosquitto_pub(broker, f"{unique}/v1/sensors/ghost/reading", message=EXAMPLE)

        def scrape() -> dict[str, float]:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            return {
                line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line and not line.startswith("#")
            }

        wait_until(
            lambda: scrape().get("floodwatch_ingest_messages_acknowledged_total") == 3,
            20,
            "three messages acknowledged",
        )
        m = scrape()
        assert m["floodwatch_ingest_messages_received_total"] == 3
        assert m["floodwatch_ingest_readings_stored_total"] == 1
        assert m['floodwatch_ingest_deadlettered_total{reason="bad_json"}'] == 1
        assert m['floodwatch_ingest_deadlettered_total{reason="unknown_sensor"}'] == 1
        assert m['floodwatch_ingest_write_seconds_bucket{le="+Inf"}'] >= 1
        assert m["floodwatch_ingest_backlog_messages"] == 0
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    finally:
        proc.stop(signal.SIGTERM)
