"""Operators' changes to sensors while everything runs (CONTRACT section 6): maintenance,
calibration, thresholds, added and retired sensors, as values every process reads the same way.

The API publishes them on the broker (retained `maintenance/{id}` and `registry/{id}`, and each
change once on `changes/{id}`); ingest, the notifier and the API apply the retained records to
what they hold, so a change reaches them within a second, without a restart. The shipped
registry file stays the base: `apply_overrides(base, overrides)` is the registry in force.

Pure: no I/O, no clock (times are passed in).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

import orjson

from floodwatch.contract import iso_time
from floodwatch.errors import RegistryError
from floodwatch.registry import (
    Registry,
    Sensor,
    search_key,
    sensor_as_properties,
    sensor_from_properties,
)

# A maintenance window is bounded: a forgotten one must end by itself.
MAINTENANCE_MAX_S = 14 * 24 * 3600
MAX_WHO = 200
MAX_REASON = 1000
CHANGE_MEASUREMENT = "sensor_change"

MaintenanceScope = Literal["sensor", "street"]
ChangeKind = Literal[
    "maintenance_started",
    "maintenance_ended",
    "maintenance_expired",
    "calibrated",  # mount_height_mm or thresholds_cm changed
    "sensor_added",
    "sensor_retired",
    "sensor_restored",  # a retired sensor back, or an override dropped (the file's entry again)
]
CHANGE_KINDS: tuple[ChangeKind, ...] = get_args(ChangeKind)
# What an operator may change on a sensor already in the registry.
CALIBRATION_FIELDS = ("mount_height_mm", "thresholds_cm")

_S = 10**9


class OperationError(ValueError):
    """An operator's change is refused; the message says what to fix."""


def check_text(value: str, what: str, limit: int) -> str:
    text = value.strip()
    if not text:
        raise OperationError(f"{what} is required: say it in a few words.")
    if len(text) > limit:
        raise OperationError(f"{what} is {len(text)} characters; keep it to {limit}.")
    return text


