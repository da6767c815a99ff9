"""bench/api: latency and throughput of the API's two hot reads, on a real broker and influxd.

Sets up what a city-scale IOC would see: a registry of 1,000 sensors (a generated GeoJSON),
each with a last reading in InfluxDB (the API's start-up snapshot), one sensor with 7 days of
readings at 1-minute resolution (10,080 points), live readings arriving over MQTT for random
sensors at 1,000 sensors' reporting rate (one a minute each, about 17 a second), and the API
under uvicorn in its own process, reached with a viewer key. A separate load process then
sends requests at a fixed rate (open loop: latency counts from when each request was due, so
a slow answer also delays the ones queued behind it) and reports p50, p99 and requests/s:

  - GET /v1/sensors (GeoJSON of all 1,000) at 200 requests/s   target p99 <= 20 ms
  - GET /v1/sensors/{id}/readings for the 7 days, raw, one page  target p99 <= 150 ms
  - the same 7 days downsampled (every=1h&agg=max), for comparison

and, when Debian's `wrk` is installed, the closed-loop ceiling of /v1/sensors.

Run: .venv/bin/python -m bench.api [--sensors 1000] [--duration 20] [--rate 200]
                                   [--series-rates 5,10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx
import orjson

from api.auth import hash_key, new_key
from api.times import iso
from floodwatch.credentials import grant_database
from floodwatch.influx import InfluxClient
from floodwatch.localservices import free_port, influxd_service, mosquitto_service, running
from floodwatch.mqtt import MqttConnection
from floodwatch.settings import MqttEndpoint, parse_influx_url

ROOT = Path(__file__).resolve().parent.parent
SENSORS_P99_TARGET_MS = 20.0
SERIES_P99_TARGET_MS = 150.0
WEEK_MINUTES = 7 * 24 * 60
CONNECTIONS = 32


@dataclass(frozen=True)
class LoadResult:
    sent: int
    errors: int
    elapsed_s: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s else 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return math.nan
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# -- the registry and the data ------------------------------------------------------------


def registry_geojson(count: int, streets: int = 10) -> bytes:
    """`count` street sensors on `streets` parallel streets around An Khanh, plus LineStrings."""
    per_street = -(-count // streets)
    features: list[dict[str, object]] = []
    for s in range(streets):
        lat = 10.78 + s * 0.004
        name = f"Bench street {s:02d}"
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "LineString", "coordinates": [[106.70, lat], [106.76, lat]]},
                "properties": {"name": name, "ward": "An Khanh"},
            }
        )
        for k in range(per_street):
            n = s * per_street + k
            if n >= count:
                break
            features.append(
                {
                    "type": "Feature",
                    "geometry": {
                        "type": "Point",
                        "coordinates": [106.70 + 0.06 * k / per_street, lat],
                    },
                    "properties": {
                        "id": f"s{n:04d}",
                        "name": f"Bench sensor {n}",
                        "street": name,
                        "ward": "An Khanh",
                        "kind": "street",
                        "interval_s": 60,
                    },
                }
            )
    return orjson.dumps({"type": "FeatureCollection", "features": features})


def load_data(influx: InfluxClient, count: int, now_ns: int) -> None:
    """A last reading for every sensor; for s0000, 7 days at 1-minute resolution."""
    influx.create_database()
    influx.write(
        [
            f"water_level,sensor=s{n:04d} level_cm={random.uniform(0, 40):.1f},battery_v=3.7,"
            f"rssi=-80i {now_ns - 30 * 10**9}"
            for n in range(1, count)
        ]
    )
    start = now_ns - WEEK_MINUTES * 60 * 10**9
    lines = [
        f"water_level,sensor=s0000 level_cm={15 + 15 * math.sin(m / 360):.2f},battery_v=3.7,"
        f"rssi=-80i,seq={m}i {start + m * 60 * 10**9}"
        for m in range(WEEK_MINUTES)
    ]
    for first in range(0, len(lines), 5000):
        influx.write(lines[first : first + 5000])


def live_readings(
    endpoint: MqttEndpoint, root: str, count: int, stop: threading.Event, per_second: float
) -> None:
    """Publish readings for random sensors, as 1,000 sensors reporting once a minute would."""
    conn = MqttConnection(endpoint)
    conn.start()
    try:
        interval = 1.0 / per_second
        due = time.monotonic()
        while not stop.is_set():
            sensor = f"s{random.randrange(count):04d}"
            payload = orjson.dumps({"level_cm": round(random.uniform(0, 40), 1)})
            conn.publish(f"{root}/v1/sensors/{sensor}/reading", payload, qos=0)
            due += interval
            stop.wait(max(0.0, due - time.monotonic()))
    finally:
        conn.stop()


# -- the load process ---------------------------------------------------------------------


async def _request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """Send one HTTP/1.1 request on a kept-alive connection; return the status code."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    match = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    if match is None:
        raise RuntimeError("the API answered without a Content-Length")
    await reader.readexactly(int(match.group(1)))
    return status


