"""The harness of the clustered fault tests (issue 14, "Fault tests" rows 1, 2, 5 and 6;
tests/test_cluster_faults.py): a flood published by sensors over MQTT 3.1.1 QoS 1 through the
front door, and the accounting of what became of it.

- The scenario is the shipped `flash-flood` (simulators/: physics, sensors, messages) for the
  shipped sensors, with one ward per street (`ward-a` Đường 12, `ward-b` Quốc Hương, `ward-c`
  Nguyễn Văn Hưởng and the river gauge), so the readings spread over three partitions. Its
  six hours end just before the module starts: unique per sensor, in the past, the same in
  every run, so alert event ids (deterministic in the readings) compare across runs.
- `LoadPublisher`: one persistent MQTT 3.1.1 session per sensor login through HAProxy, paced
  to a rate, recording which readings the broker acknowledged (PUBACK).
- `EventWatch`: alert events as published, seen by one NATS connection on each node, so a
  node going down hides nothing from the others.
- `StoreWatch`: the stored readings' count over time (the time to resume).
- an audit consumer on the MQTT store: was a lost reading ever in the broker?
- `account`: published, acknowledged, stored, lost, duplicated, alerts missing or doubled.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import paho.mqtt.client as mqtt
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from floodwatch.cluster import (
    MQTT_MSGS_PREFIX,
    MQTT_MSGS_STREAM,
    LocalCluster,
    connect,
    partition_consumer_name,
    retrying,
)
from floodwatch.contract import ALERT_MEASUREMENT, READING_MEASUREMENT
from floodwatch.errors import FloodwatchError
from floodwatch.influx import InfluxClient
from floodwatch.registry import SHIPPED_REGISTRY, Registry
from floodwatch.topics import Topics
from simulators.messages import TimeMap, build_messages
from simulators.physics import simulate_world
from simulators.scenario import check_against_registry, find_scenario, load_scenario
from simulators.sensors import report
from tests.test_cluster import MqttSensor

Key = tuple[str, int]  # (sensor, reading time in ns): one stored point
SCENARIO = "flash-flood"
# One ward per street: three wards in three different partitions of 8 (checked by the tests).
WARD_OF_STREET = {
    "Đường 12": "ward-a",
    "Quốc Hương": "ward-b",
    "Nguyễn Văn Hưởng": "ward-c",
    "Sông Sài Gòn": "ward-c",
}


def ward_split_registry(dest: Path) -> Path:
    """The shipped registry with one ward id per street, written to `dest`."""
    doc = orjson.loads(SHIPPED_REGISTRY.read_bytes())
    for feature in doc["features"]:
        props = feature["properties"]
        if "id" in props:  # a sensor (streets carry no id)
            props["ward_id"] = WARD_OF_STREET[props["street"]]
    dest.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return dest


@dataclass(frozen=True, slots=True)
class Planned:
    """One reading message of the scenario, with the point it must become."""

    sensor_id: str
    payload: bytes
    key: Key


def flood_messages(
    registry: Registry, ends_s: float, scenario_name: str = SCENARIO
) -> list[Planned]:
    """The scenario's readings in publishing order, moved to end at `ends_s` (epoch s): recent
    readings, as a storm's backlog would be, so a worker that gains a partition rebuilds its
    alerts from InfluxDB as in production (it reads back the last hour and the open alerts)."""
    scenario = load_scenario(find_scenario(scenario_name))
    # Without its clock-skew faults: a reading stamped minutes ahead makes the sensor's next
    # readings late (ignored by the engine) unless they arrive in the same batch, so those
    # verdicts depend on batch boundaries, which a stall changes; the comparison would then
    # measure batching, not the fault.
    scenario = replace(scenario, faults=tuple(f for f in scenario.faults if f.kind != "clock_skew"))
    check_against_registry(scenario, registry)
    sensors = tuple(registry.sensors.values())
    world = simulate_world(scenario, scenario.seed)
    reports, events = report(scenario, world, sensors, scenario.seed)
    planned = []
    timemap = TimeMap(scenario.start_s, ends_s - scenario.duration_s)
    for message in build_messages(reports, events, timemap):
        if message.channel != "reading" or message.readings != 1:
            continue  # the flash flood has no statuses and no backfill arrays
        sensor_id = sensors[message.sensor].id
        planned.append(Planned(sensor_id, message.payload, (sensor_id, ts_ns(message.payload))))
    return planned


def ts_ns(payload: bytes) -> int:
    """A reading's ISO `ts` (milliseconds) in epoch nanoseconds, exactly."""
    moment = datetime.fromisoformat(orjson.loads(payload)["ts"])
    return (int(moment.timestamp()) * 1000 + moment.microsecond // 1000) * 1_000_000


# -- the sensors --------------------------------------------------------------------------------


class LoadPublisher:
    """Every sensor's login publishing its readings QoS 1 through the front door, at `rate`
    readings per second in all, in the scenario's order (each sensor's in time order)."""

    def __init__(
        self, cluster: LocalCluster, root: str, messages: Sequence[Planned], rate: float
    ) -> None:
        self.topics = Topics(root)
        self.messages = messages
        self.rate = rate
        ids = sorted({m.sensor_id for m in messages})
        # paho's window of 200 publishes in flight per sensor (far more than a sensor's
        # firmware, one reading a minute, has): around a leader change NATS stores some of a
        # sensor's readings behind its later ones, and the workers must judge them in place.
        self.sensors = {s: MqttSensor(cluster, s) for s in ids}
        self.sent: list[tuple[Planned, mqtt.MQTTMessageInfo]] = []
        self.sent_at: list[float] = []  # time.monotonic() of each publish
        # (time.monotonic(), sensor) of every (re)connection after the first: HAProxy shuts a
        # node's sessions when its check fails, and paho sends the unacknowledged again.
        self.reconnects: list[tuple[float, str]] = []
        for sensor_id, sensor in self.sensors.items():
            sensor.client.on_connect = functools.partial(
                self._connected, sensor_id, sensor.client.on_connect
            )
        self.thread = threading.Thread(target=self._run, name="load-publisher", daemon=True)
        self.started_s = 0.0

    def start(self) -> None:
        self.started_s = time.monotonic()
        self.thread.start()

    def _run(self) -> None:
        for n, message in enumerate(self.messages):
            delay = self.started_s + n / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the load, not waiting for a result
            sensor = self.sensors[message.sensor_id]
            info = sensor.client.publish(
                self.topics.reading(message.sensor_id), message.payload, qos=1
            )
            self.sent.append((message, info))
            self.sent_at.append(time.monotonic())

    def _connected(self, sensor_id: str, then: Callable[..., None] | None, *args: Any) -> None:
        self.reconnects.append((time.monotonic(), sensor_id))
        if then is not None:
            then(*args)

    @property
    def published(self) -> int:
        return len(self.sent)

    def acknowledged(self) -> set[Key]:
        """Readings the broker PUBACKed (paho resends the others after a reconnect)."""
        return {
            m.key
            for m, info in list(self.sent)
            if info.mid in self.sensors[m.sensor_id].acknowledged
        }

    def wait_done(self, timeout_s: float) -> None:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the publisher did not finish"

    def close(self) -> None:
        for sensor in self.sensors.values():
            sensor.close()


def _mqtt_string(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def _packet(first: int, body: bytes) -> bytes:
    """An MQTT packet: fixed header (type and flags, variable-length remaining length), body."""
    length, out = len(body), bytearray([first])
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out + body)


def connect_and_publish(
    port: int, login: str, password: str, topic: str, payloads: list[bytes], together: bool
) -> int:
    """Raw MQTT 3.1.1, as a sensor's firmware may send it: CONNECT (persistent session), then
    QoS 1 PUBLISHes, written in one `send` with the CONNECT (`together`; paho does so when it
    publishes while reconnecting: it writes a PUBLISH as soon as its socket is open) or after
    the CONNACK; returns the PUBACKs received."""
    hello = _packet(
        0x10,
        _mqtt_string("MQTT")
        + bytes([4, 0xC0, 0, 60])
        + _mqtt_string(f"{login}-raw")
        + _mqtt_string(login)
        + _mqtt_string(password),
    )
    publishes = b"".join(
        _packet(0x32, _mqtt_string(topic) + (n + 1).to_bytes(2, "big") + payload)
        for n, payload in enumerate(payloads)
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if together:
            sock.sendall(hello + publishes)
        else:
            sock.sendall(hello)
            assert sock.recv(4)[:2] == b"\x20\x02", "no CONNACK"
            sock.sendall(publishes)
        want = 4 * len(payloads) + (4 if together else 0)
        got = b""
        while len(got) < want:
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
        sock.sendall(b"\xe0\x00")  # DISCONNECT
    body = got[4:] if together else got
    return sum(1 for k in range(0, len(body), 4) if body[k] == 0x40)


# -- what the pipeline made of it ---------------------------------------------------------------


@dataclass
class Seen:
    """One copy of an alert event as published."""

    event_id: str
    at_ns: int  # the engine's decision time: two decisions differ here, two copies do not
    received_s: float  # time.monotonic() at the watcher


class EventWatch:
    """Alert events on `ROOT.v1.events.>` as one NATS connection per node sees them; copies of
    one decision (same `at_ns`) count once."""

    def __init__(self, cluster: LocalCluster, root: str, nodes: Sequence[str]) -> None:
        pairs = zip(cluster.nats_urls(), cluster.nodes, strict=True)
        self.urls = [[url] for url, (_, node) in pairs if node.name in nodes]
        self.subject = f"{root}.v1.events.>"
        self.copies: list[list[Seen]] = [[] for _ in self.urls]
        self.ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(30), "the event watchers did not subscribe"

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        conns: list[NatsClient] = []
        for k, urls in enumerate(self.urls):
            nc = await connect(urls)
            conns.append(nc)

            async def seen(msg: Msg, k: int = k) -> None:
                doc = orjson.loads(msg.data)
                self.copies[k].append(Seen(doc["event_id"], doc["at_ns"], time.monotonic()))

            await nc.subscribe(self.subject, cb=seen)
            await nc.flush()
        self.ready.set()
        await self._stop.wait()
        for nc in conns:
            await nc.close()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)

    def decisions(self) -> dict[str, set[int]]:
        """event id -> the distinct decision times it was published with."""
        out: dict[str, set[int]] = {}
        for seen in itertools.chain(*self.copies):
            out.setdefault(seen.event_id, set()).add(seen.at_ns)
        return out

    def most_copies(self) -> Counter[str]:
        """event id -> the most copies one watcher saw (QoS 1 may deliver a copy twice)."""
        best: Counter[str] = Counter()
        for copies in self.copies:
            for event_id, n in Counter(s.event_id for s in copies).items():
                best[event_id] = max(best[event_id], n)
        return best

    def first_after(self, t: float) -> float | None:
        """When the first event after monotonic time `t` was seen."""
        times = [s.received_s for s in itertools.chain(*self.copies) if s.received_s > t]
        return min(times) if times else None


class StoreWatch:
    """Polls the stored readings' count (10 Hz), so a run can say when writes resumed."""

    def __init__(self, db: InfluxClient) -> None:
        self.db = db
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="store-watch", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            with contextlib.suppress(FloodwatchError, httpx.HTTPError):
                self.samples.append((time.monotonic(), stored_count(self.db)))

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)

    def resumed_after(self, t: float) -> float:
        return resume_after(self.samples, t)


