"""The one place that knows Floodwatch's users and roles, on the broker and in InfluxDB.

Broker users:
    admin    operators' tools and the tests: everything
    ingest   reads readings, statuses and ack commands; writes alerts, events, episodes,
             dead letters and ack replies
    api      reads everything under the topic root; writes ack commands
    notify   reads alert events, alert states and episodes; writes the retained
             notification records
    SENSOR   each sensor logs in with its registry id, must use that id as its MQTT client id
             and may publish only its own topics

Every login lives in the dynamic-security plugin's file (`dynamic-security.json`), bound to
one client id (`bound_client_id`: ingest `floodwatch-ingest`, the API `floodwatch-api`, the
notifier `floodwatch-notify`, partitioned ingest worker K's login `ingest-K` (K >= 2, role
`ingest`) `floodwatch-ingest-K`, a sensor or an instance's own login its own name; `admin`
none), so a leaked password can neither take over nor wipe another login's session (ingest's
queued readings). Each service login holds the role of its name (SERVICE_ACLS), each sensor a
role with its two topics. Passwords are hashed here (PBKDF2-SHA512, Mosquitto's own format).
`python -m floodwatch.credentials` writes the file for compose.

InfluxDB users:
    admin    creates databases and users (setup only)
    writer   WRITE on the database: ingest's writes
    reader   READ on the database: the API, and ingest's alert restore

`Credentials.generate` makes random passwords once; `save`/`load` keep them in a directory
(the local stack's `.stack/credentials/`, a test session's temporary directory), never in git.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from floodwatch.errors import FloodwatchError, SettingsError
from floodwatch.registry import SHIPPED_REGISTRY, load_registry

MQTT_USERS = ("admin", "ingest", "api", "notify")  # registry.RESERVED_IDS keeps sensors off these
# Partitioned ingest workers 2..N log in as `ingest-K`, bound to client id `floodwatch-ingest-K`
# (worker 1 is `ingest`); no leading zero, so the test suite's `ingest-001` logins stay theirs.
_WORKER_LOGIN = re.compile(r"ingest-([1-9][0-9]{0,3})")
INFLUX_ADMIN = "admin"
INFLUX_WRITER = "writer"
INFLUX_READER = "reader"
INFLUX_USERS = (INFLUX_ADMIN, INFLUX_WRITER, INFLUX_READER)
DYNSEC_FILE = "dynamic-security.json"
# Mosquitto's default PBKDF2 rounds: each sensor connection costs one hash at the broker.
_PBKDF2_ROUNDS = 101


class CredentialsError(FloodwatchError):
    """Users could not be set up on the broker or in InfluxDB."""


def new_password() -> str:
    """A random password that needs no quoting in URLs, shells or InfluxQL."""
    return secrets.token_urlsafe(18)


@dataclass(frozen=True, slots=True)
class Credentials:
    mqtt: Mapping[str, str]  # broker user -> password (admin, ingest, api, notify)
    influx: Mapping[str, str]  # InfluxDB user -> password (admin, writer, reader)
    sensors: Mapping[str, str]  # sensor id -> broker password

    @classmethod
    def generate(cls, sensor_ids: Iterable[str], workers: int = 1) -> Credentials:
        """Random passwords for every user, `workers` ingest workers' logins (worker_logins)
        and each sensor."""
        return cls(
            mqtt={user: new_password() for user in (*MQTT_USERS, *worker_logins(workers))},
            influx={user: new_password() for user in INFLUX_USERS},
            sensors={sid: new_password() for sid in sensor_ids},
        )

    # -- files -------------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write credentials.json, sensors.json (for --sensor-credentials) and the
        dynamic-security file."""
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        _write_private(
            directory / "credentials.json",
            json.dumps({"mqtt": dict(self.mqtt), "influx": dict(self.influx)}, indent=2),
        )
        _write_private(self.sensor_file(directory), json.dumps(dict(self.sensors), indent=2))
        self.write_dynsec_file(self.dynsec_file(directory))

    @classmethod
    def load(cls, directory: Path) -> Credentials:
        doc = json.loads((directory / "credentials.json").read_text())
        sensors = load_sensor_credentials(cls.sensor_file(directory))
        return cls(mqtt=doc["mqtt"], influx=doc["influx"], sensors=sensors)

    @classmethod
    def load_or_generate(
        cls, directory: Path, sensor_ids: Iterable[str], workers: int = 1
    ) -> Credentials:
        """The directory's credentials, made once; sensors added to the registry get theirs,
        and so do ingest workers up to `workers` (worker_logins)."""
        users = (*MQTT_USERS, *worker_logins(workers))
        if (directory / "credentials.json").exists():
            found = cls.load(directory)
            ids = list(sensor_ids)
            if all(sid in found.sensors for sid in ids) and set(users) <= set(found.mqtt):
                return found
            sensors = dict(found.sensors)
            sensors.update({sid: new_password() for sid in ids if sid not in sensors})
            # A service user added since the directory was made (notify) gets its password.
            mqtt = {**{u: new_password() for u in users}, **found.mqtt}
            found = cls(mqtt, found.influx, sensors)
        else:
            found = cls.generate(sensor_ids, workers)
        found.save(directory)
        return found

    @staticmethod
    def sensor_file(directory: Path) -> Path:
        return directory / "sensors.json"

    @staticmethod
    def dynsec_file(directory: Path) -> Path:
        return directory / DYNSEC_FILE

    def write_dynsec_file(self, path: Path, instances: Sequence[Instance] = ()) -> None:
        """The dynamic-security plugin's file: every login, each bound to its client id, and
        the `instances`' own logins."""
        doc = dynsec_document(self.mqtt, self.sensors, instances)
        _write_private(path, json.dumps(doc, indent=1))

    # -- URLs for each process ---------------------------------------------------------------

    def mqtt_url(self, user: str, host: str, port: int) -> str:
        return f"mqtt://{quote(user, safe='')}:{quote(self.mqtt[user], safe='')}@{host}:{port}"

    def influx_url(self, user: str, host: str, port: int) -> str:
        return f"http://{quote(user, safe='')}:{quote(self.influx[user], safe='')}@{host}:{port}"


