"""The ingest loop: deliveries from the broker, judged in batches, stored, then acknowledged.

At least once, and no more than needed: a QoS 1 message is acknowledged to the broker only
after InfluxDB accepted its readings (or its dead letter). While InfluxDB is down the batch is
retried with capped backoff and nothing is acknowledged, so the broker keeps (and after a
crash redelivers) everything; a redelivered reading overwrites itself in InfluxDB.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from floodwatch.errors import InfluxError, InfluxUnavailable, LineProtocolError
from floodwatch.influx import InfluxClient
from floodwatch.mqtt import Delivery
from floodwatch.registry import Registry
from floodwatch.topics import Topics
from ingest.decode import Reading, Rejection, decode_message
from ingest.store import (
    RefusedLine,
    deadletter_line,
    reading_line,
    status_line,
    write_keeping_good_lines,
)

log = logging.getLogger(__name__)


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

    def summary(self) -> str:
        dead = sum(self.deadlettered.values())
        return (
            f"messages={self.messages} readings_stored={self.readings_stored} "
            f"statuses_stored={self.statuses_stored} deadlettered={dead} "
            f"batches={self.batches} write_retries={self.write_retries}"
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


def judge(topics: Topics, registry: Registry, deliveries: list[Delivery]) -> Batch:
    """Decode a batch of deliveries into line protocol (pure)."""
    lines: list[str] = []
    origins: list[tuple[str, bytes, int]] = []
    readings: list[Reading] = []
    rejections: list[Rejection] = []
    statuses = 0
    for d in deliveries:
        decoded = decode_message(topics, registry, d.topic, d.payload, d.received_at_ns, d.retained)
        origin = (d.topic, d.payload, d.received_at_ns)
        for r in decoded.readings:
            lines.append(reading_line(r))
            origins.append(origin)
        readings.extend(decoded.readings)
        for s in decoded.statuses:
            # A retained status is an old one replayed by the broker: its time is unknown.
            if not s.retained:
                lines.append(status_line(s))
                origins.append(origin)
                statuses += 1
        rejections.extend(decoded.rejections)
    return Batch(lines, readings, statuses, rejections, origins)


class Ingest:
    """Two threads after the network thread: one judges batches, one stores them.

    Judging (CPU) overlaps with storing (waiting on InfluxDB), and a small queue between them
    pushes back: while InfluxDB is slow, deliveries pile up in the inbox and the next batch
    is larger, so the write rate adapts without tuning. The inbox itself is bounded by the
    broker's in-flight window: the broker sends no more until ingest acknowledges.
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
        self._inbox: deque[Delivery] = deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._judged: queue.Queue[tuple[list[Delivery], Batch]] = queue.Queue(maxsize=2)
        self._threads: list[threading.Thread] = []
        self._deadletter_seq = 0

    # Called on the MQTT network thread, once per message: append and return.
    def deliver(self, delivery: Delivery) -> None:
        self._inbox.append(delivery)
        if not self._wake.is_set():
            self._wake.set()

    def start(self) -> None:
        for target, name in (
            (self._judge_loop, "ingest-judge"),
            (self._store_loop, "ingest-store"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the batch being stored (write and acknowledge it), then return.

        Batches judged but not yet stored are dropped unacknowledged: the broker redelivers
        them to the next ingest.
        """
        self._stopping.set()
        self._wake.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def backlog(self) -> int:
        return len(self._inbox) + self._judged.qsize()

    def _take(self) -> list[Delivery]:
        inbox, size = self._inbox, 0
        batch: list[Delivery] = []
        popleft = inbox.popleft
        while inbox and len(batch) < self.max_batch and size < self.max_batch_bytes:
            d = popleft()
            batch.append(d)
            size += len(d.payload)
        return batch

    def _judge_loop(self) -> None:
        last_take = 0.0
        while not self._stopping.is_set():
            if not self._inbox:
                self._wake.clear()
                if not self._inbox:
                    self._wake.wait(0.5)
                continue
            # Under load, gather for a few milliseconds rather than write tiny batches: each
            # request costs InfluxDB and this process far more than each line in it.
            if len(self._inbox) < self.max_batch:
                pause = last_take + self.linger_s - time.monotonic()
                if pause > 0 and self._stopping.wait(pause):
                    return
            last_take = time.monotonic()
            deliveries = self._take()
            batch = judge(self.topics, self.registry, deliveries)
            while not self._stopping.is_set():
                try:
                    self._judged.put((deliveries, batch), timeout=0.5)
                    break
                except queue.Full:
                    continue

    def _store_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                deliveries, batch = self._judged.get(timeout=0.5)
            except queue.Empty:
                continue
            self.store(deliveries, batch)

    def process(self, deliveries: list[Delivery]) -> None:
        """Judge, store, dead-letter and acknowledge one batch, on the caller's thread."""
        self.store(deliveries, judge(self.topics, self.registry, deliveries))

    def store(self, deliveries: list[Delivery], judged: Batch) -> None:
        """Store a judged batch, dead-letter what was refused, then acknowledge it all."""
        rejections = list(judged.rejections)
        lines = judged.lines
        dead_lines: list[str] = []
        for rej in rejections:
            dead_lines.append(self._deadletter_line(rej))
        refused = self._write(lines + dead_lines)
        if refused is None:
            return  # stopping while InfluxDB is down: nothing acknowledged, all redelivered
        stored_readings = len(judged.readings)
        stored_statuses = judged.statuses
        late: list[str] = []
        for bad in refused:
            if bad.index >= len(lines):
                log.error("InfluxDB refused a dead letter: %s", bad.message)
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
        if late and self._write(late) is None:
            return
        for rej in rejections:
            self.counters.deadlettered[rej.code] += 1
            self._publish_deadletter(rej.to_json())
        self._ack(deliveries)
        c = self.counters
        c.messages += len(deliveries)
        c.readings_stored += stored_readings
        c.statuses_stored += stored_statuses
        c.batches += 1

    def _deadletter_line(self, rej: Rejection) -> str:
        self._deadletter_seq = (self._deadletter_seq + 1) % 1000
        try:
            return deadletter_line(rej, self._deadletter_seq)
        except LineProtocolError as exc:  # only an absurd topic or reason gets here
            return deadletter_line(
                Rejection("(unprintable)", rej.payload, rej.code, str(exc), rej.received_at_ns),
                self._deadletter_seq,
            )

    def _write(self, lines: list[str]) -> list[RefusedLine] | None:
        """Write until InfluxDB takes it; None if asked to stop before it did."""
        backoff = 0.1
        while True:
            started = time.perf_counter()
            try:
                refused = write_keeping_good_lines(self.influx, lines)
            except InfluxUnavailable as exc:
                log.warning("InfluxDB unavailable, retrying in %.1f s: %s", backoff, exc)
            except InfluxError as exc:
                log.error("InfluxDB refused the batch, retrying in %.1f s: %s", backoff, exc)
            else:
                self.counters.write_seconds += time.perf_counter() - started
                return refused
            self.counters.write_retries += 1
            if self._stopping.wait(backoff):
                return None
            backoff = min(backoff * 2, self.max_backoff_s)
