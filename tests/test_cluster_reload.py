"""Sensors added at runtime in the clustered mode (docs/CLUSTER.md, "Sensors added at runtime"):
the accounts regenerated from the registry in force and every node reloaded, keeping sessions
and JetStream data; publishes no mapping covers kept as dead letters; client-id takeovers seen
in the server's connect events. A real 3-node NATS cluster behind HAProxy."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest
from nats.aio.msg import Msg
from paho.mqtt.enums import CallbackAPIVersion

from floodwatch.cluster import (
    ACCOUNTS_FILE,
    MQTT_MSGS_PREFIX,
    MQTT_MSGS_STREAM,
    ClusterError,
    LocalCluster,
    PartitionPull,
    accounts_config,
    accounts_partitions,
    acknowledge,
    connect,
    ensure_partition_consumers,
    local_cluster,
    partition_consumer_name,
    remapped_store_subject,
    sensor_partition,
    system_password,
    unmapped_consumer_name,
)
from floodwatch.clusteradmin import (
    NodeProcess,
    Takeover,
    TakeoverCount,
    as_sys,
    judge_connect,
    read_registry_in_force,
    regenerate_accounts,
    reload_nodes,
    reload_over_nats,
    sensor_logins_of,
    watch_client_ids,
)
from floodwatch.credentials import _ENV_PASSWORDS, Credentials
from floodwatch.localservices import free_port, local_credentials
from floodwatch.metrics import render
from floodwatch.mqtt import Delivery
from floodwatch.operations import Override, apply_overrides
from floodwatch.registry import SHIPPED_REGISTRY, load_registry, ward_key
from floodwatch.topics import Topics
from ingest.cluster import mqtt_topic
from ingest.pipeline import judge
from tests.conftest import ROOT, wait_until

PARTITIONS = 8
REGISTRY = load_registry(SHIPPED_REGISTRY)
NEW_SENSOR = Override(
    "qh-77",
    {"name": "Quốc Hương 77", "street": "Quốc Hương", "ward": "An Khánh", "kind": "street"},
    (106.735, 10.8056),
)
READING = orjson.dumps({"ts": "2026-10-01T00:00:00Z", "level_cm": 12.5})

# -- pure -------------------------------------------------------------------------------------


def test_a_login_without_a_registry_sensor_keeps_its_user_but_gets_no_mapping() -> None:
    creds = Credentials.generate([*REGISTRY.sensors, "zz-01"])
    conf = accounts_config(creds, REGISTRY, PARTITIONS, "x")
    line = next(x for x in conf.splitlines() if 'user: "zz-01"' in x)
    assert '"*.v1.sensors.zz-01.reading"' in line and ".part." not in line
    assert "zz-01" not in conf.split("mappings:")[1].split("}")[0]
    assert '"*.v1.sensors.d12-01.*"' in conf.split("mappings:")[1]
    assert accounts_partitions(conf) == PARTITIONS


def test_unmapped_publishes_are_dead_letters_with_the_reason_that_fits() -> None:
    """What the worker hands over from the unmapped consumer (after moving the registry's
    sensors to their partitions) is dead-lettered by the pipeline with the decoder's reason."""
    topics = Topics("fw")
    in_force, _ = apply_overrides(REGISTRY, {"qh-02": Override("qh-02", retired=True)})

    def rejection(sensor_id: str, channel: str) -> str:
        subject = f"{MQTT_MSGS_PREFIX}fw.v1.sensors.{sensor_id}.{channel}"
        delivery = Delivery(mqtt_topic(topics, subject), READING, False, 1, 0, 1, 0)
        batch = judge(topics, in_force, [delivery])
        assert not batch.readings and not batch.statuses
        (rejected,) = batch.rejections
        return f"{rejected.code}: {rejected.topic}"

    assert rejection("zz-01", "reading") == "unknown_sensor: fw/v1/sensors/zz-01/reading"
    assert rejection("zz-01", "status") == "unknown_sensor: fw/v1/sensors/zz-01/status"
    assert rejection("qh-02", "reading") == "retired_sensor: fw/v1/sensors/qh-02/reading"
    assert rejection("zz-01", "other").startswith("bad_topic: $MQTT.msgs.fw.v1.sensors.zz-01")
    # A sensor the registry knows by the time it is decoded is stored as its reading.
    assert mqtt_topic(topics, f"{MQTT_MSGS_PREFIX}fw.v1.sensors.d12-01.reading") == (
        "fw/v1/sensors/d12-01/reading"
    )


