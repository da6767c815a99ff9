"""The ingest pipeline's ordering rules, with an in-memory InfluxDB twin (no servers)."""

from __future__ import annotations

import threading

import orjson

from floodwatch.errors import BrokerError, InfluxUnavailable
from floodwatch.influx import WriteRefused
from floodwatch.mqtt import Delivery
from floodwatch.registry import SHIPPED_REGISTRY, load_registry
from floodwatch.topics import Topics
from ingest.pipeline import Ingest

TOPICS = Topics("floodwatch")
REGISTRY = load_registry(SHIPPED_REGISTRY)
NOW = 1_795_694_400 * 10**9


class InfluxTwin:
    """Stands in for InfluxClient.write: records lines, refuses what it is told to."""

    def __init__(self) -> None:
        # Keyed by series and time, as InfluxDB stores points: a rewrite overwrites.
        self.points: dict[str, str] = {}
        self.down = False
        self.refuse: set[str] = set()  # starts of lines InfluxDB refuses
        self.calls = 0

    @property
    def lines(self) -> list[str]:
        return list(self.points.values())

    def write(self, lines: list[str]) -> None:
        self.calls += 1
        if self.down:
            raise InfluxUnavailable("InfluxDB is down (twin)")
        bad = [line for line in lines if line.startswith(tuple(self.refuse))]
        for line in lines:
            if line not in bad:
                series, _fields, time = line.rsplit(" ", 2)
                self.points[f"{series} {time}"] = line
        if bad:
            raise WriteRefused(f"partial write: field type conflict: {bad[0]}", partial=True)


def delivery(sensor: str, payload: object, mid: int) -> Delivery:
    return Delivery(TOPICS.reading(sensor), orjson.dumps(payload), False, NOW, mid, 1, connection=1)


def make(twin: InfluxTwin) -> tuple[Ingest, list[int], list[bytes]]:
    acked: list[int] = []
    dead: list[bytes] = []

    def ack(ds: list[Delivery]) -> int:
        acked.extend(d.mid for d in ds)
        return len(ds)

    ingest = Ingest(TOPICS, REGISTRY, twin, ack, dead.append, max_backoff_s=0.01)  # type: ignore[arg-type]
    return ingest, acked, dead


def test_acknowledges_only_after_the_write_in_receive_order() -> None:
    """A batch is acknowledged once stored, in the order the broker delivered it."""
    twin = InfluxTwin()
    ingest, acked, dead = make(twin)
    batch = [delivery("qh-02", {"ts": 1795000000000 + i, "level_cm": 1.0}, i) for i in (5, 3, 9)]
    ingest.process(batch)
    assert acked == [5, 3, 9]
    assert len(twin.lines) == 3 and dead == []
    assert ingest.counters.readings_stored == 3


def test_nothing_is_acknowledged_while_influx_is_down() -> None:
    """While InfluxDB is unavailable the batch is retried and no message is acknowledged."""
    twin = InfluxTwin()
    twin.down = True
    ingest, acked, _ = make(twin)
    worker = threading.Thread(
        target=ingest.process, args=([delivery("qh-02", {"level_cm": 1.0}, 1)],)
    )
    worker.start()
    while twin.calls < 3:
        pass
    assert acked == []
    twin.down = False
    worker.join(5)
    assert acked == [1]
    assert ingest.counters.write_retries >= 2


def test_stopping_while_influx_is_down_acknowledges_nothing() -> None:
    """A stop during an outage leaves the batch unacknowledged, for the broker to redeliver."""
    twin = InfluxTwin()
    twin.down = True
    ingest, acked, _ = make(twin)
    worker = threading.Thread(
        target=ingest.process, args=([delivery("qh-02", {"level_cm": 1.0}, 1)],)
    )
    worker.start()
    while twin.calls < 2:
        pass
    ingest.stop()
    worker.join(5)
    assert not worker.is_alive()
    assert acked == []


