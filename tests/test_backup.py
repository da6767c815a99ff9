"""InfluxDB least privilege and its backstop (issue 12 §3): what the WRITE-only user can still
do, scripts/backup and scripts/restore against the real influxd, and ingest's one clear line
when its retention policy is gone."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import orjson
import pytest

from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service, free_port
from floodwatch.mqtt import MqttConnection
from tests.conftest import ROOT, IngestProcess, grant, wait_until

BASE_NS = 1_795_000_000_000_000_000


def _count(db: InfluxClient) -> int:
    series = db.query('SELECT count("level_cm") FROM "water_level"')
    return int(series[0]["values"][0][1]) if series else 0


def _as_writer(influxd: Service, db: str, statement: str) -> str:
    """An InfluxQL statement as ingest's WRITE-only user; the body of InfluxDB's answer."""
    response = httpx.post(
        f"http://127.0.0.1:{influxd.port}/query",
        params={"db": db},
        data={"q": statement},
        auth=("writer", influxd.credentials.influx["writer"]),
        timeout=10,
    )
    return response.text


def _script(name: str, influxd: Service, db: str, *args: str) -> str:
    env = {
        **os.environ,
        "INFLUX_RPC": f"127.0.0.1:{influxd.rpc_port}",
        "INFLUX_DB": db,
        "INFLUX_PORT": str(influxd.port),
        "INFLUX_USERNAME": "admin",
        "INFLUX_PASSWORD": influxd.credentials.influx["admin"],
    }
    done = subprocess.run(
        ["sh", str(ROOT / "scripts" / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_write_allows_these_wipes_and_nothing_more(
    influxd: Service, influx: InfluxClient, unique: str
) -> None:
    """What InfluxDB 1.x's WRITE grants beyond /write (the README's residual risk): DELETE,
    DROP SERIES, DROP RETENTION POLICY and DROP CONTINUOUS QUERY; every other statement
    that changes data or schema needs admin (or READ)."""
    allowed = [
        "DELETE FROM water_level",
        "DROP SERIES FROM water_level",
        f"DROP CONTINUOUS QUERY nothing ON {unique}",
        f"DROP RETENTION POLICY autogen ON {unique}",
    ]
    refused = [
        "DROP MEASUREMENT water_level",
        f"DROP DATABASE {unique}",
        f"CREATE RETENTION POLICY x ON {unique} DURATION 1h REPLICATION 1",
        f"ALTER RETENTION POLICY autogen ON {unique} DURATION 1h",
        "DROP SHARD 1",
        "CREATE USER intruder WITH PASSWORD 'x' WITH ALL PRIVILEGES",
        "SELECT * FROM water_level",
    ]
    for statement in refused:
        assert "not authorized" in _as_writer(influxd, unique, statement), statement
    for statement in allowed:
        answer = _as_writer(influxd, unique, statement)
        assert "not authorized" not in answer, (statement, answer)


def test_backup_then_a_wipe_then_restore_brings_every_reading_back(
    influxd: Service, influx: InfluxClient, unique: str, tmp_path: Path
) -> None:
    """500 readings backed up; the writer drops the retention policy (all 500 gone, as in the
    issue); scripts/restore creates it again and writes the 500 back."""
    influx.write([f"water_level,sensor=qh-02 level_cm={i % 50} {BASE_NS + i}" for i in range(500)])
    out = _script("backup", influxd, unique, str(tmp_path / "backups"))
    [made] = sorted((tmp_path / "backups").iterdir())
    assert str(made) in out
    _as_writer(influxd, unique, f"DROP RETENTION POLICY autogen ON {unique}")
    with pytest.raises(Exception, match="retention policy not found"):
        influx.write([f"water_level,sensor=qh-02 level_cm=1 {BASE_NS}"])
    restored = _script("restore", influxd, unique, str(made))
    assert "created again" in restored
    assert _count(influx) == 500, (out, restored)


def test_backups_beyond_the_kept_number_are_removed(
    influxd: Service, influx: InfluxClient, unique: str, tmp_path: Path
) -> None:
    """With BACKUP_KEEP=1 only the newest backup stays."""
    influx.write([f"water_level,sensor=qh-02 level_cm=1 {BASE_NS}"])
    backups = tmp_path / "backups"
    (backups / "20200101T000000Z").mkdir(parents=True)
    os.environ["BACKUP_KEEP"] = "1"
    try:
        _script("backup", influxd, unique, str(backups))
    finally:
        del os.environ["BACKUP_KEEP"]
    [kept] = list(backups.iterdir())
    assert kept.name != "20200101T000000Z"


def test_ingest_says_once_what_to_do_when_its_retention_policy_is_gone(
    broker: Service,
    influxd: Service,
    influx: InfluxClient,
    ingest_env: dict[str, str],
    unique: str,
    tmp_path: Path,
) -> None:
    """After the writer dropped the retention policy, ingest logs one error naming the fix
    (not a line per retry), keeps the readings, and stores them once an admin restores it."""
    metrics_port = free_port()
    env = {**ingest_env, "FLOODWATCH_OUTBOX": "off", "FLOODWATCH_METRICS_PORT": str(metrics_port)}
    ingest = IngestProcess(env, tmp_path)
    ingest.start()
    try:
        _as_writer(influxd, unique, f"DROP RETENTION POLICY autogen ON {unique}")
        sensor = MqttConnection(broker.endpoint("qh-02"), "qh-02")
        sensor.start()
        try:
            for i in range(3):
                reading = orjson.dumps({"ts": BASE_NS // 1_000_000 + i, "level_cm": 10.0})
                sensor.publish_and_wait(f"{unique}/v1/sensors/qh-02/reading", reading)
        finally:
            sensor.stop()

        def retries() -> int:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
            [line] = [ln for ln in text.splitlines() if ln.startswith("floodwatch_ingest_write_r")]
            return int(float(line.split()[-1]))

        wait_until(lambda: retries() >= 4, 60, "ingest to retry the write a few times")
        log = ingest.log.read_text()
        fix = [ln for ln in log.splitlines() if "retention policy" in ln]
        assert len(fix) == 1, fix
        assert "scripts/restore" in fix[0] and "CREATE RETENTION POLICY" in fix[0]
        assert ingest.running()
        influx.query(
            f'CREATE RETENTION POLICY "autogen" ON "{unique}" DURATION 0s REPLICATION 1 DEFAULT',
            method="POST",
        )
        wait_until(lambda: _count(influx) == 3, 30, "the held readings stored")
    finally:
        ingest.stop()


def test_ingest_says_once_what_to_do_when_its_database_is_gone(
    broker: Service,
    influxd: Service,
    influx: InfluxClient,
    ingest_env: dict[str, str],
    unique: str,
    tmp_path: Path,
) -> None:
    """An admin dropped the database under a running ingest, whose writer may not create it:
    one error line names the fix, and the readings are stored once it is back."""
    ingest = IngestProcess({**ingest_env, "FLOODWATCH_OUTBOX": "off"}, tmp_path)
    ingest.start()
    try:
        influx.query(f'DROP DATABASE "{unique}"', method="POST")
        sensor = MqttConnection(broker.endpoint("qh-02"), "qh-02")
        sensor.start()
        try:
            reading = orjson.dumps({"ts": BASE_NS // 1_000_000, "level_cm": 10.0})
            sensor.publish_and_wait(f"{unique}/v1/sensors/qh-02/reading", reading)
        finally:
            sensor.stop()
        wait_until(lambda: b"is gone" in ingest.log.read_bytes(), 30, "the error line")
        lines = [ln for ln in ingest.log.read_text().splitlines() if "is gone" in ln]
        assert len(lines) == 1 and "scripts/restore" in lines[0], lines
        grant(influxd, unique)
        wait_until(lambda: _count(influx) == 1, 30, "the held reading stored")
    finally:
        ingest.stop()