# ---- maintenance --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Maintenance:
    """A sensor under maintenance from `since_ns` until `until_ns` (or until ended)."""

    sensor_id: str
    who: str
    reason: str
    since_ns: int
    until_ns: int
    scope: MaintenanceScope = "sensor"
    street: str = ""

    def active_at(self, now_ns: int) -> bool:
        return self.since_ns <= now_ns < self.until_ns

    def to_dict(self) -> dict[str, object]:
        return {
            "sensor": self.sensor_id,
            "who": self.who,
            "reason": self.reason,
            "since": iso_time(self.since_ns),
            "since_ns": self.since_ns,
            "until": iso_time(self.until_ns),
            "until_ns": self.until_ns,
            "scope": self.scope,
            "street": self.street,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_json(cls, sensor_id: str, payload: bytes) -> Maintenance | None:
        """The record on `maintenance/{sensor_id}`; None when empty or not a record (the
        caller treats both as "not under maintenance")."""
        if not payload:
            return None
        try:
            doc = orjson.loads(payload)
            since, until = doc["since_ns"], doc["until_ns"]
            who, reason = doc["who"], doc["reason"]
            scope = doc.get("scope", "sensor")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None
        if not (type(since) is int and type(until) is int and since < until):
            return None
        if not (isinstance(who, str) and isinstance(reason, str)):
            return None
        street = doc.get("street", "")
        return cls(
            sensor_id,
            who,
            reason,
            since,
            until,
            "street" if scope == "street" else "sensor",
            street if isinstance(street, str) else "",
        )


def start_maintenance(
    sensor_id: str,
    who: str,
    reason: str,
    until_ns: int,
    now_ns: int,
    scope: MaintenanceScope = "sensor",
    street: str = "",
) -> Maintenance:
    """A validated maintenance record; raises OperationError (expiry in the past or too far,
    no reason)."""
    who = check_text(who, "who", MAX_WHO)
    reason = check_text(reason, "reason", MAX_REASON)
    if until_ns <= now_ns:
        raise OperationError(
            f"until {iso_time(until_ns)} is not in the future; give when the work ends."
        )
    if until_ns - now_ns > MAINTENANCE_MAX_S * _S:
        raise OperationError(
            f"until {iso_time(until_ns)} is more than {MAINTENANCE_MAX_S // 86400} days away; "
            "put the sensor under maintenance again when that runs out."
        )
    return Maintenance(sensor_id, who, reason, now_ns, until_ns, scope, street)


def street_maintenance_for(
    records: Iterable[Maintenance], sensor: Sensor, now_ns: int
) -> Maintenance | None:
    """The maintenance a sensor added to (or restored on) a street under maintenance takes on:
    a ward operator who puts a street under maintenance means the street, so a sensor that
    joins it during the works is silenced too, until the street's expiry and by the same
    who and why. None when the street is not under maintenance now, or when the sensor holds
    a maintenance of its own (which stands)."""
    active = [r for r in records if r.active_at(now_ns)]
    if any(r.sensor_id == sensor.id for r in active):
        return None
    names = {search_key(sensor.street), search_key(sensor.street_en)}
    street = [r for r in active if r.scope == "street" and search_key(r.street) in names]
    if not street:
        return None
    # Several sensors carry the street's record; the one that runs longest covers the others.
    held = max(street, key=lambda r: (r.until_ns, r.since_ns))
    return Maintenance(
        sensor.id, held.who, held.reason, now_ns, held.until_ns, "street", held.street
    )


def under_maintenance(
    records: Mapping[str, Maintenance], sensor_id: str, now_ns: int
) -> Maintenance | None:
    record = records.get(sensor_id)
    return record if record is not None and record.active_at(now_ns) else None


# ---- registry overrides -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Override:
    """What operators changed on one sensor since the registry file: some properties of a
    sensor in the file, a whole new sensor (`coordinates` given), or a retirement."""

    sensor_id: str
    properties: Mapping[str, object] = field(default_factory=dict)
    coordinates: tuple[float, float] | None = None
    retired: bool = False

    def to_json(self) -> bytes:
        doc: dict[str, object] = {
            "sensor": self.sensor_id,
            "properties": dict(self.properties),
            "retired": self.retired,
        }
        if self.coordinates is not None:
            doc["coordinates"] = list(self.coordinates)
        return orjson.dumps(doc)

    @classmethod
    def from_json(cls, sensor_id: str, payload: bytes) -> Override | None:
        if not payload:
            return None
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("properties", {}), dict):
            return None
        coords = doc.get("coordinates")
        pair: tuple[float, float] | None = None
        if (
            isinstance(coords, list)
            and len(coords) == 2
            and all(isinstance(c, int | float) and math.isfinite(c) for c in coords)
        ):
            pair = (float(coords[0]), float(coords[1]))
        return cls(sensor_id, dict(doc.get("properties", {})), pair, doc.get("retired") is True)


def override_sensor(base: Registry, override: Override) -> Sensor:
    """The sensor an override makes; raises RegistryError (a sentence naming the fix)."""
    where = f"registry override for {override.sensor_id!r}"
    current = base.get(override.sensor_id) or base.retired.get(override.sensor_id)
    if current is None and override.coordinates is None:
        raise RegistryError(
            f"{where}: the sensor is not in the registry; give its coordinates to add it."
        )
    props: dict[str, object] = {} if current is None else sensor_as_properties(current)
    props.update(override.properties)
    props["id"] = override.sensor_id
    if override.coordinates is not None:
        coordinates: list[float] = list(override.coordinates)
    else:
        assert current is not None
        coordinates = [current.lon, current.lat]
    return sensor_from_properties(where, props, coordinates)


def apply_overrides(
    base: Registry, overrides: Mapping[str, Override]
) -> tuple[Registry, list[str]]:
    """The registry in force, and a sentence for each override that could not be applied
    (skipped: the file's entry stands)."""
    sensors = dict(base.sensors)
    retired: dict[str, Sensor] = dict(base.retired)
    problems: list[str] = []
    for sensor_id in sorted(overrides):
        override = overrides[sensor_id]
        try:
            sensor = override_sensor(base, override)
        except RegistryError as exc:
            problems.append(str(exc))
            continue
        if override.retired:
            sensors.pop(sensor_id, None)
            retired[sensor_id] = sensor
        else:
            sensors[sensor_id] = sensor
            retired.pop(sensor_id, None)
    registry = Registry(sensors=sensors, streets=base.streets, source=base.source, retired=retired)
    return registry, problems


