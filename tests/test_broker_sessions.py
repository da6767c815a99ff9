"""Client ids bound to logins at the broker (issue 12 §1): a sensor login can only be itself,
so it can neither take over nor wipe ingest's persistent session; on the real mosquitto."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import orjson
import pytest

from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service
from floodwatch.mqtt import MqttConnection
from ingest.__main__ import main as ingest_main
from tests.conftest import IngestProcess, admin_endpoint, wait_until

BASE_MS = 1_795_000_000_000


def _refused(broker: Service, login: str, client_id: str) -> bool:
    """True if the broker answers the CONNECT "not authorized", False if it lets it publish;
    with mosquitto_pub, which says which at once."""
    endpoint = broker.endpoint(login)
    assert endpoint.password is not None
    argv = ["mosquitto_pub", "-p", str(broker.port), "-u", login, "-P", endpoint.password]
    argv += ["-V", "mqttv5", "-q", "1", "-t", f"x/v1/sensors/{login}/status", "-m", "online"]
    if client_id:
        argv += ["-i", client_id]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode == 0:
        return False
    assert "Not authorized" in done.stderr, done.stderr
    return True


def _stored(db: InfluxClient) -> int:
    series = db.query('SELECT count("level_cm") FROM "water_level"')
    return int(series[0]["values"][0][1]) if series else 0


def test_a_sensor_login_can_only_use_its_own_client_id(broker: Service, unique: str) -> None:
    """qh-02 connects as `qh-02`; with ingest's default id, a test ingest's id, another
    sensor's id or a broker-assigned one (what the API's connections get) it is refused."""
    assert not _refused(broker, "qh-02", "qh-02")
    for stolen in ("floodwatch-ingest", f"ingest-{unique}", "qh-01", ""):
        assert _refused(broker, "qh-02", stolen), f"qh-02 connected as {stolen!r}"


def test_a_sensor_cannot_wipe_or_take_over_ingests_session(
    broker: Service, influx: InfluxClient, ingest_env: dict[str, str], tmp_path: Path
) -> None:
    """While ingest runs, a sensor connecting under ingest's client id does not knock it off;
    while ingest is down, a clean-start connection under its id does not wipe the readings the
    broker queued for it: every one is stored once ingest is back."""
    client_id = ingest_env["FLOODWATCH_CLIENT_ID"]
    root = ingest_env["FLOODWATCH_TOPIC_ROOT"]
    ingest = IngestProcess(ingest_env, tmp_path)
    ingest.start()
    try:
        assert _refused(broker, "qh-02", client_id)
        assert ingest.running()
        assert b"connection to" not in ingest.log.read_bytes()  # never lost its connection
        ingest.stop()
        admin = MqttConnection(admin_endpoint(broker))
        admin.start()
        try:
            for i in range(200):
                reading = orjson.dumps({"ts": BASE_MS + i * 1000, "level_cm": 10.0})
                admin.publish(f"{root}/v1/sensors/qh-02/reading", reading)
            wait_until(lambda: admin.pending_publishes() == 0, 20, "the broker to queue 200")
        finally:
            admin.stop()
        # A clean start under ingest's id would discard the session and its queue.
        assert _refused(broker, "qh-02", client_id)
        ingest.start()
        wait_until(lambda: _stored(influx) == 200, 30, "the 200 queued readings stored")
    finally:
        if ingest.running():
            ingest.stop()


@pytest.mark.parametrize("login", ["ingest", "api", "admin"])
def test_service_logins_are_not_sensors(broker: Service, login: str) -> None:
    """Service logins keep choosing their client ids (several ingest instances, the API's
    connections, tools); what they may do stays bounded by the ACL."""
    conn = MqttConnection(broker.endpoint(login), f"{login}-tool-{uuid.uuid4().hex[:6]}")
    conn.start()
    conn.stop()


def test_ingest_refuses_a_sensors_id_as_its_client_id(capsys: pytest.CaptureFixture[str]) -> None:
    """The one way left for a sensor to reach ingest's session: ingest named after it."""
    assert ingest_main(["--client-id", "qh-02", "--outbox", "off"]) == 2
    assert "--client-id 'qh-02' is a sensor's id" in capsys.readouterr().err
