"""MQTT 3.1.1 (`--mqtt-protocol 3.1.1`, issue 14): the setting, MqttConnection's 3.1.1 path on
the real Mosquitto, and the services' and simulators' path through the clustered mode's real
NATS cluster behind HAProxy, whose MQTT listener refuses v5."""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from api.__main__ import build_parser as api_parser
from floodwatch.cluster import DEFAULT_PARTITIONS, LocalCluster, local_cluster, partition
from floodwatch.credentials import Credentials
from floodwatch.errors import BrokerError, SettingsError
from floodwatch.localservices import Service, local_credentials
from floodwatch.mqtt import Delivery, MqttConnection, Subscription, Will
from floodwatch.registry import SHIPPED_REGISTRY, load_registry
from floodwatch.retained import read_retained
from floodwatch.settings import (
    COMMON_OPTIONS,
    MQTT_V5,
    MQTT_V311,
    MqttEndpoint,
    add_options,
    command_parser,
    settings_from_args,
)
from floodwatch.topics import Topics
from ingest.__main__ import build_parser as ingest_parser
from notify.__main__ import build_parser as notify_parser
from simulators.__main__ import build_parser as simulators_parser
from tests.conftest import ROOT, admin_endpoint, wait_until

V311 = {"FLOODWATCH_MQTT_PROTOCOL": MQTT_V311}

# -- the setting (pure) ---------------------------------------------------------------------


def _endpoint(argv: list[str], environ: dict[str, str] | None = None) -> MqttEndpoint:
    """The MQTT endpoint a process would use, from its command line and environment."""
    parser = argparse.ArgumentParser()
    add_options(parser, COMMON_OPTIONS, {} if environ is None else environ)
    return settings_from_args(parser.parse_args(argv)).mqtt


def test_the_protocol_is_5_unless_the_flag_or_its_variable_says_3_1_1() -> None:
    """v5 by default; --mqtt-protocol or FLOODWATCH_MQTT_PROTOCOL picks 3.1.1, the flag wins."""
    assert _endpoint([]).protocol == MQTT_V5
    assert _endpoint(["--mqtt-protocol", "3.1.1"]).protocol == MQTT_V311
    assert _endpoint([], V311).protocol == MQTT_V311
    assert _endpoint(["--mqtt-protocol", "5"], V311).protocol == MQTT_V5
    # The login rides along: the protocol is one more field of the same endpoint.
    endpoint = _endpoint(["--mqtt-url", "mqtt://u:pw@h:1", "--mqtt-protocol", "3.1.1"])
    assert endpoint == MqttEndpoint("h", 1, "u", "pw", protocol=MQTT_V311)
    assert str(endpoint) == "mqtt://u@h:1 (MQTT 3.1.1)"
    assert str(replace(endpoint, protocol=MQTT_V5)) == "mqtt://u@h:1"


@pytest.mark.parametrize("bad", ["4", "3", "311", "v5", "5.0", ""])
def test_another_protocol_is_refused_naming_the_flag_and_its_variable(bad: str) -> None:
    """Each wrong value is one sentence naming the flag, the variable and the two values."""
    with pytest.raises(SettingsError) as info:
        _endpoint(["--mqtt-protocol", bad])
    message = str(info.value)
    assert "--mqtt-protocol 3.1.1" in message and "FLOODWATCH_MQTT_PROTOCOL" in message
    assert "\n" not in message
    with pytest.raises(SettingsError, match="--mqtt-protocol"):
        MqttEndpoint("h", 1, protocol=bad)


def test_every_command_that_talks_mqtt_takes_the_option() -> None:
    """ingest (and `ingest ack`), the API, the notifier, every publishing simulator command and
    the local stack list --mqtt-protocol in their --help."""
    from floodwatch.stack import build_parser as stack_parser
    from ingest.__main__ import ACK_DESCRIPTION, ACK_OPTIONS

    sims = simulators_parser()
    subcommands = next(
        a for a in sims._actions if isinstance(a, argparse._SubParsersAction)
    ).choices
    helps = {
        "ingest": ingest_parser().format_help(),
        "ingest ack": command_parser("ack", ACK_DESCRIPTION, ACK_OPTIONS).format_help(),
        "api": api_parser().format_help(),
        "notify": notify_parser().format_help(),
        "stack": stack_parser().format_help(),
    } | {
        f"simulators {name}": subcommands[name].format_help()
        for name in ("run", "replay", "load", "live")
    }
    assert {name: "--mqtt-protocol" in text for name, text in helps.items()} == dict.fromkeys(
        helps, True
    )
    # truth, plot and list publish nothing.
    assert "--mqtt-protocol" not in subcommands["truth"].format_help()


