"""What the alert engine emits: alert events and flood episodes, as frozen values that know how to
become MQTT JSON and InfluxDB points, and how to come back from them (for a restart).

Times are integers in epoch nanoseconds, UTC. JSON carries each time twice: ISO 8601 for people
and `*_ns` integers so that a stored event reads back exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal, TypeAlias

import orjson

from ingest.decode import iso_time

AlertKind = Literal["flood", "rising", "stale", "battery_low", "fault"]
Change = Literal["raised", "escalated", "deescalated", "acknowledged", "cleared"]
Lifecycle = Literal["active_unack", "active_ack", "cleared_unack", "cleared_ack"]
FieldValue: TypeAlias = float | int | bool | str

KINDS: tuple[AlertKind, ...] = ("flood", "rising", "stale", "battery_low", "fault")
CHANGES: tuple[Change, ...] = ("raised", "escalated", "deescalated", "acknowledged", "cleared")
LIFECYCLES: tuple[Lifecycle, ...] = ("active_unack", "active_ack", "cleared_unack", "cleared_ack")

# CONTRACT section 3. Level 0 is "nothing"; a ladder longer than its names gets numbered names.
STREET_LEVEL_NAMES = ("normal", "flooded", "hazard", "impassable", "closed")
TIDE_LEVEL_NAMES = ("normal", "alarm_1", "alarm_2", "alarm_3")

ALERT_MEASUREMENT = "alert_event"
# How far back stored events are read (the engine's restore, the API's CAP chains): an alert
# left open, or cleared but never acknowledged, for longer than this is forgotten.
EVENT_MEMORY_NS = 30 * 24 * 3600 * 10**9
EPISODE_MEASUREMENT = "flood_episode"


def level_name(tide: bool, level: int) -> str:
    names = TIDE_LEVEL_NAMES if tide else STREET_LEVEL_NAMES
    return names[level] if level < len(names) else f"level_{level}"


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One change of one alert. Ids are deterministic, so a replay emits the same ids.

    `alert_id` is `{sensor}:{kind}:{t}` with `t` the time of the reading that raised it;
    `event_id` is `{alert_id}:{change}:{t}` with `t` the time of the reading that caused the
    change (the operator's time for an acknowledgement). `seq` counts the alert's events from 1.
    `level` and `level_name` are the flood alert's own level (0 once cleared); other kinds
    have none (None, left out of the JSON): a battery or stale alert is not "flooded".
    """

    event_id: str
    alert_id: str
    seq: int
    sensor_id: str
    street: str
    kind: AlertKind
    change: Change
    state: Lifecycle
    level: int | None
    level_name: str | None
    at_ns: int  # when the engine decided (the `now_ns` it was given)
    reading_time_ns: int | None  # the reading behind the change; None for acknowledgements
    depth_cm: float | None = None  # that reading's depth (stale, ack: the last known depth)
    detail: str = ""  # fault: out_of_range | obstructed | stuck; rising: the rise
    battery_v: float | None = None  # battery_low only
    rise_cm: float | None = None  # rising only: the rise over the window
    peak_cm: float | None = None  # flood only: the alert's deepest reading so far
    peak_ns: int | None = None
    episode_id: str | None = None  # flood on street sensors: the flood episode it belongs to
    who: str | None = None  # set once acknowledged, until an escalation needs a new ack
    note: str | None = None
    acked_ns: int | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready, with ISO times beside the exact nanoseconds."""
        out: dict[str, object] = {k: v for k, v in asdict(self).items() if v is not None}
        out["at"] = iso_time(self.at_ns)
        if self.reading_time_ns is not None:
            out["reading_time"] = iso_time(self.reading_time_ns)
        if self.peak_ns is not None:
            out["peak_time"] = iso_time(self.peak_ns)
        if self.acked_ns is not None:
            out["acked_at"] = iso_time(self.acked_ns)
        return out

    def to_json(self) -> bytes:
        """The event as JSON, for MQTT and the SSE stream."""
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, doc: Mapping[str, object]) -> AlertEvent:
        """The inverse of to_dict (ISO duplicates are ignored)."""
        return cls(**{name: doc.get(name, _DEFAULTS.get(name)) for name in _FIELDS})  # type: ignore[arg-type]

    @classmethod
    def from_json(cls, payload: bytes | str) -> AlertEvent:
        doc = orjson.loads(payload)
        if not isinstance(doc, dict):
            raise ValueError("an alert event is a JSON object")
        return cls.from_dict(doc)

    def influx_point(self) -> tuple[str, dict[str, str], dict[str, FieldValue], int]:
        """(measurement, tags, fields, time_ns) for `ingest.line_protocol.encode_point`.

        Tagged by sensor, kind and change, and timed by the reading behind the change, so a
        replayed event overwrites itself and two changes of one alert never share a point.
        """
        tags = {"sensor": self.sensor_id, "kind": self.kind, "change": self.change}
        fields: dict[str, FieldValue] = {
            k: v
            for k, v in asdict(self).items()
            if v is not None and k not in ("sensor_id", "kind", "change")
        }
        time_ns = self.at_ns if self.reading_time_ns is None else self.reading_time_ns
        return ALERT_MEASUREMENT, tags, fields, time_ns

    @classmethod
    def from_influx(cls, tags: Mapping[str, str], fields: Mapping[str, object]) -> AlertEvent:
        """An event read back from InfluxDB (tags and fields as `influx_point` wrote them)."""
        doc: dict[str, object] = dict(fields)
        doc["sensor_id"], doc["kind"], doc["change"] = tags["sensor"], tags["kind"], tags["change"]
        # InfluxQL answers floats that happen to be whole as JSON integers.
        for name in ("depth_cm", "battery_v", "rise_cm", "peak_cm"):
            value = doc.get(name)
            if isinstance(value, int):
                doc[name] = float(value)
        return cls.from_dict(doc)


_FIELDS = AlertEvent.__dataclass_fields__.keys()
_DEFAULTS: dict[str, object] = {"detail": ""}


@dataclass(frozen=True, slots=True)
class FloodEpisode:
    """One flood episode of the ward: from the first street sensor entering level 1 until the
    last one clears. Depths are street depths only (tide gauges have their own alerts)."""

    episode_id: str  # "flood:{start_ns}"
    start_ns: int
    end_ns: int
    peak_cm: float
    peak_ns: int
    peak_sensor_id: str
    max_level: int
    max_level_name: str
    streets: tuple[str, ...]
    sensors: tuple[str, ...]

    @property
    def minutes_to_peak(self) -> float:
        return (self.peak_ns - self.start_ns) / 60e9

    @property
    def minutes_to_drain(self) -> float:
        return (self.end_ns - self.peak_ns) / 60e9

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = asdict(self)
        out["streets"], out["sensors"] = list(self.streets), list(self.sensors)
        out["start"], out["end"] = iso_time(self.start_ns), iso_time(self.end_ns)
        out["peak_time"] = iso_time(self.peak_ns)
        out["minutes_to_peak"] = round(self.minutes_to_peak, 2)
        out["minutes_to_drain"] = round(self.minutes_to_drain, 2)
        return out

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    def influx_point(self) -> tuple[str, dict[str, str], dict[str, FieldValue], int]:
        """(measurement, tags, fields, time_ns): one point per episode, at its start."""
        fields: dict[str, FieldValue] = {
            "episode_id": self.episode_id,
            "end_ns": self.end_ns,
            "peak_cm": self.peak_cm,
            "peak_ns": self.peak_ns,
            "peak_sensor": self.peak_sensor_id,
            "max_level": self.max_level,
            "max_level_name": self.max_level_name,
            "minutes_to_peak": self.minutes_to_peak,
            "minutes_to_drain": self.minutes_to_drain,
            # Line protocol has no lists: JSON arrays in strings.
            "streets": orjson.dumps(list(self.streets)).decode(),
            "sensors": orjson.dumps(list(self.sensors)).decode(),
        }
        return EPISODE_MEASUREMENT, {}, fields, self.start_ns


Event: TypeAlias = AlertEvent | FloodEpisode