def resume_after(samples: Sequence[tuple[float, int]], t: float) -> float:
    """Seconds from `t` to the end of the longest stall of the count from `t` on, a stall
    ending at the count's next growth (the first growth if it never stalled); the count's
    standstill after the last growth (the load is over) is no stall."""
    before = [(s, n) for s, n in samples if s < t][-1:]  # the count at the fault
    after = before + [(s, n) for s, n in samples if s >= t]
    resume, stall_start, best = float("nan"), t, -1.0
    for (_, n0), (s1, n1) in itertools.pairwise(after):
        if n1 > n0:
            if s1 - stall_start > best:
                best, resume = s1 - stall_start, s1
            stall_start = s1
    return resume - t


def stored_count(db: InfluxClient) -> int:
    series = db.query(f'SELECT count("level_cm") FROM "{READING_MEASUREMENT}"')
    return int(series[0]["values"][0][1]) if series else 0


def stored_keys(db: InfluxClient, since_ns: int) -> list[Key]:
    """Every stored reading's (sensor, time) from `since_ns` on (bound parameter)."""
    series = db.query(
        f'SELECT "level_cm", "sensor" FROM "{READING_MEASUREMENT}" WHERE time >= $since',
        {"since": since_ns},
        epoch="ns",
    )
    return [(row[2], int(row[0])) for s in series for row in s["values"]]


