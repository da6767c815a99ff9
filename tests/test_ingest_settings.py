"""Ingest's own options: checked once at start into one frozen value."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from floodwatch.errors import SettingsError
from ingest.__main__ import build_parser, ingest_settings


def test_defaults_resolve_into_a_frozen_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "/var/lib/fw-state")
    config = ingest_settings(build_parser().parse_args(["--client-id", "ingest a/1"]))
    assert config.max_batch == 5000 and config.session_expiry_s == 604800
    assert config.shutdown_timeout_s == 10.0 and config.outbox_after_s == 10.0
    assert config.outbox_max_bytes == 1024 * 2**20
    assert config.outbox == Path("/var/lib/fw-state/floodwatch/outbox-ingest_a_1.sqlite")
    assert config.influx_read == config.shared.influx  # no read URL: the write URL
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_batch = 1  # type: ignore[misc]


def test_flags_and_variables_are_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOODWATCH_SHUTDOWN_TIMEOUT", "2.5")
    args = build_parser().parse_args(
        ["--outbox", "off", "--influx-read-url", "http://reader:pw@127.0.0.1:8087"]
    )
    config = ingest_settings(args)
    assert config.outbox is None and config.shutdown_timeout_s == 2.5
    assert config.influx_read.base_url == "http://127.0.0.1:8087"
    assert config.influx_read.username == "reader"


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-batch", "0"),
        ("--shutdown-timeout", "-1"),
        ("--metrics-port", "70000"),
        ("--outbox-after", "soon"),
        ("--client-id", ""),
    ],
)
def test_a_bad_option_names_itself_and_its_variable(flag: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        ingest_settings(build_parser().parse_args([flag, value]))
    assert flag in str(caught.value)
