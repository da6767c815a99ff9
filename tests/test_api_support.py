"""Helpers shared by the API tests (test_api_*.py): settings, keys, a live server, MQTT and
InfluxDB helpers. Named like a test module so it sits with them; it holds no tests."""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import uvicorn
from fastapi import FastAPI
from starlette.exceptions import StarletteDeprecationWarning

from api.auth import hash_key, new_key
from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service, free_port
from floodwatch.mqtt import MqttConnection
from floodwatch.registry import SHIPPED_REGISTRY
from floodwatch.settings import MqttEndpoint, Settings, parse_influx_url

with warnings.catch_warnings():
    # Starlette 1.x would rather its test client ran on httpx2 and warns, once at import, when
    # it falls back to httpx (the project's HTTP client); the client behaves the same.
    warnings.filterwarnings(
        "ignore",
        message="Using `httpx` with `starlette.testclient` is deprecated",
        category=StarletteDeprecationWarning,
    )
    from fastapi.testclient import TestClient

__all__ = ["TestClient"]

# Sensors of the shipped registry used across the tests.
DEPTH_SENSOR = "qh-02"
DISTANCE_SENSOR = "d12-02"
TIDE_SENSOR = "phu-an"


def api_settings(
    broker: Service | int, influxd: Service | int, unique: str, registry: Path = SHIPPED_REGISTRY
) -> Settings:
    """Settings for a test: its own database and topic root, both named `unique`, with the
    API's own users (broker `api`, InfluxDB `reader`) where a service runs."""
    from tests.conftest import fresh_login, grant

    # The API's own login: the broker binds it to one client id, which the API then uses.
    mqtt = (
        MqttEndpoint("127.0.0.1", broker) if isinstance(broker, int) else fresh_login(broker, "api")
    )
    if isinstance(influxd, int):
        influx = parse_influx_url(f"http://127.0.0.1:{influxd}")
    else:
        grant(influxd, unique)
        influx = parse_influx_url(influxd.url("reader"))
    return Settings(
        mqtt=mqtt,
        influx=influx,
        influx_db=unique,
        registry_path=registry,
        topic_root=unique,
        log_level="INFO",
    )


@dataclass(frozen=True)
class Keys:
    path: Path
    viewer: str
    operator: str


def write_keys(path: Path) -> Keys:
    """A keys file with one viewer key and one operator key."""
    viewer, operator = new_key(), new_key()
    path.write_text(
        f"# test keys\nviewer:{hash_key(viewer)}:vera\noperator:{hash_key(operator)}:otto\n"
    )
    return Keys(path, viewer, operator)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextlib.contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """The app under uvicorn in a thread on a free port; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise AssertionError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@contextlib.contextmanager
def publisher(broker: Service) -> Iterator[MqttConnection]:
    from tests.conftest import admin_endpoint

    conn = MqttConnection(admin_endpoint(broker))
    conn.start()
    try:
        yield conn
    finally:
        conn.stop()


def publish(conn: MqttConnection, topic: str, payload: object, retain: bool = False) -> None:
    """Publish JSON (or bytes as they are) and wait for the broker's acknowledgement."""
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    assert conn.publish_and_wait(topic, body, qos=1, retain=retain), f"publish to {topic} failed"


def write_readings(influx: InfluxClient, sensor: str, points: list[tuple[int, float]]) -> None:
    """Store (epoch ns, level_cm) readings as ingest would."""
    influx.write(
        [f"water_level,sensor={sensor} level_cm={level!r},battery_v=3.7 {t}" for t, level in points]
    )


def wait_for(predicate: object, timeout_s: float = 10.0, what: str = "") -> None:
    """Poll until `predicate()` is true (the thing waited on is in another thread)."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what or predicate}")


def get_json(client: TestClient | httpx.Client, url: str, key: str) -> object:
    response = client.get(url, headers=bearer(key))
    assert response.status_code == 200, response.text
    return response.json()


@contextlib.contextmanager
def engine_alert(broker: Service, influxd: Service, root: str, workdir: Path) -> Iterator[str]:
    """A running `python -m ingest` (which owns the alert engine) and a real `hazard` flood
    alert it raised on DEPTH_SENSOR from two readings; yields the alert's id."""
    from tests.conftest import IngestProcess, admin_endpoint, mosquitto_pub, own_login, process_env

    env = process_env(broker, influxd, root, root)
    own_login(broker, env)
    ingest = IngestProcess(env, workdir)
    ingest.start()
    retained: list[bytes] = []
    watcher = MqttConnection(
        admin_endpoint(broker),
        subscriptions=[(f"{root}/v1/alerts/{DEPTH_SENSOR}", 1)],
        on_delivery=lambda d: retained.append(d.payload),
    )
    watcher.start()
    try:
        # A minute or two ahead of now (ingest accepts up to 5): newer than anything a test
        # stored, so the engine judges them rather than ignoring them as late data.
        now_ms = int(time.time() * 1000)
        readings = [{"ts": now_ms + (1 + k) * 60_000, "level_cm": 22.0 + k} for k in range(2)]
        mosquitto_pub(
            broker,
            f"{root}/v1/sensors/{DEPTH_SENSOR}/reading",
            message=orjson.dumps(readings).decode(),
        )
        wait_for(lambda: any(retained), what="the engine's alert")
        alert_id = str(orjson.loads(next(p for p in retained if p))["alerts"][0]["alert_id"])
        yield alert_id
    finally:
        watcher.stop()
        ingest.stop()
