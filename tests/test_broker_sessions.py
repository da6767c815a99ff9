"""Client ids bound to logins at the broker (issue 12 §1): every login but `admin` may use one
client id only, so no login (a sensor's, the API's, the notifier's, another ingest instance's)
can take over or wipe ingest's persistent session; on the real mosquitto."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import orjson
import pytest

from api.app import create_app
from api.config import ApiOptions
from floodwatch.errors import LoginRefused
from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service
from floodwatch.mqtt import MqttConnection
from ingest.__main__ import main as ingest_main
from notify.__main__ import main as notify_main
from tests.conftest import (
    IngestProcess,
    admin_endpoint,
    fresh_login,
    own_login,
    process_env,
    wait_until,
)
from tests.test_api_support import (
    DEPTH_SENSOR,
    api_settings,
    bearer,
    live_server,
    publish,
    publisher,
    wait_for,
    write_keys,
)

BASE_MS = 1_795_000_000_000


def _refused(broker: Service, login: str, client_id: str) -> bool:
    """True if the broker answers the CONNECT "not authorized", False if it accepts it; with
    mosquitto_pub, which says which at once. Clean start, as a wiping attacker would."""
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
    sensor's id or a broker-assigned one it is refused."""
    assert not _refused(broker, "qh-02", "qh-02")
    for stolen in ("floodwatch-ingest", f"ingest-{unique}", "qh-01", ""):
        assert _refused(broker, "qh-02", stolen), f"qh-02 connected as {stolen!r}"


def test_each_service_login_is_bound_to_its_own_client_id(broker: Service, unique: str) -> None:
    """The API's and the notifier's logins (and an ingest instance's own login) cannot connect
    as `floodwatch-ingest`, nor the API's or ingest's as `floodwatch-notify`, nor under a
    broker-assigned id; each connects under the one id it is bound to. Only admin is free."""
    instance = fresh_login(broker, "ingest").username
    assert instance is not None
    own = {"api": "floodwatch-api", "notify": "floodwatch-notify", instance: instance}
    for login, client_id in own.items():
        for stolen in ("floodwatch-ingest", "floodwatch-notify", "floodwatch-api", ""):
            if stolen != client_id:
                assert _refused(broker, login, stolen), f"{login} connected as {stolen!r}"
        assert not _refused(broker, login, client_id), f"{login} refused its own id"
    assert _refused(broker, "ingest", "floodwatch-notify")
    assert _refused(broker, "ingest", instance)
    assert not _refused(broker, "admin", f"admin-tool-{unique}")
    # The refusal names the login and the client id, for whoever configured them.
    with pytest.raises(
        LoginRefused, match=r"'api': .* binds this login to client id 'floodwatch-ingest'"
    ):
        MqttConnection(broker.endpoint("api"), "floodwatch-ingest").start(timeout_s=5)


def test_no_other_login_can_take_over_or_wipe_ingests_session(
    broker: Service, influxd: Service, influx: InfluxClient, unique: str, tmp_path: Path
) -> None:
    """Ingest as shipped (login `ingest`, client id `floodwatch-ingest`): while it runs, the
    API's, the notifier's, a sensor's and another ingest instance's logins connecting under its
    id are refused and it keeps its connection; while it is down, clean starts under its id
    from each of them are refused, so every reading the broker queued for it is stored."""
    env = process_env(broker, influxd, unique, unique)
    assert env["FLOODWATCH_MQTT_URL"] == broker.url("ingest")
    client_id = "floodwatch-ingest"
    root = env["FLOODWATCH_TOPIC_ROOT"]
    other_instance = fresh_login(broker, "ingest").username
    assert other_instance is not None
    attackers = ("api", "notify", "qh-02", other_instance)
    ingest = IngestProcess(env, tmp_path)
    ingest.start()
    try:
        for login in attackers:
            assert _refused(broker, login, client_id), login
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
        for login in attackers:
            assert _refused(broker, login, client_id), login
        ingest.start()
        wait_until(lambda: _stored(influx) == 200, 30, "the 200 queued readings stored")
    finally:
        if ingest.running():
            ingest.stop()


