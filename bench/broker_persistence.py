"""What a save of the broker's persistence database costs, to choose `autosave_interval`.

Usage: python -m bench.broker_persistence [--queued 200000]

Starts a mosquitto of its own with the shipped configuration, leaves a persistent QoS 1
session (as ingest's is while ingest is down) with QUEUED readings waiting for it, then
measures: a save requested with SIGUSR1 (the same save autosave runs, during which the
single-threaded broker serves no one), the database's size, and a clean SIGTERM (which also
saves). A broker SIGKILLed loses what was queued after the last save, so at R readings per
second an autosave interval of N seconds risks up to R x N readings.
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
from pathlib import Path

import orjson

from floodwatch.localservices import mosquitto_service, running
from floodwatch.mqtt import MqttConnection


def _wait_new_file(path: Path, old_inode: int, timeout_s: float = 120.0) -> float:
    """Seconds until `path` is replaced (mosquitto writes DB.new, then renames it)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            if path.stat().st_ino != old_inode:
                return time.monotonic() - start
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    raise TimeoutError(f"{path} was not rewritten within {timeout_s:g} s")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.broker_persistence")
    parser.add_argument("--queued", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = mosquitto_service(Path(tmp))
        with running(broker):
            topic = "bench/v1/sensors/qh-02/reading"
            session = MqttConnection(
                broker.endpoint("admin"),
                "bench-ingest",
                subscriptions=[(topic, 1)],
                session_expiry_s=3600,
            )
            session.start()
            time.sleep(0.5)
            session.stop()
            publisher = MqttConnection(broker.endpoint("admin"))
            publisher.start()
            started = time.monotonic()
            for k in range(args.queued):
                payload = orjson.dumps({"ts": 1795000000000 + k, "level_cm": 12.5, "seq": k})
                publisher.publish(topic, payload, qos=1)
            while publisher.pending_publishes():
                time.sleep(0.01)
            publisher.stop()
            publish_s = time.monotonic() - started
            db = broker.workdir / "mosquitto-data" / "mosquitto.db"
            old = db.stat().st_ino if db.exists() else -1
            assert broker.proc is not None
            broker.proc.send_signal(signal.SIGUSR1)
            save_s = _wait_new_file(db, old)
            time.sleep(0.5)
            size_mb = db.stat().st_size / 1e6
            started = time.monotonic()
            broker.stop(signal.SIGTERM, timeout_s=120)
            stop_s = time.monotonic() - started
    print(
        f"queued {args.queued:,} readings ({publish_s:.1f} s to publish): save {save_s:.2f} s, "
        f"database {size_mb:.1f} MB, clean stop (saves too) {stop_s:.2f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
