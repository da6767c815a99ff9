"""The alert engine's state as values: per-sensor numpy arrays for everything judged per reading,
small mappings for the few open alerts, and the conversion of decoded readings into arrays.

Nothing here changes in place: the engine copies what it updates and returns a new state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from alerts._vector import NO_TIME, Bools, Floats, Ints
from alerts.errors import UnknownSensor
from alerts.events import AlertEvent
from floodwatch.contract import (
    ACTIVE_STATES,
    STREET_DEPTH_CM,
    TIDE_STAGE_CM,
    AlertKind,
    Change,
    Lifecycle,
    Reading,
)
from floodwatch.registry import Registry

NEVER = np.iinfo(np.int64).min  # "no reading judged yet"


@dataclass(frozen=True, slots=True)
class ReadingArrays:
    """A batch of readings as columns: sensor index, time, depth, battery (NaN when not sent)."""

    sensor: NDArray[np.int32]
    time_ns: Ints
    level_cm: Floats
    battery_v: Floats

    def __len__(self) -> int:
        return len(self.sensor)

    def take(self, idx: NDArray[np.intp] | Bools) -> ReadingArrays:
        return ReadingArrays(
            self.sensor[idx], self.time_ns[idx], self.level_cm[idx], self.battery_v[idx]
        )

    @classmethod
    def empty(cls) -> ReadingArrays:
        return cls(
            np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0)
        )

    @classmethod
    def concat(cls, parts: Sequence[ReadingArrays]) -> ReadingArrays:
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.sensor for p in parts]),
            np.concatenate([p.time_ns for p in parts]),
            np.concatenate([p.level_cm for p in parts]),
            np.concatenate([p.battery_v for p in parts]),
        )


def readings_to_arrays(
    readings: Sequence[Reading], sensor_index: Mapping[str, int]
) -> ReadingArrays:
    """Decoded readings as columns (one pass in Python; everything after it is vectorised)."""
    if not readings:
        return ReadingArrays.empty()
    sensor_ids, times, levels, _, batteries, *_ = zip(*readings, strict=True)
    try:
        sensor = np.array([sensor_index[s] for s in sensor_ids], dtype=np.int32)
    except KeyError as exc:
        raise UnknownSensor(str(exc.args[0])) from exc
    return ReadingArrays(
        sensor,
        np.array(times, dtype=np.int64),
        np.array(levels, dtype=np.float64),
        # None becomes NaN in a float64 array.
        np.array(batteries, dtype=np.float64),
    )


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """What the registry says, as arrays indexed by sensor; fixed for the engine's life."""

    sensor_ids: tuple[str, ...]
    index: Mapping[str, int]
    streets: tuple[str, ...]  # distinct street names, in registry order
    street_of: NDArray[np.int32]
    tide: Bools
    thresholds: Floats  # (sensors, levels), each row increasing, padded with +inf
    n_levels: NDArray[np.int8]
    interval_ns: Ints
    range_lo: Floats
    range_hi: Floats
    # How many times faster than its readings' own clock the street is played (the demo's
    # --time-scale): every duration of the rules is divided by it. 1 = the contract's values.
    time_scale: float = 1.0

    @property
    def n(self) -> int:
        return len(self.sensor_ids)

    @property
    def max_levels(self) -> int:
        return int(self.thresholds.shape[1])


def config_from_registry(registry: Registry, time_scale: float = 1.0) -> EngineConfig:
    if not time_scale > 0:
        raise ValueError(f"time_scale must be above 0 (1 = real time), not {time_scale}")
    sensors = list(registry.sensors.values())
    ids = tuple(s.id for s in sensors)
    streets = tuple(dict.fromkeys(s.street for s in sensors))
    street_number = {name: i for i, name in enumerate(streets)}
    width = max(len(s.thresholds_cm) for s in sensors)
    thresholds = np.full((len(sensors), width), np.inf)
    for i, s in enumerate(sensors):
        thresholds[i, : len(s.thresholds_cm)] = s.thresholds_cm
    tide = np.array([s.kind == "tide" for s in sensors], dtype=np.bool_)
    return EngineConfig(
        sensor_ids=ids,
        index={sid: i for i, sid in enumerate(ids)},
        streets=streets,
        street_of=np.array([street_number[s.street] for s in sensors], dtype=np.int32),
        tide=tide,
        thresholds=thresholds,
        n_levels=np.array([len(s.thresholds_cm) for s in sensors], dtype=np.int8),
        interval_ns=np.array([round(s.interval_s * 1e9) for s in sensors], dtype=np.int64),
        range_lo=np.where(tide, TIDE_STAGE_CM[0], STREET_DEPTH_CM[0]),
        range_hi=np.where(tide, TIDE_STAGE_CM[1], STREET_DEPTH_CM[1]),
        time_scale=float(time_scale),
    )