def test_ingest_runs_under_its_own_login_beside_others(
    broker: Service, ingest_env: dict[str, str], influx: InfluxClient, tmp_path: Path
) -> None:
    """An ingest instance with a login of its own, bound to its client id (as every test's
    ingest), subscribes and stores what it is sent."""
    assert ingest_env["FLOODWATCH_CLIENT_ID"] in ingest_env["FLOODWATCH_MQTT_URL"]
    ingest = IngestProcess(ingest_env, tmp_path)
    ingest.start()
    try:
        with publisher(broker) as pub:
            root = ingest_env["FLOODWATCH_TOPIC_ROOT"]
            publish(pub, f"{root}/v1/sensors/qh-02/reading", {"ts": BASE_MS, "level_cm": 5.0})
        wait_until(lambda: _stored(influx) == 1, 30, "the reading stored")
    finally:
        ingest.stop()


def test_ingest_refuses_a_client_id_its_login_is_not_bound_to(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ingest says at start, in one sentence (exit 2), what the broker would refuse."""
    url = "mqtt://ingest:pw@127.0.0.1:1"
    argv = ["--mqtt-url", url, "--client-id", "ingest-2", "--outbox", "off"]
    assert ingest_main(argv) == 2
    err = capsys.readouterr().err
    assert "--client-id 'ingest-2' is not the client id the broker binds" in err
    assert "'floodwatch-ingest'" in err and len(err.strip().splitlines()) == 1
    assert notify_main(["--mqtt-url", "mqtt://notify:pw@127.0.0.1:1", "--client-id", "n2"]) == 2
    assert "binds the login 'notify' to ('floodwatch-notify')" in capsys.readouterr().err


def test_ingest_refuses_a_sensors_id_as_its_client_id(capsys: pytest.CaptureFixture[str]) -> None:
    """The one way left for a sensor to reach ingest's session: ingest named after it."""
    assert ingest_main(["--client-id", "qh-02", "--outbox", "off"]) == 2
    assert "--client-id 'qh-02' is a sensor's id" in capsys.readouterr().err


def test_the_api_feed_reconnects_after_its_connection_is_taken_over(
    broker: Service, influxd: Service, unique: str, tmp_path: Path
) -> None:
    """The API's connection is a clean session bound to its login's client id; only admin can
    take it over, and then the feed reconnects by itself and live readings flow again."""
    keys = write_keys(tmp_path / "keys")
    settings = api_settings(broker, influxd, unique)
    client_id = settings.mqtt.username
    assert client_id is not None
    app = create_app(settings, ApiOptions(api_keys=keys.path))
    with live_server(app) as url, publisher(broker) as pub, httpx.Client(timeout=10) as http:

        def level() -> object:
            response = http.get(f"{url}/v1/sensors/{DEPTH_SENSOR}", headers=bearer(keys.viewer))
            return response.json()["properties"]["level_cm"]

        topic = f"{unique}/v1/sensors/{DEPTH_SENSOR}/reading"
        publish(pub, topic, {"level_cm": 11.0})
        wait_for(lambda: level() == 11.0, what="the first reading")
        thief = MqttConnection(admin_endpoint(broker), client_id)
        thief.start()
        thief.stop()
        # What is published while it reconnects (paho waits a second) misses the live page
        # (ingest stores it all the same), so keep publishing until one arrives.
        sent = iter(range(12, 10_000))

        def arrived() -> bool:
            publish(pub, topic, {"level_cm": float(next(sent))})
            return level() != 11.0

        wait_for(arrived, 30, what="a reading after the takeover")


def test_a_tests_instances_get_logins_of_their_own(broker: Service, unique: str) -> None:
    """own_login gives a test's notifier (as its ingest) a login bound to its own name."""
    env: dict[str, str] = {}
    own_login(broker, env, "notify")
    login = env["FLOODWATCH_CLIENT_ID"]
    assert login.startswith("notify-") and f"//{login}:" in env["FLOODWATCH_MQTT_URL"]
    assert _refused(broker, login, "floodwatch-notify")
    assert _refused(broker, login, f"notify-{unique}")
    assert not _refused(broker, login, login)
    api = fresh_login(broker, "api").username
    assert api is not None and not _refused(broker, api, api)
