"""Shared fixtures: a real Mosquitto and a real influxd per test session, on free loopback
ports with temporary data directories, and helpers to run Floodwatch's processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from floodwatch.credentials import grant_database
from floodwatch.influx import InfluxClient
from floodwatch.localservices import (
    Service,
    influxd_service,
    local_credentials,
    mosquitto_service,
    running,
)
from floodwatch.settings import MqttEndpoint, parse_influx_url

ROOT = Path(__file__).resolve().parent.parent

# No timing assertions in tests: Hypothesis's per-example deadline is one, and it fails
# property tests whenever the shared machine is busy. Speed is measured in bench/.
settings.register_profile("floodwatch", deadline=None)
settings.load_profile("floodwatch")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tier marks from what a test uses: every test that needs the session's real mosquitto and
    influxd (the `services` fixture, directly or through `broker`, `influxd`, `ingest_env`, ...)
    is marked `services`, so `-m "not services"` runs the pure tiers without starting them."""
    for item in items:
        # fixturenames is the closure: the fixtures the test asks for and those they ask for.
        if "services" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.services)


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Service]]:
    """One broker and one database for the whole session, both with authentication (the
    logins and roles of floodwatch/credentials.py, InfluxDB users); tests isolate by topic
    root and db."""
    workdir = tmp_path_factory.mktemp("services")
    creds = local_credentials(workdir)
    # Logins of their own for the test's ingest processes, APIs and notifiers (take_login).
    instances = {"ingest": 300, "api": 400, "notify": 60}
    with running(
        mosquitto_service(workdir, credentials=creds, instances=instances),
        influxd_service(workdir, credentials=creds),
    ) as (broker, influxd):
        yield broker, influxd


@pytest.fixture(scope="session")
def broker(services: tuple[Service, Service]) -> Service:
    return services[0]


@pytest.fixture(scope="session")
def influxd(services: tuple[Service, Service]) -> Service:
    return services[1]


@pytest.fixture
def unique() -> str:
    """A short unique name for this test's topic root, database and client ids."""
    return "t" + uuid.uuid4().hex[:10]


def admin_endpoint(broker: Service) -> MqttEndpoint:
    """The broker as the `admin` user, who may publish and read anything (tests, tools)."""
    return broker.endpoint("admin")


def admin_influx(influxd: Service, db: str) -> InfluxClient:
    """InfluxDB as its administrator, on `db`."""
    return InfluxClient(parse_influx_url(influxd.url("admin")), db)


def sensor_credentials_file(service: Service) -> Path:
    """The JSON file of every shipped sensor's broker password (--sensor-credentials)."""
    return service.workdir / "credentials" / "sensors.json"


def grant(influxd: Service, db: str) -> None:
    """Create `db` and give InfluxDB's writer and reader their rights on it."""
    grant_database(f"http://127.0.0.1:{influxd.port}", influxd.credentials.influx, db)


@pytest.fixture
def influx(influxd: Service, unique: str) -> Iterator[InfluxClient]:
    """An admin client on a fresh database of its own (writer and reader granted on it)."""
    grant(influxd, unique)
    client = admin_influx(influxd, unique)
    yield client
    client.close()


def process_env(
    broker: Service, influxd: Service, db: str, root: str, role: str = "ingest"
) -> dict[str, str]:
    """The environment of a Floodwatch process with the least rights of `role` (ingest, api,
    or admin for operators' tools); the database is created and granted first. The API gets a
    login of its own (its client id), so several APIs never take over each other's connection;
    ingest gets the shared `ingest` login (client id `floodwatch-ingest`) unless `own_login`
    gives it one."""
    grant(influxd, db)
    env = dict(os.environ)
    influx_user = {"ingest": "writer", "api": "reader"}.get(role, "admin")
    env.update(
        FLOODWATCH_MQTT_URL=broker.url(fresh_login(broker, "api").username or "")
        if role == "api"
        else broker.url(role),
        FLOODWATCH_INFLUX_URL=influxd.url(influx_user),
        FLOODWATCH_INFLUX_READ_URL=influxd.url("reader"),
        FLOODWATCH_SENSOR_CREDENTIALS=str(sensor_credentials_file(broker)),
        FLOODWATCH_INFLUX_DB=db,
        FLOODWATCH_TOPIC_ROOT=root,
        FLOODWATCH_LOG_LEVEL="INFO",
        FLOODWATCH_METRICS_PORT="0",
        FLOODWATCH_OUTBOX=str(Path(tempfile.gettempdir()) / f"floodwatch-outbox-{db}.sqlite"),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `python -m MODULE ARGS` with an environment; every process is stopped at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(module: str, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (tmp_path / f"{module}-{len(procs)}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_until(predicate: Callable[[], bool], timeout_s: float = 20.0, what: str = "") -> None:
    """Poll a condition (the thing waited on lives in another process), failing with `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what or predicate}")


class IngestProcess:
    """`python -m ingest` with its own log, startable again after a kill."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.log_dir / f"ingest-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ingest", "--stats-interval", "1"],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(lambda: b"ingesting" in self.log.read_bytes(), 30, "ingest to subscribe")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(30)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def own_login(broker: Service, env: dict[str, str], role: str = "ingest") -> None:
    """Give the process `env` is for a broker login of its own (`ingest-007`), with that name
    as its client id: the broker binds the shared `ingest` login to `floodwatch-ingest` alone,
    and each test's ingest (or notifier) runs its own session beside the others."""
    login = fresh_login(broker, role).username
    assert login is not None
    env["FLOODWATCH_MQTT_URL"] = broker.url(login)
    env["FLOODWATCH_CLIENT_ID"] = login


def fresh_login(broker: Service, role: str) -> MqttEndpoint:
    """An unused login of the session's broker holding `role`, bound to its own name as client
    id: for the API (which uses the one id its login is bound to) and a test's connections."""
    return broker.take_login(role)


@pytest.fixture
def ingest_env(broker: Service, influxd: Service, unique: str) -> dict[str, str]:
    env = process_env(broker, influxd, unique, unique)
    own_login(broker, env)
    return env


def mosquitto_pub(
    broker: Service, topic: str, *, message: str | None = None, lines: bytes | None = None
) -> None:
    args = ["mosquitto_pub", *mosquitto_login(broker), "-q", "1", "-t", topic]
    if message is not None:
        subprocess.run([*args, "-m", message], check=True, timeout=30)
    else:
        subprocess.run([*args, "-l"], input=lines, check=True, timeout=60)


def mosquitto_login(broker: Service, user: str = "admin") -> list[str]:
    """mosquitto_pub/sub arguments for the broker's port, logged in as `user`."""
    endpoint = broker.endpoint(user)
    assert endpoint.password is not None
    return ["-p", str(broker.port), "-u", user, "-P", endpoint.password, "-V", "mqttv5"]
