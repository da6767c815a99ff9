"""The ingest pipeline: deliveries decoded, judged for alerts at once, then stored and
acknowledged.

Threads, and the one owner of each piece of state:

thread               owns                                  talks to
-------------------  ------------------------------------  -------------------------------------
MQTT network (paho)  the broker socket                     the owner's queue (readings, acks)
ingest-alerts        the owner's queue; the alert engine's  store queue (readings with the alert
  (the owner)        state (ingest/alerting.py); every      events judged from them)
                     publish on alerts/, events/, episodes
ingest-store         InfluxDB writes, outbox appends       finish queue
ingest-finish        acknowledgements, stored counters     broker (dead letters, PUBACKs)
ingest-outbox        the outbox's oldest batch             InfluxDB
ingest-restore       one rebuild from InfluxDB at a time   the owner's queue (the rebuilt state)
main                 signals, the stale clock              the owner's queue (a tick a second)
ingest-operations    operators' registry overrides         the owner's queue (a changed registry
  (operations.py)                                          for decoder and engine), the store

The owner takes, in arrival order, from one queue: deliveries (decoded and judged in batches
of what has arrived), operators' acknowledgements, stale ticks, registry changes and the
rebuilt state. Only it changes the engine's state and the conflicting-reading guard, and it
publishes right after each change, so retained `alerts/{id}` messages go out in the order of
the state changes.

Alerts do not wait for the database: a batch is judged as soon as it is decoded, while its
messages are still unacknowledged (the broker keeps them). Its readings and the alert events
judged from them are written in one request, and only then are its messages acknowledged (a
spilled batch: once on disk in the outbox). So what a restart finds stored is consistent:
either a batch and its events, or neither, in which case the broker redelivers the batch and
the engine, rebuilt without it, judges it again into the same deterministic ids (rule 12 of
alerts/engine.py): an event is at least once on MQTT, once in InfluxDB.

At least once, and no more than needed: while InfluxDB is down a batch is retried with capped
backoff and nothing is acknowledged, so the broker keeps (and after a crash redelivers)
everything; a redelivered reading overwrites itself in InfluxDB. Every wait wakes on stop().
"""

from __future__ import annotations