def load_sensor_credentials(path: Path) -> dict[str, str]:
    """A JSON object mapping sensor id to its broker password (--sensor-credentials)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SettingsError(
            f"cannot read sensor credentials {path}: {exc}; point --sensor-credentials "
            "(FLOODWATCH_SENSOR_CREDENTIALS) at a JSON object of sensor id to password."
        ) from exc
    if not isinstance(doc, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in doc.items()
    ):
        raise SettingsError(
            f"sensor credentials {path} must be a JSON object of sensor id to password "
            "(strings); fix the file named by --sensor-credentials."
        )
    return doc


def _pbkdf2(password: str) -> tuple[str, str]:
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _PBKDF2_ROUNDS)
    return base64.b64encode(salt).decode(), base64.b64encode(digest).decode()


# The client id the broker binds each shipped service login to: ingest's and the notifier's
# persistent sessions, the API's one connection. Any other login (a sensor, an instance's own
# login such as a test's `ingest-t1234`) is bound to its own name; `admin` to none.
SERVICE_CLIENT_IDS = {
    "ingest": "floodwatch-ingest",
    "api": "floodwatch-api",
    "notify": "floodwatch-notify",
}


def worker_logins(workers: int) -> list[str]:
    """The logins of partitioned ingest workers 2..`workers` (worker 1 logs in as `ingest`):
    `ingest-2`, ... each bound to `floodwatch-ingest-K` and holding the `ingest` role."""
    return [f"ingest-{k}" for k in range(2, workers + 1)]


def login_role(login: str) -> str:
    """The role a service login holds: its own name, `ingest` for a worker's login."""
    return "ingest" if _WORKER_LOGIN.fullmatch(login) else login


def bound_client_id(login: str | None) -> str | None:
    """The one client id the broker lets `login` use, or None for the unbound `admin`."""
    if login is None or login == "admin":
        return None
    if _WORKER_LOGIN.fullmatch(login):
        return f"floodwatch-{login}"
    return SERVICE_CLIENT_IDS.get(login, login)


