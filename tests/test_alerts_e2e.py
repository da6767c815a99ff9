"""Alerts in the running pipeline: raised from stored readings, published retained, stored as
events, acknowledged through `python -m ingest ack`, and restored after a restart."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service
from floodwatch.mqtt import Delivery, MqttConnection
from floodwatch.settings import parse_influx_url
from floodwatch.topics import Topics
from tests.conftest import ROOT, IngestProcess, admin_endpoint, mosquitto_pub, wait_until


@pytest.fixture
def db(influxd: Service, unique: str) -> Iterator[InfluxClient]:
    client = InfluxClient(parse_influx_url(influxd.url("admin")), unique)
    yield client
    client.close()


class Watch:
    """The latest retained payload per topic, and every message, under a topic filter."""

    def __init__(self, broker: Service, topic_filter: str) -> None:
        self.latest: dict[str, bytes] = {}
        self.messages: list[Delivery] = []
        self._lock = threading.Lock()
        self.conn = MqttConnection(
            admin_endpoint(broker),
            subscriptions=[(topic_filter, 1)],
            on_delivery=self._on,
        )
        self.conn.start()

    def _on(self, d: Delivery) -> None:
        with self._lock:
            self.latest[d.topic] = d.payload
            self.messages.append(d)


@pytest.fixture
def watch(broker: Service) -> Iterator[Callable[[str], Watch]]:
    made: list[Watch] = []

    def make(topic_filter: str) -> Watch:
        w = Watch(broker, topic_filter)
        made.append(w)
        return w

    yield make
    for w in made:
        w.conn.stop()


def flood(broker: Service, unique: str, sensor: str, depths: list[float]) -> None:
    """Readings one minute apart, ending a minute ago."""
    now_ms = int(time.time() * 1000)
    items = [
        {"ts": now_ms - (len(depths) - k) * 60_000, "level_cm": d} for k, d in enumerate(depths)
    ]
    mosquitto_pub(broker, Topics(unique).reading(sensor), message=orjson.dumps(items).decode())


def ack(
    env: dict[str, str], alert_id: str, *extra: str, broker: Service | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m ingest ack` as an operator would run it: logged in as the API's user, who may
    send acknowledgement requests and read their replies (ingest's own user may not)."""
    operator = dict(env)
    if broker is not None:
        operator["FLOODWATCH_MQTT_URL"] = broker.url("api")
    return subprocess.run(
        [sys.executable, "-m", "ingest", "ack", alert_id, *extra],
        env=operator,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def raised_events(db: InfluxClient) -> int:
    series = db.query(
        'SELECT count("alert_id") FROM "alert_event" WHERE "change" = $c AND "kind" = $k',
        {"c": "raised", "k": "flood"},
    )
    return int(series[0]["values"][0][1]) if series else 0


def test_flood_is_raised_acknowledged_and_survives_a_restart(
    broker: Service,
    db: InfluxClient,
    unique: str,
    tmp_path: Path,
    ingest_env: dict[str, str],
    watch: Callable[[str], Watch],
) -> None:
    """Two readings over 10 cm raise `flooded`; the operator acks it; a restart keeps it."""
    topics = Topics(unique)
    alerts = watch(f"{unique}/v1/alerts/+")
    events = watch(f"{unique}/v1/events/+")
    ingest = IngestProcess(ingest_env, tmp_path)
    ingest.start()
    try:
        flood(broker, unique, "qh-02", [4.0, 12.5, 14.0])
        wait_until(
            lambda: (
                topics.alert("qh-02") in alerts.latest
                and alerts.latest[topics.alert("qh-02")] != b""
            ),
            20,
            "the retained alert",
        )
        state = orjson.loads(alerts.latest[topics.alert("qh-02")])
        assert (state["level"], state["level_name"]) == (1, "flooded")
        [flood_alert] = [a for a in state["alerts"] if a["kind"] == "flood"]
        assert flood_alert["state"] == "active_unack"
        alert_id = flood_alert["alert_id"]
        wait_until(lambda: raised_events(db) == 1, 20, "the raised event in InfluxDB")
        raised = [orjson.loads(d.payload) for d in events.messages]
        assert [(e["kind"], e["change"]) for e in raised] == [("flood", "raised")]

        done = ack(
            ingest_env, alert_id, "--who", "Lan (IOC)", "--note", "crew on the way", broker=broker
        )
        assert done.returncode == 0, done.stderr
        assert "active_ack" in done.stdout
        wait_until(
            lambda: b"active_ack" in alerts.latest[topics.alert("qh-02")],
            10,
            "the acknowledged state, retained",
        )
        # The events topic reaches this test on another connection than the alerts topic.
        wait_until(
            lambda: b'"acknowledged"' in events.messages[-1].payload, 10, "the acknowledged event"
        )
        acked = orjson.loads(events.messages[-1].payload)
        assert (acked["change"], acked["who"], acked["note"]) == (
            "acknowledged",
            "Lan (IOC)",
            "crew on the way",
        )

        unknown = ack(ingest_env, "qh-02:flood:1", "--who", "Lan", broker=broker)
        assert unknown.returncode == 1 and "no open alert" in unknown.stderr

        assert ingest.stop(signal.SIGTERM) == 0
        before = len(alerts.messages)
        ingest.start()
        wait_until(lambda: len(alerts.messages) > before, 20, "the state republished at start")
        after = orjson.loads(alerts.latest[topics.alert("qh-02")])
        assert [(a["alert_id"], a["state"]) for a in after["alerts"]] == [(alert_id, "active_ack")]
        flood(broker, unique, "qh-02", [15.0, 16.0])
        time.sleep(1)
        assert raised_events(db) == 1, "the restart raised the flood a second time"
    finally:
        if ingest.running():
            ingest.stop(signal.SIGKILL)


def test_ack_needs_an_operator_name(ingest_env: dict[str, str]) -> None:
    """`python -m ingest ack` without --who stops with exit 2 and one sentence."""
    done = ack(ingest_env, "qh-02:flood:1")
    assert done.returncode == 2 and "--who" in done.stderr
