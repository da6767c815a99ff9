"""Retained readings (issue 12 §4): a reading a sensor publishes with the retain flag is judged
once, counted and logged; ingest's reconnects and restarts never replay it. Real mosquitto,
real influxd, `python -m ingest` restarted twice."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson

from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service, free_port
from floodwatch.mqtt import MqttConnection
from tests.conftest import IngestProcess, admin_endpoint, wait_until

TS_MS = 1_795_000_000_000


def _count(db: InfluxClient, query: str) -> int:
    series = db.query(query)
    return int(series[0]["values"][0][1]) if series else 0


def _dead_letters(db: InfluxClient) -> int:
    return _count(db, 'SELECT count("reason") FROM "deadletter"')


def _readings(db: InfluxClient) -> int:
    return _count(db, 'SELECT count("level_cm") FROM "water_level"')


def test_a_retained_reading_is_judged_once_and_counted_never_replayed(
    broker: Service, influx: InfluxClient, ingest_env: dict[str, str], tmp_path: Path
) -> None:
    """qh-02 publishes an out-of-range reading and qh-03 a good one, both retained: one dead
    letter and one stored point, the retained count at 2 in the metrics and the log; after two
    restarts of ingest still one dead letter, and the restarted ingest saw no retained one."""
    root = ingest_env["FLOODWATCH_TOPIC_ROOT"]
    metrics_port = free_port()
    ingest = IngestProcess({**ingest_env, "FLOODWATCH_METRICS_PORT": str(metrics_port)}, tmp_path)
    ingest.start()
    topics = {sid: f"{root}/v1/sensors/{sid}/reading" for sid in ("qh-02", "qh-03")}
    payloads = {"qh-02": {"ts": TS_MS, "level_cm": 400.0}, "qh-03": {"ts": TS_MS, "level_cm": 12.0}}
    try:
        for sid, topic in topics.items():
            sensor = MqttConnection(broker.endpoint(sid), sid)
            sensor.start()
            try:
                assert sensor.publish_and_wait(topic, orjson.dumps(payloads[sid]), retain=True)
            finally:
                sensor.stop()
        wait_until(lambda: _dead_letters(influx) == 1 and _readings(influx) == 1, 20, "judged")
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert "floodwatch_ingest_retained_readings_total 2" in metrics
        wait_until(lambda: b"published retained" in ingest.log.read_bytes(), 10, "a log line")
        for _ in range(2):
            ingest.stop()
            ingest.start()
            # Ingest is subscribed again: anything the broker replays arrives at once, before
            # the first progress line (a second later).
            wait_until(lambda: b"messages=" in ingest.log.read_bytes(), 10, "a progress line")
            assert b"messages=0 " in ingest.log.read_bytes()
        ingest.stop()
        assert b"published retained" not in ingest.log.read_bytes()
        assert _dead_letters(influx) == 1
    finally:
        if ingest.running():
            ingest.stop()
        admin = MqttConnection(admin_endpoint(broker))
        admin.start()
        for topic in topics.values():  # clear the retained messages
            admin.publish_and_wait(topic, b"", retain=True)
        admin.stop()
