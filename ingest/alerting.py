"""Where readings are decided, in the running pipeline: the thin shell around the pure alert
engine (alerts/). It owns the engine state and applies, one at a time, the batches ingest has
stored, the periodic stale check and operators' acknowledgements; it stores every event in
InfluxDB, republishes the sensor's retained state on `alerts/{id}`, and publishes each event
on `events/{id}`. At start it rebuilds the state from what InfluxDB holds (alerts.rebuild).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from alerts import (
    AlertEvent,
    EngineState,
    Event,
    FloodEpisode,
    ReadingArrays,
    acknowledge,
    check_stale,
    readings_to_arrays,
    rebuild,
    rebuild_window_start,
    sensor_payload,
    step,
)
from alerts.reconfigure import reconfigure
from floodwatch.contract import ALERT_MEASUREMENT, EVENT_MEMORY_NS
from floodwatch.errors import InfluxError
from floodwatch.influx import InfluxClient
from floodwatch.registry import Registry
from floodwatch.topics import Topics
from ingest.line_protocol import encode_point

log = logging.getLogger(__name__)


Publish = Callable[[str, bytes, bool], None]  # topic, payload, retain
StoreLines = Callable[[list[str]], None]


class Alerting:
    def __init__(
        self,
        registry: Registry,
        topics: Topics,
        influx: InfluxClient,
        publish: Publish,
        store_lines: StoreLines,
        clock: Callable[[], int] = time.time_ns,
        time_scale: float = 1.0,  # --time-scale: the engine's timers run this much faster
    ) -> None:
        self.registry = registry
        self.time_scale = time_scale
        self.topics = topics
        self.influx = influx
        self._publish = publish
        self._store_lines = store_lines
        self._clock = clock
        self._lock = threading.Lock()
        self._state: EngineState | None = None
        # (kind, change, level name) -> events emitted, for the metrics.
        self.events_by_kind: dict[tuple[str, str, str], int] = {}

    @property
    def ready(self) -> bool:
        return self._state is not None

    @property
    def state(self) -> EngineState | None:
        return self._state

    # -- start ------------------------------------------------------------------------------

    def restore(self) -> None:
        """Rebuild the engine from stored events and readings; raises InfluxError if it can't."""
        now = self._clock()
        rows = self.influx.query(
            f'SELECT * FROM "{ALERT_MEASUREMENT}" WHERE time >= $since',
            {"since": now - EVENT_MEMORY_NS},
            epoch="ns",
        )
        events: list[Event] = []
        for series in rows:
            columns = series["columns"]
            for row in series["values"]:
                doc = {k: v for k, v in zip(columns, row, strict=True) if v is not None}
                tags = {k: str(doc.pop(k)) for k in ("sensor", "kind", "change")}
                doc.pop("time", None)
                events.append(AlertEvent.from_influx(tags, doc))
        since = rebuild_window_start(events, now)
        readings = self._stored_readings(since)
        registry = self.registry
        state = rebuild(registry, events, readings, since, now, self.time_scale)
        with self._lock:
            if self.registry is not registry:  # an operator's change came in meanwhile
                state = reconfigure(state, self.registry, now)
            self._state = state
        for sensor_id in self.registry.sensors:
            self._publish(self.topics.alert(sensor_id), sensor_payload(state, sensor_id), True)
        log.info(
            "alerts restored: %d open from %d stored events, rules replayed over %d readings",
            len(state.alerts),
            len(events),
            len(readings),
        )

    def _stored_readings(self, since_ns: int) -> ReadingArrays:
        rows = self.influx.query(
            'SELECT "level_cm", "battery_v" FROM "water_level" WHERE time >= $since '
            'GROUP BY "sensor"',
            {"since": since_ns},
            epoch="ns",
        )
        index = self._index()
        sensors: list[int] = []
        times: list[int] = []
        levels: list[float] = []
        batteries: list[float] = []
        for series in rows:
            i = index.get(series.get("tags", {}).get("sensor", ""))
            if i is None:
                continue
            for t, level, battery in series["values"]:
                sensors.append(i)
                times.append(int(t))
                levels.append(float(level))
                batteries.append(np.nan if battery is None else float(battery))
        return ReadingArrays(
            np.array(sensors, dtype=np.int32),
            np.array(times, dtype=np.int64),
            np.array(levels, dtype=np.float64),
            np.array(batteries, dtype=np.float64),
        )

    def _index(self) -> dict[str, int]:
        return {sensor_id: i for i, sensor_id in enumerate(self.registry.sensors)}

    # -- the three ways the state changes ----------------------------------------------------

    def judge(self, readings: Sequence[object]) -> list[Event]:
        """A stored batch's readings (floodwatch.contract.Reading values) through the engine."""
        if not readings:
            return []
        with self._lock:
            if self._state is None:
                return []  # not restored yet: the restore's replay will cover these
            arrays = readings_to_arrays(readings, self._state.sensor_index)  # type: ignore[arg-type]
            self._state, events = step(self._state, arrays, self._clock())
            state = self._state
        self._emit(state, events)
        return events

    def check_stale(self) -> list[Event]:
        with self._lock:
            if self._state is None:
                return []
            self._state, events = check_stale(self._state, self._clock())
            state = self._state
        self._emit(state, events)
        return events

    def reconfigure(self, registry: Registry) -> None:
        """An operator changed the registry (ingest/operations.py): judge with it from now on;
        no event is made by the change itself (alerts.reconfigure)."""
        with self._lock:
            if self._state is not None:
                self._state = reconfigure(self._state, registry, self._clock())
            self.registry = registry

    def acknowledge(self, alert_id: str, who: str, note: str) -> list[Event]:
        """Raises alerts.UnknownAlert when no open alert has this id."""
        with self._lock:
            if self._state is None:
                raise InfluxError("alerts are not restored yet (InfluxDB unreachable); retry")
            self._state, events = acknowledge(self._state, alert_id, who, note, self._clock())
            state = self._state
        self._emit(state, events)
        return events

    # -- output -------------------------------------------------------------------------------

    def _emit(self, state: EngineState, events: list[Event]) -> None:
        if not events:
            return
        self._store_lines([encode_point(*e.influx_point()) for e in events])
        touched: list[str] = []
        for e in events:
            if isinstance(e, AlertEvent):
                key = (e.kind, e.change, e.level_name or "")  # only floods have levels
                self.events_by_kind[key] = self.events_by_kind.get(key, 0) + 1
                self._publish(self.topics.alert_events(e.sensor_id), e.to_json(), False)
                if e.sensor_id not in touched:
                    touched.append(e.sensor_id)
            elif isinstance(e, FloodEpisode):
                self._publish(self.topics.episodes, e.to_json(), False)
        for sensor_id in touched:
            self._publish(self.topics.alert(sensor_id), sensor_payload(state, sensor_id), True)
