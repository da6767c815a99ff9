"""Operators' tools for a running NATS cluster (docs/CLUSTER.md, "Sensors added at runtime"):

    python -m floodwatch.cluster reload    regenerate nats-accounts.conf from the credentials
                                           and the registry in force, and reload every node
    python -m floodwatch.cluster watch     log every MQTT connection whose client id is not
                                           its login's (a client-id takeover)

A sensor added through the API (a retained registry override, CONTRACT section 6) has no NATS
user and no partition mapping until the accounts are regenerated and every node reloaded; until
then it cannot log in, or (a login without a mapping) the worker holding the unmapped consumer
moves each of its readings to its partition. `reload` gives every sensor of the registry in
force a login if it has none (kept in the credentials' sensors.json, as
`Credentials.load_or_generate` does at start), writes the accounts file atomically, and signals
each node (`nats-server --signal reload=PID`); a reload keeps MQTT sessions, connections and
JetStream data (tested). It then asks each node's /varz whether the configuration was loaded
again, and says so per node.

NATS cannot bind an MQTT client id to a login (docs/CLUSTER.md, Permissions): a sensor with a
valid password can take another sensor's client id and so disconnect it. `watch` follows the
server's connect events (`$SYS.ACCOUNT.FLOODWATCH.CONNECT`, as the `sys` user: they carry the
login and the MQTT client id) and logs a warning, `client id takeover: ...`, for every
connection whose client id is not the one its login must use (a sensor: its own id; a service:
check_client_id's convention); the clustered stack runs it in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from floodwatch.cluster import (
    ACCOUNT,
    ACCOUNTS_FILE,
    DEFAULT_PARTITIONS,
    ClusterError,
    LocalCluster,
    accounts_config,
    accounts_partitions,
    connect,
    nats_binary,
    system_password,
    write_accounts,
)
from floodwatch.credentials import (
    _ENV_PASSWORDS,
    Credentials,
    bound_client_id,
    check_client_id,
    load_sensor_credentials,
    new_password,
    save_sensor_logins,
)
from floodwatch.errors import FloodwatchError, SettingsError
from floodwatch.metrics import Metric, serve
from floodwatch.mqtt import Delivery, MqttConnection
from floodwatch.operations import LiveRegistry
from floodwatch.registry import SHIPPED_REGISTRY, Registry, load_registry
from floodwatch.retained import registry_in_force
from floodwatch.settings import MQTT_V311, MqttEndpoint, parse_mqtt_url
from floodwatch.topics import Topics

# How long a follower waits for the broker to grant its subscription before going on.
SUBSCRIBE_TIMEOUT_S = 10.0
RELOAD_WAIT_S = 5.0
CONNECT_EVENTS = f"$SYS.ACCOUNT.{ACCOUNT}.CONNECT"
SERVER_PING = "$SYS.REQ.SERVER.PING"
SERVER_RELOAD = "$SYS.REQ.SERVER.{}.RELOAD"

log = logging.getLogger("floodwatch.cluster")


@dataclass(frozen=True, slots=True)
class NodeProcess:
    """A running NATS node as stack.json names it: its PID and its monitoring port."""

    name: str
    pid: int
    monitor_port: int


@dataclass(frozen=True, slots=True)
class AccountsUpdate:
    changed: bool  # the accounts file says something new
    new_logins: list[str]  # sensors of the registry that got a password now
    mapped: int  # sensors with a partition mapping
    partitions: int


def regenerate_accounts(
    accounts: Path,
    credentials_dir: Path,
    registry: Registry,
    partitions: int | None = None,
    services: Mapping[str, str] | None = None,
) -> AccountsUpdate:
    """Write `accounts` for `registry` (the registry in force): a login for each of its sensors
    that has none, a mapping for each, with the partition count the file was made with (the
    running consumers use it) unless `partitions` is given. The service logins' passwords are
    `services` (compose: from the environment, only sensors.json in `credentials_dir`), or
    the directory's credentials.json (the local stack)."""
    if partitions is None:
        old = accounts.read_text() if accounts.exists() else ""
        found = accounts_partitions(old)
        if found is None:
            raise ClusterError(
                f"{accounts} does not say its partition count (made before this version?); "
                "pass --partitions with the count the cluster runs with."
            )
        partitions = found
    if services is None:
        before = set(Credentials.load(credentials_dir).sensors)
        creds = Credentials.load_or_generate(credentials_dir, registry.sensors)
    else:
        sensors = load_sensor_credentials(Credentials.sensor_file(credentials_dir))
        before = set(sensors)
        if not set(registry.sensors) <= before:
            sensors.update({sid: new_password() for sid in registry.sensors if sid not in before})
            save_sensor_logins(credentials_dir, sensors)
        creds = Credentials(dict(services), {}, sensors)
    text = accounts_config(creds, registry, partitions, system_password(accounts.parent))
    changed = write_accounts(accounts, text)
    return AccountsUpdate(
        changed,
        sorted(set(creds.sensors) - before),
        sum(1 for sid in creds.sensors if registry.get(sid) is not None),
        partitions,
    )