@dataclass(frozen=True, slots=True)
class SensorArrays:
    """Everything the engine remembers per sensor, one array element per sensor."""

    # The last reading judged (any reading, even one not trusted as water).
    last_ns: Ints
    # When the engine last heard the sensor: the `now` of the last step that brought one of its
    # readings (rule 7 times silence by arrival, not by the sensor's own clock).
    heard_ns: Ints
    last_cm: Floats
    # The reading before it, so one low outlier cannot fake a jump: NaN if unknown, -inf if
    # it was obstructed (known, but not water).
    before_last_cm: Floats
    # The last reading trusted as water: the "last known depth" of a stale or blind sensor.
    last_water_ns: Ints
    last_water_cm: Floats
    last_battery_v: Floats
    # Plausibility: a vehicle or obstruction under a distance sensor.
    obst_on: Bools
    obst_base: Floats  # the water level the open obstruction started from
    obst_since: Ints
    prev_moving: Bools  # the last reading moved like water (rule 3)
    flat_since: Ints  # first reading of the current run of one unchanging value
    # Flood ladder.
    prev_raw: NDArray[np.int8]  # ladder level of the last water reading, for the debounce
    level: NDArray[np.int8]  # the confirmed level
    below_since: Ints  # (sensors, levels): start of the run below threshold - hysteresis
    peak_cm: Floats  # the open flood alert's deepest reading
    peak_ns: Ints
    # Rate of rise.
    prev_rise: Bools
    calm_since: Ints
    rise_on: Bools
    # Health.
    prev_fault: Bools
    fault_on: Bools
    prev_batt_low: Bools
    batt_on: Bools
    stale_on: Bools
    late_ignored: Ints  # readings not judged because they were older than last_ns
    # The latest stamp of a reading from the future judged at its arrival (rule 1): one
    # stamped no later is a redelivery, never judged twice.
    ahead_ns: Ints

    def copy(self) -> SensorArrays:
        return SensorArrays(**{f.name: getattr(self, f.name).copy() for f in fields(self)})

    def evolve(self, **changes: Any) -> SensorArrays:
        return replace(self, **changes)


def initial_arrays(n: int, levels: int) -> SensorArrays:
    def times(value: int) -> Ints:
        return np.full(n, value, dtype=np.int64)

    def no() -> Bools:
        return np.zeros(n, dtype=np.bool_)

    return SensorArrays(
        last_ns=times(NEVER),
        heard_ns=times(NEVER),
        last_cm=np.full(n, np.nan),
        before_last_cm=np.full(n, np.nan),
        last_water_ns=times(NEVER),
        last_water_cm=np.full(n, np.nan),
        last_battery_v=np.full(n, np.nan),
        obst_on=no(),
        obst_base=np.full(n, np.nan),
        obst_since=times(NEVER),
        prev_moving=no(),
        flat_since=times(NEVER),
        prev_raw=np.zeros(n, dtype=np.int8),
        level=np.zeros(n, dtype=np.int8),
        below_since=np.full((n, levels), NO_TIME, dtype=np.int64),
        peak_cm=np.full(n, np.nan),
        peak_ns=times(NEVER),
        prev_rise=no(),
        calm_since=times(NO_TIME),
        rise_on=no(),
        prev_fault=no(),
        fault_on=no(),
        prev_batt_low=no(),
        batt_on=no(),
        stale_on=no(),
        late_ignored=times(0),
        ahead_ns=times(NEVER),
    )


