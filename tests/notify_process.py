"""`python -m notify` as a process of its own, for the tests and `bench.notify`: the environment
every one of them gives it, its log file, its start (waited on until it says it is notifying)
and its stop."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parent.parent
STARTED = "notifying from"  # the notifier's line once it follows the events


def notifier_env(root: str, routing: Path, state: Path, **more: str) -> dict[str, str]:
    """The environment of a notifier on topic root `root`: no retries beyond `RETRY_MAX` 1 s,
    no progress lines, no metrics port (a test's own values in `more`, FLOODWATCH_ implied:
    `MQTT_URL=...`)."""
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONUNBUFFERED": "1",
        "FLOODWATCH_TOPIC_ROOT": root,
        "FLOODWATCH_ROUTING": str(routing),
        "FLOODWATCH_NOTIFY_STATE": str(state),
        "FLOODWATCH_RETRY_MAX": "1",
        "FLOODWATCH_STATS_INTERVAL": "0",
        "FLOODWATCH_METRICS_PORT": "0",
    }
    env.update({f"FLOODWATCH_{name}": value for name, value in more.items()})
    return env


class NotifierProcess:
    """One notifier process with its log (`{name}.log`, or `{name}-{N}.log` for the Nth start
    when it is started again after a kill)."""

    def __init__(self, env: dict[str, str], workdir: Path, name: str, *args: str) -> None:
        self.env = env
        self.workdir = workdir
        self.name = name
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        suffix = f"-{self.starts}" if self.starts > 1 else ""
        return self.workdir / f"{self.name}{suffix}.log"

    def launch(self) -> subprocess.Popen[bytes]:
        """Start it without waiting (see `started`)."""
        self.starts += 1
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "notify", *self.args],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self.proc

    def start(self, timeout_s: float = 30.0) -> Self:
        """Start it and wait until it follows the events; RuntimeError with its log if it
        exits or says nothing of the kind in time."""
        proc = self.launch()
        deadline = time.monotonic() + timeout_s
        while not self.said(STARTED):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the notifier did not start:\n{self.log.read_text()}")
            time.sleep(0.05)  # polling its log for the line, not waiting for a result
        return self

    def said(self, text: str) -> bool:
        return text.encode() in self.log.read_bytes()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: int) -> None:
        """Signal it without waiting (SIGSTOP, SIGCONT)."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def kill(self, sig: int = signal.SIGKILL, timeout_s: float = 30.0) -> None:
        """Signal it and wait until it has exited."""
        self.send(sig)
        self.wait(timeout_s)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM if it still runs; SIGKILL if it does not stop in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def tool(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`python -m notify ARGS` with its environment (deadletters, replay, a check)."""
        return subprocess.run(
            [sys.executable, "-m", "notify", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