class LiveRegistry:
    """The base registry plus the retained overrides seen so far; one owner thread calls it."""

    def __init__(self, base: Registry) -> None:
        self.base = base
        self.overrides: dict[str, Override] = {}
        self.current = base
        self.problems: list[str] = []

    def apply(self, sensor_id: str, payload: bytes) -> Registry | None:
        """Apply a `registry/{id}` message; the new registry, or None when nothing changed."""
        override = Override.from_json(sensor_id, payload)
        if override is None:
            if self.overrides.pop(sensor_id, None) is None:
                return None
        else:
            if self.overrides.get(sensor_id) == override:
                return None
            self.overrides[sensor_id] = override
        registry, self.problems = apply_overrides(self.base, self.overrides)
        if registry == self.current:
            return None
        self.current = registry
        return registry


# ---- the audit: one event per change --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SensorChange:
    """One operator change, published on `changes/{id}` and stored as a `sensor_change` row."""

    sensor_id: str
    change: ChangeKind
    who: str
    why: str
    at_ns: int
    # What changed: e.g. {"mount_height_mm": [2000, 2050]}, or the maintenance record.
    detail: Mapping[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "sensor": self.sensor_id,
            "change": self.change,
            "who": self.who,
            "why": self.why,
            "at": iso_time(self.at_ns),
            "at_ns": self.at_ns,
            "detail": dict(self.detail),
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_json(cls, payload: bytes) -> SensorChange | None:
        try:
            doc = orjson.loads(payload)
            sensor_id, change, who, why, at_ns = (
                doc["sensor"],
                doc["change"],
                doc["who"],
                doc["why"],
                doc["at_ns"],
            )
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None
        detail = doc.get("detail", {})
        if change not in CHANGE_KINDS or type(at_ns) is not int or not isinstance(detail, dict):
            return None
        if not all(isinstance(v, str) for v in (sensor_id, who, why)):
            return None
        return cls(sensor_id, change, who, why, at_ns, detail)

    def influx_point(self) -> tuple[str, dict[str, str], dict[str, str | int], int]:
        """(measurement, tags, fields, time_ns): tagged by sensor and change at the change's
        time, so a redelivered change overwrites itself."""
        fields: dict[str, str | int] = {
            "who": self.who,
            "why": self.why,
            "detail": orjson.dumps(dict(self.detail)).decode(),
        }
        return (
            CHANGE_MEASUREMENT,
            {"sensor": self.sensor_id, "change": self.change},
            fields,
            (self.at_ns),
        )

    @classmethod
    def from_influx(
        cls, tags: Mapping[str, str], fields: Mapping[str, object], time_ns: int
    ) -> SensorChange | None:
        change = tags.get("change")
        if change not in CHANGE_KINDS:
            return None
        try:
            detail = orjson.loads(str(fields.get("detail") or "{}"))
        except orjson.JSONDecodeError:
            detail = {}
        return cls(
            tags.get("sensor", ""),
            change,
            str(fields.get("who") or ""),
            str(fields.get("why") or ""),
            time_ns,
            detail if isinstance(detail, dict) else {},
        )


def calibration_change(
    before: Sensor, patch: Mapping[str, object], who: str, why: str, now_ns: int
) -> tuple[Override, SensorChange]:
    """Validate an operator's calibration patch on `before`: the new override properties and
    the audit event; raises OperationError naming the field to fix."""
    who = check_text(who, "who", MAX_WHO)
    why = check_text(why, "reason", MAX_REASON)
    unknown = sorted(set(patch) - set(CALIBRATION_FIELDS))
    if unknown or not patch:
        raise OperationError(
            f"change {', '.join(CALIBRATION_FIELDS)}; {', '.join(unknown) or 'nothing'} "
            "cannot be changed here."
        )
    if "mount_height_mm" in patch and before.sends != "distance_mm":
        raise OperationError(
            f"sensor {before.id!r} sends level_cm, so it has no mount height to calibrate."
        )
    props = dict(patch)
    base = Registry(sensors={before.id: before}, streets=())
    override = Override(before.id, props)
    try:
        after = override_sensor(base, override)
    except RegistryError as exc:
        raise OperationError(str(exc)) from exc
    detail: dict[str, object] = {}
    for name in CALIBRATION_FIELDS:
        old, new = getattr(before, name), getattr(after, name)
        if name in patch:
            detail[name] = [_jsonable(old), _jsonable(new)]
    change = SensorChange(before.id, "calibrated", who, why, now_ns, detail)
    return override, change


def _jsonable(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value
