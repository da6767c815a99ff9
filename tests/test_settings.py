"""Settings: URLs with credentials, defaults from FLOODWATCH_* variables, one-sentence errors."""

from __future__ import annotations

import argparse

import pytest

from floodwatch.errors import SettingsError
from floodwatch.settings import (
    InfluxEndpoint,
    MqttEndpoint,
    add_options,
    command_parser,
    option,
    parse_influx_url,
    parse_mqtt_url,
    settings_from_args,
    whole_number,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1883", MqttEndpoint("127.0.0.1", 1883)),
        ("mqtt://broker", MqttEndpoint("broker", 1883)),
        ("mqtts://broker", MqttEndpoint("broker", 8883, tls=True)),
        ("mqtt://ingest:s%40cret@broker:1884", MqttEndpoint("broker", 1884, "ingest", "s@cret")),
    ],
)
def test_mqtt_urls(url: str, expected: MqttEndpoint) -> None:
    """Broker URLs give host, port, TLS and URL-decoded credentials."""
    assert parse_mqtt_url(url) == expected


def test_endpoints_never_print_passwords() -> None:
    """A password in a URL does not reach logs through the endpoint's text."""
    assert "s3cret" not in str(parse_mqtt_url("mqtt://u:s3cret@h:1"))
    assert "s3cret" not in str(parse_influx_url("http://u:s3cret@h:8086"))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8086", InfluxEndpoint("http://127.0.0.1:8086")),
        ("https://db.example/influx/", InfluxEndpoint("https://db.example/influx")),
        ("http://reader:pw@db:8086", InfluxEndpoint("http://db:8086", "reader", "pw")),
    ],
)
def test_influx_urls(url: str, expected: InfluxEndpoint) -> None:
    """InfluxDB URLs keep scheme, host, port and path, and lift credentials out."""
    assert parse_influx_url(url) == expected


@pytest.mark.parametrize(
    ("flag", "value", "hint"),
    [
        ("--mqtt-url", "http://broker", "FLOODWATCH_MQTT_URL"),
        ("--mqtt-url", "mqtt://broker:99999", "invalid port"),
        ("--mqtt-url", "mqtt://", "names no host"),
        ("--influx-url", "broker:8086", "FLOODWATCH_INFLUX_URL"),
        ("--influx-db", 'a"b', "FLOODWATCH_INFLUX_DB"),
        ("--topic-root", "flood/#", "FLOODWATCH_TOPIC_ROOT"),
        ("--topic-root", "/flood", "FLOODWATCH_TOPIC_ROOT"),
        ("--log-level", "LOUD", "FLOODWATCH_LOG_LEVEL"),
        ("--registry", "/no/such/file.geojson", "FLOODWATCH_REGISTRY"),
    ],
)
def test_bad_settings_name_the_flag_and_variable(flag: str, value: str, hint: str) -> None:
    """Each wrong setting is one sentence naming what to fix."""
    args = command_parser("test", "", ()).parse_args([flag, value])
    with pytest.raises(SettingsError) as info:
        settings_from_args(args)
    message = str(info.value)
    assert hint in message and "\n" not in message


def test_defaults_come_from_the_environment() -> None:
    """A FLOODWATCH_* variable sets an option's default, and a flag overrides it."""
    parser = argparse.ArgumentParser()
    add_options(parser, (option("--max-batch", "5000", "batch"),), {"FLOODWATCH_MAX_BATCH": "42"})
    assert parser.parse_args([]).max_batch == "42"
    assert parser.parse_args(["--max-batch", "7"]).max_batch == "7"
    assert "FLOODWATCH_MAX_BATCH" in parser.format_help()


def test_whole_number_bounds() -> None:
    """Whole-number options are checked against their bounds with the variable named."""
    assert whole_number("8000", "--port", 1, 65535) == 8000
    with pytest.raises(SettingsError, match="FLOODWATCH_PORT"):
        whole_number("0", "--port", 1, 65535)
    with pytest.raises(SettingsError, match="from 1 to 65535"):
        whole_number("x", "--port", 1, 65535)