@dataclass(frozen=True, slots=True)
class Alert:
    """One open alert: active, or cleared but not yet acknowledged.

    The one model of an alert: its events (`AlertEvent`) are made from it by `event`, and it is
    made back from its latest event by `from_event` (a restart); `raised` makes a new one. Every
    field of an Alert is also a field of its events, so nothing is lost either way.
    """

    alert_id: str
    sensor_id: str
    kind: AlertKind
    state: Lifecycle
    level: int  # flood: its current level (0 once cleared); other kinds: 0
    raised_ns: int  # time of the reading that raised it
    reading_time_ns: int  # time of the reading behind its latest change
    depth_cm: float | None
    seq: int  # events so far
    detail: str = ""
    peak_cm: float | None = None
    peak_ns: int | None = None
    episode_id: str | None = None
    who: str | None = None
    note: str | None = None
    acked_ns: int | None = None
    # When its state or level last changed (the engine's `now` then): raised, escalated,
    # de-escalated, acknowledged or cleared.
    changed_ns: int | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @classmethod
    def raised(
        cls,
        sensor_id: str,
        kind: AlertKind,
        time_ns: int,
        *,
        level: int,
        depth_cm: float | None,
        detail: str = "",
        peak_cm: float | None = None,
        peak_ns: int | None = None,
        episode_id: str | None = None,
        changed_ns: int | None = None,
    ) -> Alert:
        """A new alert, raised by the reading taken at `time_ns` (rule 10: active_unack);
        `changed_ns`: when the engine raised it (its `now`)."""
        return cls(
            alert_id=f"{sensor_id}:{kind}:{time_ns}",
            sensor_id=sensor_id,
            kind=kind,
            state="active_unack",
            level=level if kind == "flood" else 0,
            raised_ns=time_ns,
            reading_time_ns=time_ns,
            depth_cm=depth_cm,
            seq=1,
            detail=detail,
            peak_cm=peak_cm,
            peak_ns=peak_ns,
            episode_id=episode_id,
            changed_ns=changed_ns,
        )

    def event(
        self,
        change: Change,
        *,
        at_ns: int,
        reading_time_ns: int | None,
        street: str,
        level: int | None,
        level_name: str | None,
        battery_v: float | None = None,
        rise_cm: float | None = None,
    ) -> AlertEvent:
        """The event of a change that left the alert as it is now. `reading_time_ns`: the
        reading behind the change (None for an acknowledgement, timed `at_ns`); `level`: the
        flood alert's level, None for the other kinds (a battery alert is not "flooded")."""
        key = at_ns if reading_time_ns is None else reading_time_ns
        return AlertEvent(
            event_id=f"{self.alert_id}:{change}:{key}",
            alert_id=self.alert_id,
            seq=self.seq,
            sensor_id=self.sensor_id,
            street=street,
            kind=self.kind,
            change=change,
            state=self.state,
            level=level,
            level_name=level_name,
            at_ns=at_ns,
            reading_time_ns=reading_time_ns,
            raised_ns=self.raised_ns,
            depth_cm=self.depth_cm,
            detail=self.detail,
            battery_v=battery_v,
            rise_cm=rise_cm,
            peak_cm=self.peak_cm,
            peak_ns=self.peak_ns,
            episode_id=self.episode_id,
            who=self.who,
            note=self.note,
            acked_ns=self.acked_ns,
        )

    @classmethod
    def from_event(cls, event: AlertEvent, reading_time_ns: int | None = None) -> Alert:
        """The alert as its latest event left it. `reading_time_ns`: the time of the reading
        behind its latest change that had one (an acknowledgement has none); by default the
        event's own, or the raise's."""
        if reading_time_ns is None:
            reading_time_ns = event.reading_time_ns
        return cls(
            alert_id=event.alert_id,
            sensor_id=event.sensor_id,
            kind=event.kind,
            state=event.state,
            level=(event.level or 0) if event.kind == "flood" else 0,
            raised_ns=event.raised_ns,
            reading_time_ns=event.raised_ns if reading_time_ns is None else reading_time_ns,
            depth_cm=event.depth_cm,
            seq=event.seq,
            detail=event.detail,
            peak_cm=event.peak_cm,
            peak_ns=event.peak_ns,
            episode_id=event.episode_id,
            who=event.who,
            note=event.note,
            acked_ns=event.acked_ns,
            changed_ns=event.at_ns,
        )


@dataclass(frozen=True, slots=True)
class OpenEpisode:
    """The ward's flood episode in progress (closed into a FloodEpisode when the last street
    sensor clears)."""

    episode_id: str
    start_ns: int
    peak_cm: float
    peak_ns: int
    peak_sensor_id: str
    max_level: int
    sensors: frozenset[str]


@dataclass(frozen=True, slots=True)
class EngineState:
    """The whole engine state: pass it to `step`, keep what it returns."""

    config: EngineConfig
    arrays: SensorArrays
    # The last TAIL_NS of water readings per sensor, for windows that reach into past batches.
    tail: ReadingArrays
    alerts: Mapping[str, Alert]  # open alerts by id
    active: Mapping[tuple[str, AlertKind], str]  # (sensor, kind) -> id of its active alert
    episode: OpenEpisode | None
    start_ns: int  # when this engine started: the stale clock of sensors never heard from

    @property
    def sensor_index(self) -> Mapping[str, int]:
        return self.config.index


def new_state(registry: Registry, now_ns: int, time_scale: float = 1.0) -> EngineState:
    """A fresh engine for the registry's sensors, started at `now_ns`; `time_scale` > 1 runs
    every timer of the rules that many times faster (a demo played faster than real time)."""
    config = config_from_registry(registry, time_scale)
    return EngineState(
        config=config,
        arrays=initial_arrays(config.n, config.max_levels),
        tail=ReadingArrays.empty(),
        alerts={},
        active={},
        episode=None,
        start_ns=now_ns,
    )
