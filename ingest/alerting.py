"""Where readings are decided, in the running pipeline: the thin shell around the pure alert
engine (alerts/), and the one owner of its state.

One thread (`ingest-alerts`) applies, one at a time and in the order they were queued, the
batches ingest has decoded, the periodic stale tick, operators' acknowledgements and the
state rebuilt at start. It alone publishes the retained `alerts/{id}` states, `events/{id}`
and episodes, right after each change, so they go out in the order of the state changes and
the last retained message is always the current state. It then hands each batch's readings,
with the events judged from them, to the store (ingest.pipeline): nothing here waits for
InfluxDB. At start the state is rebuilt from what InfluxDB holds (alerts.rebuild).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
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
from ingest.line_protocol import encode_point
from ingest.pipeline import EMPTY_BATCH, Batch, ToStore

log = logging.getLogger(__name__)


Publish = Callable[[str, bytes, bool], None]  # topic, payload, retain
Store = Callable[[ToStore], None]

# Consecutive queued batches are judged in one engine step up to this many readings: one step
# costs about the same for 1 reading as for hundreds.
MAX_STEP_READINGS = 50_000


@dataclass(frozen=True, slots=True)
class _Judge:
    deliveries: list[Delivery]
    batch: Batch


@dataclass(frozen=True, slots=True)
class _Tick:
    pass


@dataclass(frozen=True, slots=True)
class _Command:
    delivery: Delivery


@dataclass(frozen=True, slots=True)
class _Restored:
    state: EngineState
    events: int
    readings: int


@dataclass(frozen=True, slots=True)
class _Flush:
    done: threading.Event


_Item = _Judge | _Tick | _Command | _Restored | _Flush


class Alerting:
    def __init__(
        self,
        registry: Registry,
        topics: Topics,
        influx: InfluxClient,
        publish: Publish,
        store: Store,
        clock: Callable[[], int] = time.time_ns,
        state: EngineState | None = None,
    ) -> None:
        self.registry = registry
        self.topics = topics
        self.influx = influx
        self._publish = publish
        self._store = store
        self._clock = clock
        # Given (a fresh engine, in tests and tools) or restored from InfluxDB at start.
        self._state: EngineState | None = state
        self._items: deque[_Item] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._restoring = threading.Lock()
        self.failed = threading.Event()  # the owner thread died of an unexpected error
        # (kind, change, level name) -> events emitted, for the metrics.
        self.events_by_kind: dict[tuple[str, str, str], int] = {}

    @property
    def ready(self) -> bool:
        return self._state is not None

    @property
    def state(self) -> EngineState | None:
        return self._state

    @property
    def backlog(self) -> int:
        return len(self._items)

    # -- the owner thread -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ingest-alerts", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop the owner thread (after Ingest.stop has flushed the batches through it)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _put(self, item: _Item) -> None:
        self._items.append(item)
        if not self._wake.is_set():
            self._wake.set()

    def submit(self, deliveries: list[Delivery], batch: Batch) -> None:
        """A decoded batch, to judge and then hand to the store (any thread)."""
        self._put(_Judge(deliveries, batch))

    def tick(self) -> None:
        """Time passed: check for stale sensors (the main loop, once a second)."""
        self._put(_Tick())

    def command(self, delivery: Delivery) -> None:
        """An operator's acknowledgement request (the MQTT network thread)."""
        self._put(_Command(delivery))

    def flush(self, deadline: float) -> None:
        """Return once everything queued before this call has been applied, or at
        `deadline` (time.monotonic)."""
        if self._thread is None or not self._thread.is_alive():
            return
        done = threading.Event()
        self._put(_Flush(done))
        done.wait(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._items:
                    self._wake.clear()
                    if not self._items:
                        self._wake.wait(0.5)
                    continue
                self._apply(self._items.popleft())
        except Exception:
            log.exception("the alert owner failed; stopping ingest")
            self.failed.set()

    def _apply(self, item: _Item) -> None:
        if isinstance(item, _Judge):
            group = [item]
            readings = len(item.batch.readings)
            items = self._items
            # Only the owner takes from the left, so a peek then a take is safe.
            while items and isinstance(items[0], _Judge) and readings < MAX_STEP_READINGS:
                nxt = items.popleft()
                assert isinstance(nxt, _Judge)
                group.append(nxt)
                readings += len(nxt.batch.readings)
            self._judge(group)
        elif isinstance(item, _Tick):
            self._check_stale()
        elif isinstance(item, _Command):
            self._answer(item.delivery)
        elif isinstance(item, _Restored):
            self._adopt(item)
        else:
            item.done.set()

    # -- the ways the state changes (owner thread only) --------------------------------------

    def _judge(self, group: list[_Judge]) -> None:
        lines: list[str] = []
        # Before the restore, readings are only stored: the restore's replay covers them.
        if self._state is not None:
            readings = [r for item in group for r in item.batch.readings]
            if readings:
                try:
                    arrays = readings_to_arrays(readings, self._state.sensor_index)
                    self._state, events = step(self._state, arrays, self._clock())
                    lines = self._emit(self._state, events)
                except Exception:  # a fault in judging must never stop storing
                    log.exception("judging a batch failed; its readings are stored all the same")
        # The group's events go with its first batch: an event is never stored after the
        # readings behind it (a restart that found those readings without their event would
        # replay them silently and lose the alert).
        for item in group:
            self._store(ToStore(item.deliveries, item.batch, lines))
            lines = []

    def _check_stale(self) -> None:
        if self._state is None:
            return
        self._state, events = check_stale(self._state, self._clock())
        lines = self._emit(self._state, events)
        if lines:
            self._store(ToStore([], EMPTY_BATCH, lines))

    def _answer(self, delivery: Delivery) -> None:
        """Apply one acknowledgement request and answer it on its reply topic; the request is
        acknowledged to the broker once its event is stored."""
        reply_to, answer, lines = self._apply_ack(delivery.payload)
        if reply_to:
            self._publish(reply_to, orjson.dumps(answer), False)
        self._store(ToStore([delivery], EMPTY_BATCH, lines))

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

    def _adopt(self, restored: _Restored) -> None:
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

    def restore(self) -> None:
        """Rebuild the engine from stored events and readings, and give the state to the owner
        (queued behind what is already queued, or at once before the owner starts). Raises
        InfluxError if InfluxDB cannot answer."""
        with self._restoring:
            if self._state is not None:
                return
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
            restored = _Restored(state, len(events), len(readings))
            if self._thread is None:
                self._adopt(restored)
            else:
                self._put(restored)
                # Until the owner adopts it, another restore must not start.
                while self._state is None and not self._stop.wait(0.01):
                    pass

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
