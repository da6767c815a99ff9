"""bench/api_streams: what many /v1/stream clients cost the API, with and without the cap.

The same set-up as bench/api (a generated registry of `--sensors` sensors with a last reading
each, live readings over MQTT at their reporting rate, the API under uvicorn in its own
process). Then, for each run: `--clients` stream clients connect (a separate process; each
reads its stream continuously, as the IOC page does), and an open-loop load of
GET /v1/sensors at `--rate` requests/s measures p50/p99 latency while they are connected. The
API's resident memory is read from /proc before and after the clients connect.

Runs alternate (A/B interleaved, `--repeats` times each, medians reported) between
  - uncapped: `--max-streams` high enough for every client (as before the cap), and
  - capped:   the default `--max-streams` (50); the clients past it are answered 503.

Run: .venv/bin/python -m bench.api_streams [--sensors 1000] [--clients 300] [--rate 50]
                                           [--duration 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from api.auth import hash_key, new_key
from api.config import DEFAULT_MAX_STREAMS
from bench.api import api_process, live_readings, load_data, registry_geojson, run_load
from floodwatch.credentials import grant_database
from floodwatch.influx import InfluxClient
from floodwatch.localservices import free_port, influxd_service, mosquitto_service, running
from floodwatch.settings import parse_influx_url


async def _hold_streams(
    port: int, key: str, clients: int, stop_after_s: float
) -> tuple[int, int, int]:
    """Open `clients` streams, read them until `stop_after_s`; (served, refused, bytes read)."""
    request = (
        f"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    served = refused = received = 0

    async def one() -> None:
        nonlocal served, refused, received
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            refused += 1
            writer.close()
            return
        served += 1
        try:
            while chunk := await reader.read(65536):
                received += len(chunk)
        finally:
            writer.close()

    tasks = [asyncio.create_task(one()) for _ in range(clients)]
    await asyncio.sleep(stop_after_s)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return served, refused, received


def _streams_process(
    port: int, key: str, clients: int, seconds: float, out: multiprocessing.Queue[object]
) -> None:
    out.put(asyncio.run(_hold_streams(port, key, clients, seconds)))


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_run(
    env: dict[str, str], workdir: Path, key: str, max_streams: int, args: argparse.Namespace
) -> dict[str, float]:
    port = free_port()
    run_env = {**env, "FLOODWATCH_MAX_STREAMS": str(max_streams)}
    with api_process(run_env, port, workdir / f"api-{max_streams}.log") as proc:
        run_load(port, "/v1/sensors", key, 20, 2)  # warm-up
        rss_before = _rss_mb(proc.pid)
        context = multiprocessing.get_context("spawn")
        out: multiprocessing.Queue[object] = context.Queue()
        hold_s = args.duration + 8
        streams = context.Process(
            target=_streams_process, args=(port, key, args.clients, hold_s, out)
        )
        streams.start()
        time.sleep(4)  # every client connected and streaming
        rss_with = _rss_mb(proc.pid)
        result = run_load(port, "/v1/sensors", key, args.rate, args.duration)
        counts = out.get(timeout=hold_s + 60)
        assert isinstance(counts, tuple)
        served, refused, received = (int(c) for c in counts)
        streams.join(30)
    return {
        "p50": result.percentile(0.5),
        "p99": result.percentile(0.99),
        "errors": float(result.errors),
        "served": float(served),
        "refused": float(refused),
        "rss_before": rss_before,
        "rss_with": rss_with,
        "stream_mb": received / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.api_streams", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0, help="/v1/sensors requests/s")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-streams", type=int, default=DEFAULT_MAX_STREAMS)
    args = parser.parse_args(argv)
    root = "bench"
    key = new_key()
    with tempfile.TemporaryDirectory(prefix="bench-streams-") as tmp:
        workdir = Path(tmp)
        registry = workdir / "sensors.geojson"
        registry.write_bytes(registry_geojson(args.sensors))
        keys = workdir / "keys"
        keys.write_text(f"viewer:{hash_key(key)}:bench\n")
        with running(mosquitto_service(workdir), influxd_service(workdir)) as (broker, influxd):
            with InfluxClient(parse_influx_url(influxd.url("admin")), "bench") as db:
                load_data(db, args.sensors, time.time_ns())
            grant_database(f"http://127.0.0.1:{influxd.port}", influxd.credentials.influx, "bench")
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
            publisher.start()
            print(
                f"bench/api_streams: {args.sensors} sensors, live readings at "
                f"{args.sensors / 60:.1f}/s, {args.clients} stream clients, GET /v1/sensors at "
                f"{args.rate:g}/s for {args.duration:g} s, {args.repeats} runs each (A/B)",
                flush=True,
            )
            runs: dict[str, list[dict[str, float]]] = {"uncapped": [], "capped": []}
            try:
                for _ in range(args.repeats):
                    for name, cap in (
                        ("uncapped", args.clients + 10),
                        ("capped", args.max_streams),
                    ):
                        run = one_run(env, workdir, key, cap, args)
                        runs[name].append(run)
                        print(
                            f"  {name:<9} served {run['served']:.0f} refused "
                            f"{run['refused']:.0f}  p50 {run['p50']:6.1f} ms  p99 "
                            f"{run['p99']:7.1f} ms  errors {run['errors']:.0f}  RSS "
                            f"{run['rss_before']:.0f} -> {run['rss_with']:.0f} MB",
                            flush=True,
                        )
            finally:
                stop.set()
                publisher.join(5)
            for name, items in runs.items():
                med = {k: statistics.median(r[k] for r in items) for k in items[0]}
                print(
                    f"{name:<9} medians: p50 {med['p50']:.1f} ms, p99 {med['p99']:.1f} ms, RSS "
                    f"+{med['rss_with'] - med['rss_before']:.1f} MB with "
                    f"{med['served']:.0f} streams",
                    flush=True,
                )
            capped = statistics.median(r["p99"] for r in runs["capped"])
            uncapped = statistics.median(r["p99"] for r in runs["uncapped"])
            print(f"p99 ratio uncapped/capped: {uncapped / capped:.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
