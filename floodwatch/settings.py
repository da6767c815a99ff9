"""One typed settings object per process, from flags or FLOODWATCH_* variables, checked at start.

Every shared setting is declared here, once, with its variable, default and help text; each
process (`python -m ingest|api|simulators`) adds its own options to the same parser.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

from floodwatch.credentials import load_sensor_credentials
from floodwatch.errors import SettingsError
from floodwatch.registry import SHIPPED_REGISTRY

ENV_PREFIX = "FLOODWATCH_"
_TOPIC_ROOT = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")

# --mqtt-protocol's values: MQTT v5 (Mosquitto, the default) or 3.1.1 (NATS's MQTT listener in
# the clustered mode speaks nothing else; docs/CLUSTER.md).
MQTT_V5 = "5"
MQTT_V311 = "3.1.1"
MQTT_PROTOCOLS = (MQTT_V5, MQTT_V311)


def mqtt_protocol(value: object) -> str:
    """--mqtt-protocol's value checked: "5" or "3.1.1", else SettingsError naming the flag."""
    text = str(value).strip()
    if text not in MQTT_PROTOCOLS:
        raise SettingsError(
            f"MQTT protocol {value!r} is not 5 or 3.1.1; use --mqtt-protocol 3.1.1 (or "
            "FLOODWATCH_MQTT_PROTOCOL=3.1.1) for a broker that speaks only MQTT 3.1.1, such as "
            "NATS in the clustered mode, else leave the default 5."
        )
    return text


@dataclass(frozen=True, slots=True)
class MqttEndpoint:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False
    # "5" or "3.1.1" (--mqtt-protocol): which MQTT the connection speaks.
    protocol: str = MQTT_V5

    def __post_init__(self) -> None:
        mqtt_protocol(self.protocol)

    def __str__(self) -> str:  # never print the password
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}@" if self.username else ""
        version = "" if self.protocol == MQTT_V5 else f" (MQTT {self.protocol})"
        return f"{scheme}://{user}{self.host}:{self.port}{version}"


@dataclass(frozen=True, slots=True)
class InfluxEndpoint:
    base_url: str  # scheme://host:port[/path], without credentials
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:
        return self.base_url


@dataclass(frozen=True, slots=True)
class Settings:
    mqtt: MqttEndpoint
    influx: InfluxEndpoint
    influx_db: str
    registry_path: Path
    topic_root: str
    log_level: str
    # Sensor id -> broker password (--sensor-credentials, simulators only): each simulated
    # sensor then logs in as itself, as the broker's ACL requires.
    sensor_logins: Mapping[str, str] = field(default_factory=dict)
    # --time-scale (ingest and the API): how many times faster than real time the street is
    # played; the alert rules' timers and the stale interval run that much faster. 1 in
    # production, the contract's values.
    time_scale: float = 1.0

    def sensor_endpoint(self, sensor_id: str) -> MqttEndpoint:
        """The broker as this sensor (its own login if known, else --mqtt-url's)."""
        password = self.sensor_logins.get(sensor_id)
        if password is None:
            return self.mqtt
        return replace(self.mqtt, username=sensor_id, password=password)


@dataclass(frozen=True, slots=True)
class _Option:
    flag: str
    default: str
    help: str

    @property
    def env(self) -> str:
        return env_name(self.flag)


def option(flag: str, default: str, help: str) -> _Option:
    return _Option(flag, default, help)


COMMON_OPTIONS: tuple[_Option, ...] = (
    option(
        "--mqtt-url",
        "mqtt://127.0.0.1:1883",
        "MQTT broker, mqtt://[user:password@]host[:port] (mqtts:// for TLS)",
    ),
    option(
        "--mqtt-protocol",
        MQTT_V5,
        "MQTT version spoken to the broker: 5 (Mosquitto) or 3.1.1 (the clustered mode's NATS "
        "listener refuses v5); over 3.1.1 a publish the broker denies is dropped without a "
        "word, so refusals cannot be seen",
    ),
    option(
        "--influx-url",
        "http://127.0.0.1:8086",
        "InfluxDB v1 HTTP API, http(s)://[user:password@]host[:port][/path]",
    ),
    option("--influx-db", "floodwatch", "InfluxDB database (created at start if missing)"),
    option(
        "--registry",
        str(SHIPPED_REGISTRY),
        "sensor registry, a GeoJSON FeatureCollection (CONTRACT section 1)",
    ),
    option("--topic-root", "floodwatch", "MQTT topic root; topics live under ROOT/v1/"),
    option("--log-level", "INFO", "logging level: DEBUG, INFO, WARNING or ERROR"),
)


TIME_SCALE = option(
    "--time-scale",
    "1",
    "DEMO ONLY: the street is played this many times faster than real time (the simulator's "
    "--speed with --timestamps wall), so every alert timer (hysteresis hold, rising window, "
    "obstruction and stuck times, stale interval) runs that much faster; 1 keeps the "
    "contract's values",
)


def time_scale_notice(time_scale: float) -> tuple[int, str]:
    """The line a process logs at start about --time-scale: (logging level, message)."""
    if time_scale == 1.0:
        return logging.INFO, (
            "alert timers at the contract's values (time scale 1): 10 min hold, 15 min rising "
            "window, 15 min obstruction, 30 min stuck, stale after 3 intervals"
        )
    return logging.WARNING, (
        f"DEMO time scale {time_scale:g}: every alert timer runs {time_scale:g} times faster "
        f"than the contract (10 min hold = {600 / time_scale:g} s, stale after 3 intervals / "
        f"{time_scale:g}); for a simulated street only, never in production "
        "(unset FLOODWATCH_TIME_SCALE / --time-scale)"
    )


