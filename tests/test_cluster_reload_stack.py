"""The clustered stack's own admin (floodwatch.clusteradmin.cluster_admin) with a real worker:
a sensor an operator adds through a registry override is mapped by itself and its reading
stored; a login the mappings do not cover has its reading dead-lettered by the worker (stored,
published, acknowledged); a client-id takeover is logged. Real NATS, HAProxy, influxd and a
`python -m ingest --cluster` worker."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from floodwatch.cluster import (
    MQTT_MSGS_PREFIX,
    MQTT_MSGS_STREAM,
    connect,
    unmapped_consumer_name,
)
from floodwatch.clusteradmin import main as cluster_main
from floodwatch.clusterstack import (
    ClusterStack,
    cluster_credential_files,
    stack_services,
    start_cluster_stack,
)
from floodwatch.credentials import Credentials
from floodwatch.mqtt import Delivery, MqttConnection
from floodwatch.operations import Override
from floodwatch.registry import SHIPPED_REGISTRY, load_registry
from floodwatch.settings import MQTT_V311, MqttEndpoint
from floodwatch.stack import stack_document
from floodwatch.topics import Topics
from tests.conftest import admin_influx, wait_until

pytestmark = [pytest.mark.services, pytest.mark.slow]
TOPICS = Topics("floodwatch")
NEW_SENSOR = Override(
    "qh-77",
    {"name": "Quốc Hương 77", "street": "Quốc Hương", "ward": "An Khánh", "kind": "street"},
    (106.735, 10.8056),
)


def _reading() -> bytes:
    return orjson.dumps({"ts": datetime.now(UTC).isoformat(), "level_cm": 3.5})


def _publish_as(stack: ClusterStack, login: str, password: str, client_id: str) -> None:
    endpoint = MqttEndpoint("127.0.0.1", stack.mqtt_front.port, login, password, False, MQTT_V311)
    conn = MqttConnection(endpoint, client_id)
    conn.start(timeout_s=20)
    try:
        conn.publish_and_wait(TOPICS.reading(login), _reading())
    finally:
        conn.stop()


async def _store_unmapped(stack: ClusterStack, sensor_id: str, payload: bytes) -> None:
    nc = await connect(stack.cluster.nats_urls())
    try:
        subject = f"{MQTT_MSGS_PREFIX}{TOPICS.root}.v1.sensors.{sensor_id}.reading"
        await nc.jetstream().publish(subject, payload, stream=MQTT_MSGS_STREAM)
    finally:
        await nc.close()


async def _unmapped_left(stack: ClusterStack) -> int:
    nc = await connect(stack.cluster.nats_urls())
    try:
        info = await nc.jetstream().consumer_info(
            MQTT_MSGS_STREAM, unmapped_consumer_name(TOPICS.root)
        )
        return (info.num_pending or 0) + (info.num_ack_pending or 0)
    finally:
        await nc.close()


def test_the_stack_maps_added_sensors_and_dead_letters_unmapped_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with start_cluster_stack(tmp_path, workers=1, api_replicas=1, simulator=False) as stack:
        admin_log = tmp_path / "logs" / "cluster-admin.log"
        dead: list[dict[str, object]] = []
        lock = threading.Lock()

        def keep(delivery: Delivery) -> None:
            with lock:
                dead.append(json.loads(delivery.payload))

        admin = replace(stack.mqtt_front.endpoint("admin"), protocol=MQTT_V311)
        watcher = MqttConnection(admin, subscriptions=[(TOPICS.deadletter, 1)], on_delivery=keep)
        watcher.start(timeout_s=20)
        assert watcher.wait_subscribed(10)
        try:
            # An admin creates a login for zz-01 (no registry entry); an operator adds qh-77
            # through the API. The stack reloads NATS by itself.
            sensors_file = Credentials.sensor_file(stack.credentials_dir)
            logins = {**json.loads(sensors_file.read_text()), "zz-01": "zz-password-1"}
            sensors_file.write_text(json.dumps(logins))
            watcher.publish_and_wait(
                TOPICS.registry_override("qh-77"), NEW_SENSOR.to_json(), retain=True
            )

            def reloaded() -> bool:
                text = admin_log.read_text() if admin_log.exists() else ""
                return "new login for sensor qh-77" in text and text.count(": reloaded (") == 3

            wait_until(reloaded, 20, "the stack's reload of the three nodes")
            added = Credentials.load(stack.credentials_dir).sensors["qh-77"]
            _publish_as(stack, "qh-77", added, "qh-77")
            _publish_as(stack, "zz-01", "zz-password-1", "zz-01")
            with admin_influx(stack.influxd, "floodwatch") as influx:

                def stored(q: str, value: str) -> bool:
                    return bool(influx.query(q, {"v": value}))

                wait_until(
                    lambda: stored('SELECT level_cm FROM water_level WHERE "sensor" = $v', "qh-77"),
                    20,
                    "qh-77's reading in InfluxDB",
                )
                wait_until(
                    lambda: any(d.get("topic") == TOPICS.reading("zz-01") for d in dead),
                    20,
                    f"zz-01's dead letter (got {dead})",
                )
                letter = next(d for d in dead if d.get("topic") == TOPICS.reading("zz-01"))
                assert letter["code"] == "unknown_sensor", letter
                assert stored('SELECT reason FROM deadletter WHERE "code" = $v', "unknown_sensor")
                # What NATS did in the fault runs: a mapped sensor's publish stored under its
                # unmapped subject. The worker moves it to its partition: stored, no dead letter.
                lost_mapping = b'{"ts": 1796486000000, "level_cm": 4.25}'
                asyncio.run(_store_unmapped(stack, "qh-02", lost_mapping))
                wait_until(
                    lambda: stored(
                        'SELECT level_cm FROM water_level WHERE "sensor" = $v AND level_cm = 4.25',
                        "qh-02",
                    ),
                    20,
                    "qh-02's unmapped reading stored through its partition",
                )
                assert not any(d.get("topic") == TOPICS.reading("qh-02") for d in dead), dead
                wait_until(
                    lambda: asyncio.run(_unmapped_left(stack)) == 0, 10, "the acknowledgement"
                )
            # The operators' command on the same stack: nothing new to map, every node reloaded.
            stack_file = tmp_path / "stack.json"
            stack_file.write_text(
                json.dumps(
                    stack_document(
                        "cluster", tmp_path, stack_services(stack), cluster_credential_files(stack)
                    )
                )
            )
            assert cluster_main(["reload", "--stack", str(stack_file)]) == 0
            said = capsys.readouterr().out
            # The shipped sensors and qh-77; zz-01 has a user but no mapping.
            mapped = len(load_registry(SHIPPED_REGISTRY).sensors) + 1
            assert f"{mapped} sensors mapped over 8 partitions (unchanged)" in said, said
            assert said.count(": reloaded (") == 3, said
            # A sensor's password used with another sensor's client id is logged.
            sensors = stack.credentials.sensors
            _publish_as(stack, "d12-02", sensors["d12-02"], "d12-01")
            wait_until(
                lambda: "client id takeover: login 'd12-02'" in admin_log.read_text(),
                10,
                "the takeover's log line",
            )
        finally:
            watcher.stop()
