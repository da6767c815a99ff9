"""What the pipeline benchmarks share: `python -m ingest` started as its own process, and a
wait for the servers to go quiet between runs."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def start_ingest(
    env: dict[str, str],
    log_path: Path,
    root: Path = ROOT,
    args: Sequence[str] = (),
    ready: bytes | None = b"ingesting",
) -> subprocess.Popen[bytes]:
    """Start ingest with `env` (FLOODWATCH_* and PATH) and `args` from the checkout at `root`
    (another one for A/B runs) and wait until its log says `ready` (subscribed; a cluster
    worker's `owns partitions`; None: do not wait)."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ingest", *args],
            cwd=root,
            env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while ready is not None and ready not in log_path.read_bytes():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"ingest did not start; its log says:\n{log_path.read_text()}")
        time.sleep(0.05)
    return proc


def wait_until_quiet(
    services: list[subprocess.Popen[bytes] | None],
    below_cores: float = 0.05,
    window_s: float = 0.5,
    timeout_s: float = 30.0,
) -> float:
    """Wait until these processes together use less than `below_cores` of a CPU over
    `window_s`, so a run does not pay for the background work of the one before (influxd
    snapshotting and compacting what it was just sent). Returns the seconds waited."""
    procs = [psutil.Process(p.pid) for p in services if p is not None]
    started = time.monotonic()

    def busy() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in procs)

    while time.monotonic() - started < timeout_s:
        before = busy()
        time.sleep(window_s)
        if (busy() - before) / window_s < below_cores:
            break
    return time.monotonic() - started
