"""floodwatch/credentials.py: passwords made once and kept, hashed broker logins, sensor
logins for the simulators, and the settings that read them."""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path

import pytest

from floodwatch.credentials import Credentials, load_sensor_credentials
from floodwatch.errors import SettingsError
from floodwatch.settings import COMMON_OPTIONS, SENSOR_CREDENTIALS, add_options, settings_from_args
from ingest.__main__ import main as ingest_main


def test_credentials_are_made_once_and_new_sensors_get_theirs(tmp_path: Path) -> None:
    """A second start reuses every password; a sensor added to the registry gets a new one."""
    first = Credentials.load_or_generate(tmp_path, ["qh-01"])
    again = Credentials.load_or_generate(tmp_path, ["qh-01", "qh-02"])
    assert again.mqtt == first.mqtt and again.influx == first.influx
    assert again.sensors["qh-01"] == first.sensors["qh-01"]
    assert again.sensors["qh-02"] and again.sensors["qh-02"] != first.sensors["qh-01"]
    for name in ("credentials.json", "sensors.json", "dynamic-security.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name


def test_the_broker_files_hold_hashes_not_passwords(tmp_path: Path) -> None:
    """Every login is a client of the dynamic-security file, bound to its client id (admin
    alone unbound) and holding its own role; no password is written in clear."""
    creds = Credentials.generate(["qh-01"])
    creds.save(tmp_path)
    dynsec_text = Credentials.dynsec_file(tmp_path).read_text()
    doc = json.loads(dynsec_text)
    bindings = {c["username"]: c.get("clientid") for c in doc["clients"]}
    assert bindings == {
        "admin": None,
        "ingest": "floodwatch-ingest",
        "api": "floodwatch-api",
        "notify": "floodwatch-notify",
        "qh-01": "qh-01",
    }
    roles = {c["username"]: [r["rolename"] for r in c["roles"]] for c in doc["clients"]}
    assert roles["ingest"] == ["ingest"] and roles["qh-01"] == ["sensor-qh-01"]
    assert {r["rolename"] for r in doc["roles"]} == {
        "admin", "ingest", "api", "notify", "sensor-qh-01"
    }  # fmt: skip
    assert stat.S_IMODE(Credentials.dynsec_file(tmp_path).stat().st_mode) == 0o600
    for password in [*creds.mqtt.values(), *creds.sensors.values()]:
        assert password not in dynsec_text
    assert not (tmp_path / "mosquitto.passwd").exists()


def test_urls_carry_each_users_login(tmp_path: Path) -> None:
    creds = Credentials.generate([])
    assert creds.mqtt_url("api", "h", 1883) == f"mqtt://api:{creds.mqtt['api']}@h:1883"
    assert creds.influx_url("reader", "h", 8086).startswith("http://reader:")


def test_sensor_credentials_must_map_ids_to_passwords(tmp_path: Path) -> None:
    """A file that is not an object of strings stops the simulators with the flag named."""
    bad = tmp_path / "sensors.json"
    bad.write_text(json.dumps({"qh-01": 5}))
    with pytest.raises(SettingsError, match="--sensor-credentials"):
        load_sensor_credentials(bad)
    with pytest.raises(SettingsError, match="FLOODWATCH_SENSOR_CREDENTIALS"):
        load_sensor_credentials(tmp_path / "missing.json")


def test_each_simulated_sensor_logs_in_as_itself(tmp_path: Path) -> None:
    """With --sensor-credentials a sensor's endpoint is its id and password; others keep the
    --mqtt-url login."""
    logins = tmp_path / "sensors.json"
    logins.write_text(json.dumps({"qh-01": "pw1"}))
    parser = argparse.ArgumentParser()
    add_options(parser, (*COMMON_OPTIONS, SENSOR_CREDENTIALS), environ={})
    args = parser.parse_args(
        ["--mqtt-url", "mqtt://admin:x@h:1883", "--sensor-credentials", str(logins)]
    )
    settings = settings_from_args(args)
    own = settings.sensor_endpoint("qh-01")
    assert (own.username, own.password, own.host) == ("qh-01", "pw1", "h")
    assert settings.sensor_endpoint("qh-02") == settings.mqtt


def test_a_bad_influx_read_url_names_its_own_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """--influx-read-url is checked at start like --influx-url, and the message names it."""
    assert ingest_main(["--influx-read-url", "ftp://x"]) == 2
    err = capsys.readouterr().err
    assert "--influx-read-url" in err and "FLOODWATCH_INFLUX_READ_URL" in err