# -- MqttConnection's 3.1.1 path on the real Mosquitto ----------------------------------------


def _v311(endpoint: MqttEndpoint) -> MqttEndpoint:
    return replace(endpoint, protocol=MQTT_V311)


def test_a_311_persistent_session_keeps_what_came_while_offline_and_drops_retained_replays(
    broker: Service, unique: str
) -> None:
    """clean_session off keeps the subscription and queues QoS 1 messages while the client is
    away; manual acknowledgement gets unacknowledged ones redelivered; the retained message the
    broker replays at every (re)subscription is dropped and counted, never delivered."""
    admin = admin_endpoint(broker)
    publisher = MqttConnection(admin)
    publisher.start()
    got: queue.Queue[Delivery] = queue.Queue()

    def session() -> MqttConnection:
        conn = MqttConnection(
            _v311(admin),
            f"{unique}-session",
            subscriptions=[Subscription(f"{unique}/#", 1, replay_retained=False)],
            on_delivery=got.put,
            session_expiry_s=3600,
            manual_ack=True,
        )
        conn.start()
        assert conn.wait_subscribed(5), "no SUBACK"
        return conn

    try:
        assert publisher.publish_and_wait(f"{unique}/state", b"old", retain=True)
        first = session()
        wait_until(lambda: first.retained_dropped == 1, 5, "the retained replay dropped")
        assert publisher.publish_and_wait(f"{unique}/live", b"live")
        live = got.get(timeout=5)
        assert (live.topic, live.payload, live.retained) == (f"{unique}/live", b"live", False)
        assert first.ack(live)
        first.stop()

        for n in range(3):  # while no one is connected
            assert publisher.publish_and_wait(f"{unique}/queued", f"q{n}".encode())
        second = session()
        queued = [got.get(timeout=5) for _ in range(3)]
        assert [d.payload for d in queued] == [b"q0", b"q1", b"q2"]
        wait_until(lambda: second.retained_dropped == 1, 5, "the replay at resubscription")
        assert second.ack(queued[0])  # q1 and q2 are left unacknowledged: redelivered
        second.stop()

        third = session()
        again = [got.get(timeout=5) for _ in range(2)]
        assert [d.payload for d in again] == [b"q1", b"q2"]
        assert third.ack_many(again) == 2
        wait_until(lambda: third.retained_dropped == 1, 5, "the third replay dropped")
        third.stop()
        assert got.empty(), [d.topic for d in got.queue]
    finally:
        publisher.publish_and_wait(f"{unique}/state", b"", retain=True)
        publisher.stop()


def test_a_311_connection_s_will_is_published_when_its_link_drops(
    broker: Service, unique: str
) -> None:
    """The broker publishes a 3.1.1 client's will when its connection drops without a
    DISCONNECT (a simulated sensor's `offline` status)."""
    admin = admin_endpoint(broker)
    got: queue.Queue[Delivery] = queue.Queue()
    watcher = MqttConnection(admin, subscriptions=[(f"{unique}/status", 1)], on_delivery=got.put)
    watcher.start()
    assert watcher.wait_subscribed(5)
    device = MqttConnection(
        _v311(admin), f"{unique}-device", will=Will(f"{unique}/status", b"offline", retain=False)
    )
    device.start()
    try:
        sock = device._client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)  # the link drops: no DISCONNECT reaches the broker
        will = got.get(timeout=10)
        assert (will.topic, will.payload) == (f"{unique}/status", b"offline")
    finally:
        device.stop()
        watcher.stop()


# -- the clustered mode: NATS behind HAProxy, 3.1.1 only --------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    workdir = tmp_path_factory.mktemp("cluster311")
    registry = load_registry(SHIPPED_REGISTRY)
    with local_cluster(workdir, local_credentials(workdir), registry) as running_cluster:
        yield running_cluster


def _front(cluster: LocalCluster, user: str = "admin") -> MqttEndpoint:
    return _v311(cluster.front.endpoint(user))


