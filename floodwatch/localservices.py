"""Start a real Mosquitto and InfluxDB 1.x on free loopback ports, for tests, benchmarks and the
local stack, each with its own data directory, and stop them afterwards."""

from __future__ import annotations

import contextlib
import glob
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx

from floodwatch.credentials import (
    DYNSEC_FILE,
    Credentials,
    Instance,
    new_password,
    setup_influx_users,
)
from floodwatch.errors import FloodwatchError
from floodwatch.registry import SHIPPED_REGISTRY, load_registry
from floodwatch.settings import MqttEndpoint

MOSQUITTO_CONF = Path(__file__).resolve().parent.parent / "config" / "mosquitto.conf"


class ServiceError(FloodwatchError):
    """A local broker or database could not be started."""


# Ports handed out for services lie below the kernel's ephemeral range: a port from that range
# (what binding port 0 gives) can be taken by any outgoing connection between the moment it is
# picked and the moment the service binds it, and then the service fails to start.
_SERVICE_PORTS_FROM = 10_000
_handed_out: set[int] = set()  # never the same port twice from one process


def _ephemeral_start() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def free_port() -> int:
    """A loopback TCP port nothing listens on, outside the ephemeral range where it can."""
    below = _ephemeral_start()
    rng = random.SystemRandom()
    for _ in range(50 if below - _SERVICE_PORTS_FROM >= 1000 else 0):
        port = rng.randrange(_SERVICE_PORTS_FROM, below)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    _handed_out.add(port)
    return port


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{what} exited at start; its log {log} says:\n{log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise ServiceError(f"{what} did not open port {port} within 30 s; see {log}")


def dynsec_plugin() -> str:
    """Where this machine's Mosquitto keeps the dynamic-security plugin (Debian: per arch)."""
    found = sorted(glob.glob("/usr/lib/*/mosquitto_dynamic_security.so"))
    found += sorted(glob.glob("/usr/lib/mosquitto_dynamic_security.so"))
    if not found:
        raise ServiceError(
            "mosquitto's dynamic-security plugin (mosquitto_dynamic_security.so) is not "
            "installed; run `apt-get install mosquitto` (2.0 or later)."
        )
    return found[0]


def mosquitto_config(
    port: int, data_dir: Path, dynsec_file: Path, source: Path = MOSQUITTO_CONF
) -> str:
    """The shipped configuration with the listener port, data directory and the paths of the
    dynamic-security plugin and its file replaced."""
    lines = []
    # Started as root, mosquitto would drop to the `mosquitto` user, which cannot reach a
    # private temporary directory; the tests and the local stack keep it as the caller.
    run_as = [] if os.geteuid() != 0 else ["user root"]
    for line in source.read_text().splitlines():
        if line.startswith("listener "):
            line = f"listener {port} 127.0.0.1"
        elif line.startswith("persistence_location "):
            line = f"persistence_location {data_dir}/"
        elif line.startswith("plugin "):
            line = f"plugin {dynsec_plugin()}"
        elif line.startswith("plugin_opt_config_file "):
            line = f"plugin_opt_config_file {dynsec_file}"
        lines.append(line)
    return "\n".join(lines + run_as) + "\n"


@dataclass
class Service:
    name: str
    port: int
    workdir: Path
    argv: list[str]
    log: Path
    credentials: Credentials
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    # Run after every start, once the port is open (influxd: set up its users).
    after_start: Callable[[], None] | None = field(default=None, repr=False)
    # influxd's RPC port (backup and restore, no password: loopback only); 0 for mosquitto.
    rpc_port: int = 0
    # The broker's logins for single instances (take_login), and those handed out.
    instances: Sequence[Instance] = ()
    taken: set[str] = field(default_factory=set, repr=False)
    # Extra environment for the process (the clustered stack's services get their logins
    # there, not on the command line, which any local user can read).
    env: Mapping[str, str] | None = field(default=None, repr=False)

    def url(self, user: str = "admin") -> str:
        """This service's URL as `user` (broker users, or InfluxDB admin/writer/reader)."""
        if self.name == "mosquitto":
            own = self._instance_password(user)
            if own is not None:
                return f"mqtt://{quote(user, safe='')}:{quote(own, safe='')}@127.0.0.1:{self.port}"
        # The clustered mode's NATS nodes and their front door are MQTT brokers too.
        if self.name in ("mosquitto", "mqtt-front") or self.name.startswith("nats-"):
            return self.credentials.mqtt_url(user, "127.0.0.1", self.port)
        return self.credentials.influx_url(user, "127.0.0.1", self.port)

    def endpoint(self, user: str = "admin") -> MqttEndpoint:
        """The broker as `user`; a sensor id logs in with its own password."""
        creds = self.credentials
        password = self._instance_password(user) or creds.mqtt.get(user) or creds.sensors[user]
        return MqttEndpoint("127.0.0.1", self.port, user, password)

    def _instance_password(self, login: str) -> str | None:
        return next((i.password for i in self.instances if i.login == login), None)

    def take_login(self, role: str, *, bound: bool = True) -> MqttEndpoint:
        """An unused login of this broker's `instances` holding `role`, bound to its own name
        as client id (`bound=False`: one free to choose any id). Several instances of a service
        run at once in the tests, and the broker binds the shared `ingest` and `api` logins to
        one client id each."""
        for instance in self.instances:
            kind = (instance.role, instance.bound)
            if kind == (role, bound) and instance.login not in self.taken:
                self.taken.add(instance.login)
                return self.endpoint(instance.login)
        raise ServiceError(
            f"every {role} login of this broker is in use; start it with more instances "
            "(mosquitto_service's `instances`)"
        )

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
            env=None if self.env is None else {**os.environ, **self.env},
        )
        out.close()
        if self.port:  # 0: a process that listens on nothing (the street simulator)
            _wait_for_port(self.port, self.proc, self.name, self.log)
        if self.after_start is not None:
            self.after_start()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid


def _require(binary: str, package: str) -> str:
    path = shutil.which(binary) or (
        f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None
    )
    if path is None:
        raise ServiceError(
            f"{binary} is not installed; run `apt-get install {package}` (the README's test "
            "and stack commands do this for you)."
        )
    return path


def local_credentials(workdir: Path) -> Credentials:
    """Credentials kept in `workdir/credentials`, made once, with every shipped sensor's login."""
    ids = list(load_registry(SHIPPED_REGISTRY).sensors)
    return Credentials.load_or_generate(workdir / "credentials", ids)


def mosquitto_service(
    workdir: Path,
    port: int | None = None,
    credentials: Credentials | None = None,
    instances: Mapping[str, int] | None = None,
) -> Service:
    """Mosquitto with the shipped configuration and a dynamic-security file for `credentials`
    (by default ones made once in `workdir/credentials`), and `instances[role]` logins of their
    own per role (`ingest-001`, ... each bound to its name as client id; see take_login), plus
    one unbound login per role (`ingest-free`), for the test suite."""
    port = port or free_port()
    creds = credentials or local_credentials(workdir)
    data = workdir / "mosquitto-data"
    data.mkdir(parents=True, exist_ok=True)
    own = [
        Instance(f"{role}-{k:03d}", role, new_password())
        for role, count in (instances or {}).items()
        for k in range(1, count + 1)
    ]
    own += [Instance(f"{role}-free", role, new_password(), False) for role in instances or {}]
    dynsec = workdir / DYNSEC_FILE
    creds.write_dynsec_file(dynsec, own)
    conf = workdir / "mosquitto.conf"
    conf.write_text(mosquitto_config(port, data, dynsec))
    return Service(
        "mosquitto",
        port,
        workdir,
        [_require("mosquitto", "mosquitto"), "-c", str(conf)],
        workdir / "mosquitto.log",
        creds,
        instances=own,
    )


def influxd_service(
    workdir: Path, port: int | None = None, credentials: Credentials | None = None
) -> Service:
    """influxd with authentication on; its admin, writer and reader are set up at each start."""
    port = port or free_port()
    creds = credentials or local_credentials(workdir)
    rpc_port = free_port()
    data = workdir / "influxdb"
    conf = workdir / "influxdb.conf"
    conf.write_text(
        f"""reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{data}/meta"
[data]
  dir = "{data}/data"
  wal-dir = "{data}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{port}"
  auth-enabled = true
  # /debug/pprof answers without a password when on (the default). InfluxDB 1.x has no switch
  # for /debug/vars and /debug/requests: counters, no data or passwords (README, Security).
  pprof-enabled = false
  log-enabled = false
  max-body-size = 0
[continuous_queries]
  enabled = false
"""
    )
    svc = Service(
        "influxd",
        port,
        workdir,
        [_require("influxd", "influxdb"), "-config", str(conf)],
        workdir / "influxd.log",
        creds,
        rpc_port=rpc_port,
    )

    def set_up_users() -> None:
        wait_influx_ready(port)
        setup_influx_users(f"http://127.0.0.1:{port}", creds.influx)

    svc.after_start = set_up_users
    return svc


def wait_influx_ready(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 204:
                return
        time.sleep(0.05)
    raise ServiceError(f"influxd on port {port} did not answer /ping within {timeout_s:g} s")


@contextlib.contextmanager
def running(*services: Service) -> Iterator[tuple[Service, ...]]:
    """Start services in order and stop them in reverse, whatever happens in between."""
    started: list[Service] = []
    try:
        for svc in services:
            svc.start()
            started.append(svc)
            if svc.name == "influxd":
                wait_influx_ready(svc.port)
        yield services
    finally:
        for svc in reversed(started):
            svc.stop()


def env_with(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    return env