def stored_event_ids(db: InfluxClient, since_ns: int) -> set[str]:
    series = db.query(
        f'SELECT "event_id" FROM "{ALERT_MEASUREMENT}" WHERE time >= $since', {"since": since_ns}
    )
    return {row[1] for s in series for row in s["values"]}


# -- the accounting -----------------------------------------------------------------------------


@dataclass
class FaultRow:
    """One row of RELIABILITY.md's clustered table."""

    fault: str
    action: str
    published: int
    acknowledged: int
    stored: int
    lost: int  # acknowledged, stored in the no-fault run, not stored in this one
    duplicated: int  # deliveries to the workers beyond one per stored reading
    alerts: int  # alert events in the no-fault run
    alerts_missing: int
    alerts_doubled: int  # one event decided twice (two decision times)
    alerts_extra: int  # decided in this run, not in the no-fault run (a clear at another time)
    resume_s: float
    notes: str = ""
    # Of the lost readings, how many the audit consumer never saw in the broker's store (NATS
    # acknowledged them and never stored them); None without an audit.
    lost_never_in_store: int | None = None


@dataclass
class RunResult:
    """What one run of the scenario produced."""

    published: list[Key]
    acknowledged: set[Key]
    stored: list[Key]
    decisions: dict[str, set[int]]  # published alert events
    stored_events: set[str]
    delivered: int | None  # readings delivered to the workers, if they tell
    resume_s: float
    in_broker: Audit | None = None  # what the audit consumer found
    notes: list[str] = field(default_factory=list)


