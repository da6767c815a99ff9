"""Fault injection against real processes: every case compares the stored (sensor, time) set
with the published set, so nothing may be missing and nothing doubled."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import orjson

from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service, influxd_service, wait_influx_ready
from floodwatch.settings import parse_influx_url
from tests.conftest import IngestProcess, mosquitto_pub, wait_until


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stored_keys(db: InfluxClient) -> list[tuple[str, int]]:
    series = db.query('SELECT "level_cm", "sensor" FROM "water_level"', epoch="ns")
    return [(row[2], row[0]) for s in series for row in s["values"]]


def test_long_influx_outage_goes_to_disk_and_survives_an_ingest_kill(
    broker: Service, unique: str, tmp_path: Path, ingest_env: dict[str, str]
) -> None:
    """InfluxDB down, readings spill to the outbox and are acked; ingest is SIGKILLed; on
    restart and InfluxDB's return every published reading is stored exactly once."""
    (tmp_path / "influx").mkdir()
    own = influxd_service(tmp_path / "influx")
    own.start()
    wait_influx_ready(own.port)
    env = dict(
        ingest_env,
        FLOODWATCH_INFLUX_URL=f"http://127.0.0.1:{own.port}",
        FLOODWATCH_OUTBOX=str(tmp_path / "outbox.sqlite"),
        FLOODWATCH_OUTBOX_AFTER="1",
    )
    ingest = IngestProcess(env, tmp_path)
    ingest.start()
    db = InfluxClient(parse_influx_url(f"http://127.0.0.1:{own.port}"), unique)
    n = 20_000
    published = {("nvh-03", 1_795_000_000_000_000_000 + k * 10**9) for k in range(n)}
    lines = b"\n".join(
        orjson.dumps({"ts": 1_795_000_000_000 + k * 1000, "level_cm": 3.5}) for k in range(n)
    )
    try:
        own.stop()
        down_at = time.monotonic()
        publisher = threading.Thread(
            target=mosquitto_pub,
            args=(broker, f"{unique}/v1/sensors/nvh-03/reading"),
            kwargs={"lines": lines + b"\n"},
        )
        publisher.start()
        wait_until(
            lambda: (
                b"outbox_spilled=" in ingest.log.read_bytes()
                and b"outbox_spilled=0 " not in ingest.log.read_bytes().splitlines()[-1]
            ),
            30,
            "readings spilled to the outbox",
        )
        publisher.join(60)
        rss = peak_rss_mb(ingest.proc.pid) if ingest.proc else 0.0
        ingest.stop(signal.SIGKILL)
        ingest.start()
        own.start()
        wait_influx_ready(own.port)
        wait_until(lambda: len(stored_keys(db)) >= n, 60, "every reading after recovery")
        recovery_s = time.monotonic() - down_at
        keys = stored_keys(db)
        assert len(keys) == len(set(keys)) == n
        assert set(keys) == published
        log = b"".join(p.read_bytes() for p in tmp_path.glob("ingest-*.log"))
        assert b"outbox" in log and rss < 300
        print(f"outbox case: recovery {recovery_s:.1f} s, peak RSS {rss:.0f} MB")
    finally:
        if ingest.running():
            ingest.stop(signal.SIGKILL)
        own.stop()
        db.close()


def test_sigterm_mid_burst_exits_in_bound_and_loses_nothing(
    broker: Service, influxd: Service, unique: str, tmp_path: Path, ingest_env: dict[str, str]
) -> None:
    """SIGTERM during a burst: ingest flushes and exits within its bound; nothing is lost."""
    env = dict(ingest_env, FLOODWATCH_SHUTDOWN_TIMEOUT="5")
    ingest = IngestProcess(env, tmp_path)
    ingest.start()
    db = InfluxClient(parse_influx_url(f"http://127.0.0.1:{influxd.port}"), unique)
    n = 30_000
    lines = b"\n".join(
        orjson.dumps({"ts": 1_795_000_000_000 + k * 1000, "level_cm": 7.5}) for k in range(n)
    )
    try:
        publisher = threading.Thread(
            target=mosquitto_pub,
            args=(broker, f"{unique}/v1/sensors/nvh-02/reading"),
            kwargs={"lines": lines + b"\n"},
        )
        publisher.start()
        wait_until(lambda: len(stored_keys(db)) > 2_000, 30, "part of the burst stored")
        asked = time.monotonic()
        assert ingest.stop(signal.SIGTERM) == 0
        took = time.monotonic() - asked
        assert took < 5 + 3, f"SIGTERM took {took:.1f} s against a 5 s bound"
        assert b"stopped; messages=" in ingest.log.read_bytes()
        publisher.join(60)
        ingest.start()
        wait_until(lambda: len(stored_keys(db)) >= n, 60, "the rest after the restart")
        keys = stored_keys(db)
        assert len(keys) == len(set(keys)) == n
    finally:
        if ingest.running():
            ingest.stop(signal.SIGKILL)
        db.close()