def test_refused_lines_are_dead_lettered_and_the_rest_stored() -> None:
    """Lines InfluxDB refuses go to the dead letters with its reason; their messages are acked."""
    twin = InfluxTwin()
    twin.refuse = {"water_level,sensor=qh-03 "}
    ingest, acked, dead = make(twin)
    batch = [
        delivery("qh-02", {"ts": 1795000000000, "level_cm": 1.0}, 1),
        delivery("qh-03", {"ts": 1795000000000, "level_cm": 2.0}, 2),
        delivery("qh-04", {"ts": 1795000000000, "level_cm": 3.0}, 3),
    ]
    ingest.process(batch)
    assert acked == [1, 2, 3]
    [letter] = [orjson.loads(d) for d in dead]
    assert letter["code"] == "influx_refused" and "field type conflict" in letter["reason"]
    assert letter["topic"].endswith("/qh-03/reading")
    readings = [line for line in twin.lines if line.startswith("water_level")]
    assert len(readings) == 2
    assert any(line.startswith("deadletter,code=influx_refused") for line in twin.lines)
    assert ingest.counters.readings_stored == 2
    assert ingest.counters.deadlettered["influx_refused"] == 1


def test_bad_messages_are_stored_as_dead_letters_before_acknowledgement() -> None:
    """A rejected message is written to the deadletter measurement, published, then acked."""
    twin = InfluxTwin()
    ingest, acked, dead = make(twin)
    ingest.process([delivery("ghost", {"level_cm": 1.0}, 7)])
    assert acked == [7]
    assert [orjson.loads(d)["code"] for d in dead] == ["unknown_sensor"]
    assert twin.lines and twin.lines[0].startswith("deadletter,code=unknown_sensor ")


def test_a_dead_letter_the_broker_will_not_take_does_not_stop_acknowledging() -> None:
    """Publishing a dead letter can fail (broker gone, queue full); it is stored in InfluxDB
    all the same, and the batch is still acknowledged and counted."""
    twin = InfluxTwin()
    acked: list[int] = []

    def refuse(payload: bytes) -> None:
        raise BrokerError("publish to 'floodwatch/v1/deadletter' failed: the queue is full")

    def ack(ds: list[Delivery]) -> int:
        acked.extend(d.mid for d in ds)
        return len(ds)

    ingest = Ingest(TOPICS, REGISTRY, twin, ack, refuse)  # type: ignore[arg-type]
    ingest.process([delivery("ghost", {"level_cm": 1.0}, 4), delivery("qh-02", {"x": 1}, 5)])
    assert acked == [4, 5]
    assert sum(line.startswith("deadletter,") for line in twin.lines) == 2
    assert ingest.counters.deadlettered == {"unknown_sensor": 1, "bad_level": 1}


def test_the_threads_acknowledge_and_judge_every_batch_in_delivery_order() -> None:
    """With the judging, storing and finishing threads running, every delivery is stored,
    acknowledged once and in order, and every stored reading reaches the alert engine's hook
    in order; stop() flushes what was received."""
    twin = InfluxTwin()
    ingest, acked, dead = make(twin)
    judged: list[int] = []
    ingest.on_stored = lambda readings: judged.extend(r.seq or 0 for r in readings)
    ingest.max_batch = 7  # many small batches, so the three threads overlap
    ingest.start()
    n = 500
    for i in range(n):
        ingest.deliver(delivery("qh-02", {"ts": 1795000000000 + i, "level_cm": 1.0, "seq": i}, i))
    ingest.stop(timeout_s=10)
    assert acked == list(range(n))
    assert judged == list(range(n))
    assert ingest.counters.readings_stored == n and ingest.counters.messages == n
    assert ingest.counters.batches >= n // 7
    assert ingest.backlog == 0 and not dead


def test_a_thread_that_fails_stops_ingest_instead_of_stalling_it() -> None:
    """An unexpected error in a pipeline thread (here the acknowledgement) sets `failed` and
    stops the others, so the process can exit and be restarted rather than sit there with
    nothing acknowledged; what was not acknowledged stays with the broker."""
    twin = InfluxTwin()

    def broken_ack(ds: list[Delivery]) -> int:
        raise RuntimeError("socket gone")

    ingest = Ingest(TOPICS, REGISTRY, twin, broken_ack, lambda payload: None)  # type: ignore[arg-type]
    ingest.start()
    ingest.deliver(delivery("qh-02", {"ts": 1795000000000, "level_cm": 1.0}, 1))
    assert ingest.failed.wait(5)
    ingest.stop(timeout_s=2)
    assert all(not t.is_alive() for t in ingest._threads)
    assert ingest.counters.messages == 0