def check_client_id(login: str | None, client_id: str, *, broker_binds: bool = True) -> None:
    """Raise SettingsError, before connecting, when the broker would refuse `client_id` for
    `login` (each login is bound to one client id).

    `broker_binds=False` is for NATS's MQTT listener, which cannot bind a client id to a login
    (docs/CLUSTER.md), so several workers share the `ingest` login: there the convention the
    document names holds instead, the id is the bound one or starts with it and a dash
    (`floodwatch-ingest-2`), so a service's id never collides with a sensor's or another
    service's."""
    bound = bound_client_id(login)
    if bound is not None and not broker_binds:
        if client_id == bound or (client_id.startswith(bound + "-") and "." not in client_id):
            return
        raise SettingsError(
            f"--client-id {client_id!r} does not start with {bound + '-'!r}: in the cluster the "
            f"login {login!r} connects with {bound} or {bound}-SOMETHING (no '.', which NATS "
            f"refuses), e.g. --client-id {bound}-2 (FLOODWATCH_CLIENT_ID)"
        )
    if bound is not None and client_id != bound:
        raise SettingsError(
            f"--client-id {client_id!r} is not the client id the broker binds the login "
            f"{login!r} to ({bound!r}), so the broker would refuse it; use "
            f"--client-id {bound} (FLOODWATCH_CLIENT_ID), or give this instance a login of "
            "its own (README, Users and permissions)"
        )


def _read(topic: str) -> list[dict[str, Any]]:
    return [
        {"acltype": "subscribePattern", "topic": topic, "allow": True},
        {"acltype": "publishClientReceive", "topic": topic, "allow": True},
    ]


def _write(topic: str) -> list[dict[str, Any]]:
    return [{"acltype": "publishClientSend", "topic": topic, "allow": True}]


# Each service role's rights. The first topic level is the topic root (`floodwatch`, or a
# unique root per test), hence the `+`; anything not granted is denied (a denied QoS 1 publish
# gets PUBACK 0x87 over MQTT v5).
SERVICE_ACLS: dict[str, list[dict[str, Any]]] = {
    # Operators' tools and the tests: everything, and the broker's $SYS statistics. Not the
    # plugin's $CONTROL API: on Mosquitto 2.0.11 with `memory_limit` a few changes through it
    # leave the broker "out of memory" for every client; logins change by rewriting the file.
    "admin": [*_read("#"), *_write("#"), *_read("$SYS/#")],
    # Readings, statuses and acknowledgement requests in; alerts, events, episodes, dead letters
    # and acknowledgement replies out.
    "ingest": [
        *_read("+/v1/sensors/+/reading"),
        *_read("+/v1/sensors/+/status"),
        *_read("+/v1/commands/ack"),
        *_write("+/v1/alerts/+"),
        *_write("+/v1/events/+"),
        *_write("+/v1/episodes"),
        *_write("+/v1/deadletter"),
        *_write("+/v1/commands/ack/reply/#"),
        # Operators' registry overrides (retained) and their audit events: applied and stored.
        *_read("+/v1/registry/+"),
        *_read("+/v1/changes/+"),
    ],
    # Reads everything under the root (live feed, alerts, replies); asks ingest to acknowledge.
    # Operators act through it alone: it publishes maintenance records and registry overrides
    # (retained) and each change's audit event. It cannot create broker logins: a new sensor's
    # login is made with `python -m floodwatch.credentials` (README "Maintenance").
    "api": [
        *_read("+/v1/#"),
        *_write("+/v1/commands/ack"),
        *_write("+/v1/maintenance/+"),
        *_write("+/v1/registry/+"),
        *_write("+/v1/changes/+"),
    ],
    # Follows alert events, alert states, episodes, maintenance and the registry; publishes
    # each alert's retained notification record.
    "notify": [
        *_read("+/v1/events/+"),
        *_read("+/v1/alerts/+"),
        *_read("+/v1/episodes"),
        *_read("+/v1/maintenance/+"),
        *_read("+/v1/registry/+"),
        *_write("+/v1/notifications/#"),
    ],
}


@dataclass(frozen=True, slots=True)
class Instance:
    """A login of its own for one instance of a service where several run at once (the test
    suite's ingest processes and APIs): named as its client id, holding the service's role.
    `bound=False` leaves it free to choose client ids (only for tests of a role's rights)."""

    login: str
    role: str
    password: str
    bound: bool = True