def test_compose_regenerates_the_accounts_from_the_environment_s_service_logins(
    tmp_path: Path,
) -> None:
    """compose keeps only sensors.json in the credentials volume: the service logins come from
    the environment, and a sensor added at runtime gets its login in sensors.json."""
    sensors = {sid: f"pw-{sid}" for sid in REGISTRY.sensors}
    Credentials.sensor_file(tmp_path).write_text(json.dumps(sensors))
    services = {user: f"secret-{user}" for user in ("admin", "ingest", "api", "notify")}
    in_force, _ = apply_overrides(REGISTRY, {"qh-77": NEW_SENSOR})
    accounts = tmp_path / ACCOUNTS_FILE
    update = regenerate_accounts(accounts, tmp_path, in_force, PARTITIONS, services=services)
    assert update.changed and update.new_logins == ["qh-77"]
    written = json.loads(Credentials.sensor_file(tmp_path).read_text())
    assert written == {**sensors, "qh-77": written["qh-77"]}
    text = accounts.read_text()
    assert all(f'password: "secret-{user}"' in text for user in services), text[:400]
    assert f'password: "{written["qh-77"]}"' in text
    again = regenerate_accounts(accounts, tmp_path, in_force, services=services)
    assert not again.changed and not again.new_logins


def _event(user: str, client_id: str, client_type: str = "mqtt") -> dict[str, object]:
    return {
        "server": {"name": "nats-2"},
        "client": {"user": user, "client_id": client_id, "client_type": client_type},
    }


def test_judge_connect_flags_client_ids_that_are_not_their_logins() -> None:
    sensors = {"d12-01", "d12-02"}
    takeover = judge_connect(_event("d12-02", "d12-01"), sensors)
    assert takeover is not None and (takeover.login, takeover.client_id) == ("d12-02", "d12-01")
    assert "d12-02" in takeover.message() and "nats-2" in takeover.message()
    assert judge_connect(_event("d12-01", "d12-01"), sensors) is None
    assert judge_connect(_event("ingest", "floodwatch-ingest-3"), sensors) is None
    assert judge_connect(_event("ingest", "d12-01"), sensors) is not None
    assert judge_connect(_event("api", "floodwatch-api-2"), sensors) is None
    assert judge_connect(_event("admin", "anything"), sensors) is None
    assert judge_connect(_event("d12-02", "d12-01", client_type="nats"), sensors) is None
    assert judge_connect({"client": "junk"}, sensors) is None


# -- a real cluster ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cluster-reload")


@pytest.fixture(scope="module")
def cluster(workdir: Path) -> Iterator[LocalCluster]:
    with local_cluster(workdir, local_credentials(workdir), REGISTRY) as running_cluster:
        yield running_cluster


def _nodes(cluster: LocalCluster) -> list[NodeProcess]:
    return [NodeProcess(node.name, svc.pid or 0, node.monitor_port) for svc, node in cluster.nodes]


class Client:
    """A paho MQTT 3.1.1 client through the front door, persistent session; records
    disconnections and what it receives."""

    def __init__(self, cluster: LocalCluster, user: str, password: str, client_id: str) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        self.client.username_pw_set(user, password)
        self.disconnects = 0
        self.refused: list[str] = []
        self.received: list[tuple[str, bytes]] = []
        self.connected = threading.Event()

        def on_connect(*args: object) -> None:
            if getattr(args[3], "is_failure", False):
                self.refused.append(str(args[3]))
            self.connected.set()

        def on_disconnect(*_: object) -> None:
            self.disconnects += 1

        self.client.on_connect = on_connect
        self.client.on_disconnect = on_disconnect
        self.client.on_message = lambda _c, _u, m: self.received.append((m.topic, bytes(m.payload)))
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.connect("127.0.0.1", cluster.front.port)
        self.client.loop_start()
        assert self.connected.wait(10), "no CONNACK through HAProxy"

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def _fetch(cluster: LocalCluster, consumer: str, expected: int) -> list[Msg]:
    """The consumer's next `expected` messages, acknowledged (fails after 15 s)."""
    nc = await connect(cluster.nats_urls())
    try:
        pull = PartitionPull(nc, consumer)
        got: list[Msg] = []
        deadline = time.monotonic() + 15
        while len(got) < expected and time.monotonic() < deadline:
            got += await pull.fetch(expected - len(got), expires_s=1.0)
        await acknowledge(got)
        assert len(got) == expected, f"{len(got)} of {expected} messages on {consumer}"
        return got
    finally:
        await nc.close()


