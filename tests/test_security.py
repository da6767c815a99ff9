"""Least privilege on the broker (each login's role in the dynamic-security file) and in
InfluxDB (users with only WRITE or READ), on the session's real mosquitto and influxd."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from floodwatch.errors import BrokerError, InfluxAccessDenied, PublishDenied
from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service
from floodwatch.mqtt import MqttConnection
from floodwatch.settings import MqttEndpoint, parse_influx_url
from tests.conftest import ROOT, IngestProcess, fresh_login, grant, wait_until

READING = orjson.dumps({"ts": 1795000000000, "level_cm": 12.5})


def _count(db: InfluxClient, sensor: str) -> int:
    series = db.query(
        'SELECT count("level_cm") FROM "water_level" WHERE "sensor" = $s', {"s": sensor}
    )
    return int(series[0]["values"][0][1]) if series else 0


def test_anonymous_clients_are_refused(broker: Service) -> None:
    """Without a user name the broker refuses the connection, for paho and mosquitto_pub alike."""
    conn = MqttConnection(MqttEndpoint("127.0.0.1", broker.port))
    with pytest.raises(BrokerError, match="did not accept"):
        conn.start(timeout_s=3)
    conn.stop()
    pub = subprocess.run(
        ["mosquitto_pub", "-p", str(broker.port), "-t", "x", "-m", "x", "-V", "mqttv5"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert pub.returncode != 0


def test_wrong_broker_password_is_refused(broker: Service) -> None:
    """A known user with a wrong password is refused like an anonymous one."""
    conn = MqttConnection(MqttEndpoint("127.0.0.1", broker.port, "ingest", "wrong"))
    with pytest.raises(BrokerError, match="did not accept"):
        conn.start(timeout_s=3)
    conn.stop()


def test_a_sensor_cannot_publish_another_sensors_reading(
    broker: Service, influx: InfluxClient, unique: str, ingest_env: dict[str, str], tmp_path: Path
) -> None:
    """qh-02 may publish its own reading, but the broker answers one on qh-01's topic with
    PUBACK 0x87 (not authorized), and nothing of it is stored."""
    ingest = IngestProcess(ingest_env, tmp_path)
    ingest.start()
    sensor = MqttConnection(broker.endpoint("qh-02"), "qh-02")  # a sensor is its own client id
    sensor.start()
    try:
        with pytest.raises(PublishDenied) as denied:
            sensor.publish_and_wait(f"{unique}/v1/sensors/qh-01/reading", READING)
        assert denied.value.reason_code == 0x87
        assert sensor.publish_and_wait(f"{unique}/v1/sensors/qh-02/reading", READING)
        wait_until(lambda: _count(influx, "qh-02") == 1, 20, "qh-02's own reading stored")
        time.sleep(0.5)
        assert _count(influx, "qh-01") == 0
    finally:
        sensor.stop()
        ingest.stop()


def test_ingest_cannot_publish_sensor_readings(
    broker: Service, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Ingest's user may publish alerts and dead letters, never a sensor's reading; the denied
    publish is also logged, for the publishers that do not wait for their PUBACK."""
    login = fresh_login(broker, "ingest")
    conn = MqttConnection(login, login.username or "")
    conn.start()
    try:
        with (
            caplog.at_level("WARNING", logger="floodwatch.mqtt"),
            pytest.raises(PublishDenied, match="0x87"),
        ):
            conn.publish_and_wait(f"{unique}/v1/sensors/qh-02/reading", READING)
        assert any("refused publish" in r.getMessage() for r in caplog.records)
        assert conn.publish_and_wait(f"{unique}/v1/deadletter", b"{}")
    finally:
        conn.stop()


def test_the_api_user_cannot_write_influxdb(influxd: Service, influx: InfluxClient) -> None:
    """The reader (the API's user) may query, and InfluxDB refuses its writes with 403."""
    reader = InfluxClient(parse_influx_url(influxd.url("reader")), influx.database)
    try:
        reader.query('SELECT * FROM "water_level"')
        with pytest.raises(InfluxAccessDenied) as refused:
            reader.write(["water_level,sensor=qh-02 level_cm=1 1795000000000000000"])
        assert refused.value.status == 403
    finally:
        reader.close()


def test_the_ingest_writer_cannot_read(influxd: Service, influx: InfluxClient) -> None:
    """The writer (ingest's user) may write, and InfluxDB refuses its queries with 403."""
    writer = InfluxClient(parse_influx_url(influxd.url("writer")), influx.database)
    try:
        writer.write(["water_level,sensor=qh-02 level_cm=1 1795000000000000000"])
        with pytest.raises(InfluxAccessDenied) as refused:
            writer.query('SELECT * FROM "water_level"')
        assert refused.value.status == 403
    finally:
        writer.close()


def test_ingest_restores_alerts_through_the_read_url(
    influxd: Service, unique: str, ingest_env: dict[str, str], tmp_path: Path
) -> None:
    """With --influx-read-url ingest restores its alert state at once (and tolerates the 403 of
    CREATE DATABASE); with only the write-only user, the restore is refused and says so."""
    grant(influxd, unique)
    ingest = IngestProcess(ingest_env, tmp_path)
    ingest.start()
    ingest.stop()
    log = ingest.log.read_text()
    assert "not creating database" in log
    assert "alerts wait for InfluxDB" not in log
    write_only = IngestProcess({**ingest_env, "FLOODWATCH_INFLUX_READ_URL": ""}, tmp_path)
    write_only.start()
    wait_until(lambda: "alerts wait for InfluxDB" in write_only.log.read_text(), 20, "refusal")
    write_only.stop()


def test_wrong_influxdb_password_stops_ingest_with_one_clear_sentence(
    influxd: Service, ingest_env: dict[str, str]
) -> None:
    """A wrong password is not an outage to wait out: ingest stops at start and names the fix."""
    bad = influxd.url("writer").replace(influxd.credentials.influx["writer"], "n0t-the-pa55")
    done = subprocess.run(
        [sys.executable, "-m", "ingest"],
        env={**ingest_env, "FLOODWATCH_INFLUX_URL": bad},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "refused the login (user 'writer'" in done.stderr
    assert "--influx-url" in done.stderr
    assert "n0t-the-pa55" not in done.stderr


def test_influxd_debug_profiles_are_off_and_its_open_counters_hold_no_secret(
    influxd: Service, influx: InfluxClient
) -> None:
    """/debug/pprof (goroutine stacks, heap, command line) is off in the configuration the
    project writes. /debug/vars and /debug/requests cannot be switched off in InfluxDB 1.x and
    answer without a password: they carry counters and names, never a password."""
    base = f"http://127.0.0.1:{influxd.port}"
    for path in ("/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/goroutine?debug=2"):
        assert httpx.get(base + path, timeout=10).status_code == 404, path
    influx.write(["water_level,sensor=qh-02 level_cm=1 1795000000000000000"])
    exposed = httpx.get(base + "/debug/vars", timeout=10).text
    exposed += httpx.get(base + "/debug/requests", params={"seconds": "1"}, timeout=10).text
    for password in influxd.credentials.influx.values():
        assert password not in exposed
