"""bench/simulators_load: how fast `python -m simulators load` publishes, against the targets.

Starts its own mosquitto (config/mosquitto.conf on a free port) and runs the load generator
in four cases: 100-reading arrays and single readings, each at a rate just above issue 5's
target (50,000 readings/s in arrays; 15,000 single-reading messages/s) and flat out. A
reading counts once the broker acknowledged it (PUBACK). Prints the median of --runs runs.

Run: .venv/bin/python -m bench.simulators_load [--duration 10] [--runs 3] [--sensors 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import orjson

from floodwatch.localservices import mosquitto_service, running

ROOT = Path(__file__).resolve().parent.parent
ARRAY_TARGET = 50_000  # readings per second, in 100-reading arrays
SINGLE_TARGET = 15_000  # single-reading messages per second


@dataclass(frozen=True)
class Case:
    name: str
    mode: str
    rate: int  # asked of the generator, readings/s
    processes: int  # 0: the generator picks
    target: int  # what it must reach
    unit: str  # "readings/s" or "messages/s"


CASES = (
    Case("arrays at target", "array", 60_000, 0, ARRAY_TARGET, "readings/s"),
    Case("singles at target", "single", 18_000, 0, SINGLE_TARGET, "messages/s"),
    Case("arrays flat out", "array", 2_000_000, 2, ARRAY_TARGET, "readings/s"),
    Case("singles flat out", "single", 200_000, 2, SINGLE_TARGET, "messages/s"),
)


def run_case(case: Case, url: str, duration: float, sensors: int) -> dict[str, object]:
    env = dict(os.environ, FLOODWATCH_MQTT_URL=url)
    env["FLOODWATCH_TOPIC_ROOT"] = "bench"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulators",
            "load",
            "--sensors",
            str(sensors),
            "--rate",
            str(case.rate),
            "--mode",
            case.mode,
            "--duration",
            str(duration),
            "--processes",
            str(case.processes),
            "--log-level",
            "WARNING",
            "--json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=duration + 120,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"{case.name}: load failed:\n{result.stdout}\n{result.stderr}")
    doc: dict[str, object] = orjson.loads(result.stdout.strip().splitlines()[-1])
    return doc


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simulators_load", description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per case (median shown)")
    parser.add_argument("--sensors", type=int, default=1000, help="virtual sensors")
    args = parser.parse_args()
    rows = []
    with (
        tempfile.TemporaryDirectory() as workdir,
        running(mosquitto_service(Path(workdir))) as (broker,),
    ):
        for case in CASES:
            runs = [
                run_case(case, broker.url("admin"), args.duration, args.sensors)
                for _ in range(args.runs)
            ]
            readings = statistics.median(float(str(r["readings_per_s"])) for r in runs)
            messages = statistics.median(float(str(r["messages_per_s"])) for r in runs)
            achieved = readings if case.unit == "readings/s" else messages
            rows.append((case, runs[0]["processes"], readings, messages, achieved))
            print(
                f"{case.name}: {readings:,.0f} readings/s, {messages:,.0f} messages/s "
                f"({len(runs)} runs)",
                file=sys.stderr,
                flush=True,
            )
    print(
        f"\nsimulators load, {args.sensors} sensors, {args.duration:g} s per run, "
        f"median of {args.runs}, {os.cpu_count()} CPUs, mosquitto on the same host\n"
    )
    print("| case | asked (readings/s) | processes | readings/s | messages/s | target | met |")
    print("|---|---|---|---|---|---|---|")
    failed = 0
    for case, processes, readings, messages, achieved in rows:
        met = achieved >= case.target
        failed += not met
        print(
            f"| {case.name} | {case.rate:,} | {processes} | {readings:,.0f} | {messages:,.0f} "
            f"| {case.target:,} {case.unit} | {'yes' if met else 'NO'} |"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