async def _forget(cluster: LocalCluster, root: str) -> None:
    nc = await connect(cluster.nats_urls())
    try:
        js = nc.jetstream(timeout=10)
        for consumer in await js.consumers_info(MQTT_MSGS_STREAM):
            if consumer.name.startswith(f"ingest_{root}_"):
                await js.delete_consumer(MQTT_MSGS_STREAM, consumer.name)
    finally:
        await nc.close()


@pytest.fixture
def root(cluster: LocalCluster) -> Iterator[str]:
    name = "t" + uuid.uuid4().hex[:10]
    asyncio.run(ensure_partition_consumers(cluster.nats_urls(), name, PARTITIONS))
    yield name
    asyncio.run(_forget(cluster, name))


@pytest.mark.services
def test_a_sensor_added_at_runtime_is_mapped_by_a_reload_that_keeps_sessions_and_data(
    cluster: LocalCluster, workdir: Path, root: str
) -> None:
    creds_dir = workdir / "credentials"
    admin = cluster.credentials.mqtt["admin"]
    topics = Topics(root)
    part = sensor_partition(REGISTRY.sensors["d12-01"], PARTITIONS)
    # A persistent subscriber (its session lives in JetStream) and a reading left pending in
    # its partition's consumer: both must outlive the reload.
    watcher = Client(cluster, "admin", admin, f"reload-sub-{uuid.uuid4().hex[:6]}")
    watcher.client.subscribe(f"{root}/v1/part/+/+/+/reading", qos=1)
    assert watcher.subscribed.wait(10), "no SUBACK"
    sensor = Client(cluster, "d12-01", cluster.credentials.sensors["d12-01"], "d12-01")
    sensor.publish(topics.reading("d12-01"), READING)
    # The operator adds a sensor through the API: a retained registry override.
    operator = Client(cluster, "admin", admin, f"reload-op-{uuid.uuid4().hex[:6]}")
    operator.publish(topics.registry_override("qh-77"), NEW_SENSOR.to_json(), retain=True)
    try:
        in_force = read_registry_in_force(
            f"mqtt://127.0.0.1:{cluster.front.port}", admin, root, SHIPPED_REGISTRY
        )
        assert "qh-77" in in_force.sensors
        update = regenerate_accounts(workdir / ACCOUNTS_FILE, creds_dir, in_force)
        assert update.new_logins == ["qh-77"] and update.changed
        assert update.partitions == PARTITIONS
        lines = reload_nodes(_nodes(cluster))
        assert [line.split(" ")[0] for line in lines] == ["nats-1", "nats-2", "nats-3"]
        assert all("reloaded" in line for line in lines), lines
        # Nothing regenerated twice: the same registry writes the same file.
        assert not regenerate_accounts(workdir / ACCOUNTS_FILE, creds_dir, in_force).changed

        password = Credentials.load(creds_dir).sensors["qh-77"]
        added = Client(cluster, "qh-77", password, "qh-77")
        try:
            assert not added.refused, added.refused
            added.publish(topics.reading("qh-77"), READING)
        finally:
            added.close()
        # Both readings in the ward's partition, the one from before the reload first.
        got = asyncio.run(_fetch(cluster, partition_consumer_name(root, part), 2))
        assert [m.subject.split(".")[-2] for m in got] == ["d12-01", "qh-77"]
        assert got[1].subject == f"{MQTT_MSGS_PREFIX}{root}.v1.part.{part}.an-khanh.qh-77.reading"
        wait_until(lambda: len(watcher.received) == 2, 10, f"two readings: {watcher.received}")
        assert watcher.disconnects == 0 and sensor.disconnects == 0
    finally:
        operator.publish(topics.registry_override("qh-77"), b"", retain=True)
        for client in (watcher, sensor, operator):
            client.close()


