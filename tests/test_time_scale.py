"""The demo time scale (issue 10 §6): one setting, --time-scale / FLOODWATCH_TIME_SCALE, read by
ingest and the API, that runs every alert timer as fast as the simulated street; 1 keeps the
contract's values and says so."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

import pytest

from api.__main__ import build_parser as api_parser
from api.live import LiveState
from floodwatch.contract import Reading
from floodwatch.errors import SettingsError
from floodwatch.registry import SHIPPED_REGISTRY, load_registry
from floodwatch.settings import settings_from_args, time_scale_notice
from floodwatch.stack import build_parser as stack_parser
from ingest.__main__ import build_parser as ingest_parser

REGISTRY = load_registry(SHIPPED_REGISTRY)
NOW = 1_795_000_000 * 10**9
S = 10**9


@pytest.mark.parametrize("parser", [ingest_parser, api_parser], ids=["ingest", "api"])
def test_ingest_and_the_api_read_one_time_scale_setting(
    parser: Callable[[], argparse.ArgumentParser], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Default 1; the flag or FLOODWATCH_TIME_SCALE sets it; 0 or a word is refused with the
    flag and its variable named."""
    build = parser
    assert settings_from_args(build().parse_args([])).time_scale == 1.0
    assert settings_from_args(build().parse_args(["--time-scale", "60"])).time_scale == 60.0
    monkeypatch.setenv("FLOODWATCH_TIME_SCALE", "120")
    assert settings_from_args(build().parse_args([])).time_scale == 120.0
    for bad in ("0", "-3", "fast"):
        with pytest.raises(SettingsError, match=r"--time-scale.*FLOODWATCH_TIME_SCALE"):
            settings_from_args(build().parse_args(["--time-scale", bad]))


def test_the_start_line_says_contract_values_or_a_demo_warning() -> None:
    level, text = time_scale_notice(1.0)
    assert level == logging.INFO and "contract's values" in text
    level, text = time_scale_notice(60.0)
    assert level == logging.WARNING
    assert text.startswith("DEMO time scale 60") and "10 min hold = 10 s" in text


def test_the_stack_passes_the_simulators_speed() -> None:
    """scripts/stack's --speed (60 by default) is the time scale its ingest and API get."""
    assert stack_parser().parse_args([]).speed == "60"


def test_the_api_judges_stale_by_arrival_at_the_same_speed() -> None:
    """At time scale 60 a 60 s sensor is stale 3 s after it was last heard, not 180 s."""
    fast, real = LiveState(REGISTRY, 60.0), LiveState(REGISTRY)
    for state in (fast, real):
        state.apply_reading(Reading("qh-02", NOW, 5.0), heard_ns=NOW)
    sensor_fast, sensor_real = fast.get("qh-02"), real.get("qh-02")
    assert sensor_fast is not None and sensor_real is not None
    interval_s = REGISTRY.sensors["qh-02"].interval_s
    assert not sensor_fast.stale(NOW + round(3 * interval_s / 60 * S) - 1)
    assert sensor_fast.stale(NOW + round(3 * interval_s / 60 * S) + S // 100)
    assert not sensor_real.stale(NOW + round(3 * interval_s * S) - 1)
