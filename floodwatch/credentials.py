"""The one place that knows Floodwatch's users and roles, on the broker and in InfluxDB.

Broker users (config/mosquitto.acl says what each may do):
    admin    operators' tools and the tests: everything
    ingest   reads readings, statuses and ack commands; writes alerts, events, episodes,
             dead letters and ack replies
    api      reads everything under the topic root; writes ack commands
    notify   reads alert events, alert states and episodes; writes the retained
             notification records
    SENSOR   each sensor logs in with its registry id and may publish only its own topics

InfluxDB users:
    admin    creates databases and users (setup only)
    writer   WRITE on the database: ingest's writes
    reader   READ on the database: the API, and ingest's alert restore

`Credentials.generate` makes random passwords once; `save`/`load` keep them in a directory
(the local stack's `.stack/credentials/`, a test session's temporary directory), never in git.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx

from floodwatch.errors import FloodwatchError, SettingsError

MQTT_USERS = ("admin", "ingest", "api", "notify")  # registry.RESERVED_IDS keeps sensors off these
INFLUX_ADMIN = "admin"
INFLUX_WRITER = "writer"
INFLUX_READER = "reader"
INFLUX_USERS = (INFLUX_ADMIN, INFLUX_WRITER, INFLUX_READER)
MOSQUITTO_ACL = Path(__file__).resolve().parent.parent / "config" / "mosquitto.acl"


class CredentialsError(FloodwatchError):
    """Users could not be set up on the broker or in InfluxDB."""


def new_password() -> str:
    """A random password that needs no quoting in URLs, shells or InfluxQL."""
    return secrets.token_urlsafe(18)


@dataclass(frozen=True, slots=True)
class Credentials:
    mqtt: Mapping[str, str]  # broker user -> password (admin, ingest, api)
    influx: Mapping[str, str]  # InfluxDB user -> password (admin, writer, reader)
    sensors: Mapping[str, str]  # sensor id -> broker password

    @classmethod
    def generate(cls, sensor_ids: Iterable[str]) -> Credentials:
        return cls(
            mqtt={user: new_password() for user in MQTT_USERS},
            influx={user: new_password() for user in INFLUX_USERS},
            sensors={sid: new_password() for sid in sensor_ids},
        )

    # -- files -------------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write credentials.json, sensors.json (for --sensor-credentials) and the password file."""
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        _write_private(
            directory / "credentials.json",
            json.dumps({"mqtt": dict(self.mqtt), "influx": dict(self.influx)}, indent=2),
        )
        _write_private(self.sensor_file(directory), json.dumps(dict(self.sensors), indent=2))
        self.write_password_file(self.password_file(directory))

    @classmethod
    def load(cls, directory: Path) -> Credentials:
        doc = json.loads((directory / "credentials.json").read_text())
        sensors = load_sensor_credentials(cls.sensor_file(directory))
        return cls(mqtt=doc["mqtt"], influx=doc["influx"], sensors=sensors)

    @classmethod
    def load_or_generate(cls, directory: Path, sensor_ids: Iterable[str]) -> Credentials:
        """The directory's credentials, made once; sensors added to the registry get theirs."""
        if (directory / "credentials.json").exists():
            found = cls.load(directory)
            ids = list(sensor_ids)
            if all(sid in found.sensors for sid in ids) and set(MQTT_USERS) <= set(found.mqtt):
                return found
            sensors = dict(found.sensors)
            sensors.update({sid: new_password() for sid in ids if sid not in sensors})
            # A service user added since the directory was made (notify) gets its password.
            mqtt = {**{u: new_password() for u in MQTT_USERS}, **found.mqtt}
            found = cls(mqtt, found.influx, sensors)
        else:
            found = cls.generate(sensor_ids)
        found.save(directory)
        return found

    @staticmethod
    def password_file(directory: Path) -> Path:
        return directory / "mosquitto.passwd"

    @staticmethod
    def sensor_file(directory: Path) -> Path:
        return directory / "sensors.json"

    def write_password_file(self, path: Path) -> None:
        """Mosquitto's password file, hashed by `mosquitto_passwd` (Debian's mosquitto package)."""
        tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        plain = "".join(f"{user}:{pw}\n" for user, pw in {**self.mqtt, **self.sensors}.items())
        _write_private(path, plain)
        try:
            # -U hashes every plain-text password of the file in one run.
            subprocess.run([tool, "-U", str(path)], check=True, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            path.unlink(missing_ok=True)
            raise CredentialsError(
                f"cannot hash the broker's password file with {tool}: {exc}; "
                "run `apt-get install mosquitto`"
            ) from exc

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