async def _open_loop(port: int, path: str, key: str, rate: float, duration_s: float) -> LoadResult:
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {key}\r\nAccept: application/json\r\n\r\n"
    ).encode()
    # Last in, first out: at low rates a few warm connections serve everything, instead of
    # every connection idling past the server's keep-alive timeout in turn.
    pool: asyncio.LifoQueue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.LifoQueue()
    for _ in range(CONNECTIONS):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    latencies: list[float] = []
    errors = 0
    failures = (OSError, asyncio.IncompleteReadError, RuntimeError, ValueError)

    async def one(due: float) -> None:
        nonlocal errors
        conn = await pool.get()
        try:
            try:
                status = await _request(*conn, request)
            except failures:
                # The server closed an idle kept-alive connection: retry once on a new one,
                # as any HTTP client does.
                conn[1].close()
                conn = await asyncio.open_connection("127.0.0.1", port)
                status = await _request(*conn, request)
        except failures:
            errors += 1
            conn = await asyncio.open_connection("127.0.0.1", port)
        else:
            # From when the request was due: waiting for a free connection counts too.
            latencies.append((time.perf_counter() - due) * 1000)
            if status != 200:
                errors += 1
        pool.put_nowait(conn)

    total = int(rate * duration_s)
    tasks = []
    start = time.perf_counter()
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not pool.empty():
        _, writer = pool.get_nowait()
        writer.close()
    return LoadResult(total, errors, elapsed, latencies)


def _load_process(
    port: int,
    path: str,
    key: str,
    rate: float,
    duration_s: float,
    out: multiprocessing.Queue[LoadResult],
) -> None:
    out.put(asyncio.run(_open_loop(port, path, key, rate, duration_s)))


def run_load(port: int, path: str, key: str, rate: float, duration_s: float) -> LoadResult:
    """The open-loop load in its own process, so it does not share a core's GIL with us."""
    context = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[LoadResult] = context.Queue()
    proc = context.Process(target=_load_process, args=(port, path, key, rate, duration_s, out))
    proc.start()
    try:
        result: LoadResult = out.get(timeout=duration_s * 3 + 60)
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    return result