SENSOR_CREDENTIALS = option(
    "--sensor-credentials",
    "",
    "JSON file mapping each sensor id to its broker password; each simulated sensor logs in "
    "with its id as user name (empty: every sensor uses --mqtt-url's login)",
)


def add_options(
    parser: argparse.ArgumentParser,
    options: tuple[_Option, ...],
    environ: Mapping[str, str] | None = None,
) -> None:
    """Add options whose defaults come from FLOODWATCH_* variables, named in each help text."""
    env = os.environ if environ is None else environ
    for opt in options:
        parser.add_argument(
            opt.flag,
            default=env.get(opt.env, opt.default),
            help=f"{opt.help} [env {opt.env}; default {opt.default}]",
        )


def command_parser(
    prog: str, description: str, own_options: tuple[_Option, ...]
) -> argparse.ArgumentParser:
    """A process's parser: its description, the common options, then its own options."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description.rstrip()
        + "\n\nEvery option can also be set with the FLOODWATCH_* variable named in its help.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, COMMON_OPTIONS + own_options)
    return parser


def parse_mqtt_url(url: str, protocol: str = MQTT_V5) -> MqttEndpoint:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise SettingsError(
            f"MQTT URL {url!r} must start with mqtt:// or mqtts://, "
            "for example mqtt://127.0.0.1:1883; fix --mqtt-url or FLOODWATCH_MQTT_URL."
        )
    tls = parts.scheme in ("mqtts", "ssl")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise SettingsError(
            f"MQTT URL {url!r} has an invalid port; use a number from 1 to 65535 "
            "in --mqtt-url or FLOODWATCH_MQTT_URL."
        ) from None
    if not parts.hostname:
        raise SettingsError(
            f"MQTT URL {url!r} names no host; write mqtt://HOST:PORT "
            "in --mqtt-url or FLOODWATCH_MQTT_URL."
        )
    return MqttEndpoint(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
        protocol=mqtt_protocol(protocol),
    )


def parse_influx_url(url: str, flag: str = "--influx-url") -> InfluxEndpoint:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise SettingsError(
            f"InfluxDB URL {url!r} must start with http:// or https://, "
            f"for example http://127.0.0.1:8086; fix {flag} or {env_name(flag)}."
        )
    try:
        port = parts.port
    except ValueError:
        raise SettingsError(
            f"InfluxDB URL {url!r} has an invalid port; use a number from 1 to 65535 "
            f"in {flag} or {env_name(flag)}."
        ) from None
    if not parts.hostname:
        raise SettingsError(
            f"InfluxDB URL {url!r} names no host; write http://HOST:PORT "
            f"in {flag} or {env_name(flag)}."
        )
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = f"{host}:{port}" if port else host
    return InfluxEndpoint(
        base_url=f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Check the common options once; raise SettingsError with the fix in one sentence."""
    db = str(args.influx_db)
    if not db or "\n" in db or '"' in db:
        raise SettingsError(
            f"InfluxDB database name {db!r} is empty or contains a quote or newline; "
            "pick a plain name in --influx-db or FLOODWATCH_INFLUX_DB."
        )
    root = str(args.topic_root)
    if not _TOPIC_ROOT.fullmatch(root):
        raise SettingsError(
            f"topic root {root!r} may hold only letters, digits, '-', '_' and single '/' "
            "between levels (no wildcards); fix --topic-root or FLOODWATCH_TOPIC_ROOT."
        )
    level = str(args.log_level).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(
            f"log level {args.log_level!r} is not DEBUG, INFO, WARNING or ERROR; "
            "fix --log-level or FLOODWATCH_LOG_LEVEL."
        )
    registry = Path(args.registry)
    if not registry.is_file():
        raise SettingsError(
            f"sensor registry {str(registry)!r} does not exist or is not a file; "
            "point --registry or FLOODWATCH_REGISTRY at a GeoJSON file."
        )
    return Settings(
        mqtt=parse_mqtt_url(str(args.mqtt_url), str(getattr(args, "mqtt_protocol", MQTT_V5))),
        influx=parse_influx_url(str(args.influx_url)),
        influx_db=db,
        registry_path=registry,
        topic_root=root,
        log_level=level,
        sensor_logins=(
            load_sensor_credentials(Path(logins))
            if (logins := str(getattr(args, "sensor_credentials", "") or ""))
            else {}
        ),
        time_scale=real_number(getattr(args, "time_scale", "1"), "--time-scale", positive=True),
    )


def env_name(flag: str) -> str:
    """The FLOODWATCH_* variable that stands for a flag: --max-batch -> FLOODWATCH_MAX_BATCH."""
    return ENV_PREFIX + flag.removeprefix("--").replace("-", "_").upper()


def whole_number(value: object, flag: str, minimum: int = 0, maximum: int | None = None) -> int:
    """An integer option within bounds, or SettingsError naming the flag and its variable."""
    try:
        number = int(str(value))
    except ValueError:
        number = minimum - 1
    if number < minimum or (maximum is not None and number > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f"of {minimum} or more"
        raise SettingsError(
            f"{flag} {value!r} must be a whole number {bounds}; fix {flag} or {env_name(flag)}."
        )
    return number


def real_number(value: object, flag: str, *, positive: bool) -> float:
    """A finite number option (> 0 when `positive`, else >= 0), or SettingsError."""
    try:
        number = float(str(value))
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        what = "greater than 0" if positive else "of 0 or more"
        raise SettingsError(
            f"{flag} {value!r} must be a finite number {what}; fix {flag} or {env_name(flag)}."
        )
    return number


def configure_logging(level: str, process: str) -> None:
    """One log format for every Floodwatch process; HTTP clients' per-request lines muted."""
    logging.basicConfig(level=level, format=f"%(asctime)s {process} %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