import bisect
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from floodwatch.contract import Reading, Rejection, iso_time
from floodwatch.decode import decode_message
from floodwatch.errors import (
    BrokerError,
    InfluxAccessDenied,
    InfluxError,
    InfluxUnavailable,
    LineProtocolError,
)
from floodwatch.influx import DatabaseMissing, InfluxClient, RetentionPolicyMissing
from floodwatch.mqtt import Delivery
from floodwatch.registry import Registry
from floodwatch.topics import Topics
from ingest.outbox import Outbox
from ingest.store import (
    RefusedLine,
    deadletter_line,
    reading_line,
    status_line,
    write_keeping_good_lines,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


# Batches of at least this many messages mean load: the next batch lingers to grow.
LINGER_AFTER_BATCH = 32
# Out of load, the alert owner waits this many times its last batch's cost before the next
# batch, at most PACE_MAX_S: enough to amortise an engine step's fixed cost, short for an alert.
PACE = 2.0
PACE_MAX_S = 0.002
WRITE_SECONDS_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class IngestCounters:
    """What ingest has done since it started; read by the log line and the metrics."""

    messages: int = 0
    readings_stored: int = 0
    statuses_stored: int = 0
    deadlettered: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    write_retries: int = 0
    write_seconds: float = 0.0
    # Lines that went to the disk outbox during an outage, and lines drained from it since.
    outbox_spilled: int = 0
    outbox_drained: int = 0
    received: int = 0  # messages delivered by the broker (counted on the network thread)
    # Readings a sensor published with the retain flag (judged once; never replayed to ingest).
    retained_readings: int = 0
    # InfluxDB write latency, per bucket of WRITE_SECONDS_BOUNDS (the last is +Inf).
    write_buckets: list[int] = field(default_factory=lambda: [0] * (len(WRITE_SECONDS_BOUNDS) + 1))

    # Dead letters, writes and retries are counted from more than one thread (finishing,
    # storing, draining the outbox); the rest each from one.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def observe_write(self, seconds: float) -> None:
        with self._lock:
            self.write_seconds += seconds
            self.write_buckets[bisect.bisect_left(WRITE_SECONDS_BOUNDS, seconds)] += 1

    def count_retry(self) -> None:
        with self._lock:
            self.write_retries += 1

    def count_deadletter(self, code: str) -> None:
        with self._lock:
            self.deadlettered[code] += 1

    def deadletter_counts(self) -> dict[str, int]:
        """A copy, for readers on other threads (the metrics endpoint, the log line)."""
        with self._lock:
            return dict(self.deadlettered)

    def summary(self) -> str:
        dead = sum(self.deadletter_counts().values())
        return (
            f"messages={self.messages} readings_stored={self.readings_stored} "
            f"statuses_stored={self.statuses_stored} deadlettered={dead} "
            f"batches={self.batches} write_retries={self.write_retries} "
            f"outbox_spilled={self.outbox_spilled} outbox_drained={self.outbox_drained}"
        )


@dataclass(frozen=True, slots=True)
class Batch:
    """One batch judged: the lines to write, and what each line stands for."""

    lines: list[str]
    readings: list[Reading]
    statuses: int
    rejections: list[Rejection]
    # line index -> (topic, payload, received_at_ns) of the message it came from, so a line
    # InfluxDB refuses can be dead-lettered with its origin.
    origins: list[tuple[str, bytes, int]]


# Reading fields compared between two messages for the same (sensor, time): level_cm,
# distance_mm, battery_v, rssi, seq (Reading's positions 2 to 6).
_COMPARED = (2, 3, 4, 5, 6)


class RecentReadings:
    """The readings of the last `capacity` (sensor, time) keys, as InfluxDB holds them.

    InfluxDB merges two writes of the same (sensor, time) field by field, so a second message
    that disagrees with the first would leave a point that contradicts itself (the first's
    distance_mm with the second's level_cm). The rule: the first reading stands; a later one
    that gives any field another value is refused (`conflicting_reading`); one that agrees
    where both say something (a redelivery, or a subset) is written. Owned by the thread that
    judges; forgotten at restart (README, What ingest accepts).
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._seen: dict[tuple[str, int], Reading] = {}
        self._order: deque[tuple[str, int]] = deque()

    def conflict(self, reading: Reading) -> Reading | None:
        """The earlier reading this one contradicts, or None (then it is remembered)."""
        key = (reading.sensor_id, reading.time_ns)
        seen = self._seen.get(key)
        if seen is None:
            self._seen[key] = reading
            self._order.append(key)
            if len(self._order) > self.capacity:
                del self._seen[self._order.popleft()]
            return None
        if seen == reading:
            return None
        merged: list[object] = list(seen)
        for i in _COMPARED:
            new = reading[i]
            if new is None:
                continue
            if seen[i] is None:
                merged[i] = new
            elif seen[i] != new:
                return seen
        self._seen[key] = Reading._make(merged)
        return None


def _conflict_reason(old: Reading, new: Reading) -> str:
    differ = [
        f"{Reading._fields[i]} {old[i]!r} then {new[i]!r}"
        for i in _COMPARED
        if None not in (old[i], new[i]) and old[i] != new[i]
    ]
    return (
        f"sensor {new.sensor_id!r} already sent a different reading for "
        f"{iso_time(new.time_ns)} ({', '.join(differ)}); the first one stands: send one "
        "reading per time, with a new ts for a new measurement"
    )


def judge(
    topics: Topics,
    registry: Registry,
    deliveries: list[Delivery],
    recent: RecentReadings | None = None,
) -> Batch:
    """Decode a batch of deliveries into line protocol (pure but for `recent`, which the
    caller owns)."""
    lines: list[str] = []
    origins: list[tuple[str, bytes, int]] = []
    readings: list[Reading] = []
    rejections: list[Rejection] = []
    statuses = 0
    for d in deliveries:
        decoded = decode_message(topics, registry, d.topic, d.payload, d.received_at_ns, d.retained)
        origin = (d.topic, d.payload, d.received_at_ns)
        if recent is None:
            for r in decoded.readings:
                lines.append(reading_line(r))
                origins.append(origin)
            readings.extend(decoded.readings)
        else:
            for r in decoded.readings:
                earlier = recent.conflict(r)
                if earlier is not None:
                    rejections.append(
                        Rejection(
                            d.topic,
                            d.payload,
                            "conflicting_reading",
                            _conflict_reason(earlier, r),
                            d.received_at_ns,
                        )
                    )
                    continue
                lines.append(reading_line(r))
                origins.append(origin)
                readings.append(r)
        for s in decoded.statuses:
            # A retained status is an old one replayed by the broker: its time is unknown.
            if not s.retained:
                lines.append(status_line(s))
                origins.append(origin)
                statuses += 1
        rejections.extend(decoded.rejections)
    return Batch(lines, readings, statuses, rejections, origins)


EMPTY_BATCH = Batch([], [], 0, [], [])


def merge(batches: list[Batch]) -> Batch:
    """Consecutive batches as one (pure): one engine step, or one write, for all of them."""
    if len(batches) == 1:
        return batches[0]
    lines: list[str] = []
    readings: list[Reading] = []
    rejections: list[Rejection] = []
    origins: list[tuple[str, bytes, int]] = []
    statuses = 0
    for b in batches:
        lines.extend(b.lines)
        readings.extend(b.readings)
        rejections.extend(b.rejections)
        origins.extend(b.origins)
        statuses += b.statuses
    return Batch(lines, readings, statuses, rejections, origins)


@dataclass(frozen=True, slots=True)
class ToStore:
    """A judged batch on its way to InfluxDB: its deliveries are acknowledged once its lines
    and the alert events judged from it are stored (an acknowledgement command: once its
    event is)."""

    deliveries: list[Delivery]
    batch: Batch
    alert_lines: list[str] = field(default_factory=list)


class AlertStage(Protocol):
    """The alert engine's shell as the owner thread uses it (ingest.alerting.Alerting)."""

    def judge(self, readings: list[Reading]) -> list[str]:
        """Step the engine, publish what changed; the events as line protocol."""


@dataclass(frozen=True, slots=True)
class Call:
    """Work for the owner thread, queued among the deliveries: a stale tick, an operator's
    acknowledgement, the rebuilt state. What it returns (alert events, and a command to
    acknowledge once they are stored) goes to the store."""

    run: Callable[[], ToStore | None]


@dataclass(frozen=True, slots=True)
class Stored:
    """One batch safe in InfluxDB (or the outbox), waiting to be acknowledged."""

    deliveries: list[Delivery]
    rejections: list[Rejection]
    readings_stored: int
    statuses_stored: int


class Spilled:
    """The batch went to the disk outbox rather than to InfluxDB."""


SPILLED = Spilled()


class Ingest:
    """The decoding, storing, finishing and outbox-draining threads (see the table above).

    Decoding and judging (CPU) overlap with storing (waiting on InfluxDB). While a write is in
    flight the next batches queue up and go in the next request together, so the write rate
    adapts to InfluxDB without tuning. Nothing upstream of the store waits for it: while
    InfluxDB is slow or down, batches are still decoded and judged, and wait, unacknowledged,
    in the store queue, which the broker bounds: it sends no more than its in-flight window
    (max_inflight_messages) until ingest acknowledges, or the outbox takes them.
    """

    def __init__(
        self,
        topics: Topics,
        registry: Registry,
        influx: InfluxClient,
        ack: Callable[[list[Delivery]], int],
        publish_deadletter: Callable[[bytes], None],
        *,
        max_batch: int = 5000,
        max_batch_bytes: int = 1_000_000,
        max_backoff_s: float = 5.0,
        linger_s: float = 0.02,
        outbox: Outbox | None = None,
        outbox_after_s: float = 10.0,
        alerts: AlertStage | None = None,
    ) -> None:
        self.topics = topics
        self.registry = registry
        self.influx = influx
        self._ack = ack
        self._publish_deadletter = publish_deadletter
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.max_backoff_s = max_backoff_s
        self.linger_s = linger_s
        self.counters = IngestCounters()
        self._inbox: deque[Delivery | Call] = deque()
        self._wake = threading.Event()
        # _closing: flush what is in hand, then stop; _stopping: stop now (the deadline).
        self._closing = threading.Event()
        self._stopping = threading.Event()
        # Set once nothing more will be queued for the store (decoder and alert owner done).
        self._upstream_done = threading.Event()
        # Unbounded: the broker's in-flight window bounds what is unacknowledged, and the
        # alert owner must never wait for the store.
        self._to_store: queue.SimpleQueue[ToStore] = queue.SimpleQueue()
        self._stored_done = threading.Event()
        self._stored: queue.Queue[Stored] = queue.Queue(maxsize=2)
        self._threads: list[threading.Thread] = []
        self.failed = threading.Event()  # a thread died of an unexpected error
        self._deadletter_seq = 0
        self._retained_warned: set[str] = set()  # topics whose retained reading was logged
        self._recent = RecentReadings()  # the owner thread's (see judge)
        # Set while the database or its retention policy is gone (logged once, see _lost_once).
        self._lost = False
        self._lost_lock = threading.Lock()
        self.outbox = outbox
        self.outbox_after_s = outbox_after_s
        self.alerts = alerts
        # When the current InfluxDB outage began (monotonic), or None while it answers.
        self._down_since: float | None = None

    # Called on the MQTT network thread, once per message: append and return.
    def deliver(self, delivery: Delivery) -> None:
        self._inbox.append(delivery)
        self.counters.received += 1
        if not self._wake.is_set():
            self._wake.set()

    def store_lines(self, lines: list[str]) -> None:
        """Queue lines that must be kept (events made outside a batch) for the store thread,
        in order with the batches; never waits (any thread)."""
        if lines:
            self._to_store.put(ToStore([], EMPTY_BATCH, list(lines)))

    def call(self, work: Callable[[], ToStore | None]) -> None:
        """Queue work for the owner thread, behind what has arrived (any thread)."""
        self._inbox.append(Call(work))
        if not self._wake.is_set():
            self._wake.set()

    def start(self) -> None:
        loops = [
            (self._owner_loop, "ingest-alerts"),
            (self._store_loop, "ingest-store"),
            (self._finish_loop, "ingest-finish"),
        ]
        if self.outbox is not None:
            loops.append((self._drain_loop, "ingest-outbox"))
        for target, name in loops:
            thread = threading.Thread(target=self._guarded(target, name), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _guarded(self, loop: Callable[[], None], name: str) -> Callable[[], None]:
        """A thread that dies of an unexpected error stops ingest (`failed` is set) rather than
        leaving it up with nothing acknowledged: the broker redelivers to the next ingest."""

        def run() -> None:
            try:
                loop()
            except Exception:
                log.exception("%s failed; stopping ingest", name)
                self.failed.set()
                self._stopping.set()
                self._wake.set()

        return run

    def stop(self, timeout_s: float = 10.0) -> None:
        """Flush what is in hand, then stop, all within `timeout_s`.

        Deliveries already received are decoded, judged, stored and acknowledged while the
        deadline allows (the MQTT connection must stay up meanwhile, for the
        acknowledgements). What is left at the deadline, or arrives after, stays
        unacknowledged: the broker keeps it for the next ingest. Every wait wakes at the
        deadline; a write still in flight then (a paused influxd) is abandoned with its
        daemon thread, and its batch stays unacknowledged.
        """
        started = time.monotonic()
        # The last part of the budget is for stopping itself (joins, closing connections).
        deadline = started + timeout_s - min(0.5, timeout_s / 5)
        self._closing.set()
        self._wake.set()
        if self._threads:
            self._threads[0].join(max(0.0, deadline - time.monotonic()))  # the owner
        self._upstream_done.set()
        for thread in self._threads[1:3]:  # the store, then the finish
            thread.join(max(0.0, deadline - time.monotonic()))
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(max(0.0, min(0.2, started + timeout_s - time.monotonic())))

    @property
    def backlog(self) -> int:
        return len(self._inbox) + self._to_store.qsize() + self._stored.qsize()

    def _take(self) -> list[Delivery]:
        """The deliveries at the head of the queue, up to the first Call, max_batch messages
        or max_batch_bytes."""
        inbox, size = self._inbox, 0
        batch: list[Delivery] = []
        popleft = inbox.popleft
        while inbox and len(batch) < self.max_batch and size < self.max_batch_bytes:
            if type(inbox[0]) is Call:
                break
            d = popleft()
            assert type(d) is Delivery
            batch.append(d)
            size += len(d.payload)
        return batch

    def _owner_loop(self) -> None:
        """Decode and judge whatever has arrived, at once (an alert waits for no batch to
        fill), and run the queued calls in their turn."""
        alerts = self.alerts
        inbox = self._inbox
        # When the last batch began and ended (decoding and one engine step), and its size.
        last_start = last_end = 0.0
        last_size = 0
        try:
            while not self._stopping.is_set():
                if not inbox:
                    if self._closing.is_set():
                        return  # all received is judged: the flush is done
                    self._wake.clear()
                    if not inbox:
                        self._wake.wait(0.5)
                    continue
                # An engine step costs about the same for 1 reading as for hundreds, so tiny
                # batches must not take the CPU: let readings gather for PACE times what the
                # last batch cost, at most PACE_MAX_S (at 1,000 readings/s an alert waits
                # about a millisecond more), and under load (the last batch was large) for
                # linger_s from the start of the last batch, as the store does.
                now = time.perf_counter()
                if last_size >= LINGER_AFTER_BATCH:
                    pause = last_start + self.linger_s - now
                else:
                    pause = min(last_end + PACE * (last_end - last_start) - now, PACE_MAX_S)
                calm = len(inbox) < self.max_batch and not self._closing.is_set()
                if pause > 0 and calm and self._stopping.wait(pause):
                    return
                head = inbox[0]
                if type(head) is Call:
                    inbox.popleft()
                    try:
                        item = head.run()
                    except Exception:  # a failed tick or command must not stop ingest
                        log.exception("alert work failed")
                        continue
                    if item is not None:
                        self._to_store.put(item)
                    continue
                last_start = time.perf_counter()
                deliveries = self._take()
                last_size = len(deliveries)
                batch = judge(self.topics, self.registry, deliveries, self._recent)
                lines: list[str] = []
                if alerts is not None and batch.readings:
                    try:
                        lines = alerts.judge(batch.readings)
                    except Exception:  # a fault in judging must never stop storing
                        log.exception("judging a batch failed; its readings are stored anyway")
                self._to_store.put(ToStore(deliveries, batch, lines))
                last_end = time.perf_counter()
        finally:
            self._upstream_done.set()

    def _gather(self, first: ToStore) -> list[ToStore]:
        """`first` and whatever else is queued, up to a request's worth (max_batch messages,
        max_batch_bytes of payload)."""
        items = [first]
        messages = len(first.deliveries)
        size = sum(len(d.payload) for d in first.deliveries)
        get = self._to_store.get_nowait
        while messages < self.max_batch and size < self.max_batch_bytes:
            try:
                item = get()
            except queue.Empty:
                break
            items.append(item)
            messages += len(item.deliveries)
            size += sum(len(d.payload) for d in item.deliveries)
        return items

    def _store_loop(self) -> None:
        last_take = 0.0
        last_size = 0
        try:
            while not self._stopping.is_set():
                try:
                    first = self._to_store.get(timeout=0.1)
                except queue.Empty:
                    if self._upstream_done.is_set() and self._to_store.empty():
                        return  # flushed
                    continue
                # Under load (the last request was large), gather for a few milliseconds
                # rather than write tiny requests: each costs InfluxDB and this process far
                # more than each line in it. Alerts are already out; only storing waits.
                if last_size >= LINGER_AFTER_BATCH and not self._closing.is_set():
                    pause = last_take + self.linger_s - time.monotonic()
                    if pause > 0 and self._stopping.wait(pause):
                        return
                last_take = time.monotonic()
                items = self._gather(first)
                deliveries = [d for item in items for d in item.deliveries]
                last_size = len(deliveries)
                batch = merge([item.batch for item in items])
                alert_lines = [line for item in items for line in item.alert_lines]
                stored = self._persist(deliveries, batch, alert_lines)
                if stored is not None:
                    self._hand_on(self._stored, stored)
        finally:
            self._stored_done.set()

    def _finish_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                stored = self._stored.get(timeout=0.1)
            except queue.Empty:
                if self._stored_done.is_set() and self._stored.empty():
                    return  # flushed
                continue
            self._finish(stored)

    def _hand_on(self, q: queue.Queue[T], item: T) -> None:
        """Put on a bounded queue (waiting while it is full), unless ingest is stopping."""
        while not self._stopping.is_set():
            try:
                q.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def process(self, deliveries: list[Delivery]) -> None:
        """Decode, store, dead-letter and acknowledge one batch on the caller's thread
        (no alerts; only while the threads are not running, as `recent` is theirs)."""
        self.store(deliveries, judge(self.topics, self.registry, deliveries, self._recent))

    def store(
        self, deliveries: list[Delivery], judged: Batch, alert_lines: Sequence[str] = ()
    ) -> None:
        """Store a decoded batch, dead-letter what was refused, then acknowledge it all."""
        stored = self._persist(deliveries, judged, list(alert_lines))
        if stored is not None:
            self._finish(stored)

    def _persist(
        self, deliveries: list[Delivery], judged: Batch, alert_lines: list[str]
    ) -> Stored | None:
        """Write a decoded batch, the alert events judged from it and its dead letters in one
        request; None if asked to stop before InfluxDB (or the outbox) took it, in which case
        nothing may be acknowledged."""
        rejections = list(judged.rejections)
        lines = judged.lines
        dead_lines = [self._deadletter_line(rej) for rej in rejections]
        outcome = self._write(lines + alert_lines + dead_lines, spill=True)
        if outcome is None:
            return None
        stored_readings = len(judged.readings)
        stored_statuses = judged.statuses
        refused: list[RefusedLine] = []
        if isinstance(outcome, Spilled):
            # On disk, durably: the drainer stores it, and counts it, when InfluxDB returns.
            # (Readings, statuses and dead letters; the alert events with them are not counted.)
            self.counters.outbox_spilled += len(lines) + len(dead_lines)
            stored_readings = stored_statuses = 0
        else:
            refused = outcome
        late: list[str] = []
        for bad in refused:
            if bad.index >= len(lines) + len(alert_lines):
                log.error("InfluxDB refused a dead letter: %s", bad.message)
                continue
            if bad.index >= len(lines):
                line = alert_lines[bad.index - len(lines)]
                log.error("InfluxDB refused an alert event %r: %s", line[:200], bad.message)
                continue
            topic, payload, received = judged.origins[bad.index]
            rej = Rejection(
                topic,
                payload,
                "influx_refused",
                f"InfluxDB refused the point: {bad.message}",
                received,
            )
            rejections.append(rej)
            late.append(self._deadletter_line(rej))
            if lines[bad.index].startswith("water_level,"):
                stored_readings -= 1
            else:
                stored_statuses -= 1
        if late and self._write(late, spill=False) is None:
            return None
        return Stored(deliveries, rejections, stored_readings, stored_statuses)

    def _finish(self, stored: Stored) -> None:
        """After the write: publish dead letters, acknowledge, count."""
        for rej in stored.rejections:
            self.counters.count_deadletter(rej.code)
            try:
                self._publish_deadletter(rej.to_json())
            except BrokerError as exc:  # it is stored in InfluxDB all the same; go on
                log.warning("could not publish a dead letter on MQTT: %s", exc)
        self._ack(stored.deliveries)
        for d in stored.deliveries:
            if d.retained:
                self._count_retained(d.topic)
        c = self.counters
        c.messages += len(stored.deliveries)
        c.readings_stored += stored.readings_stored
        c.statuses_stored += stored.statuses_stored
        c.batches += 1

    def _count_retained(self, topic: str) -> None:
        """Ingest subscribes with Retain As Published and no replay at subscription (see
        ingest/__main__.py), so a retained flag here means a sensor published with retain on:
        judged like any reading this once, but the broker keeps a copy for new subscribers."""
        self.counters.retained_readings += 1
        if topic in self._retained_warned or len(self._retained_warned) >= 1000:
            return
        self._retained_warned.add(topic)
        log.warning(
            "%s: a reading was published retained (judged once, counted in "
            "floodwatch_ingest_retained_readings_total); readings must be sent with retain "
            "off: fix the sensor, and clear the broker's copy with "
            "`mosquitto_pub -r -n -t '%s'` as admin",
            topic,
            topic,
        )

    def _deadletter_line(self, rej: Rejection) -> str:
        self._deadletter_seq = (self._deadletter_seq + 1) % 1000
        try:
            return deadletter_line(rej, self._deadletter_seq)
        except LineProtocolError as exc:  # only an absurd topic or reason gets here
            return deadletter_line(
                Rejection("(unprintable)", rej.payload, rej.code, str(exc), rej.received_at_ns),
                self._deadletter_seq,
            )

    def _write(self, lines: list[str], spill: bool) -> list[RefusedLine] | Spilled | None:
        """Write until InfluxDB takes it; None if asked to stop before it did.

        With `spill`, the batch goes to the outbox instead (SPILLED) once InfluxDB has been
        down for outbox_after_s, or at once while the outbox still holds older batches.
        """
        backoff = 0.1
        while True:
            if spill and self._spill(lines, waiting=False):
                return SPILLED
            started = time.perf_counter()
            try:
                refused = write_keeping_good_lines(self.influx, lines)
            except RetentionPolicyMissing as exc:
                # Not an outage that passes by itself: say once what to do, then hold the
                # readings (outbox, or unacknowledged at the broker) and retry quietly.
                if self._down_since is None:
                    self._down_since = time.monotonic()
                self._lost_once(str(exc))
            except InfluxUnavailable as exc:
                if self._down_since is None:
                    self._down_since = time.monotonic()
                log.warning("InfluxDB unavailable, retrying in %.1f s: %s", backoff, exc)
            except DatabaseMissing:
                self._create_database()
                continue
            except InfluxError as exc:
                log.error("InfluxDB refused the batch, retrying in %.1f s: %s", backoff, exc)
            else:
                self._down_since = None
                self._found_again()
                self.counters.observe_write(time.perf_counter() - started)
                return refused
            if spill and self._spill(lines, waiting=True):
                return SPILLED
            self.counters.count_retry()
            if self._stopping.wait(backoff):
                return None
            backoff = min(backoff * 2, self.max_backoff_s)

    def _create_database(self) -> None:
        """InfluxDB came back without the database (it was down at start, or wiped)."""
        try:
            self.influx.create_database()
            log.info("created InfluxDB database %r", self.influx.database)
        except InfluxAccessDenied:
            # The least-privileged writer may not create it: only an admin can mend this.
            self._lost_once(
                f"InfluxDB database {self.influx.database!r} is gone and this user may not "
                "create it; restore the last backup with scripts/restore (README, Backups), or "
                f'as the InfluxDB admin run: CREATE DATABASE "{self.influx.database}"'
            )
            self._stopping.wait(5.0)
        except InfluxError as exc:
            log.warning("cannot create InfluxDB database yet: %s", exc)
            self._stopping.wait(1.0)

    def _lost_once(self, what: str) -> None:
        """Log a loss only an operator can mend once (not at every retry), with the fix."""
        with self._lost_lock:
            if self._lost:
                return
            self._lost = True
        log.error("%s. Ingest holds the readings (outbox, or with the broker) and retries.", what)

    def _found_again(self) -> None:
        if self._lost:
            with self._lost_lock:
                self._lost = False
            log.info("InfluxDB accepts writes again; storing what was held")

    def _spill(self, lines: list[str], waiting: bool) -> bool:
        """Append to the outbox if it is in use, or if the outage has lasted long enough."""
        outbox = self.outbox
        if outbox is None:
            return False
        if outbox.empty:
            down = self._down_since
            if not waiting or down is None or time.monotonic() - down < self.outbox_after_s:
                return False
        if outbox.append(lines):
            return True
        log.error("outbox %s is full; holding the batch unacknowledged", outbox.path)
        return False

    def busy(self) -> bool:
        """Whether a thread is still running (after stop(): stuck in a write)."""
        return any(thread.is_alive() for thread in self._threads)

    def drain_outbox_now(self) -> bool:
        """Write the whole outbox to InfluxDB on the caller's thread (at start, before the
        threads run, so the alert restore sees what the last run spilled); False if InfluxDB
        did not take it all."""
        try:
            while self._drain_one():
                pass
        except InfluxError as exc:
            log.warning("outbox: InfluxDB unavailable (%s); draining later", exc)
            return False
        return True

    def _drain_one(self) -> bool:
        """Write the outbox's oldest batch; False when it is empty. Raises InfluxError
        (DatabaseMissing when InfluxDB lost the database)."""
        outbox = self.outbox
        if outbox is None:
            return False
        item = outbox.oldest()
        if item is None:
            return False
        batch_id, lines = item
        refused = write_keeping_good_lines(self.influx, lines)
        if refused:
            dead = [
                self._deadletter_line(
                    Rejection(
                        "(outbox)",
                        lines[bad.index].encode(),
                        "influx_refused",
                        f"InfluxDB refused the point: {bad.message}",
                        time.time_ns(),
                    )
                )
                for bad in refused
            ]
            write_keeping_good_lines(self.influx, dead)
            for _ in refused:
                self.counters.count_deadletter("influx_refused")
        self._down_since = None
        outbox.remove(batch_id)
        self.counters.outbox_drained += len(lines)
        return True

    def _drain_loop(self) -> None:
        """Write the outbox's batches to InfluxDB, oldest first, whenever it answers."""
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                drained = self._drain_one()
            except DatabaseMissing:
                self._create_database()
                continue
            except RetentionPolicyMissing as exc:
                self._lost_once(str(exc))
                if self._stopping.wait(backoff):
                    return
                backoff = min(backoff * 2, self.max_backoff_s)
            except InfluxError as exc:
                log.warning("outbox: InfluxDB still unavailable (%s); retrying", exc)
                if self._stopping.wait(backoff):
                    return
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            backoff = 0.1
            if not drained:
                self._stopping.wait(0.2)