@pytest.mark.services
def test_a_node_that_cannot_be_reloaded_is_named(cluster: LocalCluster, workdir: Path) -> None:
    _, node = cluster.nodes[0]
    gone = NodeProcess("nats-9", 2**22 + 7, node.monitor_port)  # above Linux's default pid_max
    with pytest.raises(ClusterError, match=r"nats-9 \(pid \d+\): not signalled") as refused:
        reload_nodes([gone])
    assert "not reloaded: nats-9" in str(refused.value)
    with pytest.raises(ClusterError, match="nats-0: not running"):
        reload_nodes([NodeProcess("nats-0", 0, node.monitor_port)])
    # Through the system account: a node that does not answer is counted.
    urls = as_sys(",".join(cluster.nats_urls()), system_password(workdir))
    with pytest.raises(ClusterError, match="not reloaded: 1 of 4 nodes did not answer"):
        asyncio.run(reload_over_nats(urls, 4, wait_s=0.5))


@pytest.mark.services
def test_a_login_the_mappings_do_not_cover_is_kept_for_the_dead_letters(
    cluster: LocalCluster, workdir: Path, root: str
) -> None:
    """An admin made a login for zz-01 (not in the registry): once the nodes are reloaded
    through the system account (compose's way: no PIDs), it may connect, and its readings wait
    in the unmapped consumer, which the pipeline dead-letters, instead of vanishing."""
    creds_dir = workdir / "credentials"
    creds = Credentials.load(creds_dir)
    sensors = {**creds.sensors, "zz-01": "zz-password-1"}
    Credentials.sensor_file(creds_dir).write_text(json.dumps(sensors))
    regenerate_accounts(workdir / ACCOUNTS_FILE, creds_dir, REGISTRY)
    urls = as_sys(",".join(cluster.nats_urls()), system_password(workdir))
    lines = asyncio.run(reload_over_nats(urls, len(urls)))
    assert lines == ["nats-1: reloaded", "nats-2: reloaded", "nats-3: reloaded"]
    stray = Client(cluster, "zz-01", "zz-password-1", "zz-01")
    try:
        assert not stray.refused, stray.refused
        stray.publish(Topics(root).reading("zz-01"), READING)
    finally:
        stray.close()
    (msg,) = asyncio.run(_fetch(cluster, unmapped_consumer_name(root), 1))
    assert msg.subject == f"{MQTT_MSGS_PREFIX}{root}.v1.sensors.zz-01.reading"
    delivery = Delivery(mqtt_topic(Topics(root), msg.subject), msg.data, False, 1, 0, 1, 0)
    (rejection,) = judge(Topics(root), REGISTRY, [delivery]).rejections
    assert rejection.code == "unknown_sensor" and rejection.payload == READING


@pytest.mark.services
def test_the_watcher_reports_a_sensor_taking_another_sensors_client_id(
    cluster: LocalCluster, workdir: Path
) -> None:
    found: list[Takeover] = []
    count = TakeoverCount()
    urls = [
        f"nats://sys:{system_password(workdir)}@127.0.0.1:{node.client_port}"
        for _, node in cluster.nodes
    ]

    def report(takeover: Takeover) -> None:
        found.append(takeover)
        count.report(takeover)

    stop = asyncio.Event()
    subscribed = threading.Event()
    loop = asyncio.new_event_loop()
    logins = sensor_logins_of(workdir / "credentials")
    watching = threading.Thread(
        target=loop.run_until_complete,
        args=(watch_client_ids(urls, logins, report, stop, subscribed.set),),
        daemon=True,
    )
    watching.start()
    sensors = cluster.credentials.sensors
    try:
        assert subscribed.wait(10), "the watcher did not subscribe to the connect events"
        honest = Client(cluster, "d12-03", sensors["d12-03"], "d12-03")
        honest.close()
        intruder = Client(cluster, "d12-02", sensors["d12-02"], "d12-01")
        intruder.close()
        wait_until(lambda: bool(found), 10, "the takeover's report")
        assert [(t.login, t.client_id) for t in found] == [("d12-02", "d12-01")]
        # Prometheus sees it too (`python -m floodwatch.cluster admin --metrics-port`).
        assert "floodwatch_cluster_client_id_takeovers_total 1.0" in render(count.metrics())
    finally:
        loop.call_soon_threadsafe(stop.set)
        watching.join(10)
        loop.close()