def judged(event_ids: set[str]) -> set[str]:
    """The events that follow from the readings alone: `stale` follows the wall clock (silence
    is about arrivals), which a replay of six hours in seconds does not keep, so a stall or a
    rebuilt partition (whose stored readings are hours old in reading time) makes it differ.
    Event ids are `sensor:kind:...`."""
    return {e for e in event_ids if e.split(":")[1] != "stale"}


def account(fault: str, action: str, run: RunResult, baseline: RunResult) -> FaultRow:
    """The row for a faulted run against the no-fault run of the same scenario."""
    stored = set(run.stored)
    expected = set(baseline.stored)  # what the pipeline stores when nothing fails
    lost = (run.acknowledged & expected) - stored
    events = judged(set(run.decisions) | run.stored_events)
    reference = judged(set(baseline.decisions) | baseline.stored_events)
    doubled = sum(1 for e, times in run.decisions.items() if len(times) > 1 and e in events)
    duplicated = (
        max(0, run.delivered - len(stored))
        if run.delivered is not None
        else len(run.stored) - len(stored)
    )
    if lost:  # which ones, and where in the publishing order
        order = {key: n for n, key in enumerate(run.published)}
        print(f"lost: {sorted((order.get(k), k) for k in lost)[:10]}")
        if run.in_broker is not None:
            found = run.in_broker
            print(f"lost but in the broker's store (audit consumer): {len(lost & found.stored)}")
            print(f"store sequences the audit never saw: {len(found.unseen)}; {dict(found.kinds)}")
            print(f"lost, stored under the unmapped subject: {len(lost & found.unmapped)}")
            for key in sorted(lost)[:10]:
                print("  " + found.around(key, run.published))
    strays = sorted(events - reference)
    missing = sorted(reference - events)
    if missing or strays:  # which ones, for whoever reads a failure
        print(f"alert events missing: {missing[:10]}; not in the no-fault run: {strays[:10]}")
        if run.in_broker is not None:
            behind = run.in_broker.behind_newer()
            print(
                f"readings the store holds behind newer ones of their sensor: "
                f"{sum(behind.values())} {dict(behind)}; published unmapped: "
                f"{len(run.in_broker.unmapped)}"
            )
    return FaultRow(
        fault=fault,
        action=action,
        published=len(run.published),
        acknowledged=len(run.acknowledged),
        stored=len(stored),
        lost=len(lost),
        duplicated=duplicated,
        alerts=len(reference),
        alerts_missing=len(reference - events),
        alerts_doubled=doubled,
        alerts_extra=len(events - reference),
        resume_s=run.resume_s,
        notes="; ".join(run.notes),
        # A reading stored unmapped was in the store too (the workers' side lost it).
        lost_never_in_store=None if run.in_broker is None else len(lost - run.in_broker.stored),
    )


# -- the cluster ------------------------------------------------------------------------------


async def consumer_leaders(cluster: LocalCluster, names: Iterable[str]) -> dict[str, str]:
    """Consumer name -> the node leading it."""
    nc = await connect(cluster.nats_urls())
    out = {}
    try:
        js = nc.jetstream()
        for name in names:
            info = await retrying(
                functools.partial(js.consumer_info, MQTT_MSGS_STREAM, name), "consumer info"
            )
            if info.cluster is not None and info.cluster.leader is not None:
                out[name] = info.cluster.leader
    finally:
        await nc.close()
    return out


async def partition_consumers_exist(cluster: LocalCluster, root: str, partitions: int) -> bool:
    nc = await connect(cluster.nats_urls())
    try:
        js = nc.jetstream()
        names = {c.name for c in await js.consumers_info(MQTT_MSGS_STREAM)}
    finally:
        await nc.close()
    return all(partition_consumer_name(root, p) in names for p in range(partitions))


def audit_consumer_name(root: str) -> str:
    return f"audit_{root}"