def dynsec_client(login: str, password: str, role: str, bound: bool = True) -> dict[str, Any]:
    """One login of the plugin, bound to its client id (`bound_client_id`), holding `role`."""
    salt, digest = _pbkdf2(password)
    client: dict[str, Any] = {
        "username": login,
        "password": digest,
        "salt": salt,
        "iterations": _PBKDF2_ROUNDS,
        "roles": [{"rolename": role}],
    }
    client_id = bound_client_id(login)
    if client_id is not None and bound:
        client["clientid"] = client_id
    return client


def dynsec_document(
    services: Mapping[str, str], sensors: Mapping[str, str], instances: Sequence[Instance] = ()
) -> dict[str, Any]:
    """The dynamic-security plugin's configuration: every login the broker knows.

    Each login is a client whose `clientid` the plugin enforces at CONNECT (any other id is
    refused "not authorized"): a sensor its own id, ingest `floodwatch-ingest`, the API
    `floodwatch-api`, the notifier `floodwatch-notify`; only `admin`, who can rewrite the
    bindings through the plugin's API anyway, is unbound. Each service login holds the role of
    the same name (SERVICE_ACLS), each sensor a role with only its reading and status topics.
    """
    clients = [dynsec_client(user, pw, login_role(user)) for user, pw in sorted(services.items())]
    clients += [dynsec_client(i.login, i.password, i.role, i.bound) for i in instances]
    roles = [{"rolename": name, "acls": acls} for name, acls in SERVICE_ACLS.items()]
    for sensor_id, password in sorted(sensors.items()):
        role = f"sensor-{sensor_id}"
        clients.append(dynsec_client(sensor_id, password, role))
        # The first topic level is the topic root (`floodwatch`, a test's own root).
        roles.append(
            {
                "rolename": role,
                "acls": [
                    acl
                    for kind in ("reading", "status")
                    for acl in _write(f"+/v1/sensors/{sensor_id}/{kind}")
                ],
            }
        )
    return {
        "clients": clients,
        "roles": roles,
        "groups": [],
        # What no role grants is denied: a sensor publishes; it never subscribes nor receives.
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
    }


def _write_private(path: Path, text: str) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


# -- InfluxDB users --------------------------------------------------------------------------


def setup_influx_users(base_url: str, passwords: Mapping[str, str]) -> None:
    """Create the admin (InfluxDB allows the first admin without credentials), writer and reader.

    Idempotent: run at every start of a local influxd.
    """
    admin_auth = (INFLUX_ADMIN, passwords[INFLUX_ADMIN])
    with httpx.Client(base_url=base_url, timeout=10) as http:
        probe = http.get("/query", params={"q": "SHOW USERS"}, auth=admin_auth)
        if "create admin user first" in probe.text:
            _influxql(
                http,
                f"CREATE USER {INFLUX_ADMIN} WITH PASSWORD '{passwords[INFLUX_ADMIN]}' "
                "WITH ALL PRIVILEGES",
                None,
            )
        for user in (INFLUX_WRITER, INFLUX_READER):
            _influxql(http, f"CREATE USER {user} WITH PASSWORD '{passwords[user]}'", admin_auth)


def grant_database(base_url: str, passwords: Mapping[str, str], database: str) -> None:
    """Create the database and give the writer WRITE and the reader READ on it."""
    admin_auth = (INFLUX_ADMIN, passwords[INFLUX_ADMIN])
    db = '"' + database.replace("\\", "\\\\").replace('"', '\\"') + '"'
    with httpx.Client(base_url=base_url, timeout=10) as http:
        _influxql(http, f"CREATE DATABASE {db}", admin_auth)
        _influxql(http, f"GRANT WRITE ON {db} TO {INFLUX_WRITER}", admin_auth)
        _influxql(http, f"GRANT READ ON {db} TO {INFLUX_READER}", admin_auth)