def wrk_ceiling(port: int, path: str, key: str, seconds: int) -> str | None:
    """Closed-loop requests/s from Debian's wrk (4.x has no fixed rate, so this is a ceiling)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    result = subprocess.run(
        [
            wrk,
            "-t2",
            "-c16",
            f"-d{seconds}s",
            "--latency",
            "-H",
            f"Authorization: Bearer {key}",
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    rps = re.search(r"Requests/sec:\s*([\d.]+)", result.stdout)
    p99 = re.search(r"99%\s+([\d.]+\w+)", result.stdout)
    if rps is None:
        return f"wrk failed: {result.stderr.strip() or result.stdout.strip()}"
    tail = p99.group(1) if p99 else "?"
    return f"{float(rps.group(1)):,.0f} requests/s with 16 connections (p99 {tail})"


# -- orchestration ------------------------------------------------------------------------


@contextlib.contextmanager
def api_process(env: dict[str, str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the API exited at start:\n{log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API was not ready within 60 s:\n{log.read_text()}")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def report(name: str, result: LoadResult, target_rate: float, p99_target: float | None) -> None:
    p50, p99 = result.percentile(0.50), result.percentile(0.99)
    line = (
        f"{name:<44} {result.rate:7.1f} req/s (asked {target_rate:g})  "
        f"p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  max {max(result.latencies_ms, default=0):7.1f} ms"
        f"  errors {result.errors}"
    )
    if p99_target is not None:
        verdict = "meets" if p99 <= p99_target else "MISSES"
        line += f"\n{'':<44} p99 target {p99_target:g} ms: {p99 / p99_target:.2f}x, {verdict} it"
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.split("\n")[0])
    parser.add_argument("--sensors", type=int, default=1000, help="sensors in the registry")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per run")
    parser.add_argument("--rate", type=float, default=200.0, help="/v1/sensors requests/s")
    parser.add_argument(
        "--series-rates",
        default="5,10",
        help="7-day series requests/s, comma-separated (one run each)",
    )
    args = parser.parse_args(argv)
    root = "bench"
    key = new_key()
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        workdir = Path(tmp)
        registry = workdir / "sensors.geojson"
        registry.write_bytes(registry_geojson(args.sensors))
        keys = workdir / "keys"
        keys.write_text(f"viewer:{hash_key(key)}:bench\n")
        with running(mosquitto_service(workdir), influxd_service(workdir)) as (broker, influxd):
            now = time.time_ns()
            with InfluxClient(parse_influx_url(influxd.url("admin")), "bench") as db:
                load_data(db, args.sensors, now)
            grant_database(f"http://127.0.0.1:{influxd.port}", influxd.credentials.influx, "bench")
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("FLOODWATCH_")}
            env.update(
                FLOODWATCH_MQTT_URL=broker.url("api"),
                FLOODWATCH_INFLUX_URL=influxd.url("reader"),
                FLOODWATCH_INFLUX_DB="bench",
                FLOODWATCH_TOPIC_ROOT=root,
                FLOODWATCH_REGISTRY=str(registry),
                FLOODWATCH_API_KEYS=str(keys),
                FLOODWATCH_LOG_LEVEL="WARNING",
            )
            stop = threading.Event()
            publisher = threading.Thread(
                target=live_readings,
                args=(broker.endpoint("admin"), root, args.sensors, stop, args.sensors / 60),
                daemon=True,
            )
            with api_process(env, port, workdir / "api.log"):
                body = httpx.get(
                    f"http://127.0.0.1:{port}/v1/sensors",
                    headers={"Authorization": f"Bearer {key}"},
                ).content
                print(
                    f"bench/api: {args.sensors} sensors, /v1/sensors is "
                    f"{len(body) / 1024:.0f} KiB; "
                    f"{WEEK_MINUTES:,} readings for s0000; live readings at "
                    f"{args.sensors / 60:.1f}/s; {args.duration:g} s per run",
                    flush=True,
                )
                week = urlencode(
                    {
                        "start": _iso(now - WEEK_MINUTES * 60 * 10**9),
                        "end": _iso(now + 10**9),
                        "limit": 20000,
                    }
                )
                series = f"/v1/sensors/s0000/readings?{week}"
                check = httpx.get(
                    f"http://127.0.0.1:{port}{series}", headers={"Authorization": f"Bearer {key}"}
                ).json()
                assert check["count"] == WEEK_MINUTES and check["next"] is None, check["count"]
                publisher.start()
                try:
                    run_load(port, "/v1/sensors", key, 50, 3)  # warm-up
                    sensors = run_load(port, "/v1/sensors", key, args.rate, args.duration)
                    report("GET /v1/sensors", sensors, args.rate, SENSORS_P99_TARGET_MS)
                    rates = [float(r) for r in str(args.series_rates).split(",")]
                    for rate in rates:
                        week_raw = run_load(port, series, key, rate, args.duration)
                        report(
                            "GET .../readings, 7 days raw (10,080 points)",
                            week_raw,
                            rate,
                            SERIES_P99_TARGET_MS,
                        )
                    hourly = run_load(
                        port, series + "&every=1h&agg=max", key, max(rates), args.duration
                    )
                    report("GET .../readings, 7 days every=1h&agg=max", hourly, max(rates), None)
                    ceiling = wrk_ceiling(port, "/v1/sensors", key, 10)
                    if ceiling is not None:
                        print(f"{'wrk, GET /v1/sensors, closed loop':<44} {ceiling}", flush=True)
                finally:
                    stop.set()
                    publisher.join(5)
    return 0


def _iso(time_ns: int) -> str:
    return iso(time_ns)


if __name__ == "__main__":
    sys.exit(main())