def test_a_known_sensors_unmapped_publish_goes_back_to_its_partition() -> None:
    """NATS stored some publishes of mapped sensors without the mapping (RELIABILITY.md); the
    worker holding the unmapped consumer moves a known sensor's to its partition's subject."""
    in_force, _ = apply_overrides(REGISTRY, {"qh-77": NEW_SENSOR})
    for sensor_id in ("qh-02", "qh-77"):
        sensor = in_force.sensors[sensor_id]
        part = sensor_partition(sensor, PARTITIONS)
        subject = f"{MQTT_MSGS_PREFIX}fw.v1.sensors.{sensor_id}.reading"
        assert remapped_store_subject("fw", in_force, PARTITIONS, subject) == (
            f"{MQTT_MSGS_PREFIX}fw.v1.part.{part}.{ward_key(sensor)}.{sensor_id}.reading"
        )
    for unknown in ("zz-01.reading", "qh-02.other", "qh-02"):
        subject = f"{MQTT_MSGS_PREFIX}fw.v1.sensors.{unknown}"
        assert remapped_store_subject("fw", in_force, PARTITIONS, subject) is None
    assert remapped_store_subject("fw", in_force, PARTITIONS, "fw.v1.sensors.qh-02.reading") is None


@pytest.mark.services
def test_the_admin_process_maps_a_sensor_an_operator_adds_and_serves_the_takeover_count(
    cluster: LocalCluster, workdir: Path, root: str
) -> None:
    """`python -m floodwatch.cluster admin` as compose runs it (service logins from the
    environment, nodes reloaded through the system account): an operator adds a sensor, and
    its login works once the admin says the nodes reloaded; /metrics counts takeovers."""
    creds_dir = workdir / "credentials"
    metrics_port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONUNBUFFERED": "1",
        "FLOODWATCH_NATS_URL": ",".join(f"127.0.0.1:{n.client_port}" for _, n in cluster.nodes),
        "FLOODWATCH_MQTT_URL": cluster.credentials.mqtt_url(
            "admin", "127.0.0.1", cluster.front.port
        ),
        "FLOODWATCH_TOPIC_ROOT": root,
        "FLOODWATCH_METRICS_PORT": str(metrics_port),
        **{var: cluster.credentials.mqtt[user] for user, var in _ENV_PASSWORDS.items()},
    }
    log = workdir / f"admin-{root}.log"
    args = ["--accounts", str(workdir / ACCOUNTS_FILE), "--credentials", str(creds_dir)]
    with log.open("wb") as out:
        admin = subprocess.Popen(
            [sys.executable, "-m", "floodwatch.cluster", "admin", *args],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    operator = Client(cluster, "admin", cluster.credentials.mqtt["admin"], f"op-{root}")
    added = dataclasses.replace(NEW_SENSOR, sensor_id="qh-78")
    try:
        wait_until(lambda: b"admin: following" in log.read_bytes(), 30, "the admin to start")
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert "floodwatch_cluster_client_id_takeovers_total 0.0" in scraped
        operator.publish(Topics(root).registry_override("qh-78"), added.to_json(), retain=True)
        wait_until(lambda: log.read_bytes().count(b": reloaded") == 3, 30, "three reloads")
        password = Credentials.load(creds_dir).sensors["qh-78"]
        sensor = Client(cluster, "qh-78", password, "qh-78")
        sensor.close()
        assert not sensor.refused, sensor.refused
    finally:
        operator.publish(Topics(root).registry_override("qh-78"), b"", retain=True)
        operator.close()
        admin.send_signal(signal.SIGTERM)
        assert admin.wait(15) == 0, log.read_text()