@pytest.mark.services  # a real NATS cluster and HAProxy
def test_a_v5_connect_to_nats_says_to_pass_mqtt_protocol_3_1_1(cluster: LocalCluster) -> None:
    """NATS answers a v5 CONNECT with "Unsupported protocol version": the error says which
    flag to pass, at once rather than after the connect timeout."""
    for user, client_id in (("admin", ""), ("d12-01", "d12-01")):
        conn = MqttConnection(cluster.front.endpoint(user), client_id)
        with pytest.raises(BrokerError, match=r"pass --mqtt-protocol 3\.1\.1 \(or FLOODWATCH_"):
            conn.start(timeout_s=20)


@pytest.mark.services  # a real NATS cluster and HAProxy
def test_a_simulator_publishes_readings_over_311_through_the_front_door(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """`simulators replay --mqtt-protocol 3.1.1`, each sensor logged in as itself through
    HAProxy: every reading reaches a 3.1.1 subscriber on its ward's partition topic (the NATS
    account maps the contract's topic there), and the run says refusals cannot be seen."""
    root = "t" + uuid.uuid4().hex[:10]
    got: queue.Queue[Delivery] = queue.Queue()
    watcher = MqttConnection(
        _front(cluster),
        f"{root}-watch",
        subscriptions=[(f"{root}/v1/part/+/+/+/reading", 1)],
        on_delivery=got.put,
    )
    watcher.start()
    assert watcher.wait_subscribed(10)
    sensors = ("d12-01", "d12-02", "qh-01")
    now_ms = int(time.time() * 1000)
    rows = [(sid, now_ms - 60_000 + 1000 * n, 10 + n) for n in range(2) for sid in sensors]
    recording = tmp_path / "recording.csv"
    recording.write_text(
        "sensor,ts,level_cm\n" + "".join(f"{sid},{ts},{cm}\n" for sid, ts, cm in rows)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOODWATCH_")} | {
        "FLOODWATCH_MQTT_URL": f"mqtt://127.0.0.1:{cluster.front.port}",
        "FLOODWATCH_MQTT_PROTOCOL": MQTT_V311,
        "FLOODWATCH_SENSOR_CREDENTIALS": str(
            Credentials.sensor_file(cluster.front.workdir / "credentials")
        ),
        "FLOODWATCH_TOPIC_ROOT": root,
    }
    try:
        run = subprocess.run(
            [sys.executable, "-m", "simulators", "replay", str(recording), "--quiet"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert "refused a publish" in run.stderr  # over 3.1.1 it cannot know
        received = [got.get(timeout=10) for _ in rows]
    finally:
        watcher.stop()
    part = partition("an-khanh", DEFAULT_PARTITIONS)
    assert {d.topic for d in received} == {
        f"{root}/v1/part/{part}/an-khanh/{sid}/reading" for sid in sensors
    }
    # The sensor is named by the topic; the payload carries the level.
    readings = {(d.topic.split("/")[-2], json.loads(d.payload)["level_cm"]) for d in received}
    assert readings == {(sid, cm) for sid, _, cm in rows}


@pytest.mark.services  # a real NATS cluster and HAProxy
def test_a_retained_message_published_over_311_is_read_back_over_311(
    cluster: LocalCluster,
) -> None:
    """An operator's retained record published by a 3.1.1 MqttConnection is what
    floodwatch.retained reads over 3.1.1, with a clean session and through a persistent
    session of its own client id (as ingest reads it)."""
    topics = Topics("t" + uuid.uuid4().hex[:10])
    topic = topics.registry_override("d12-01")
    publisher = MqttConnection(_front(cluster), "floodwatch-operator-test")
    publisher.start()
    try:
        assert publisher.publish_and_wait(topic, b'{"alarm_cm": 30}', retain=True)
        wanted = [topics.registry_override("+")]
        assert read_retained(_front(cluster), wanted) == {topic: b'{"alarm_cm": 30}'}
        held = read_retained(
            _front(cluster), wanted, client_id="floodwatch-ingest-1", session_expiry_s=3600
        )
        assert held == {topic: b'{"alarm_cm": 30}'}
    finally:
        publisher.publish_and_wait(topic, b"", retain=True)
        publisher.stop()