def _config_load_time(node: NodeProcess) -> str | None:
    try:
        answer = httpx.get(f"http://127.0.0.1:{node.monitor_port}/varz", timeout=2)
        return str(answer.json().get("config_load_time"))
    except (httpx.HTTPError, ValueError):
        return None


def reload_nodes(nodes: Iterable[NodeProcess], wait_s: float = RELOAD_WAIT_S) -> list[str]:
    """Signal each node to reload its configuration and wait until its /varz shows a new
    configuration load time; one sentence per node. Raises ClusterError naming the nodes that
    did not reload (a bad file is refused by the node, which keeps the old one: see its log)."""
    lines: list[str] = []
    failed: list[str] = []
    for node in nodes:
        if node.pid <= 0:  # never signal 0 or -1: the whole process group or every process
            failed.append(node.name)
            lines.append(f"{node.name}: not running, not signalled")
            continue
        before = _config_load_time(node)
        done = subprocess.run(
            [nats_binary(), "--signal", f"reload={node.pid}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            failed.append(node.name)
            lines.append(
                f"{node.name} (pid {node.pid}): not signalled: "
                f"{(done.stderr or done.stdout).strip()}"
            )
            continue
        deadline = time.monotonic() + wait_s
        after = _config_load_time(node)
        while (after is None or after == before) and time.monotonic() < deadline:
            time.sleep(0.05)
            after = _config_load_time(node)
        if after is not None and after != before:
            lines.append(f"{node.name} (pid {node.pid}): reloaded (configuration of {after})")
        else:
            failed.append(node.name)
            lines.append(
                f"{node.name} (pid {node.pid}): signalled, but it did not load the file again "
                f"within {wait_s:g} s; see its log (a refused file leaves the old one in force)"
            )
    if failed:
        raise ClusterError(
            "\n".join(lines) + f"\nnot reloaded: {', '.join(failed)}; fix and run reload again"
        )
    return lines


async def _servers(nc: NatsClient, expected: int, wait_s: float) -> dict[str, str]:
    """Every node's server id -> name, from the system account's PING (all nodes answer)."""
    found: dict[str, str] = {}
    complete = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        with contextlib.suppress(ValueError, AttributeError, KeyError, TypeError):
            server = json.loads(msg.data)["server"]
            found[str(server["id"])] = str(server.get("name") or server["id"])
        if len(found) >= expected:
            complete.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_reply)
    await nc.publish(SERVER_PING, b"", reply=inbox)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(complete.wait(), wait_s)
    await sub.unsubscribe()
    return found


async def reload_over_nats(
    sys_urls: Sequence[str], nodes: int, wait_s: float = RELOAD_WAIT_S
) -> list[str]:
    """Reload every node's configuration through the system account (`sys_urls` log in as
    `sys`): the request each server answers, `$SYS.REQ.SERVER.ID.RELOAD`, for nodes this
    process cannot signal (compose: each node in a container of its own). One sentence per
    node; ClusterError naming the nodes that refused the file or did not answer."""
    nc = await connect(sys_urls)
    try:
        servers = await _servers(nc, nodes, wait_s)
        lines: list[str] = []
        failed: list[str] = []
        for server_id, name in sorted(servers.items(), key=lambda item: item[1]):
            try:
                answer = await nc.request(SERVER_RELOAD.format(server_id), b"", timeout=wait_s)
                error = json.loads(answer.data).get("error")
            except (nats.errors.Error, TimeoutError, ValueError, AttributeError) as exc:
                error = f"no answer ({exc!r})"
            if error:
                failed.append(name)
                lines.append(f"{name}: not reloaded: {error}; see its log")
            else:
                lines.append(f"{name}: reloaded")
        if len(servers) < nodes:
            failed.append(f"{nodes - len(servers)} of {nodes} nodes did not answer")
            lines.append(
                f"{nodes - len(servers)} of {nodes} nodes did not answer within {wait_s:g} s"
            )
        if failed:
            raise ClusterError(
                "\n".join(lines) + f"\nnot reloaded: {', '.join(failed)}; fix and run reload again"
            )
        return lines
    finally:
        await nc.close()


def read_registry_in_force(mqtt_url: str, admin_password: str, root: str, base: Path) -> Registry:
    """The registry file with the retained overrides the cluster holds, read as ingest reads
    them (registry_in_force), through the MQTT front as `admin`."""
    endpoint = parse_mqtt_url(mqtt_url, MQTT_V311)
    endpoint = type(endpoint)(
        endpoint.host, endpoint.port, "admin", admin_password, endpoint.tls, MQTT_V311
    )
    live = registry_in_force(
        endpoint, Topics(root), load_registry(base), client_id=f"floodwatch-reload-{os.getpid()}"
    )
    return live.current


def nodes_from_stack(doc: dict[str, object]) -> list[NodeProcess]:
    services = doc.get("services")
    if not isinstance(services, dict):
        raise ClusterError("stack.json has no services; is it the clustered stack's?")
    nodes = []
    for name, entry in sorted(services.items()):
        if name.startswith("nats-") and isinstance(entry, dict):
            ports = entry.get("ports") or {}
            nodes.append(NodeProcess(name, int(entry["pid"]), int(ports["monitor"])))
    if not nodes:
        raise ClusterError("stack.json names no nats-N service: start `scripts/stack --cluster`")
    return nodes


class RegistryFollower:
    """The local clustered stack's automatic reload (floodwatch.clusterstack): follows the
    retained registry overrides through the MQTT front and, once they have been quiet for
    `settle_s`, regenerates the accounts and reloads every node if the file changed. One
    thread; `say` gets each line (the stack logs them). On real machines an operator runs
    `python -m floodwatch.cluster reload` after a change instead (README, Clustered mode)."""

    def __init__(
        self,
        endpoint: MqttEndpoint,
        topics: Topics,
        base: Registry,
        accounts: Path,
        credentials_dir: Path,
        reload: Callable[[], list[str]],
        say: Callable[[str], None],
        settle_s: float = 0.5,
        services: Mapping[str, str] | None = None,  # regenerate_accounts's
    ) -> None:
        self.topics = topics
        self.live = LiveRegistry(base)
        self.accounts = accounts
        self.credentials_dir = credentials_dir
        self.reload = reload  # every node (reload_nodes, reload_over_nats): its lines
        self.say = say
        self.settle_s = settle_s
        self.services = services
        self.reloads = 0  # reloads done (tests wait on it)
        self._overrides: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._conn = MqttConnection(
            endpoint,
            f"floodwatch-stack-{os.getpid()}",
            subscriptions=[(topics.registry_override("+"), 1)],
            on_delivery=self._on_delivery,
        )
        self._thread = threading.Thread(target=self._run, name="cluster-reload", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._conn.start()
        # Following only once the broker says so: NATS takes a moment to set a subscription
        # up, and an override published meanwhile would be missed (seen in a CI run).
        self._conn.wait_subscribed(SUBSCRIBE_TIMEOUT_S)

    def stop(self) -> None:
        self._conn.stop()
        self._overrides.put(None)
        self._thread.join(10)

    def _on_delivery(self, delivery: Delivery) -> None:
        sensor_id = self.topics.last_level(delivery.topic, self.topics.registry_override(""))
        if sensor_id is not None:
            self._overrides.put((sensor_id, delivery.payload))

    def _run(self) -> None:
        while True:
            item = self._overrides.get()
            changed = False
            while item is not None:
                changed = self.live.apply(*item) is not None or changed
                try:  # the rest of a burst (the retained ones at start, a script's changes)
                    item = self._overrides.get(timeout=self.settle_s)
                except queue.Empty:
                    break
            if changed:
                self._reload()
            if item is None:
                return

    def _reload(self) -> None:
        for problem in self.live.problems:
            self.say(f"registry override skipped: {problem}")
        try:
            update = regenerate_accounts(
                self.accounts, self.credentials_dir, self.live.current, services=self.services
            )
            if not update.changed:
                return
            for sensor_id in update.new_logins:
                self.say(f"new login for sensor {sensor_id}")
            self.say(f"accounts regenerated: {update.mapped} sensors mapped; reloading NATS")
            lines = self.reload()
        except (FloodwatchError, OSError) as exc:
            self.say(f"reload failed: {exc}; run `python -m floodwatch.cluster reload`")
            return
        for line in lines:
            self.say(line)
        self.reloads += 1


# -- client-id takeovers -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Takeover:
    """A connection whose client id is not the one its login must use."""

    login: str
    client_id: str
    node: str  # the NATS node it connected to
    host: str  # the address it came from (HAProxy's, behind the MQTT front)
    at: str  # the server's time of the connection
    expected: str  # the client id (or convention) the login must use

    def message(self) -> str:
        return (
            f"client id takeover: login {self.login!r} connected with client id "
            f"{self.client_id!r} (expected {self.expected}) on {self.node} from {self.host} "
            f"at {self.at}; a connection already using {self.client_id!r} was dropped. Check "
            f"who holds {self.login!r}'s password and change it (README, Clustered mode)"
        )


def judge_connect(event: Mapping[str, object], sensor_logins: Collection[str]) -> Takeover | None:
    """The takeover a connect event shows, if any (pure). Only MQTT connections count: a sensor
    login must use its own id (as Mosquitto binds it), a service login its convention
    (check_client_id, broker_binds=False); `admin` may use any."""
    client = event.get("client")
    server = event.get("server")
    if not isinstance(client, dict) or client.get("client_type") != "mqtt":
        return None
    login, client_id = client.get("user"), client.get("client_id")
    if not isinstance(login, str) or not isinstance(client_id, str):
        return None
    if login in sensor_logins:
        if client_id == login:
            return None
        expected = repr(login)
    else:
        bound = bound_client_id(login)
        if bound is None:
            return None
        try:
            check_client_id(login, client_id, broker_binds=False)
            return None
        except SettingsError:
            expected = f"{bound!r} or {bound + '-K'!r}"
    node = server.get("name", "?") if isinstance(server, dict) else "?"
    return Takeover(
        login,
        client_id,
        str(node),
        str(client.get("host", "?")),
        str(client.get("start", event.get("timestamp", "?"))),
        expected,
    )


async def watch_client_ids(
    sys_urls: Sequence[str],
    sensor_logins: Callable[[], Collection[str]],
    report: Callable[[Takeover], None],
    stop: asyncio.Event,
    ready: Callable[[], None] = lambda: None,
) -> None:
    """Follow every node's connect events as the `sys` user (the events of all nodes reach any
    one) and `report` each takeover, until `stop` is set; `ready()` once subscribed.
    `sensor_logins()` is asked at each event, so logins added by a reload count at once."""
    nc = await connect(sys_urls)

    async def on_event(msg: object) -> None:
        try:
            event = json.loads(getattr(msg, "data", b""))
        except ValueError:
            return
        if isinstance(event, dict):
            found = judge_connect(event, sensor_logins())
            if found is not None:
                report(found)

    try:
        await nc.subscribe(CONNECT_EVENTS, cb=on_event)
        await nc.flush()
        ready()
        await stop.wait()
    finally:
        await nc.close()


def log_takeover(takeover: Takeover) -> None:
    log.warning("%s", takeover.message())


class TakeoverCount:
    """The takeovers a watcher reported, for Prometheus (`admin --metrics-port`): a counter an
    alert rule can watch (`increase(...) > 0`); who and where are in the log line."""

    def __init__(self) -> None:
        self.seen = 0  # one writer (the watcher's loop); a scrape reads an int

    def report(self, takeover: Takeover) -> None:
        self.seen += 1
        log_takeover(takeover)

    def metrics(self) -> list[Metric]:
        return [
            Metric(
                "floodwatch_cluster_client_id_takeovers_total",
                "MQTT connections whose client id was not the one their login must use (a "
                "connection already using it was dropped).",
                "counter",
                [({}, self.seen)],
            )
        ]


def sensor_logins_of(credentials_dir: Path) -> Callable[[], Collection[str]]:
    """The sensor logins in the credentials' sensors.json, read again when the file changes
    (a reload adds logins)."""
    path = Credentials.sensor_file(credentials_dir)
    held: dict[str, object] = {"mtime": None, "logins": frozenset()}

    def current() -> Collection[str]:
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return frozenset()
        if mtime != held["mtime"]:
            held["logins"] = frozenset(json.loads(path.read_text()))
            held["mtime"] = mtime
        logins = held["logins"]
        assert isinstance(logins, frozenset)
        return logins

    return current


class ClientIdWatch:
    """watch_client_ids on a thread of its own (the clustered stack's process)."""

    def __init__(
        self,
        sys_urls: Sequence[str],
        sensor_logins: Callable[[], Collection[str]],
        report: Callable[[Takeover], None],
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._ready = threading.Event()
        watching = watch_client_ids(sys_urls, sensor_logins, report, self._stop, self._ready.set)
        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(watching,), name="client-ids", daemon=True
        )

    def start(self, timeout_s: float = 10.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise ClusterError(
                f"the client-id watcher could not subscribe to {CONNECT_EVENTS} within "
                f"{timeout_s:g} s as `sys`; check the system account's password file"
            )

    def stop(self) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
            self._loop.close()


@contextlib.contextmanager
def cluster_admin(
    cluster: LocalCluster,
    credentials_dir: Path,
    topics: Topics,
    base: Registry,
    log_file: Path,
) -> Iterator[RegistryFollower]:
    """The local clustered stack's automatic admin: the registry follower (accounts reloaded
    when operators add, retire or move sensors) and the client-id watcher, both writing their
    lines to `log_file` (and this process's log)."""
    workdir = cluster.nodes[0][0].workdir
    lock = threading.Lock()

    def say(line: str, level: int = logging.INFO) -> None:
        log.log(level, "%s", line)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with lock, log_file.open("a", encoding="utf-8") as out:
            out.write(f"{stamp} {line}\n")

    admin = cluster.credentials.mqtt["admin"]
    endpoint = MqttEndpoint("127.0.0.1", cluster.front.port, "admin", admin, False, MQTT_V311)

    def nodes() -> list[NodeProcess]:
        return [NodeProcess(n.name, svc.pid or 0, n.monitor_port) for svc, n in cluster.nodes]

    follower = RegistryFollower(
        endpoint,
        topics,
        base,
        workdir / ACCOUNTS_FILE,
        credentials_dir,
        lambda: reload_nodes(nodes()),  # asked at each reload: a restarted node has a new PID
        say,
    )
    password = system_password(workdir)
    watch = ClientIdWatch(
        [f"nats://sys:{password}@127.0.0.1:{node.client_port}" for _, node in cluster.nodes],
        sensor_logins_of(credentials_dir),
        lambda takeover: say(takeover.message(), logging.WARNING),
    )
    watch.start()
    try:
        follower.start()
        try:
            yield follower
        finally:
            follower.stop()
    finally:
        watch.stop()


def sys_urls(doc: Mapping[str, object], password: str) -> list[str]:
    """The nodes' NATS URLs (stack.json) as the system account's `sys` user."""
    services = doc.get("services")
    assert isinstance(services, dict)
    return [
        f"nats://sys:{password}@127.0.0.1:{int(entry['ports']['client'])}"
        for name, entry in sorted(services.items())
        if name.startswith("nats-")
    ]


def as_sys(nats_urls: str, password: str) -> list[str]:
    """`nats://nats-1:4222,nats://...` (any login in them dropped) as the `sys` user's URLs."""
    urls = []
    for url in (u.strip() for u in nats_urls.split(",") if u.strip()):
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        if parts.hostname is None:
            raise SettingsError(f"NATS URL {url!r} has no host; write nats://HOST:4222")
        urls.append(f"{parts.scheme}://sys:{password}@{parts.hostname}:{parts.port or 4222}")
    if not urls:
        raise SettingsError("admin: set --nats-url or FLOODWATCH_NATS_URL (every NATS node)")
    return urls


def run_admin(args: argparse.Namespace) -> int:
    """`admin`: the registry follower and the client-id watcher until SIGTERM, reloading the
    nodes through the system account (compose's `cluster-admin`; the local stack runs both in
    its own process)."""
    accounts: Path = args.accounts
    urls = as_sys(args.nats_url, system_password(accounts.parent))
    endpoint = parse_mqtt_url(args.mqtt_url, MQTT_V311)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def say(line: str) -> None:
        log.info("%s", line)

    # Compose gives the service logins' passwords in the environment, as to cluster-config.
    passwords = {user: os.environ.get(var, "") for user, var in _ENV_PASSWORDS.items()}
    follower = RegistryFollower(
        endpoint,
        Topics(args.topic_root),
        load_registry(args.registry),
        accounts,
        args.credentials,
        lambda: asyncio.run(reload_over_nats(urls, len(urls))),
        say,
        services=passwords if all(passwords.values()) else None,
    )
    takeovers = TakeoverCount()
    watch = ClientIdWatch(urls, sensor_logins_of(args.credentials), takeovers.report)
    server = serve("0.0.0.0", args.metrics_port, takeovers.metrics) if args.metrics_port else None
    watch.start()
    follower.start()
    say(f"admin: following the registry and client ids on {len(urls)} nodes")
    try:
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    finally:
        follower.stop()
        watch.stop()
        if server is not None:
            server.shutdown()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m floodwatch.cluster",
        description="Operators' tools for the clustered mode (docs/CLUSTER.md).",
    )
    stack_help = (
        "the clustered stack's stack.json: node PIDs and ports, credential files, the MQTT "
        "front (default .stack/stack.json)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    reload = sub.add_parser(
        "reload",
        help="after adding, retiring or restoring sensors (API or registry file) or creating "
        "a sensor login: regenerate nats-accounts.conf from the credentials and the registry "
        "in force, and reload every NATS node (sessions and JetStream data are kept)",
        description="Regenerate nats-accounts.conf (a NATS user per sensor login, a partition "
        "mapping per sensor of the registry in force: the registry file plus the retained "
        "overrides operators made through the API; a sensor without a login gets one in the "
        "credentials' sensors.json) and reload each NATS node of the running stack "
        "(`nats-server --signal reload=PID`), saying per node whether it loaded the file.",
    )
    reload.add_argument("--stack", type=Path, default=Path(".stack/stack.json"), help=stack_help)
    reload.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="only for an accounts file made before the count was written in it "
        f"(default: the file's; the stack's default is {DEFAULT_PARTITIONS})",
    )
    watch = sub.add_parser(
        "watch",
        help="log a warning for every MQTT connection whose client id is not its login's "
        "(NATS cannot bind them: a sensor's password could disconnect another sensor)",
        description="Follow the NATS cluster's connect events as the system account's `sys` "
        "user and log `client id takeover: ...` for each MQTT connection whose client id is "
        "not the one its login must use, until interrupted. The clustered stack runs this "
        "itself.",
    )
    watch.add_argument("--stack", type=Path, default=Path(".stack/stack.json"), help=stack_help)
    admin_cmd = sub.add_parser(
        "admin",
        help="run the registry follower and the client-id watcher until stopped (docker "
        "compose's cluster-admin service; `scripts/stack --cluster` runs both itself)",
        description="Follow the retained registry overrides through the MQTT front and, after "
        "each change, regenerate the accounts file and reload every NATS node through the "
        "system account (no PIDs needed: each node may run in a container of its own); log "
        "`client id takeover: ...` for each MQTT connection whose client id is not its "
        "login's, and count them on /metrics (floodwatch_cluster_client_id_takeovers_total).",
    )
    admin_cmd.add_argument(
        "--nats-url",
        default=os.environ.get("FLOODWATCH_NATS_URL", ""),
        help="every NATS node, comma-separated, e.g. nats://nats-1:4222 (logged into as `sys` "
        "with the password beside the accounts file) [env FLOODWATCH_NATS_URL]",
    )
    admin_cmd.add_argument(
        "--mqtt-url",
        default=os.environ.get("FLOODWATCH_MQTT_URL", ""),
        help="the MQTT front as admin, e.g. mqtt://admin:PASSWORD@mqtt-front:1883 "
        "[env FLOODWATCH_MQTT_URL]",
    )
    admin_cmd.add_argument(
        "--accounts",
        type=Path,
        default=Path("/cluster/nats-accounts.conf"),
        help="the accounts file the nodes include (rewritten; default /cluster/nats-accounts.conf)",
    )
    admin_cmd.add_argument(
        "--credentials",
        type=Path,
        default=Path("/credentials"),
        help="the credentials directory with sensors.json (a new sensor's login is added there)",
    )
    admin_cmd.add_argument(
        "--metrics-port",
        type=int,
        default=os.environ.get("FLOODWATCH_METRICS_PORT", "9466"),  # checked by type=int
        help="Prometheus /metrics port, 0 for none [env FLOODWATCH_METRICS_PORT; default 9466]",
    )
    for command in (reload, admin_cmd):
        command.add_argument(
            "--registry",
            type=Path,
            default=Path(os.environ.get("FLOODWATCH_REGISTRY", str(SHIPPED_REGISTRY))),
            help="the registry file the cluster runs with [env FLOODWATCH_REGISTRY]",
        )
        command.add_argument(
            "--topic-root",
            default=os.environ.get("FLOODWATCH_TOPIC_ROOT", "floodwatch"),
            help="topic root of the overrides [env FLOODWATCH_TOPIC_ROOT; default floodwatch]",
        )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.command == "admin":
        try:
            return run_admin(args)
        except (FloodwatchError, OSError) as exc:
            print(f"admin: {exc}", file=sys.stderr)
            return 1
    try:
        doc = json.loads(args.stack.read_text())
        creds = doc["credentials"]
        accounts = Path(creds["nats_accounts"])
        creds_dir = Path(creds["directory"])
        if args.command == "watch":
            urls = sys_urls(doc, system_password(accounts.parent))
            stop = asyncio.Event()
            print(f"watch: following client ids on {len(urls)} nodes (Ctrl-C stops)", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(watch_client_ids(urls, sensor_logins_of(creds_dir), log_takeover, stop))
            return 0
        front = doc["services"]["mqtt-front"]["url"]
        nodes = nodes_from_stack(doc)
        admin = Credentials.load(creds_dir).mqtt["admin"]
        registry = read_registry_in_force(front, admin, args.topic_root, args.registry)
        update = regenerate_accounts(accounts, creds_dir, registry, args.partitions)
        for sensor_id in update.new_logins:
            where = Credentials.sensor_file(creds_dir)
            print(f"reload: new login for sensor {sensor_id} in {where}")
        print(
            f"reload: {accounts}: {update.mapped} sensors mapped over {update.partitions} "
            f"partitions{'' if update.changed else ' (unchanged)'}"
        )
        for line in reload_nodes(nodes):
            print(f"reload: {line}")
    except (OSError, KeyError, TypeError, ValueError) as exc:
        print(
            f"{args.command}: cannot read {args.stack} ({exc!r}); start `scripts/stack "
            "--cluster` or pass --stack with its stack.json",
            file=sys.stderr,
        )
        return 2
    except FloodwatchError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 1
    return 0
