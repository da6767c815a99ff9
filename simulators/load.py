"""`load`: many virtual sensors publishing at a set rate, for benchmarks; says what it achieved.

Each publisher process has one MQTT connection with unlimited in-flight QoS 1 messages and
publishes its share of the rate for its share of the sensors. A reading counts as published
once the broker acknowledged it (PUBACK with a success code); one the broker refused (a
reason code of 0x80 or more, e.g. 0x87 Not authorized when the login may not publish there)
counts as refused, not published (over MQTT 3.1.1 the broker cannot say so: a denied publish
counts as published there). The achieved rate is every process's acknowledged readings
over the span from the first publish to the last acknowledgement.

Readings are stamped in epoch milliseconds (CONTRACT section 2 allows it), one second apart
per sensor, starting far enough in the past that the last is never in the future: every
(sensor, ts) pair is unique, so ingest stores each one.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier, Event
from typing import Literal

import orjson

from floodwatch.mqtt import MqttConnection
from floodwatch.settings import MqttEndpoint
from floodwatch.topics import Topics

LoadMode = Literal["array", "single"]
LOAD_MODES: tuple[LoadMode, ...] = ("array", "single")
# What one publisher process sustains on the 2-core development machine, with mosquitto on
# the same host: used to pick how many processes `--processes 0` starts.
PROCESS_CAPACITY: dict[LoadMode, float] = {"array": 150_000.0, "single": 12_000.0}
# Publish this many messages between two looks at the clock.
CHUNK = 50
STEP_MS = 1000
DRAIN_TIMEOUT_S = 60.0
START_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """What to publish: validated by the command line."""

    endpoint: MqttEndpoint
    topic_root: str
    sensors: int
    rate: float  # readings per second, all processes together
    mode: LoadMode
    batch: int  # readings per array message
    duration_s: float
    processes: int
    prefix: str = "load"

    @property
    def per_message(self) -> int:
        return self.batch if self.mode == "array" else 1

    def sensor_id(self, index: int) -> str:
        return f"{self.prefix}-{index:05d}"


@dataclass(frozen=True, slots=True)
class WorkerResult:
    """What one process published, with epoch-second bounds comparable across processes."""

    readings: int
    messages: int
    first_s: float
    acked_s: float
    unacknowledged: int
    error: str = ""
    refused: int = 0  # messages the broker answered with a failure reason code
    refusal: str = ""  # the last such reason, e.g. "Not authorized (0x87)"


@dataclass(frozen=True, slots=True)
class LoadResult:
    """The whole run: achieved rates over the span of every process."""

    plan: LoadPlan
    readings: int
    messages: int
    elapsed_s: float
    unacknowledged: int
    errors: tuple[str, ...]
    refused_readings: int = 0
    refused_messages: int = 0
    refusal: str = ""

    @property
    def readings_per_s(self) -> float:
        return self.readings / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "mode": self.plan.mode,
            "sensors": self.plan.sensors,
            "processes": self.plan.processes,
            "batch": self.plan.per_message,
            "target_readings_per_s": self.plan.rate,
            "readings": self.readings,
            "messages": self.messages,
            "elapsed_s": round(self.elapsed_s, 3),
            "readings_per_s": round(self.readings_per_s, 1),
            "messages_per_s": round(self.messages_per_s, 1),
            "unacknowledged": self.unacknowledged,
            "refused_readings": self.refused_readings,
            "refused_messages": self.refused_messages,
            "refusal": self.refusal,
            "errors": list(self.errors),
        }


def auto_processes(mode: LoadMode, rate: float, cpus: int | None = None) -> int:
    """Enough processes for the rate, at most one per CPU."""
    available = cpus or os.cpu_count() or 1
    return max(1, min(available, math.ceil(rate / PROCESS_CAPACITY[mode])))


def run_load(plan: LoadPlan) -> LoadResult:
    """Start the publisher processes together, wait for them, and add up what they achieved."""
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(plan.processes + 1)
    go = context.Event()
    results = context.Queue()
    workers = [
        context.Process(target=_worker, args=(plan, k, ready, go, results), daemon=True)
        for k in range(plan.processes)
    ]
    for worker in workers:
        worker.start()
    # A worker that cannot connect breaks the barrier; it reports why below.
    with contextlib.suppress(threading.BrokenBarrierError):
        ready.wait(START_TIMEOUT_S)
    go.set()
    collected: list[WorkerResult] = []
    deadline = time.monotonic() + plan.duration_s + DRAIN_TIMEOUT_S + START_TIMEOUT_S
    while len(collected) < plan.processes and time.monotonic() < deadline:
        try:
            collected.append(results.get(timeout=0.5))
        except Exception:  # queue.Empty: keep waiting while the workers live
            if not any(worker.is_alive() for worker in workers) and results.empty():
                break
    for worker in workers:
        worker.join(5)
        if worker.is_alive():
            worker.terminate()
    good = [r for r in collected if not r.error and r.messages]
    errors = tuple(r.error for r in collected if r.error)
    if len(collected) < plan.processes:
        errors += (f"{plan.processes - len(collected)} publisher processes did not report",)
    if not good:
        return LoadResult(plan, 0, 0, 0.0, 0, errors)
    refused = sum(r.refused for r in good)
    refusal = next((r.refusal for r in good if r.refusal), "")
    if refused:
        errors += (
            f"the broker refused {refused:,} of {sum(r.messages for r in good):,} messages "
            f"({refusal}) as {plan.endpoint}: check that this login may publish readings "
            f"under {plan.topic_root}/v1/sensors/ (the admin login may; a sensor's only its "
            "own)",
        )
    # Only what the broker accepted counts as published.
    return LoadResult(
        plan=plan,
        readings=sum(r.readings - r.refused * plan.per_message for r in good),
        messages=sum(r.messages - r.refused for r in good),
        elapsed_s=max(r.acked_s for r in good) - min(r.first_s for r in good),
        unacknowledged=sum(r.unacknowledged for r in good),
        errors=errors,
        refused_readings=refused * plan.per_message,
        refused_messages=refused,
        refusal=refusal,
    )


def _worker(
    plan: LoadPlan,
    k: int,
    ready: Barrier,
    go: Event,
    results: multiprocessing.Queue[WorkerResult],
) -> None:
    try:
        results.put(_publish(plan, k, ready, go))
    except Exception as exc:  # reported to the parent, which prints it
        # Break the start barrier, so nobody waits out its timeout for a publisher that
        # cannot connect (a refused login is known at once).
        ready.abort()
        results.put(WorkerResult(0, 0, 0.0, 0.0, 0, f"publisher {k}: {exc}"))


def _publish(plan: LoadPlan, k: int, ready: Barrier, go: Event) -> WorkerResult:
    topics = Topics(plan.topic_root)
    mine = list(range(k, plan.sensors, plan.processes))
    if not mine:
        ready.wait(START_TIMEOUT_S)
        return WorkerResult(0, 0, 0.0, 0.0, 0)
    names = [topics.reading(plan.sensor_id(i)) for i in mine]
    rate = plan.rate / plan.processes
    per_message = plan.per_message
    # Readings per sensor if the rate holds, plus a day: the last stamp stays in the past.
    expected = math.ceil(rate * plan.duration_s / len(mine)) + 1
    base_ms = int(time.time() * 1000) - expected * STEP_MS - 86_400_000
    counters = [0] * len(mine)
    conn = MqttConnection(plan.endpoint, f"floodwatch-load-{os.getpid()}-{k}", max_inflight=0)
    conn.start()
    ready.wait(START_TIMEOUT_S)
    go.wait(START_TIMEOUT_S)
    readings = messages = 0
    slot = 0
    first_s = time.time()
    began = time.monotonic()
    while True:
        elapsed = time.monotonic() - began
        if elapsed >= plan.duration_s:
            break
        due = rate * elapsed - readings
        if due <= 0:
            time.sleep(0.0005)
            continue
        for _ in range(min(CHUNK, math.ceil(due / per_message))):
            first = counters[slot]
            counters[slot] = first + per_message
            payload = _payload(base_ms, first, per_message, slot)
            conn.publish(names[slot], payload, qos=1)
            slot = slot + 1 if slot + 1 < len(mine) else 0
            messages += 1
            readings += per_message
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while conn.pending_publishes() and time.monotonic() < deadline:
        time.sleep(0.001)
    acked_s = time.time()
    unacknowledged = conn.pending_publishes()
    conn.stop()
    return WorkerResult(
        readings,
        messages,
        first_s,
        acked_s,
        unacknowledged,
        refused=conn.refused_publishes,
        refusal=conn.last_refusal,
    )


def _payload(base_ms: int, first: int, count: int, slot: int) -> bytes:
    """One reading object, or an array of `count` consecutive ones, of plausible values."""
    items = [
        {
            "ts": base_ms + n * STEP_MS,
            "level_cm": float((n + slot) % 600) / 10.0,
            "battery_v": 3.9,
            "rssi": -80 - (n % 15),
            "seq": n + 1,
        }
        for n in range(first, first + count)
    ]
    return orjson.dumps(items[0] if count == 1 else items)


def load_registry_geojson(plan: LoadPlan) -> bytes:
    """A registry holding the load's virtual sensors, so ingest accepts what `load` sends."""
    features = []
    for i in range(plan.sensors):
        row, column = divmod(i, 100)
        features.append(
            {
                "type": "Feature",
                "geometry": {
                    "type": "Point",
                    "coordinates": [106.72 + column * 0.0002, 10.79 + row * 0.0002],
                },
                "properties": {
                    "id": plan.sensor_id(i),
                    "name": f"Load sensor {i}",
                    "street": "Load",
                    "ward": "An Khanh",
                    "kind": "street",
                    "interval_s": 60,
                },
            }
        )
    return orjson.dumps(
        {"type": "FeatureCollection", "features": features}, option=orjson.OPT_INDENT_2
    )
