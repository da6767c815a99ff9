"""What the alert engine emits: alert events and flood episodes, as frozen values that know how to
become MQTT JSON and InfluxDB points, and how to come back from them (for a restart).

Times are integers in epoch nanoseconds, UTC. JSON carries each time twice: ISO 8601 for people
and `*_ns` integers so that a stored event reads back exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TypeAlias

import orjson

from floodwatch.contract import (
    ALERT_MEASUREMENT,
    CHANGES,
    EPISODE_MEASUREMENT,
    KINDS,
    LIFECYCLES,
    AlertKind,
    Change,
    FieldValue,
    Lifecycle,
    iso_time,
)


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
    raised_ns: int  # the time of the reading that raised the alert (the `t` of its id)
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
        out["raised_at"] = iso_time(self.raised_ns)
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
        """The inverse of to_dict (ISO duplicates are ignored); ValueError if its kind, change
        or state is not one this engine knows."""
        values = {name: doc.get(name, _DEFAULTS.get(name)) for name in _FIELDS}
        for name, allowed in (("kind", KINDS), ("change", CHANGES), ("state", LIFECYCLES)):
            if values[name] not in allowed:
                raise ValueError(
                    f"alert event {values['event_id']!r} has {name} {values[name]!r}, not one of "
                    f"{', '.join(allowed)}; it was written by another version of Floodwatch"
                )
        if values["raised_ns"] is None:
            # Events stored before raised_ns was a field carry it only in their id.
            values["raised_ns"] = _raised_ns_from_id(str(values["alert_id"]))
        return cls(**values)  # type: ignore[arg-type]

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


def _raised_ns_from_id(alert_id: str) -> int:
    try:
        return int(alert_id.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        raise ValueError(
            f"alert event of {alert_id[:120]!r} has no raised_ns and its id does not end in one"
        ) from None


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
