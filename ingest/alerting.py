"""Where readings are decided, in the running pipeline: the thin shell around the pure alert
engine (alerts/) that the owner thread (`ingest-alerts`, see ingest/pipeline.py) drives.

Only the owner thread calls `judge`, `check_stale`, `answer` and `adopt`, in the order their
work was queued: the batches ingest has decoded, the periodic stale tick, operators'
acknowledgements and the state rebuilt at start. Each publishes the retained `alerts/{id}`
states, `events/{id}` and episodes right after its change, so they go out in the order of the
state changes and the last retained message is always the current state, and returns the
events as line protocol for the store: nothing here waits for InfluxDB. `rebuild_state` (any
thread) rebuilds the state from what InfluxDB holds (alerts.rebuild).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import orjson

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
from alerts.events import ALERT_MEASUREMENT, EVENT_MEMORY_NS
from floodwatch.errors import FloodwatchError
from floodwatch.influx import InfluxClient
from floodwatch.mqtt import Delivery
from floodwatch.registry import Registry
from floodwatch.topics import Topics
from ingest.decode import Reading
from ingest.line_protocol import encode_point
from ingest.pipeline import EMPTY_BATCH, ToStore

log = logging.getLogger(__name__)


Publish = Callable[[str, bytes, bool], None]  # topic, payload, retain


@dataclass(frozen=True, slots=True)
class Restored:
    """An engine state rebuilt from InfluxDB, for the owner to adopt."""

    state: EngineState
    events: int
    readings: int


class Alerting:
    def __init__(
        self,
        registry: Registry,
        topics: Topics,
        influx: InfluxClient,
        publish: Publish,
        clock: Callable[[], int] = time.time_ns,
        state: EngineState | None = None,
    ) -> None:
        self.registry = registry
        self.topics = topics
        self.influx = influx
        self._publish = publish
        self._clock = clock
        # Given (a fresh engine, in tests and tools) or rebuilt from InfluxDB at start.
        self._state: EngineState | None = state
        # (kind, change, level name) -> events emitted, for the metrics.
        self.events_by_kind: dict[tuple[str, str, str], int] = {}

    @property
    def ready(self) -> bool:
        return self._state is not None

    @property
    def state(self) -> EngineState | None:
        return self._state

    # -- the ways the state changes (owner thread only) --------------------------------------

    def judge(self, readings: list[Reading]) -> list[str]:
        """A decoded batch's readings through the engine; the events as line protocol."""
        if self._state is None or not readings:
            return []  # before the restore: the restore's replay covers stored readings
        arrays = readings_to_arrays(readings, self._state.sensor_index)
        self._state, events = step(self._state, arrays, self._clock())
        return self._emit(self._state, events)

    def check_stale(self) -> ToStore | None:
        """The stale tick; its events, if any, for the store."""
        if self._state is None:
            return None
        self._state, events = check_stale(self._state, self._clock())
        lines = self._emit(self._state, events)
        return ToStore([], EMPTY_BATCH, lines) if lines else None

    def answer(self, delivery: Delivery) -> ToStore:
        """Apply one acknowledgement request and answer it on its reply topic; the request is
        acknowledged to the broker once its event is stored."""
        reply_to, answer, lines = self._apply_ack(delivery.payload)
        if reply_to:
            self._publish(reply_to, orjson.dumps(answer), False)
        return ToStore([delivery], EMPTY_BATCH, lines)

    def _apply_ack(self, payload: bytes) -> tuple[str, dict[str, object], list[str]]:
        """(reply topic, answer, event lines) for one request; never raises."""
        parsed = parse_ack_request(payload)
        if isinstance(parsed, AckRefused):
            return parsed.reply_to, {"ok": False, "error": parsed.error}, []
        if self._state is None:
            error = "alerts are not restored yet (InfluxDB unreachable); retry"
            return parsed.reply_to, {"ok": False, "error": error}, []
        try:
            self._state, events = acknowledge(
                self._state, parsed.alert_id, parsed.who, parsed.note, self._clock()
            )
        except FloodwatchError as exc:
            return parsed.reply_to, {"ok": False, "error": str(exc)}, []
        lines = self._emit(self._state, events)
        answer: dict[str, object] = {
            "ok": True,
            "events": [orjson.loads(e.to_json()) for e in events],
        }
        return parsed.reply_to, answer, lines

    def adopt(self, restored: Restored) -> None:
        """Take the rebuilt state (unless one is held already) and republish every sensor's."""
        if self._state is not None:
            return
        state = restored.state
        self._state = state
        for sensor_id in self.registry.sensors:
            self._publish(self.topics.alert(sensor_id), sensor_payload(state, sensor_id), True)
        log.info(
            "alerts restored: %d open from %d stored events, rules replayed over %d readings",
            len(state.alerts),
            restored.events,
            restored.readings,
        )

    # -- start -------------------------------------------------------------------------------

    def rebuild_state(self) -> Restored:
        """The engine state rebuilt from stored events and readings (any thread; the owner
        adopts it). Raises InfluxError if InfluxDB cannot answer."""
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
        state = rebuild(self.registry, events, readings, since, now)
        return Restored(state, len(events), len(readings))

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

    # -- output (owner thread) ---------------------------------------------------------------

    def _emit(self, state: EngineState, events: list[Event]) -> list[str]:
        """Publish the events and the touched sensors' retained states; return the events as
        line protocol, for the store."""
        if not events:
            return []
        touched: list[str] = []
        for e in events:
            if isinstance(e, AlertEvent):
                key = (e.kind, e.change, e.level_name)
                self.events_by_kind[key] = self.events_by_kind.get(key, 0) + 1
                self._publish(self.topics.alert_events(e.sensor_id), e.to_json(), False)
                if e.sensor_id not in touched:
                    touched.append(e.sensor_id)
            elif isinstance(e, FloodEpisode):
                self._publish(self.topics.episodes, e.to_json(), False)
        for sensor_id in touched:
            self._publish(self.topics.alert(sensor_id), sensor_payload(state, sensor_id), True)
        return [encode_point(*e.influx_point()) for e in events]


@dataclass(frozen=True, slots=True)
class AckRequest:
    alert_id: str
    who: str
    note: str
    reply_to: str


@dataclass(frozen=True, slots=True)
class AckRefused:
    reply_to: str
    error: str


def parse_ack_request(payload: bytes) -> AckRequest | AckRefused:
    """An operator's acknowledgement request, checked (pure; never raises)."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return AckRefused("", "the request is not JSON")
    if not isinstance(doc, dict):
        return AckRefused("", "the request must be a JSON object")
    reply_to = doc.get("reply_to")
    reply = reply_to if isinstance(reply_to, str) and "#" not in reply_to else ""
    alert_id, who, note = doc.get("alert_id"), doc.get("who"), doc.get("note", "")
    if not isinstance(alert_id, str) or not isinstance(who, str) or not who.strip():
        return AckRefused(reply, "alert_id and who (the operator) are required")
    if not isinstance(note, str) or len(note) > 2000 or len(who) > 200:
        return AckRefused(reply, "note must be text of at most 2000 characters")
    return AckRequest(alert_id, who.strip(), note, reply)


def ack_request(alert_id: str, who: str, note: str, reply_to: str) -> bytes:
    return orjson.dumps({"alert_id": alert_id, "who": who, "note": note, "reply_to": reply_to})
