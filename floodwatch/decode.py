"""Decode and validate what sensors publish (CONTRACT section 2), as pure functions over bytes.

Shared by every stage that reads sensor topics (ingest stores what this accepts; the API's
live feed and the alert scoring bench accept exactly the same), so it lives in floodwatch.

Nothing here does I/O or reads the clock: the receive time is passed in. Nothing here raises
on bad input either: every message comes back as readings, rejections, or both (an array
with some bad items keeps its good ones). Each rejection carries a short `code` for counting
and a `reason` sentence for people.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from floodwatch.contract import (
    BATTERY_V,
    DISTANCE_MM,
    EARLIEST_NS,
    MAX_FUTURE_NS,
    MAX_ITEMS,
    MAX_PAYLOAD_BYTES,
    RSSI_DBM,
    SEQ_MAX,
    STREET_DEPTH_CM,
    TIDE_STAGE_CM,
    Reading,
    Rejection,
    RejectionCode,
    StatusChange,
)
from floodwatch.registry import Registry, Sensor
from floodwatch.topics import Topics

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Decoded:
    readings: list[Reading]
    statuses: list[StatusChange]
    rejections: list[Rejection]


class _Invalid(Exception):
    """Internal: one field is wrong; carries the code and the sentence."""

    def __init__(self, code: RejectionCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def decode_message(
    topics: Topics,
    registry: Registry,
    topic: str,
    payload: bytes,
    received_at_ns: int,
    retained: bool = False,
) -> Decoded:
    """Judge one MQTT message; never raises on any topic or payload."""
    parsed = topics.parse_sensor_topic(topic)
    if parsed is None:
        return _reject(
            topic,
            payload,
            received_at_ns,
            "bad_topic",
            f"topic {topic!r} is not {topics.base}/sensors/{{id}}/reading or /status",
        )
    sensor_id, channel = parsed
    sensor = registry.get(sensor_id)
    if sensor is None and sensor_id in registry.retired:
        return _reject(
            topic,
            payload,
            received_at_ns,
            "retired_sensor",
            f"sensor {sensor_id[:80]!r} is retired: take it down, or restore it in the registry",
        )
    if sensor is None:
        return _reject(
            topic,
            payload,
            received_at_ns,
            "unknown_sensor",
            f"unknown sensor {sensor_id[:80]!r}: add it to the registry or fix the topic",
        )
    if channel == "status":
        return _decode_status(sensor, topic, payload, received_at_ns, retained)
    return decode_readings(sensor, topic, payload, received_at_ns)


def decode_readings(sensor: Sensor, topic: str, payload: bytes, received_at_ns: int) -> Decoded:
    """A reading object or an array of them (a backfill) for a known sensor."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return _reject(
            topic,
            payload,
            received_at_ns,
            "too_large",
            f"payload is {len(payload)} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit; "
            f"send backfills as arrays of at most {MAX_ITEMS} readings",
        )
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return _reject(topic, payload, received_at_ns, "bad_json", _json_reason(payload, exc))
    if isinstance(doc, dict):
        try:
            reading = _reading(doc, sensor, received_at_ns)
        except _Invalid as bad:
            return _reject(topic, payload, received_at_ns, bad.code, bad.reason)
        return Decoded([reading], [], [])
    if isinstance(doc, list):
        if not doc:
            return _reject(
                topic, payload, received_at_ns, "empty_array", "the array holds no readings"
            )
        if len(doc) > MAX_ITEMS:
            return _reject(
                topic,
                payload,
                received_at_ns,
                "too_many_items",
                f"the array holds {len(doc)} readings; send at most {MAX_ITEMS} per message",
            )
        readings: list[Reading] = []
        rejections: list[Rejection] = []
        for index, item in enumerate(doc):
            try:
                if not isinstance(item, dict):
                    raise _Invalid("bad_payload", f"must be a JSON object, got {_kind(item)}")
                readings.append(_reading(item, sensor, received_at_ns, index))
            except _Invalid as bad:
                rejections.append(
                    Rejection(
                        topic,
                        orjson.dumps(item),
                        bad.code,
                        f"item {index} of {len(doc)}: {bad.reason}",
                        received_at_ns,
                    )
                )
        return Decoded(readings, [], rejections)
    return _reject(
        topic,
        payload,
        received_at_ns,
        "bad_payload",
        f"payload must be a JSON object or array of objects, got {_kind(doc)}",
    )


