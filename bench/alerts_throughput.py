"""bench/alerts_throughput: readings per second through the alert engine alone (no MQTT, no
InfluxDB), for a city-sized fleet in a storm.

1,000 street sensors on 100 streets report once a minute; each batch holds 100 readings per
sensor (100,000 readings, in arrival order: minute by minute, sensors interleaved). A third of
the sensors flood during the run (rising about 1 cm/min to 15-60 cm, holding, draining), the
rest read a dry road with sensor noise; a few carry vehicles, out-of-range values and low
batteries, so every rule has work to do. Timed: `step` only, over 5 batches per run, after a
warm-up; the figure is the median of --runs runs, by the wall clock and by CPU time (the
engine is single-threaded numpy, so the two agree on an idle machine).

Run: .venv/bin/python -m bench.alerts_throughput [--sensors 1000] [--per-sensor 100] [--runs 5]
     [--flooding 0.33]  (1.0: every sensor floods, the engine's slowest case)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from alerts import ReadingArrays, new_state, step
from floodwatch.registry import Registry, Sensor

TARGET = 1_000_000  # readings per second (issue 3)
MINUTE_NS = 60 * 10**9
T0 = 1_795_694_400 * 10**9


def fleet(n: int) -> Registry:
    sensors = {
        f"s{i:05d}": Sensor(
            id=f"s{i:05d}",
            name=f"sensor {i}",
            street=f"street {i // 10}",
            ward="An Khanh",
            kind="street",
            lon=106.73,
            lat=10.80,
            thresholds_cm=(10.0, 20.0, 30.0, 50.0),
            interval_s=60.0,
        )
        for i in range(n)
    }
    return Registry(sensors=sensors, streets=())


def storm(
    n_sensors: int, minutes: int, flooding_share: float, seed: int = 7
) -> tuple[np.ndarray, np.ndarray]:
    """(depth, battery) as (minutes, sensors) arrays."""
    rng = np.random.default_rng(seed)
    t = np.arange(minutes)[:, None]
    depth = rng.normal(0.5, 0.3, (minutes, n_sensors))
    flooding = rng.random(n_sensors) < flooding_share
    start = rng.integers(0, minutes // 2, n_sensors)
    peak = rng.uniform(15, 60, n_sensors)
    rate = rng.uniform(0.6, 1.5, n_sensors)
    hold = rng.integers(10, 60, n_sensors)
    up = np.clip((t - start) * rate, 0, peak)
    down = np.clip(peak - (t - start - peak / rate - hold) * rate * 0.7, 0, peak)
    flood = np.where(t - start < peak / rate + hold, up, down)
    depth += np.where(flooding, flood, 0.0)
    # Artefacts: a few parked vehicles and out-of-range values.
    for k in rng.choice(n_sensors, n_sensors // 50, replace=False):
        a = int(rng.integers(0, minutes - 20))
        depth[a : a + 15, k] = 140.0
    for k in rng.choice(n_sensors, n_sensors // 100, replace=False):
        depth[int(rng.integers(0, minutes)), k] = 999.0
    battery = rng.normal(3.7, 0.05, (minutes, n_sensors))
    battery[:, : n_sensors // 100] -= 0.45  # some sensors with tired batteries
    battery[rng.random((minutes, n_sensors)) < 0.1] = np.nan  # not every reading carries one
    return np.round(depth, 1), battery


def batches(
    n_sensors: int, per_sensor: int, count: int, flooding_share: float
) -> list[ReadingArrays]:
    depth, battery = storm(n_sensors, per_sensor * count, flooding_share)
    out = []
    for b in range(count):
        rows = slice(b * per_sensor, (b + 1) * per_sensor)
        minutes = np.arange(b * per_sensor, (b + 1) * per_sensor)
        out.append(
            ReadingArrays(
                np.tile(np.arange(n_sensors, dtype=np.int32), per_sensor),
                np.repeat(T0 + minutes.astype(np.int64) * MINUTE_NS, n_sensors),
                depth[rows].ravel(),
                battery[rows].ravel(),
            )
        )
    return out


def one_run(registry: Registry, work: list[ReadingArrays]) -> tuple[float, float, int]:
    """(wall seconds in step, CPU seconds in step, events) for the series, on a fresh engine."""
    state = new_state(registry, T0)
    wall = cpu = 0.0
    events = 0
    for batch in work:
        now = int(batch.time_ns.max()) + 1
        started, started_cpu = time.perf_counter(), time.process_time()
        state, out = step(state, batch, now)
        wall += time.perf_counter() - started
        cpu += time.process_time() - started_cpu
        events += len(out)
    return wall, cpu, events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--per-sensor", type=int, default=100, help="readings per sensor per batch")
    parser.add_argument("--batches", type=int, default=5, help="batches per run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--flooding", type=float, default=1 / 3, help="share of sensors that flood (0 to 1)"
    )
    args = parser.parse_args()

    registry = fleet(args.sensors)
    work = batches(args.sensors, args.per_sensor, args.batches, args.flooding)
    readings = sum(len(b) for b in work)
    one_run(registry, work[:1])  # warm-up: imports, caches, first allocations
    rates, cpu_rates = [], []
    for _ in range(args.runs):
        wall, cpu, events = one_run(registry, work)
        rates.append(readings / wall)
        cpu_rates.append(readings / cpu)
    rate = statistics.median(rates)
    print(
        f"alert engine: {args.sensors} sensors, batches of {args.per_sensor} readings per sensor "
        f"({args.sensors * args.per_sensor:,} readings), {args.batches} batches per run, "
        f"{events} events per run, {args.flooding:.0%} of sensors flooding"
    )
    print(f"runs (readings/s): {', '.join(f'{r:,.0f}' for r in rates)}")
    print(f"median: {rate:,.0f} readings/s = {rate / TARGET:.2f}x the target of {TARGET:,}/s")
    # On a shared machine the wall clock includes other processes' turns; CPU time does not.
    cpu_rate = statistics.median(cpu_rates)
    print(f"per CPU second (median): {cpu_rate:,.0f} readings/s = {cpu_rate / TARGET:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
