"""The external contract in code (docs/CONTRACT.md): the values every stage exchanges and the
constants they must agree on, so that no stage imports another to learn them.

Pure values only: nothing here does I/O or reads the clock. The sensor payload decoder that
produces `Reading`, `StatusChange` and `Rejection` is `floodwatch.decode`; the alert events
built from these names are `alerts.events`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, NamedTuple, TypeAlias, get_args

import orjson

# ---- Sensor payloads (CONTRACT section 2) ----------------------------------------------------

MAX_PAYLOAD_BYTES = 256 * 1024
MAX_ITEMS = 1000  # readings in one backfill array
# Physical ranges. Street depth may read a little below the road from noise; beyond that the
# sensor is wrong. The Saigon river stage at Phu An stays within a few metres of datum.
STREET_DEPTH_CM = (-10.0, 300.0)
TIDE_STAGE_CM = (-500.0, 500.0)
DISTANCE_MM = (0.0, 20000.0)
BATTERY_V = (0.0, 15.0)
RSSI_DBM = (-200, 0)
SEQ_MAX = 2**63 - 1
# Readings older than this are certainly a broken clock or a seconds-for-milliseconds mix-up.
EARLIEST_NS = 946_684_800 * 10**9  # 2000-01-01T00:00:00Z
# Sensor clocks drift; beyond this a reading from the future is refused, not stored.
MAX_FUTURE_NS = 5 * 60 * 10**9

# Why a message (or one item of an array) went to the dead letters (CONTRACT section 2).
RejectionCode = Literal[
    "bad_topic",
    "unknown_sensor",
    "too_large",
    "bad_json",
    "bad_payload",
    "empty_array",
    "too_many_items",
    "bad_ts",
    "ts_out_of_range",
    "bad_level",
    "bad_field",
    "not_finite",
    "out_of_range",
    "bad_status",
    "influx_refused",  # decoded, but InfluxDB refused the point
    "conflicting_reading",  # the same (sensor, ts) as a stored reading, with other values
    "retired_sensor",  # an operator retired the sensor (floodwatch.operations)
    # No longer given (the clustered workers move such publishes to their partition); kept for
    # the dead letters stored with it before.
    "unmapped_sensor",
]
REJECTION_CODES: tuple[RejectionCode, ...] = get_args(RejectionCode)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso_time(time_ns: int) -> str:
    """ISO 8601 with offset and milliseconds, in UTC."""
    dt = _EPOCH + timedelta(microseconds=time_ns // 1000)
    return dt.isoformat(timespec="milliseconds")


class Reading(NamedTuple):
    """One validated water-level reading.

    A NamedTuple, not a frozen dataclass: one is built per reading on the hot path, and a
    frozen dataclass's __init__ costs several times more.
    """

    sensor_id: str
    time_ns: int  # epoch nanoseconds, UTC
    level_cm: float  # depth above the road (street) or river stage (tide)
    distance_mm: float | None = None  # the raw distance, when the sensor sent one
    battery_v: float | None = None
    rssi: int | None = None
    seq: int | None = None
    # True when the payload had no `ts` and the receive time stands in for it.
    time_from_receipt: bool = False


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A sensor's `online`/`offline` status (its MQTT will says `offline`)."""

    sensor_id: str
    online: bool
    time_ns: int
    retained: bool


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message, or one item of an array, that failed validation."""

    topic: str
    payload: bytes
    code: RejectionCode
    reason: str
    received_at_ns: int

    def to_json(self) -> bytes:
        """The `deadletter` topic's payload (CONTRACT section 2)."""
        try:
            text, encoding = self.payload.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(self.payload).decode("ascii"), "base64"
        return orjson.dumps(
            {
                "topic": self.topic,
                "payload": text,
                "payload_encoding": encoding,
                "reason": self.reason,
                "code": self.code,
                "received_at": iso_time(self.received_at_ns),
            }
        )


# ---- Alerts (CONTRACT section 3) -------------------------------------------------------------

AlertKind = Literal["flood", "rising", "stale", "battery_low", "fault"]
Change = Literal["raised", "escalated", "deescalated", "acknowledged", "cleared"]
Lifecycle = Literal["active_unack", "active_ack", "cleared_unack", "cleared_ack"]

KINDS: tuple[AlertKind, ...] = ("flood", "rising", "stale", "battery_low", "fault")
CHANGES: tuple[Change, ...] = ("raised", "escalated", "deescalated", "acknowledged", "cleared")
LIFECYCLES: tuple[Lifecycle, ...] = ("active_unack", "active_ack", "cleared_unack", "cleared_ack")
ACTIVE_STATES: frozenset[Lifecycle] = frozenset({"active_unack", "active_ack"})

# Level 0 is "nothing"; a ladder longer than its names gets numbered names. Tide: the Phu An
# gauge's alarms I, II, III.
STREET_LEVEL_NAMES = ("normal", "flooded", "hazard", "impassable", "closed")
TIDE_LEVEL_NAMES = ("normal", "alarm_1", "alarm_2", "alarm_3")

# A sensor is stale after this many missed reporting intervals (rule 7).
STALE_INTERVALS = 3
# battery_low is raised under this voltage (rule 8).
BATTERY_LOW_V = 3.3

# How far back stored events are read (the engine's restore, the API's CAP chains): an alert
# left open, or cleared but never acknowledged, for longer than this is forgotten.
EVENT_MEMORY_NS = 30 * 24 * 3600 * 10**9


def level_name(tide: bool, level: int) -> str:
    """The name of a ladder rung: a street's depth level, or a tide gauge's alarm."""
    names = TIDE_LEVEL_NAMES if tide else STREET_LEVEL_NAMES
    return names[level] if 0 <= level < len(names) else f"level_{level}"


# ---- InfluxDB schema (CONTRACT section 5) ----------------------------------------------------

READING_MEASUREMENT = "water_level"
STATUS_MEASUREMENT = "sensor_status"
DEADLETTER_MEASUREMENT = "deadletter"
ALERT_MEASUREMENT = "alert_event"
EPISODE_MEASUREMENT = "flood_episode"

FieldValue: TypeAlias = float | int | bool | str