def _reading(doc: dict[str, Any], sensor: Sensor, received_at_ns: int, index: int = 0) -> Reading:
    # The hot path of ingest: the usual types (int ts, float values, int rssi and seq) are
    # checked inline, and the helpers are called only for the rest, which they convert or
    # refuse. orjson never yields NaN or infinity, but the range checks refuse them anyway.
    ts = doc.get("ts")
    if ts is None:
        # Items of one array without ts share a receive time; a nanosecond apart each, they
        # stay separate points instead of overwriting one another.
        time_ns, from_receipt = received_at_ns + index, True
    else:
        time_ns = ts * 1_000_000 if type(ts) is int else _time_ns(ts)
        from_receipt = False
        if time_ns < EARLIEST_NS:
            raise _Invalid(
                "ts_out_of_range",
                f"ts {ts!r} is before 2000-01-01; epoch times are in milliseconds",
            )
        if time_ns > received_at_ns + MAX_FUTURE_NS:
            ahead = (time_ns - received_at_ns) / 1e9
            raise _Invalid(
                "ts_out_of_range",
                f"ts {ts!r} is {ahead:.0f} s ahead of the receive time; check the sensor's clock",
            )

    level = doc.get("level_cm")
    distance = doc.get("distance_mm")
    if (level is None) == (distance is None):
        raise _Invalid("bad_level", "send exactly one of level_cm or distance_mm")
    distance_mm: float | None = None
    if level is None:
        distance_mm = distance if type(distance) is float else _number(distance, "distance_mm")
        if sensor.mount_height_mm is None:
            raise _Invalid(
                "bad_level",
                f"sensor {sensor.id!r} has no mount_height_mm in the registry, "
                "so distance_mm cannot become a depth; send level_cm or add it",
            )
        if not DISTANCE_MM[0] <= distance_mm <= DISTANCE_MM[1]:
            _finite(distance_mm, "distance_mm")
            raise _Invalid(
                "out_of_range",
                f"distance_mm {distance_mm:g} is outside {DISTANCE_MM[0]:g} to {DISTANCE_MM[1]:g}",
            )
        level_cm = (sensor.mount_height_mm - distance_mm) / 10.0
    else:
        level_cm = level if type(level) is float else _number(level, "level_cm")
    low, high = TIDE_STAGE_CM if sensor.kind == "tide" else STREET_DEPTH_CM
    if not low <= level_cm <= high:
        _finite(level_cm, "level_cm")
        what = "river stage" if sensor.kind == "tide" else "depth"
        raise _Invalid(
            "out_of_range",
            f"{what} {level_cm:g} cm is outside the physical range {low:g} to {high:g} cm",
        )

    battery_v = doc.get("battery_v")
    if battery_v is not None:
        if type(battery_v) is not float:
            battery_v = _number(battery_v, "battery_v")
        if not BATTERY_V[0] <= battery_v <= BATTERY_V[1]:
            _finite(battery_v, "battery_v")
            raise _Invalid("out_of_range", f"battery_v {battery_v:g} is outside 0 to 15 V")
    rssi = doc.get("rssi")
    if rssi is not None:
        if type(rssi) is not int:
            raise _not_integer(rssi, "rssi")
        if not RSSI_DBM[0] <= rssi <= RSSI_DBM[1]:
            raise _Invalid("out_of_range", f"rssi {rssi} is outside -200 to 0 dBm")
    seq = doc.get("seq")
    if seq is not None:
        if type(seq) is not int:
            raise _not_integer(seq, "seq")
        if not 0 <= seq <= SEQ_MAX:
            raise _Invalid("out_of_range", f"seq {seq} is outside 0 to 2^63-1")
    return Reading(sensor.id, time_ns, level_cm, distance_mm, battery_v, rssi, seq, from_receipt)


def _time_ns(ts: object) -> int:
    """A `ts` that is not epoch milliseconds (those are converted inline): ISO 8601, or bad."""
    if type(ts) is str:
        try:
            dt = datetime.fromisoformat(ts)
        except ValueError:
            raise _Invalid(
                "bad_ts", f"ts {ts[:60]!r} is not ISO 8601 (e.g. 2026-11-26T18:05:00+07:00)"
            ) from None
        if dt.tzinfo is None:
            raise _Invalid("bad_ts", f"ts {ts[:60]!r} has no UTC offset; add one, e.g. +07:00 or Z")
        try:
            return ((dt - _EPOCH) // _ONE_US) * 1000
        except OverflowError:
            raise _Invalid("ts_out_of_range", f"ts {ts[:60]!r} is out of range") from None
    raise _Invalid(
        "bad_ts", f"ts must be an ISO 8601 string or integer epoch milliseconds, got {_kind(ts)}"
    )


def _number(value: object, name: str) -> float:
    """A number field that is not a float (floats are taken inline): an int, or bad."""
    if type(value) is int:
        return float(value)
    raise _Invalid("bad_field", f"{name} must be a number, got {_kind(value)}")


def _finite(value: float, name: str) -> None:
    """Called when a range check fails: say NaN or infinity for what it is."""
    if not math.isfinite(value):
        raise _Invalid("not_finite", f"{name} is {value}, not a finite number")


def _not_integer(value: object, name: str) -> _Invalid:
    return _Invalid("bad_field", f"{name} must be an integer, got {_kind(value)}")


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _json_reason(payload: bytes, exc: orjson.JSONDecodeError) -> str:
    # orjson refuses NaN and Infinity like any other typo; say so plainly, since sensors
    # that send them mean a broken measurement rather than broken JSON.
    try:
        json.loads(payload)
    except (ValueError, RecursionError):
        pass
    else:
        return "payload contains NaN or Infinity, which are not numbers in JSON"
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return "payload is not UTF-8 text"
    return f"payload is not valid JSON: {exc}"


def _decode_status(
    sensor: Sensor, topic: str, payload: bytes, received_at_ns: int, retained: bool
) -> Decoded:
    text = payload.strip().lower()
    if text in (b"online", b"offline"):
        return Decoded(
            [], [StatusChange(sensor.id, text == b"online", received_at_ns, retained)], []
        )
    return _reject(
        topic, payload, received_at_ns, "bad_status", "status payload must be 'online' or 'offline'"
    )


def _reject(
    topic: str, payload: bytes, received_at_ns: int, code: RejectionCode, reason: str
) -> Decoded:
    return Decoded([], [], [Rejection(topic, payload, code, reason, received_at_ns)])
