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

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
from alerts.commands import AckReply, parse_ack_request
from alerts.errors import UnknownAlert
from alerts.reconfigure import reconfigure
from alerts.reorder import LateReplay, Operation
from floodwatch.contract import ALERT_MEASUREMENT, EVENT_MEMORY_NS, Reading
from floodwatch.influx import InfluxClient
from floodwatch.mqtt import Delivery
from floodwatch.registry import Registry
from floodwatch.topics import Topics
from ingest.line_protocol import encode_point
from ingest.pipeline import EMPTY_BATCH, ToStore

log = logging.getLogger(__name__)
# How often the rebuild asks again when InfluxDB answers alert_event rows without their fields.
INCOMPLETE_ATTEMPTS = 3
INCOMPLETE_RETRY_S = 0.5
# A partition's rebuild asks InfluxDB about this many sensors per query (_sensor_clauses).
SENSOR_CHUNK = 200


Publish = Callable[[str, bytes, bool], None]  # topic, payload, retain


@dataclass(frozen=True, slots=True)
class Restored:
    """An engine state rebuilt from InfluxDB, for the owner to adopt."""

    state: EngineState
    events: int
    readings: int
    registry: Registry  # the one it was rebuilt with


class Alerting:
    def __init__(
        self,
        registry: Registry,
        topics: Topics,
        influx: InfluxClient,
        publish: Publish,
        clock: Callable[[], int] = time.time_ns,
        time_scale: float = 1.0,  # --time-scale: the engine's timers run this much faster
        state: EngineState | None = None,
        *,
        part_of_city: bool = False,
        late_replay_s: float = 0.0,
    ) -> None:
        self.registry = registry
        # The registry is one partition's (ingest/partitions.py): the rebuild asks InfluxDB for
        # its sensors only, so a partition's failover does not read the whole city's window.
        self.part_of_city = part_of_city
        self.time_scale = time_scale
        self.topics = topics
        self.influx = influx
        self._publish = publish
        self._clock = clock
        # Given (a fresh engine, in tests and tools) or rebuilt from InfluxDB at start.
        self._state: EngineState | None = state
        # (kind, change, level name) -> events emitted, for the metrics.
        self.events_by_kind: dict[tuple[str, str, str], int] = {}
        # Clustered workers: readings NATS delivers behind newer ones of their sensor are
        # judged in their place (alerts/reorder.py) if the newer ones came within this window.
        self._late = LateReplay(int(late_replay_s * 1e9)) if late_replay_s > 0 else None
        # Sensor -> the retained `alerts/{id}` payload it last published (or found retained at
        # adopt): a state equal to it is not published again. Through NATS every retained
        # publish is an R3, fsynced write that holds up the publishes behind it (docs/CLUSTER.md,
        # "Alert latency").
        self._retained: dict[str, bytes] = {}

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
        if self._late is None:
            self._state, events = step(self._state, arrays, self._clock())
            return self._emit(self._state, events)
        done = self._late.step(self._state, arrays, self._clock())
        self._state = done.state
        replayed = [self._state.config.sensor_ids[i] for i in sorted(done.sensors)]
        if replayed:
            log.warning(
                "%d readings came behind newer ones of their sensors (%s): judged in their "
                "place again, %d events not made before",
                done.replayed,
                ", ".join(replayed),
                len(done.events),
            )
        # Their sensors' retained states follow the replayed engine, events or not.
        return self._emit(self._state, done.events, also=replayed)

    def check_stale(self) -> ToStore | None:
        """The stale tick; its events, if any, for the store."""
        if self._state is None:
            return None
        now = self._clock()
        events = self._operate(functools.partial(check_stale, now_ns=now), now)
        lines = self._emit(self._state, events)
        return ToStore([], EMPTY_BATCH, lines) if lines else None

    def answer(self, delivery: Delivery) -> ToStore:
        """Apply one acknowledgement request and answer it on its reply topic; the request is
        acknowledged to the broker once its event is stored."""
        reply_to, reply, lines = self.apply_ack(delivery.payload)
        if reply_to:
            self._publish(reply_to, reply.to_json(), False)
        return ToStore([delivery], EMPTY_BATCH, lines)

    def apply_ack(self, payload: bytes) -> tuple[str, AckReply, list[str]]:
        """(reply topic, answer, event lines) for one request (alerts/commands.py); never
        raises."""
        reply_to, request = parse_ack_request(payload)
        if isinstance(request, AckReply):
            return reply_to, request, []
        if self._state is None:
            error = "alerts are not restored yet (InfluxDB unreachable); retry"
            return reply_to, AckReply.refused("not_ready", error), []
        try:
            now = self._clock()
            ack = functools.partial(
                acknowledge,
                alert_id=request.alert_id,
                who=request.who,
                note=request.note,
                now_ns=now,
            )
            events = self._operate(ack, now)
        except UnknownAlert as exc:
            return reply_to, AckReply.refused("unknown_alert", str(exc)), []
        lines = self._emit(self._state, events)
        acked = tuple(e for e in events if isinstance(e, AlertEvent))
        return reply_to, AckReply(True, acked), lines

    def _operate(self, operation: Operation, now_ns: int) -> list[Event]:
        """Apply a stale tick or an acknowledgement to the held state (recorded, for a replay,
        when late readings are judged in their place); the events it made."""
        assert self._state is not None
        if self._late is None:
            self._state, events = operation(self._state)
        else:
            self._state, events = self._late.operate(self._state, operation, now_ns)
        return events

    def reconfigure(self, registry: Registry) -> None:
        """An operator changed the registry (ingest/operations.py): judge with it from now on;
        no event is made by the change itself (alerts.reconfigure). Owner thread only: it is
        queued with `Ingest.call`, in order with the deliveries."""
        if self._state is not None:
            self._state = reconfigure(self._state, registry, self._clock())
        if self._late is not None:
            self._late.clear()  # a history judged with the old registry cannot be replayed
        self.registry = registry

    def adopt(self, restored: Restored, retained: Mapping[str, bytes] | None = None) -> None:
        """Take the rebuilt state (unless one is held already) and republish every sensor's;
        given what the broker holds retained (`retained`: sensor -> non-empty payload), only
        the states that differ from it (a takeover in the cluster: most are equal)."""
        if self._state is not None:
            return
        state = restored.state
        if restored.registry is not self.registry:  # an operator's change came in meanwhile
            state = reconfigure(state, self.registry, self._clock())
        self._state = state
        if self._late is not None:
            self._late.clear()
        if retained is not None:
            self._retained = {s: retained.get(s, b"") for s in self.registry.sensors}
        for sensor_id in self.registry.sensors:
            self._publish_state(state, sensor_id)
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
        registry = self.registry  # read once: the owner may change it meanwhile
        now = self._clock()
        events: list[Event] = []
        for attempt in range(1, INCOMPLETE_ATTEMPTS + 1):
            events, incomplete = self._stored_events(now, registry)
            if not incomplete:
                break
            # Seen once with two workers writing a new database: rows whose fields were not
            # there yet. Asked again they are whole; a row that stays broken is left out.
            log.warning(
                "InfluxDB answered %d alert_event rows without their fields (attempt %d of %d)%s",
                incomplete,
                attempt,
                INCOMPLETE_ATTEMPTS,
                "; asking again" if attempt < INCOMPLETE_ATTEMPTS else "; rebuilding without them",
            )
            if attempt < INCOMPLETE_ATTEMPTS:
                time.sleep(INCOMPLETE_RETRY_S)
        since = rebuild_window_start(events, now, self._newest_reading(now, registry))
        readings = self._stored_readings(since, registry)
        state = rebuild(registry, events, readings, since, now, self.time_scale)
        return Restored(state, len(events), len(readings), registry)

    def _stored_events(self, now: int, registry: Registry) -> tuple[list[Event], int]:
        """The stored alert events of the memory window, and how many rows were incomplete (no
        event id, state or tags) or not this version's (logged); neither stops the rebuild."""
        rows = self._query_sensors(
            registry,
            f'SELECT * FROM "{ALERT_MEASUREMENT}" WHERE time >= $since{{only}}',
            now - EVENT_MEMORY_NS,
        )
        events: list[Event] = []
        incomplete = 0
        for series in rows:
            columns = series["columns"]
            for row in series["values"]:
                doc = {k: v for k, v in zip(columns, row, strict=True) if v is not None}
                if any(k not in doc for k in ("sensor", "kind", "change", "event_id", "state")):
                    incomplete += 1
                    continue
                tags = {k: str(doc.pop(k)) for k in ("sensor", "kind", "change")}
                doc.pop("time", None)
                try:
                    events.append(AlertEvent.from_influx(tags, doc))
                except (ValueError, TypeError) as exc:
                    log.error("stored alert event left out of the rebuild: %s", exc)
        return events, incomplete

    def _query_sensors(self, registry: Registry, query: str, since_ns: int) -> list[dict[str, Any]]:
        """The series `query` answers (`{only}` in it: the clause that keeps the registry's
        sensors, `$since`: `since_ns`), over every chunk of sensors (_sensor_clauses)."""
        return [
            series
            for only, params in self._sensor_clauses(registry)
            for series in self.influx.query(
                query.format(only=only),
                {"since": since_ns, **params},
                epoch="ns",
                method="POST" if params else "GET",  # a long list of sensors: not in a URL
            )
        ]

    def _sensor_clauses(self, registry: Registry) -> list[tuple[str, dict[str, str]]]:
        """` AND ("sensor" = $s0 OR ...)` with its bound values when the registry is one
        partition's, one per SENSOR_CHUNK sensors (each is a query of its own), else one empty
        clause.

        Chunked because InfluxDB's time grows faster than the list: with 2,000 sensors each
        rebuild query took 2.5-8 s here, on an empty database, so a big partition's takeover
        outlasted the pin timeout and was lost and taken again in a loop; with 200, 15 ms."""
        if not self.part_of_city:
            return [("", {})]
        ids = sorted({*registry.sensors, *registry.retired})
        clauses: list[tuple[str, dict[str, str]]] = []
        for start in range(0, len(ids), SENSOR_CHUNK):
            params = {f"s{k}": ids[k] for k in range(start, min(start + SENSOR_CHUNK, len(ids)))}
            only = " AND (" + " OR ".join(f'"sensor" = ${name}' for name in params) + ")"
            clauses.append((only, params))
        return clauses or [(' AND "sensor" = $none', {"none": ""})]

    def _newest_reading(self, now_ns: int, registry: Registry) -> int | None:
        """The time of the newest stored reading of the registry's sensors (in the events'
        memory), where the rules' memory is rebuilt back from; None if there is none."""
        rows = self._query_sensors(
            registry,
            'SELECT last("level_cm") FROM "water_level" WHERE time >= $since{only}',
            now_ns - EVENT_MEMORY_NS,
        )
        times = [int(row[0]) for series in rows for row in series["values"]]
        return max(times) if times else None

    def _stored_readings(self, since_ns: int, registry: Registry) -> ReadingArrays:
        rows = self._query_sensors(
            registry,
            'SELECT "level_cm", "battery_v" FROM "water_level" WHERE time >= $since{only} '
            'GROUP BY "sensor"',
            since_ns,
        )
        index = {sensor_id: i for i, sensor_id in enumerate(registry.sensors)}
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

    # -- output (owner thread) ---------------------------------------------------------------

    def _emit(self, state: EngineState, events: list[Event], also: Sequence[str] = ()) -> list[str]:
        """Publish the events and the touched sensors' retained states (and those of `also`);
        return the events as line protocol, for the store."""
        touched: list[str] = list(also)
        if not events and not touched:
            return []
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
            self._publish_state(state, sensor_id)
        return [encode_point(*e.influx_point()) for e in events]

    def _publish_state(self, state: EngineState, sensor_id: str) -> None:
        """Publish the sensor's retained state unless it is the one last published (several
        changes in one batch that end where they began, e.g. a stale alert raised and cleared,
        or a takeover's state equal to what is retained)."""
        payload = sensor_payload(state, sensor_id)
        if self._retained.get(sensor_id) == payload:
            return
        self._retained[sensor_id] = payload
        self._publish(self.topics.alert(sensor_id), payload, True)
