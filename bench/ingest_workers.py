"""bench/ingest --workers and --cluster: readings/s with 1 and 2 partitioned ingest workers
against one `python -m ingest` process, measured in the same run.

The load is a registry of its own: WARDS wards of SENSORS_PER_WARD street sensors each, the
ward names chosen so that `floodwatch.cluster.partition()` gives every one of PARTITIONS
partitions the same number of wards (so also for any divisor of PARTITIONS: 1, 2, 4 workers
split it evenly). Every sensor sends the same number of readings, one per message, QoS 1.

What is timed:
  - single-node Mosquitto (`single`, `1 worker`, `2 workers`): the consumers start and
    subscribe, are frozen (SIGSTOP; the broker queues for their persistent sessions), the
    backlog is published, and the clock starts when they are thawed (SIGCONT). Workers are
    `python -m ingest` with FLOODWATCH_PARTITIONS / FLOODWATCH_OWN_PARTITIONS (each
    subscribes to its partitions' sensors' topics); `1 worker` owns every partition.
  - cluster (`--cluster`, 3 NATS nodes + HAProxy from floodwatch.cluster.local_cluster): not
    a drain (so that the publisher, one more process on these cores, would not be what is
    measured), and so that the partitions are shared before the clock starts. The workers
    (`python -m ingest --cluster`) start together, and readings flow, a round of one per
    sensor at a time, until the workers have shared the partitions out (ingest/balance.py:
    whoever holds more than its share releases partitions to the others; each logs `owns
    partitions [...]`; the time until every worker holds its share is printed), then the rest
    is published through HAProxy (MQTT 3.1.1 QoS 1, stored R3 before each PUBACK) from this
    process, and the clock runs from its first publish: the publisher's rate (printed) bounds
    these figures.
The clock stops when every reading is stored in InfluxDB (or none more is for 30 s: the rest
are counted lost). With --cluster, bench.alerts_latency's publish -> alert measurement runs
through a cluster of its own and through the single node, alternately. Configurations run in
alternating order; each run's ratios are taken within the run (the machine is shared), and
medians of the runs are printed with the load average and how busy each process was (cores).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import paho.mqtt.client as paho
import psutil

from bench.alerts_latency import PROBES, RATE, Run, measure, one_run
from bench.alerts_latency import registry_file as latency_registry
from bench.cluster_consume import _client, _connect
from bench.pipeline import start_ingest, wait_until_quiet
from floodwatch.cluster import (
    LocalCluster,
    ensure_partition_consumers,
    local_cluster,
    partition,
    partition_plan,
)
from floodwatch.credentials import Credentials
from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service, influxd_service, mosquitto_service, running
from floodwatch.registry import SHIPPED_REGISTRY, load_registry
from floodwatch.settings import MQTT_V311, parse_influx_url

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 8  # floodwatch.cluster.DEFAULT_PARTITIONS, the cluster's and the workers' default
WARDS = 16
SENSORS_PER_WARD = 8
OWNS = re.compile(rb"owns partitions \[([0-9, ]*)\]")
IN_FLIGHT = 30_000
ACK_WAIT_S = 4.0  # the cluster workers' defaults (python -m ingest --help)
PIN_TIMEOUT_S = 5.0
# The engine publishes each background sensor's retained alerts/{id} once at its first
# reading; NATS's MQTT listener stores a retained publish R3 (fsync) and took ~200-270 a second
# here, so the first 1,000 take seconds: the probes start after them (steady state).
CLUSTER_WARMUP_S = 15.0
STALL_S = 30.0  # no reading stored for this long: the run ends and counts what is missing


def balanced_wards(count: int, partitions: int) -> list[str]:
    """`count` ward ids that `partition()` spreads evenly: count/partitions in each partition
    (so evenly too over any divisor of `partitions`)."""
    if count % partitions:
        raise ValueError(f"{count} wards cannot split evenly over {partitions} partitions")
    per = count // partitions
    chosen: dict[int, list[str]] = {p: [] for p in range(partitions)}
    k = 0
    while sum(len(names) for names in chosen.values()) < count:
        name = f"bench-ward-{k:03d}"
        bucket = chosen[partition(name, partitions)]
        if len(bucket) < per:
            bucket.append(name)
        k += 1
    return sorted(name for names in chosen.values() for name in names)


def write_registry(path: Path, wards: Sequence[str], per_ward: int) -> list[str]:
    """A registry of `per_ward` street sensors in each ward (ward_id set); returns their ids."""
    features = []
    ids = []
    for w, ward in enumerate(wards):
        for j in range(per_ward):
            sensor_id = f"w{w:02d}s{j:02d}"
            ids.append(sensor_id)
            features.append(
                {
                    "type": "Feature",
                    "geometry": {
                        "type": "Point",
                        "coordinates": [106.70 + w * 0.004 + j * 0.0004, 10.79 + w * 0.002],
                    },
                    "properties": {
                        "id": sensor_id,
                        "name": f"bench sensor {sensor_id}",
                        "street": f"Bench {w}",
                        "ward": f"Bench ward {w}",
                        "ward_id": ward,
                        "kind": "street",
                        "interval_s": 60,
                    },
                }
            )
    path.write_bytes(orjson.dumps({"type": "FeatureCollection", "features": features}))
    return ids


def owned_partitions(workers: int, partitions: int) -> list[list[int]]:
    """Worker k owns the partitions p with p % workers == k (round robin)."""
    return [[p for p in range(partitions) if p % workers == k] for k in range(workers)]


def backlog(ids: Sequence[str], per_sensor: int, start_ms: int) -> list[tuple[str, bytes]]:
    """(sensor id, payload) in publishing order, sensor after sensor interleaved, so each
    partition's share arrives all along; every (sensor, ts) is unique and every sensor's last
    reading has the same ts (start_ms + (per_sensor - 1) s)."""
    out = []
    for k in range(per_sensor):
        ts = start_ms + k * 1000
        level = round((k % 400) / 10, 1)
        for sid in ids:
            out.append(
                (
                    sid,
                    orjson.dumps(
                        {"ts": ts, "level_cm": level, "battery_v": 3.71, "rssi": -87, "seq": k}
                    ),
                )
            )
    return out


def publish(port: int, password: str, root: str, messages: Sequence[tuple[str, bytes]]) -> float:
    """Publish every message QoS 1 as admin over MQTT 3.1.1 (both brokers speak it) and wait for
    every PUBACK; returns the rate the broker acknowledged."""
    client = _client(f"benchpub{uuid.uuid4().hex[:8]}", "admin", password, clean=True)
    _connect(client, port)
    started = time.monotonic()
    infos: list[paho.MQTTMessageInfo] = []
    for i, (sid, body) in enumerate(messages):
        # MQTT message ids are 16 bits: at most IN_FLIGHT unacknowledged, so none is reused.
        if i >= IN_FLIGHT:
            infos[i - IN_FLIGHT].wait_for_publish(120)
        infos.append(client.publish(f"{root}/v1/sensors/{sid}/reading", body, qos=1))
    for info in infos[-IN_FLIGHT:]:
        info.wait_for_publish(120)
    elapsed = time.monotonic() - started
    client.disconnect()
    client.loop_stop()
    return len(messages) / elapsed


@dataclass
class Drain:
    config: str
    rate: float  # readings stored per second, clock start to the last sensor's last reading
    lost: int
    published_rate: float
    cores: dict[str, float]  # CPU seconds / drain seconds, per process group
    load: float  # 1-minute load average at the start of the drain
    owns: list[str] = field(default_factory=list)  # cluster workers' last `owns partitions`
    spread_s: float = 0.0  # cluster: first reading to every worker holding its share


class CpuMeter:
    """CPU seconds of named process groups between start() and stop()."""

    def __init__(self, groups: dict[str, Sequence[int]]) -> None:
        self.groups = {k: [psutil.Process(pid) for pid in pids] for k, pids in groups.items()}
        self.before: dict[str, float] = {}
        self.started = 0.0
        self.elapsed = 0.0

    def _now(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for name, procs in self.groups.items():
            total[name] = 0.0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    total[name] += sum(p.cpu_times()[:2])
        return total

    def start(self) -> None:
        self.before = self._now()
        self.started = time.monotonic()

    def stop(self) -> dict[str, float]:
        """Cores busy per group since start() (CPU seconds / wall seconds); call it while the
        processes still run."""
        after = self._now()
        self.elapsed = time.monotonic() - self.started
        return {k: (after[k] - self.before[k]) / self.elapsed for k in after}


def wait_stored(
    influx: InfluxClient, sensors: int, last_ts_ms: int, expected: int
) -> tuple[int, int]:
    """Wait until every reading is stored, or nothing more is for STALL_S. The cheap check
    first (is every sensor's last reading in? one second of data), then full counts: a reading
    redelivered (out of order, after an ack wait) may still be missing. Returns
    (time.time_ns() when the last reading was stored, readings stored)."""
    params = {"t": last_ts_ms * 1_000_000}
    stored, last_change, next_count = -1, time.monotonic(), time.monotonic() + 1.0
    finished = 0
    tails_in = False
    while True:
        if not tails_in:
            series = influx.query(
                "SELECT count(level_cm) FROM water_level WHERE time >= $t", params
            )
            tails_in = (series[0]["values"][0][1] if series else 0) >= sensors
            finished = time.time_ns()
        if tails_in or time.monotonic() >= next_count:
            next_count = time.monotonic() + 1.0
            count = _count(influx)
            if count >= expected:
                finished = finished if count == stored else time.time_ns()
                stored = count
                break
            if count != stored:
                stored, last_change = count, time.monotonic()
                finished = time.time_ns()
            elif time.monotonic() - last_change > STALL_S:
                break
        time.sleep(0.01 if not tails_in else 0.1)
    return finished, min(expected, stored)


def _count(influx: InfluxClient) -> int:
    series = influx.query("SELECT count(level_cm) FROM water_level")
    return int(series[0]["values"][0][1]) if series else 0


@contextlib.contextmanager
def processes(procs: list[subprocess.Popen[bytes]]) -> Iterator[list[subprocess.Popen[bytes]]]:
    try:
        yield procs
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT)
                p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@dataclass
class Bench:
    """What every drain shares: the services, the registry and the load."""

    workdir: Path
    broker: Service
    influxd: Service
    registry: Path
    ids: list[str]
    per_sensor: int
    cluster: LocalCluster | None = None

    @property
    def readings(self) -> int:
        return self.per_sensor * len(self.ids)

    def _env(self, root: str) -> dict[str, str]:
        return {
            "FLOODWATCH_INFLUX_URL": self.influxd.url("admin"),
            "FLOODWATCH_INFLUX_DB": root,
            "FLOODWATCH_TOPIC_ROOT": root,
            "FLOODWATCH_REGISTRY": str(self.registry),
            "FLOODWATCH_STATS_INTERVAL": "0",
            "FLOODWATCH_METRICS_PORT": "0",
        }

    def _influx(self, root: str) -> InfluxClient:
        return InfluxClient(parse_influx_url(self.influxd.url("admin")), root)

    def quiet(self) -> None:
        services = [self.broker.proc, self.influxd.proc]
        if self.cluster is not None:
            services += [svc.proc for svc, _ in self.cluster.nodes]
        wait_until_quiet(services)

    def drain_mosquitto(self, config: str, workers: int | None) -> Drain:
        """`workers` None: one plain `python -m ingest` (every sensor); else that many
        partitioned workers over PARTITIONS partitions."""
        root = f"b{uuid.uuid4().hex[:8]}"
        start_ms = int(time.time() * 1000) - 86_400_000
        messages = backlog(self.ids, self.per_sensor, start_ms)
        owns = owned_partitions(workers, PARTITIONS) if workers else [[]]
        procs: list[subprocess.Popen[bytes]] = []
        with processes(procs):
            for k, own in enumerate(owns):
                login = self.broker.take_login("ingest").username or ""
                env = {
                    **self._env(root),
                    "FLOODWATCH_MQTT_URL": self.broker.url(login),
                    "FLOODWATCH_CLIENT_ID": login,
                    "FLOODWATCH_OUTBOX": str(self.workdir / f"outbox-{root}-{k}.sqlite"),
                }
                if workers:
                    env["FLOODWATCH_PARTITIONS"] = str(PARTITIONS)
                    env["FLOODWATCH_OWN_PARTITIONS"] = ",".join(map(str, own))
                procs.append(start_ingest(env, self.workdir / f"ingest-{root}-{k}.log"))
            for p in procs:
                os.kill(p.pid, signal.SIGSTOP)
            published = publish(
                self.broker.port, self.broker.credentials.mqtt["admin"], root, messages
            )
            meter = self._meter(procs)
            load = os.getloadavg()[0]
            influx = self._influx(root)
            try:
                meter.start()
                started = time.time_ns()
                for p in procs:
                    os.kill(p.pid, signal.SIGCONT)
                finished, stored = wait_stored(
                    influx, len(self.ids), start_ms + (self.per_sensor - 1) * 1000, self.readings
                )
                cores = meter.stop()
            finally:
                influx.close()
        elapsed = (finished - started) / 1e9
        return Drain(config, stored / elapsed, self.readings - stored, published, cores, load)

    def live_cluster(self, config: str, workers: int) -> Drain:
        """`workers` cluster workers (`python -m ingest --cluster`) take the load as it is
        published through HAProxy. Not a drain of a waiting backlog: NATS pins each partition
        to the worker whose pull is waiting when its first reading arrives and keeps it there
        while that worker pulls, so a backlog found by the first worker to start would all be
        its own. The workers start first, one reading per sensor spreads the partitions over
        them, then the clock runs from the first publish of the rest to the last stored."""
        cluster = self.cluster
        assert cluster is not None
        root = f"b{uuid.uuid4().hex[:8]}"
        start_ms = int(time.time() * 1000) - 86_400_000
        messages = backlog(self.ids, self.per_sensor, start_ms)
        warm, load_msgs = messages[: len(self.ids)], messages[len(self.ids) :]
        # The store keeps a message only while a consumer covers it (interest retention).
        asyncio.run(
            ensure_partition_consumers(
                cluster.nats_urls(), root, PARTITIONS, ACK_WAIT_S, PIN_TIMEOUT_S
            )
        )
        procs: list[subprocess.Popen[bytes]] = []
        logs = [self.workdir / f"ingest-{root}-{k}.log" for k in range(workers)]
        port, password = cluster.front.port, cluster.credentials.mqtt["admin"]
        influx = self._influx(root)
        with processes(procs):
            for k, log in enumerate(logs):
                env = {
                    **self._env(root),
                    **cluster_worker_env(cluster, k),
                    "FLOODWATCH_OUTBOX": str(self.workdir / f"outbox-{root}-{k}.sqlite"),
                }
                procs.append(start_ingest(env, log, args=["--cluster"]))
            spreading = time.monotonic()
            # Readings flowing to every partition, a round (one per sensor) at a time, until
            # the workers have shared the partitions out (ingest/balance.py: a released
            # partition goes to its taker with its next reading); the clock starts after.
            parts = set(partition_plan(load_registry(self.registry), PARTITIONS))
            n = len(self.ids)
            rounds = 0
            while not shared_out(logs, parts):
                if rounds * n >= len(messages) // 2 or any(p.poll() is not None for p in procs):
                    text = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)
                    raise RuntimeError(
                        f"the cluster workers did not share the partitions out; their logs:\n{text}"
                    )
                publish(port, password, root, messages[rounds * n : (rounds + 1) * n])
                rounds += 1
            warm, load_msgs = messages[: rounds * n], messages[rounds * n :]
            spread_s = time.monotonic() - spreading
            meter = self._meter(procs)
            load = os.getloadavg()[0]
            meter.start()
            started = time.time_ns()
            try:
                published = publish(port, password, root, load_msgs)
                finished, stored = wait_stored(
                    influx, len(self.ids), start_ms + (self.per_sensor - 1) * 1000, self.readings
                )
                cores = meter.stop()
            finally:
                influx.close()
            owns = [_last_owns(log) for log in logs]
        elapsed = (finished - started) / 1e9
        return Drain(
            config,
            (stored - len(warm)) / elapsed,
            self.readings - stored,
            published,
            cores,
            load,
            owns,
            spread_s,
        )

    def _meter_groups(self, procs: Sequence[subprocess.Popen[bytes]]) -> dict[str, Sequence[int]]:
        groups: dict[str, Sequence[int]] = {"ingest": [p.pid for p in procs]}
        if self.cluster is not None:
            groups["nats"] = [svc.proc.pid for svc, _ in self.cluster.nodes if svc.proc]
            if self.cluster.front.proc:
                groups["haproxy"] = [self.cluster.front.proc.pid]
        if self.broker.proc:
            groups["mosquitto"] = [self.broker.proc.pid]
        if self.influxd.proc:
            groups["influxd"] = [self.influxd.proc.pid]
        return groups

    def _meter(self, procs: Sequence[subprocess.Popen[bytes]]) -> CpuMeter:
        return CpuMeter(self._meter_groups(procs))


def cluster_worker_env(cluster: LocalCluster, k: int) -> dict[str, str]:
    """Worker k's settings for the cluster (the agreed interface of branch `worker`): pulls
    partitions over NATS, publishes alerts and events through the MQTT front in 3.1.1."""
    return {
        "FLOODWATCH_MQTT_URL": cluster.front.url("ingest"),
        "FLOODWATCH_MQTT_PROTOCOL": MQTT_V311,
        "FLOODWATCH_NATS_URL": ",".join(cluster.nats_urls("ingest")),
        "FLOODWATCH_PARTITIONS": str(PARTITIONS),
        "FLOODWATCH_CLIENT_ID": f"floodwatch-ingest-{k + 1}",
        # The consumers the bench creates before publishing must match the workers' own.
        "FLOODWATCH_ACK_WAIT": str(ACK_WAIT_S),
        "FLOODWATCH_PIN_TIMEOUT": str(PIN_TIMEOUT_S),
    }


def shared_out(logs: Sequence[Path], partitions: set[int]) -> bool:
    """Do the workers' last `owns partitions [...]` lines cover `partitions`, each once, every
    worker holding its share of them (floor or ceil: ingest/balance.py)?"""
    floor, extra = divmod(len(partitions), len(logs))
    held: list[set[int]] = []
    for log in logs:
        found = OWNS.findall(log.read_bytes())
        held.append({int(p) for p in found[-1].split(b",") if p.strip()} if found else set())
    counts = [len(h & partitions) for h in held]
    shared = min(counts) >= floor and max(counts) <= floor + (1 if extra else 0)
    return partitions <= set().union(*held) and sum(counts) == len(partitions) and shared


def cluster_latency(
    probes: int, workers: int = 1, tree: Path = ROOT, label: str = "cluster"
) -> Run:
    """bench.alerts_latency's measurement (the same load, probes and clock) with the readings
    going through a cluster of its own: HAProxy -> NATS's MQTT store (R3, fsync) -> a cluster
    worker's pull -> its alert published through HAProxy -> the listener. The workers are
    `python -m ingest` of the checkout at `tree` (another one for A/B runs)."""
    with tempfile.TemporaryDirectory(prefix="fw-latency-cluster-") as tmp:
        work = Path(tmp)
        registry = work / "sensors.geojson"
        latency_registry(registry, probes)
        ids = list(load_registry(registry).sensors)
        creds = Credentials.load_or_generate(work / "credentials", ids)
        with (
            running(influxd_service(work, credentials=creds)) as (influxd,),
            local_cluster(work / "cluster", creds, load_registry(registry)) as cluster,
        ):
            procs: list[subprocess.Popen[bytes]] = []
            logs = [work / f"ingest-{k}.log" for k in range(workers)]
            with processes(procs):
                for k, log in enumerate(logs):
                    env = {
                        **cluster_worker_env(cluster, k),
                        "FLOODWATCH_INFLUX_URL": influxd.url("admin"),
                        "FLOODWATCH_REGISTRY": str(registry),
                        "FLOODWATCH_OUTBOX": "off",
                        "FLOODWATCH_METRICS_PORT": "0",
                        "FLOODWATCH_STATS_INTERVAL": "0",
                    }
                    # A worker is pinned to a partition once it pulls readings from it: the
                    # latency run's warm-up load does that.
                    procs.append(start_ingest(env, log, tree, args=["--cluster"]))
                cpu = CpuMeter({"ingest": [p.pid for p in procs]})
                cpu.start()
                latencies = measure(cluster.front.url("admin"), probes, MQTT_V311, CLUSTER_WARMUP_S)
                cpu_s = cpu.stop()["ingest"] * cpu.elapsed
    return Run(label, sorted(latencies), probes, cpu_s)


def latency(runs: int, probes: int) -> None:
    """Publish -> alert through the single node and through the cluster, alternately, with
    bench.alerts_latency's load and clock; medians of the runs' p50 and p99."""
    by: dict[str, list[Run]] = {"single node": [], "cluster": []}
    for k in range(runs):
        order = ["single node", "cluster"] if k % 2 == 0 else ["cluster", "single node"]
        for label in order:
            result = (
                one_run("single node", ROOT, probes)[0]
                if label == "single node"
                else cluster_latency(probes)
            )
            by[label].append(result)
            print(
                f"  latency run {k + 1} {label:11s}: {len(result.latencies_ms)} of {probes} "
                f"alerts, p50 {result.p50:.1f} ms, p99 {result.p99:.1f} ms, ingest CPU "
                f"{result.cpu_s:.1f} s; load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    print(
        f"\npublish -> alert at {RATE:,} readings/s ({probes} alerts per run; "
        f"bench.alerts_latency's method), medians of {runs} runs:"
    )
    med = {
        label: (
            statistics.median(r.p50 for r in results),
            statistics.median(r.p99 for r in results),
        )
        for label, results in by.items()
    }
    for label, (p50, p99) in med.items():
        print(f"  {label:11s} p50 {p50:6.1f} ms  p99 {p99:6.1f} ms")
    (s50, s99), (c50, c99) = med["single node"], med["cluster"]
    print(f"  cluster / single node: p50 {c50 / s50:.2f}x, p99 {c99 / s99:.2f}x")


def _last_owns(log: Path) -> str:
    found = OWNS.findall(log.read_bytes())
    return f"[{found[-1].decode()}]" if found else "[]"


def snapshot_soon(conf: Path) -> None:
    """Make the bench's influxd write its cache to compressed TSM files 2 s after the last write
    (the default waits 10 minutes), so the storage per reading can be measured at the end; it
    snapshots while the load is being published, not while a drain is timed."""
    text = conf.read_text()
    conf.write_text(
        text.replace(
            "[data]\n",
            '[data]\n  cache-snapshot-write-cold-duration = "2s"\n'
            '  compact-full-write-cold-duration = "10s"\n',
            1,
        )
    )


def compressed_bytes(influx_dir: Path, timeout_s: float = 60.0) -> int:
    """Bytes on disk under data/ (TSM files, series index) once the write-ahead log is
    snapshotted; allocated blocks, since the series files are sparse and preallocated."""
    deadline = time.monotonic() + timeout_s

    def size(pattern: str, under: Path) -> int:
        return sum(f.stat().st_blocks * 512 for f in under.rglob(pattern) if f.is_file())

    while time.monotonic() < deadline and size("*.wal", influx_dir / "wal") > 1_000_000:
        time.sleep(0.5)
    return size("*", influx_dir / "data")


def influx_write_stats(influxd: Service) -> tuple[int, int]:
    """(HTTP /write body bytes, points written) since influxd started, from /debug/vars."""
    doc = httpx.get(f"http://127.0.0.1:{influxd.port}/debug/vars", timeout=10).json()
    httpd = next(v for k, v in doc.items() if k.startswith("httpd"))["values"]
    return int(httpd.get("writeReqBytes", 0)), int(httpd.get("pointsWrittenOK", 0))


def report(runs: Sequence[Sequence[Drain]], configs: Sequence[str], baseline: str) -> list[str]:
    """Median rate per configuration and the median of each run's ratio to `baseline`."""
    lines = []
    for config in configs:
        mine = [d for run in runs for d in run if d.config == config]
        if not mine:
            lines.append(f"  {config:18s} no successful run")
            continue
        rate = statistics.median(d.rate for d in mine)
        ratios = [
            by[config].rate / by[baseline].rate
            for by in ({d.config: d for d in run} for run in runs)
            if config in by and baseline in by
        ]
        cores = {k: statistics.median(d.cores.get(k, 0.0) for d in mine) for k in mine[0].cores}
        busy = ", ".join(f"{k} {v:.2f}" for k, v in cores.items() if v >= 0.01)
        lost = sum(d.lost for d in mine)
        ratio = f"{statistics.median(ratios):.2f}x" if ratios else "-"
        span = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else ""
        per_cpu = statistics.median(d.rate / d.cores["ingest"] for d in mine if d.cores["ingest"])
        lines.append(
            f"  {config:18s} {rate:9,.0f} readings/s  {ratio} {baseline} (runs {span})  "
            f"{per_cpu:7,.0f} per ingest CPU second  lost {lost}  cores busy: {busy}"
        )
    return lines


def main_note() -> str:
    return (
        f"{WARDS} wards x {SENSORS_PER_WARD} sensors, {PARTITIONS} partitions "
        f"({WARDS // PARTITIONS} wards each); "
        f"python {sys.version.split()[0]}; {os.cpu_count()} cores"
    )


def ingest_supports(option: str) -> bool:
    """Whether this checkout's `python -m ingest` has `option` (the workers come from another
    branch; without them only the single process runs)."""
    done = subprocess.run(
        [sys.executable, "-m", "ingest", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    return option in done.stdout


def run(readings: int, runs: int, cluster: bool, probes: int = PROBES) -> int:
    """The whole benchmark; prints per-run figures and the medians. Exit 1 if a reading was
    lost."""
    static = ingest_supports("--partitions")
    clustered = cluster and ingest_supports("--cluster")
    if not static:
        print("  (this ingest has no --partitions: measuring the single process only)")
    if cluster and not clustered:
        print("  (this ingest has no --cluster: no cluster workers measured)")
    all_runs: list[list[Drain]] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fw-bench-workers-") as tmp:
        workdir = Path(tmp)
        registry = workdir / "sensors.geojson"
        ids = write_registry(registry, balanced_wards(WARDS, PARTITIONS), SENSORS_PER_WARD)
        shipped = list(load_registry(SHIPPED_REGISTRY).sensors)
        creds = Credentials.load_or_generate(workdir / "credentials", [*ids, *shipped])
        broker_service = mosquitto_service(workdir, credentials=creds, instances={"ingest": 200})
        influxd_svc = influxd_service(workdir, credentials=creds)
        snapshot_soon(workdir / "influxdb.conf")
        with contextlib.ExitStack() as stack:
            broker, influxd = stack.enter_context(running(broker_service, influxd_svc))
            lc = None
            if clustered:
                lc = stack.enter_context(
                    local_cluster(workdir / "cluster", creds, load_registry(registry))
                )
            bench = Bench(workdir, broker, influxd, registry, ids, -(-readings // len(ids)), lc)
            configs: list[tuple[str, Callable[[], Drain]]] = [
                ("single", lambda: bench.drain_mosquitto("single", None))
            ]
            if static:
                configs += [
                    ("1 worker", lambda: bench.drain_mosquitto("1 worker", 1)),
                    ("2 workers", lambda: bench.drain_mosquitto("2 workers", 2)),
                ]
            if clustered:
                configs += [
                    ("cluster 1 worker", lambda: bench.live_cluster("cluster 1 worker", 1)),
                    ("cluster 2 workers", lambda: bench.live_cluster("cluster 2 workers", 2)),
                ]
            bytes_before, points_before = influx_write_stats(influxd)
            for k in range(runs):
                order = configs if k % 2 == 0 else configs[::-1]
                drains = []
                for name, drain in order:
                    bench.quiet()
                    try:
                        d = drain()
                    except RuntimeError as exc:
                        # A process that did not start or never took its partitions: its log
                        # goes in the report, and the other configurations still run.
                        failures.append(f"run {k + 1} {name}: {exc}")
                        print(f"  run {k + 1} {name:18s} FAILED (log at the end)", flush=True)
                        continue
                    drains.append(d)
                    extra = ""
                    if d.owns:
                        extra = f"  owns {' '.join(d.owns)} ({d.spread_s:.1f} s)"
                    busy = ", ".join(f"{g} {v:.2f}" for g, v in d.cores.items() if v >= 0.01)
                    print(
                        f"  run {k + 1} {d.config:18s} {d.rate:9,.0f} readings/s  lost {d.lost}"
                        f"  (published {d.published_rate:,.0f}/s; load {d.load:.1f}; cores "
                        f"{busy}){extra}",
                        flush=True,
                    )
                names = [name for name, _ in configs]
                all_runs.append(sorted(drains, key=lambda d: names.index(d.config)))
            bytes_after, points_after = influx_write_stats(influxd)
            disk = compressed_bytes(workdir / "influxdb")
    print(
        f"\nbench/ingest --workers{' --cluster' if cluster else ''}: {bench.readings:,} "
        "single-reading messages per run (Mosquitto: a backlog drained; cluster: live, bounded "
        f"by the publisher's rate), medians of {runs} runs; "
        f"{main_note()}; load average now {os.getloadavg()[0]:.1f}"
    )
    for line in report(all_runs, [name for name, _ in configs], "single"):
        print(line)
    for two, one in (("2 workers", "1 worker"), ("cluster 2 workers", "cluster 1 worker")):
        pairs = [
            by[two].rate / by[one].rate
            for by in ({d.config: d for d in run} for run in all_runs)
            if two in by and one in by
        ]
        if pairs:
            print(
                f"  {two} / {one}: {statistics.median(pairs):.2f}x "
                f"(runs {min(pairs):.2f}-{max(pairs):.2f})"
            )
    points = max(1, points_after - points_before)
    print(
        f"  InfluxDB line protocol: {(bytes_after - bytes_before) / points:.0f} bytes per point "
        f"written ({points:,} points); on disk once snapshotted to TSM files: "
        f"{disk / points:.1f} bytes per point (regular bench data: level in 0.1 cm steps, "
        f"constant battery and signal; real readings compress less)"
    )
    lost = sum(d.lost for run in all_runs for d in run)
    print(f"  readings lost over all runs: {lost} (target 0)")
    for failure in failures:
        print(f"\nFAILED {failure}")
    if clustered:
        latency(runs, probes)
    return 0 if lost == 0 and not failures else 1
