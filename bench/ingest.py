"""bench/ingest: readings per second through a real broker into a real influxd, with no loss.

Publishes N readings (default 200,000) at full speed from a separate process and measures
how fast they are stored, for three consumers in the same run:
  - bare:    a paho-mqtt QoS 1 subscriber that only counts (the ceiling for a paho client);
  - single:  `python -m ingest`, one reading per message, QoS 1, acknowledged after storing;
  - array:   `python -m ingest`, 100-reading array messages (backfill shape).
Prints medians of --runs runs, readings lost, ingest CPU seconds and peak RSS, and the ratios
against the reference figures of issue 2. Each run starts once the broker and influxd are
quiet (under 5% of a CPU for half a second), so no run pays for the compaction of the last.

Single readings are published by `mosquitto_pub -l` (C, QoS 1), fed in chunks of at most
40,000 lines: its 16-bit message ids wrap beyond 65,535 lines in flight, after which it stops
early. Arrays are published by `bench.publisher` (paho), and the clock starts at its first
message rather than at its interpreter's start-up.

With --workers, partitioned ingest workers instead (bench/ingest_workers.py): one
`python -m ingest` against 1 and 2 workers each owning its partitions' sensors on the same
Mosquitto; with --cluster also 1 and 2 cluster workers through 3 NATS nodes and HAProxy, in
the same run. These time backlog drains (see that module).

Run: .venv/bin/python -m bench.ingest [--readings N] [--runs 3] [--workers] [--cluster]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import psutil

from bench.ingest_workers import run as run_workers
from bench.pipeline import start_ingest, wait_until_quiet
from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service, influxd_service, mosquitto_service, running
from floodwatch.registry import SHIPPED_REGISTRY, load_registry
from floodwatch.settings import parse_influx_url

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 40_000

# Issue 2's reference figures on this 2-core machine (medians of 3).
REFERENCE = {
    "bare paho QoS 1 counter": 23_000,
    "paho + influxdb-python, batched 5,000/1 s": 17_000,
    "same bridge, unbounded queue, QoS 0": 27_000,
    "typical per-reading bridge": 740,
}
ARRAY_TARGET = 150_000
RATIO_TARGET = 0.8


@dataclass
class RunResult:
    rate: float  # readings per second, publish start to last stored/counted
    lost: int
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0


def sensor_ids() -> list[str]:
    registry = load_registry(SHIPPED_REGISTRY)
    return [s.id for s in registry.sensors.values() if s.kind == "street" and s.sends == "level_cm"]


def build_chunks(n: int, per_message: int, start_ms: int) -> list[tuple[str, bytes]]:
    """(sensor id, newline-separated payloads) chunks; every (sensor, ts) pair is unique."""
    ids = sensor_ids()
    per_sensor = -(-n // len(ids))
    chunks: list[tuple[str, bytes]] = []
    made = 0
    for sid in ids:
        count = min(per_sensor, n - made)
        made += count
        lines: list[bytes] = []
        for first in range(0, count, per_message):
            items = [
                {
                    "ts": start_ms + (first + k) * 1000,
                    "level_cm": round(((first + k) % 400) / 10, 1),
                    "battery_v": 3.71,
                    "rssi": -87,
                    "seq": first + k,
                }
                for k in range(min(per_message, count - first))
            ]
            lines.append(orjson.dumps(items[0] if per_message == 1 else items))
        for i in range(0, len(lines), CHUNK):
            chunks.append((sid, b"\n".join(lines[i : i + CHUNK]) + b"\n"))
    return chunks


def publish(
    broker: Service, root: str, chunks: list[tuple[str, bytes]], arrays: bool = False
) -> int | None:
    """Publish every chunk; for arrays, return when the publisher sent its first message."""
    if arrays:
        feed = b"".join(
            f"{root}/v1/sensors/{sid}/reading\t".encode() + line + b"\n"
            for sid, body in chunks
            for line in body.splitlines()
        )
        done = subprocess.run(
            [sys.executable, "-m", "bench.publisher", broker.url("admin")],
            cwd=ROOT,
            input=feed,
            check=True,
            stdout=subprocess.PIPE,
        )
        return int(done.stdout.split()[0])
    for sid, body in chunks:
        subprocess.run(
            [
                "mosquitto_pub",
                "-p",
                str(broker.port),
                "-u",
                "admin",
                "-P",
                broker.credentials.mqtt["admin"],
                "-q",
                "1",
                "-t",
                f"{root}/v1/sensors/{sid}/reading",
                "-l",
            ],
            input=body,
            check=True,
        )
    return None


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_bare(broker: Service, n: int, root: str) -> RunResult:
    chunks = build_chunks(n, 1, int(time.time() * 1000) - 86_400_000)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.counter",
            broker.url("admin"),
            f"{root}/v1/sensors/+/reading",
            str(n),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    started = time.time_ns()
    publish(broker, root, chunks)
    result = orjson.loads(proc.stdout.readline())
    proc.wait(30)
    return RunResult(n / ((result["last_ns"] - started) / 1e9), n - result["count"])


def run_ingest(
    broker: Service, influxd: Service, n: int, per_message: int, root: str, workdir: Path
) -> RunResult:
    chunks = build_chunks(n, per_message, int(time.time() * 1000) - 86_400_000)
    influx = InfluxClient(parse_influx_url(influxd.url("admin")), root)
    log_path = workdir / f"ingest-{root}.log"
    # A login of its own per run: the broker binds the shared `ingest` login to one client id.
    login = broker.take_login("ingest").username or ""
    env = {
        "FLOODWATCH_MQTT_URL": broker.url(login),
        "FLOODWATCH_INFLUX_URL": influxd.url("admin"),
        "FLOODWATCH_INFLUX_DB": root,
        "FLOODWATCH_TOPIC_ROOT": root,
        "FLOODWATCH_CLIENT_ID": login,
        "FLOODWATCH_STATS_INTERVAL": "0",
        "FLOODWATCH_METRICS_PORT": "0",
        "FLOODWATCH_OUTBOX": str(workdir / f"outbox-{root}.sqlite"),
    }
    proc = start_ingest(env, log_path)
    try:
        ps = psutil.Process(proc.pid)
        cpu_before = sum(ps.cpu_times()[:2])
        started = time.time_ns()
        # mosquitto_pub starts in milliseconds; the Python array publisher takes a few tenths
        # of a second to start, connect and read its input, so its clock starts at its first
        # message.
        started = publish(broker, root, chunks, arrays=per_message > 1) or started
        published = time.time_ns()
        # Cheap completion check first (is the very last reading stored? InfluxDB answers
        # that from one series and a time range), then one full count for the loss figure:
        # a count over all points every few milliseconds would itself slow influxd down.
        last_sid, last_body = chunks[-1]
        last_item = orjson.loads(last_body.rstrip(b"\n").rsplit(b"\n", 1)[-1])
        last_ts_ms = (last_item[-1] if isinstance(last_item, list) else last_item)["ts"]
        params = {"sensor": last_sid, "t": last_ts_ms * 1_000_000}
        finished = 0
        stored, last_change = 0, time.monotonic()
        while True:
            if not finished:
                found = influx.query(
                    "SELECT count(level_cm) FROM water_level WHERE sensor = $sensor AND time >= $t",
                    params,
                )
                if found:
                    finished = time.time_ns()
                else:
                    time.sleep(0.005)
                    if time.monotonic() - last_change < 30:
                        continue
            series = influx.query("SELECT count(level_cm) FROM water_level")
            count = series[0]["values"][0][1] if series else 0
            if count >= n:
                stored = count
                break
            if count != stored:
                stored, last_change, finished = count, time.monotonic(), 0
            elif time.monotonic() - last_change > 30:
                finished = finished or time.time_ns()
                break
            time.sleep(0.2)
        cpu = sum(ps.cpu_times()[:2]) - cpu_before
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
        influx.close()
    print(
        f"    (published in {(published - started) / 1e9:.2f} s, stored in "
        f"{(finished - started) / 1e9:.2f} s)",
        flush=True,
    )
    return RunResult(stored / ((finished - started) / 1e9), n - stored, cpu, rss)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--readings", type=int, default=200_000, help="readings per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per consumer (median)")
    parser.add_argument(
        "--only",
        choices=["bare", "single", "array"],
        action="append",
        help="run only these consumers (repeatable)",
    )
    parser.add_argument(
        "--workers",
        action="store_true",
        help="one ingest process against 1 and 2 partitioned workers on Mosquitto (backlog "
        "drains of --readings)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="as --workers, plus 1 and 2 cluster workers through 3 NATS nodes and HAProxy",
    )
    parser.add_argument(
        "--probes",
        type=int,
        default=1000,
        help="with --cluster: alerts timed per latency run (bench.alerts_latency's method)",
    )
    args = parser.parse_args(argv)
    if args.workers or args.cluster:
        return run_workers(args.readings, args.runs, args.cluster, args.probes)
    kinds = args.only or ["bare", "single", "array"]
    n = args.readings
    results: dict[str, list[RunResult]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="fw-bench-") as tmp:
        workdir = Path(tmp)
        broker_service = mosquitto_service(workdir, instances={"ingest": 200})
        with running(broker_service, influxd_service(workdir)) as (broker, influxd):
            for run in range(args.runs):
                for kind in kinds:
                    root = f"b{kind}{run}"
                    wait_until_quiet([broker.proc, influxd.proc])
                    if kind == "bare":
                        r = run_bare(broker, n, root)
                    else:
                        per = 1 if kind == "single" else 100
                        r = run_ingest(broker, influxd, n, per, root, workdir)
                    results[kind].append(r)
                    print(
                        f"  run {run + 1} {kind:6s}: {r.rate:9,.0f} readings/s  lost {r.lost}"
                        + (
                            f"  cpu {r.cpu_s:.1f} s  peak RSS {r.peak_rss_mb:.0f} MB"
                            if kind != "bare"
                            else ""
                        ),
                        flush=True,
                    )

    def med(kind: str, attr: str) -> float:
        return float(statistics.median(float(getattr(r, attr)) for r in results[kind]))

    print(f"\nbench/ingest: {n:,} readings of ~90 bytes, medians of {args.runs} runs")
    labels = {
        "bare": "bare paho QoS 1 counter (ceiling)",
        "single": "ingest, 1 reading/message, QoS 1",
        "array": "ingest, 100-reading arrays, QoS 1",
    }
    for kind in kinds:
        extra = ""
        if kind != "bare":
            extra = (
                f"  cpu {med(kind, 'cpu_s'):5.1f} s  peak RSS {med(kind, 'peak_rss_mb'):4.0f} MB"
            )
        lost = sum(r.lost for r in results[kind])
        print(f"  {labels[kind]:36s} {med(kind, 'rate'):9,.0f} readings/s  lost {lost}{extra}")
    print("\nagainst the targets and reference figures:")
    if "bare" in results and "single" in results:
        ratio = med("single", "rate") / med("bare", "rate")
        verdict = "meets" if ratio >= RATIO_TARGET else "BELOW"
        print(
            f"  single / bare counter in this run: {ratio:.2f}x  ({verdict} target {RATIO_TARGET}x)"
        )
    if "single" in results:
        for name, ref in REFERENCE.items():
            print(f"  single vs {name} ({ref:,}/s): {med('single', 'rate') / ref:.2f}x")
    if "array" in results:
        rate = med("array", "rate")
        verdict = "meets" if rate >= ARRAY_TARGET else "BELOW"
        print(
            f"  arrays: {rate:,.0f} readings/s ({verdict} target {ARRAY_TARGET:,}/s, "
            f"{rate / ARRAY_TARGET:.2f}x)"
        )
    total_lost = sum(r.lost for rs in results.values() for r in rs)
    print(f"  readings lost over all runs: {total_lost} (target 0)")
    return 0 if total_lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
