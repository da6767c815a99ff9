"""The ingest pipeline's ordering rules, with an in-memory InfluxDB twin (no servers)."""

from __future__ import annotations

import threading
import time

import orjson

from alerts import new_state
from floodwatch.errors import BrokerError, InfluxUnavailable
from floodwatch.influx import WriteRefused
from floodwatch.mqtt import Delivery
from floodwatch.registry import SHIPPED_REGISTRY, load_registry
from floodwatch.topics import Topics
from ingest.alerting import Alerting
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


class Published:
    """What the alert owner published, in order, with an event per alert seen."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.alert = threading.Event()

    def __call__(self, topic: str, payload: bytes, retain: bool) -> None:
        self.messages.append((topic, payload, retain))
        if "/events/" in topic:
            self.alert.set()

    def events(self) -> list[dict[str, object]]:
        return [orjson.loads(p) for t, p, _ in self.messages if "/events/" in t]


def with_alerts(twin: InfluxTwin) -> tuple[Ingest, list[int], Published]:
    ingest, acked, _ = make(twin)
    published = Published()
    alerting = Alerting(
        REGISTRY,
        TOPICS,
        twin,  # type: ignore[arg-type]
        published,
        clock=lambda: NOW,
        state=new_state(REGISTRY, NOW),
    )
    ingest.alerts = alerting
    return ingest, acked, published


def flood_reading(i: int, level_cm: float) -> Delivery:
    """Reading i of qh-02, one minute after reading i - 1."""
    return delivery("qh-02", {"ts": 1795000000000 + i * 60_000, "level_cm": level_cm, "seq": i}, i)


def stored_events(twin: InfluxTwin) -> list[str]:
    return sorted(line for line in twin.lines if line.startswith("alert_event,"))


def test_the_threads_judge_store_and_acknowledge_every_batch_in_delivery_order() -> None:
    """With the decoding, alert, storing and finishing threads running, every delivery is
    stored and acknowledged once and in order, every alert event published is stored with
    the readings, and stop() flushes what was received."""
    twin = InfluxTwin()
    ingest, acked, published = with_alerts(twin)
    ingest.max_batch = 7  # many small batches, so the threads overlap
    ingest.start()
    n = 500
    for i in range(n):
        # Two floods: 100-199 and 300-399 at 12 cm, dry in between for over 10 minutes.
        ingest.deliver(flood_reading(i, 12.0 if (i // 100) % 2 else 1.0))
    ingest.stop(timeout_s=10)
    assert acked == list(range(n))
    assert ingest.counters.readings_stored == n and ingest.counters.messages == n
    assert ingest.counters.batches >= 2
    assert ingest.backlog == 0
    events = published.events()
    assert [(e["kind"], e["change"]) for e in events if e["kind"] == "flood"] == [
        ("flood", "raised"),
        ("flood", "cleared"),
        ("flood", "raised"),
        ("flood", "cleared"),
    ]
    assert len(stored_events(twin)) == len(events)


def test_alerts_are_published_while_influx_is_down_and_stored_when_it_returns() -> None:
    """A flood raises its alert while InfluxDB refuses every write; nothing is acknowledged
    until the readings and the alert event are stored together."""
    twin = InfluxTwin()
    twin.down = True
    ingest, acked, published = with_alerts(twin)
    ingest.start()
    ingest.deliver(flood_reading(0, 12.0))
    ingest.deliver(flood_reading(1, 14.0))
    assert published.alert.wait(10), "no alert while InfluxDB was down"
    assert [e["change"] for e in published.events()] == ["raised"]
    assert acked == [] and twin.points == {}
    twin.down = False
    ingest.stop(timeout_s=10)
    assert acked == [0, 1]
    [event] = stored_events(twin)
    assert event.startswith("alert_event,change=raised,kind=flood,sensor=qh-02 ")


def test_stop_wakes_every_wait_while_influx_is_down() -> None:
    """Without an outbox and with InfluxDB down, stop() ends every thread (the store's retry
    wait included) and acknowledges nothing: the broker keeps the batch."""
    twin = InfluxTwin()
    twin.down = True
    ingest, acked, published = with_alerts(twin)
    ingest.start()
    ingest.deliver(flood_reading(0, 12.0))
    ingest.deliver(flood_reading(1, 14.0))
    assert published.alert.wait(10)
    while twin.calls < 2:
        time.sleep(0.01)
    ingest.stop(timeout_s=1)
    assert not ingest.busy()
    assert acked == []


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


def test_lines_stored_outside_a_batch_are_written_in_turn_and_acknowledge_nothing() -> None:
    """store_lines (events made outside a batch) queues for the store thread without waiting,
    even while InfluxDB is down, and the lines are written once it answers."""
    twin = InfluxTwin()
    twin.down = True
    ingest, acked, _ = make(twin)
    ingest.start()
    ingest.store_lines(['sensor_change,sensor=qh-02 reason="moved" 1795000000000000000'])
    while twin.calls < 2:
        time.sleep(0.01)
    twin.down = False
    ingest.stop(timeout_s=10)
    assert acked == []
    assert [line.split(",")[0] for line in twin.lines] == ["sensor_change"]