async def ensure_audit_consumer(cluster: LocalCluster, root: str) -> None:
    """A second durable consumer on everything of the run's root in the MQTT store, read only
    at the end: a reading the workers never stored but the audit has was in the broker (the
    workers' side lost it); one the audit lacks too, the broker never kept. Nothing else writes
    to the store under the root, so a stream sequence the audit never saw between two it did
    was stored and removed before the audit read it."""
    nc = await connect(cluster.nats_urls())
    try:
        js = nc.jetstream(timeout=10)
        config = ConsumerConfig(
            durable_name=audit_consumer_name(root),
            filter_subject=f"{MQTT_MSGS_PREFIX}{root}.>",
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=-1,
        )
        await retrying(lambda: js.add_consumer(MQTT_MSGS_STREAM, config), "the audit consumer")
    finally:
        await nc.close()


@dataclass
class Audit:
    """What the audit consumer found in the MQTT store."""

    sequence: dict[Key, int]  # each reading's (first) stream sequence
    unseen: list[int]  # stream sequences between the first and the last it saw, not seen
    kinds: Counter[str]  # messages by the subject's kind after the root (part, events, ...)
    unmapped: set[Key]  # readings stored under the sensors' own subject, not their partition's

    @property
    def keys(self) -> set[Key]:
        """Readings stored under their partition's subject."""
        return set(self.sequence)

    def behind_newer(self) -> Counter[str]:
        """Per sensor, its readings the store holds behind a newer reading of it (the engine
        takes those as late): sensors' resent publishes, or copies moved from unmapped."""
        behind: Counter[str] = Counter()
        newest: dict[str, int] = {}
        for (sensor_id, ts), _ in sorted(self.sequence.items(), key=lambda kv: kv[1]):
            if ts < newest.get(sensor_id, ts):
                behind[sensor_id] += 1
            newest[sensor_id] = max(ts, newest.get(sensor_id, ts))
        return behind

    @property
    def stored(self) -> set[Key]:
        """Readings in the store under any subject (mapped, or the sensor's own)."""
        return self.keys | self.unmapped

    def around(self, key: Key, order: Sequence[Key]) -> str:
        """For a lost reading: its sensor's readings published just before and after it, their
        sequences in the store, and how many sequences between them the audit never saw."""
        n = order.index(key)
        before = next((k for k in reversed(order[:n]) if k[0] == key[0]), None)
        after = next((k for k in order[n + 1 :] if k[0] == key[0]), None)
        lo = self.sequence.get(before) if before else None
        hi = self.sequence.get(after) if after else None
        if lo is None or hi is None:
            return f"{key}: neighbours not in the store"
        unseen = sum(1 for q in self.unseen if lo < q < hi)
        return f"{key}: between sequences {lo} and {hi}, {unseen} never seen by the audit"


async def audit(cluster: LocalCluster, root: str, expected: int) -> Audit:
    """Read the audit consumer to the end (two quiet seconds) and delete it."""
    nc = await connect(cluster.nats_urls())
    sequence: dict[Key, int] = {}
    seen: set[int] = set()
    kinds: Counter[str] = Counter()
    unmapped: set[Key] = set()
    try:
        js = nc.jetstream(timeout=10)
        sub = await js.pull_subscribe_bind(audit_consumer_name(root), stream=MQTT_MSGS_STREAM)
        quiet = 0
        # Until every expected reading is seen under either subject, or two quiet seconds.
        while len(sequence.keys() | unmapped) < expected and quiet < 2:
            try:
                batch = await sub.fetch(1000, timeout=1)
            except (nats.errors.Error, TimeoutError):
                quiet += 1
                continue
            quiet = 0
            for msg in batch:
                seen.add(msg.metadata.sequence.stream)
                kinds[msg.subject.removeprefix(f"{MQTT_MSGS_PREFIX}{root}.v1.").split(".")[0]] += 1
                if ".v1.part." in msg.subject and msg.subject.endswith(".reading"):
                    key = (msg.subject.split(".")[-2], ts_ns(msg.data))
                    sequence.setdefault(key, msg.metadata.sequence.stream)
                elif ".v1.sensors." in msg.subject and msg.subject.endswith(".reading"):
                    unmapped.add((msg.subject.split(".")[-2], ts_ns(msg.data)))
                await msg.ack()
        await js.delete_consumer(MQTT_MSGS_STREAM, audit_consumer_name(root))
    finally:
        await nc.close()
    span = range(min(seen), max(seen) + 1) if seen else range(0)
    return Audit(sequence, [q for q in span if q not in seen], kinds, unmapped)


def scrape_counter(metrics_url: str, name: str) -> float | None:
    """One counter from a Prometheus text page, or None when it is not there."""
    try:
        text = httpx.get(metrics_url, timeout=5).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None
