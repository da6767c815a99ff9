"""What the pipeline benchmarks share: `python -m ingest` started as its own process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_ingest(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ingest with `env` (FLOODWATCH_* and PATH) and wait until it has subscribed."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ingest"],
            cwd=ROOT,
            env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while b"ingesting" not in log_path.read_bytes():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"ingest did not start; its log says:\n{log_path.read_text()}")
        time.sleep(0.05)
    return proc