def _influxql(http: httpx.Client, statement: str, auth: tuple[str, str] | None) -> None:
    try:
        if auth is None:
            response = http.post("/query", data={"q": statement})
        else:
            response = http.post("/query", data={"q": statement}, auth=auth)
    except httpx.HTTPError as exc:
        raise CredentialsError(f"InfluxDB unreachable while setting up users: {exc}") from exc
    text = response.text
    if response.status_code != 200 or '"error"' in text:
        if "user already exists" in text:
            return
        verb = statement.split(" WITH PASSWORD")[0]
        raise CredentialsError(f"InfluxDB refused `{verb}`: {response.status_code} {text[:300]}")


# -- compose's one-shot `credentials` service ------------------------------------------------

_ENV_PASSWORDS = {
    "admin": "MQTT_ADMIN_PASSWORD",
    "ingest": "MQTT_INGEST_PASSWORD",
    "api": "MQTT_API_PASSWORD",
    "notify": "MQTT_NOTIFY_PASSWORD",
}
# Who reads each file in compose: the broker image's `mosquitto` user, the simulator's uid (see
# the Dockerfile).
_BROKER_UID = 1883
_SIMULATOR_UID = 10001


def save_sensor_logins(directory: Path, sensors: Mapping[str, str]) -> None:
    """sensors.json (mode 0600): each sensor's login password."""
    _write_private(Credentials.sensor_file(directory), json.dumps(dict(sensors), indent=2))


def write_broker_files(
    out: Path, service_passwords: Mapping[str, str], sensor_ids: Iterable[str]
) -> dict[str, str]:
    """The broker's dynamic-security file (the service logins and every sensor), and
    sensors.json for the simulator; every sensor gets a fresh random password. Returns the
    sensor logins."""
    sensors = {sid: new_password() for sid in sensor_ids}
    creds = Credentials(mqtt=dict(service_passwords), influx={}, sensors=sensors)
    out.mkdir(parents=True, exist_ok=True)
    creds.write_dynsec_file(Credentials.dynsec_file(out))
    save_sensor_logins(out, sensors)
    return sensors


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m floodwatch.credentials",
        description="Write the broker's logins for docker-compose: dynamic-security.json "
        "(admin, ingest, api, notify from $MQTT_ADMIN_PASSWORD, $MQTT_INGEST_PASSWORD, "
        "$MQTT_API_PASSWORD, $MQTT_NOTIFY_PASSWORD, ingest bound to client id "
        "floodwatch-ingest, the API to floodwatch-api, the notifier to floodwatch-notify; every "
        "registry sensor bound to its own id, with a fresh random password) and sensors.json "
        "(those passwords, for the simulator).",
    )
    parser.add_argument("--out", type=Path, default=Path("/credentials"), help="directory")
    parser.add_argument(
        "--registry", type=Path, default=None, help="sensor registry (default: the shipped one)"
    )
    parser.add_argument(
        "--ingest-workers",
        type=int,
        default=1,
        help="partitioned ingest workers (README, Partitioned ingest): workers 2..N get logins "
        "ingest-2.. bound to client ids floodwatch-ingest-2.., role ingest, passwords from "
        "$MQTT_INGEST_2_PASSWORD.. (default 1: `ingest` only)",
    )
    args = parser.parse_args(argv)
    env_passwords = dict(_ENV_PASSWORDS)
    env_passwords.update(
        {
            login: f"MQTT_{login.upper().replace('-', '_')}_PASSWORD"
            for login in worker_logins(args.ingest_workers)
        }
    )
    missing = [var for var in env_passwords.values() if not os.environ.get(var)]
    if missing:
        print(f"credentials: set {', '.join(missing)} (copy .env.example to .env)", file=sys.stderr)
        return 2
    try:
        registry = load_registry(args.registry or SHIPPED_REGISTRY)
    except FloodwatchError as exc:
        print(f"credentials: {exc}", file=sys.stderr)
        return 2
    passwords = {user: os.environ[var] for user, var in env_passwords.items()}
    write_broker_files(args.out, passwords, registry.sensors)
    if os.geteuid() == 0:
        os.chown(args.out / DYNSEC_FILE, _BROKER_UID, _BROKER_UID)
        os.chown(Credentials.sensor_file(args.out), _SIMULATOR_UID, _SIMULATOR_UID)
    print(f"credentials: wrote {len(registry.sensors)} sensor logins to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
