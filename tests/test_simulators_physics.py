"""Tests for the scenario engine's physics: tide, rain, drains and streets, without any I/O."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from floodwatch.registry import SHIPPED_REGISTRY, load_registry
from simulators.physics import (
    ARGUMENTS,
    constituent_period_h,
    moon_phase_deg,
    pond_depths_cm,
    simulate_world,
    storm_mm_h,
    tide_stage_cm,
)
from simulators.scenario import (
    DEFAULT_CONSTITUENTS,
    Constituent,
    Storm,
    StormShape,
    StreetModel,
    Tide,
    find_scenario,
    load_scenario,
)
from simulators.sensors import report

HCMC = timezone(timedelta(hours=7))
HOUR = 3600.0
DAY = 86_400.0
# 2026-10-01T00:00:00+07:00
OCT_1 = datetime(2026, 10, 1, tzinfo=HCMC).timestamp()
SENSORS = tuple(load_registry(SHIPPED_REGISTRY).sensors.values())


def _street(**changes: float) -> StreetModel:
    values: dict[str, float] = {
        "ground_cm": 142.0,
        "outlet_cm": 60.0,
        "drain_mm_h": 22.0,
        "catchment": 15.0,
        "runoff": 0.85,
        "backflow": 0.8,
        "head_cm": 15.0,
        "sensor_spread_cm": 5.0,
        "rain_factor": 1.0,
    }
    values.update(changes)
    return StreetModel(name="Test street", **values)


def _hours_local(time_s: float) -> float:
    moment = datetime.fromtimestamp(time_s, UTC).astimezone(HCMC)
    return moment.hour + moment.minute / 60.0


def _highs(times: np.ndarray, stage: np.ndarray) -> np.ndarray:
    """Indices of the local maxima of a sampled tide."""
    inner = (stage[1:-1] > stage[:-2]) & (stage[1:-1] >= stage[2:])
    return np.flatnonzero(inner) + 1


# -- tide ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "period_h"),
    [("M2", 12.4206), ("S2", 12.0), ("N2", 12.6583), ("K2", 11.9672), ("K1", 23.9345),
     ("O1", 25.8193), ("P1", 24.0659), ("M4", 6.2103)],
)  # fmt: skip
def test_constituent_periods_are_the_astronomical_ones(name: str, period_h: float) -> None:
    """Each constituent's speed, from Doodson's arguments, gives its textbook period."""
    assert constituent_period_h(name) == pytest.approx(period_h, abs=2e-4)


@pytest.mark.parametrize("name", ["M2", "S2", "K1", "O1", "N2"])
def test_tide_spectrum_peaks_at_each_constituent(name: str) -> None:
    """An FFT of a year of the modelled tide peaks at the constituent's period and amplitude."""
    tide = Tide(mean_cm=0.0, constituents=DEFAULT_CONSTITUENTS)
    step = HOUR
    times = OCT_1 + step * np.arange(369 * 24, dtype=np.float64)
    stage = tide_stage_cm(tide, times)
    window = np.hanning(times.size)
    spectrum = np.abs(np.fft.rfft(stage * window)) * 2.0 / window.sum()
    frequency = np.fft.rfftfreq(times.size, d=step)
    expected = 1.0 / (constituent_period_h(name) * HOUR)
    nearest = int(np.argmin(np.abs(frequency - expected)))
    around = slice(nearest - 3, nearest + 4)
    peak = nearest - 3 + int(np.argmax(spectrum[around]))
    assert abs(peak - nearest) <= 1
    assert 1.0 / frequency[peak] / HOUR == pytest.approx(constituent_period_h(name), rel=3e-3)
    amplitude = {c.name: c.amplitude_cm for c in DEFAULT_CONSTITUENTS}[name]
    assert spectrum[peak] == pytest.approx(amplitude, rel=0.15)


def test_tide_is_mixed_mainly_semidiurnal_with_a_range_of_metres() -> None:
    """Form factor (K1+O1)/(M2+S2) between 0.25 and 1.5; daily ranges of 2 to 4.5 m."""
    amplitude = {c.name: c.amplitude_cm for c in DEFAULT_CONSTITUENTS}
    form = (amplitude["K1"] + amplitude["O1"]) / (amplitude["M2"] + amplitude["S2"])
    assert 0.25 < form < 1.5
    tide = Tide(mean_cm=0.0, constituents=DEFAULT_CONSTITUENTS)
    times = OCT_1 + 600.0 * np.arange(int(60 * DAY / 600.0), dtype=np.float64)
    stage = tide_stage_cm(tide, times).reshape(60, -1)
    daily_range = stage.max(axis=1) - stage.min(axis=1)
    assert daily_range.min() > 150.0
    assert 250.0 < daily_range.max() < 450.0


def test_spring_tides_follow_new_and_full_moon() -> None:
    """Daily high water is higher 1-3 days after new or full moon than near the quarters."""
    tide = Tide(mean_cm=0.0, constituents=DEFAULT_CONSTITUENTS)
    times = OCT_1 + 600.0 * np.arange(int(120 * DAY / 600.0), dtype=np.float64)
    stage = tide_stage_cm(tide, times).reshape(120, -1)
    noon = OCT_1 + DAY * np.arange(120, dtype=np.float64) + 12 * HOUR
    phase = moon_phase_deg(noon)
    # Days since the last new or full moon, from the elongation (12.19 degrees a day).
    age = np.mod(phase, 180.0) / 12.19
    spring = stage.max(axis=1)[(age >= 1.0) & (age <= 3.0)]
    neap = stage.max(axis=1)[(age >= 6.5) & (age <= 8.5)]
    assert spring.mean() > neap.mean() + 40.0


def test_moon_phase_matches_known_new_and_full_moons() -> None:
    """The mean elongation puts the new moon of 10 Oct 2026 and the full moon of 26 Oct near
    0 and 180 degrees (the mean moon is within half a day of the true one)."""
    new = datetime(2026, 10, 10, 22, 50, tzinfo=UTC).timestamp()
    full = datetime(2026, 10, 26, 4, 12, tzinfo=UTC).timestamp()
    phases = moon_phase_deg(np.array([new, full]))
    assert min(phases[0], 360.0 - phases[0]) < 8.0
    assert abs(phases[1] - 180.0) < 8.0


def test_flood_season_highs_come_early_morning_and_early_evening() -> None:
    """In October-November 2026 most highs reaching alarm I (1.40 m) fall at 04-09 or 15-20."""
    tide = Tide(mean_cm=15.0, constituents=DEFAULT_CONSTITUENTS)
    times = OCT_1 + 300.0 * np.arange(int(61 * DAY / 300.0), dtype=np.float64)
    stage = tide_stage_cm(tide, times)
    highs = [k for k in _highs(times, stage) if stage[k] >= 140.0]
    hours = np.array([_hours_local(times[k]) for k in highs])
    early = ((hours >= 4.0) & (hours < 9.0)) | ((hours >= 15.0) & (hours < 20.0))
    assert len(highs) >= 20
    assert early.mean() >= 0.8


def test_king_tide_scenario_passes_alarm_levels_in_the_morning() -> None:
    """The king-tide morning peaks above alarm II (1.50 m) between 05:00 and 08:00."""
    scenario = load_scenario(find_scenario("king-tide-morning"))
    world = simulate_world(scenario, scenario.seed)
    peak = int(np.argmax(world.stage_cm))
    assert 150.0 <= world.stage_cm[peak] <= 175.0
    assert 5.0 <= _hours_local(world.times_s[peak]) <= 8.0


@given(
    amplitudes=st.lists(st.floats(0.0, 100.0), min_size=len(ARGUMENTS), max_size=len(ARGUMENTS)),
    phases=st.lists(st.floats(0.0, 360.0), min_size=len(ARGUMENTS), max_size=len(ARGUMENTS)),
)
@settings(max_examples=25, deadline=None)
def test_tide_never_exceeds_the_sum_of_its_amplitudes(
    amplitudes: list[float], phases: list[float]
) -> None:
    """However the constituents are set, the stage stays within mean +- their total amplitude."""
    tide = Tide(
        mean_cm=10.0,
        constituents=tuple(
            Constituent(name, a, p)
            for name, a, p in zip(ARGUMENTS, amplitudes, phases, strict=True)
        ),
    )
    stage = tide_stage_cm(tide, OCT_1 + 900.0 * np.arange(2000, dtype=np.float64))
    assert np.all(np.abs(stage - 10.0) <= sum(amplitudes) + 1e-6)


# -- rain ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "mean_fraction"), [("block", 1.0), ("bell", 0.5), ("burst", 0.5)]
)
def test_storm_shapes_peak_at_the_stated_intensity(shape: StormShape, mean_fraction: float) -> None:
    """A storm is zero outside its span, reaches its peak, and averages the shape's fraction."""
    storm = Storm(OCT_1 + HOUR, 3600.0, 90.0, shape)
    times = OCT_1 + 10.0 * np.arange(int(3 * HOUR / 10.0), dtype=np.float64)
    rain = storm_mm_h(storm, times)
    inside = (times >= storm.start_s) & (times < storm.start_s + storm.duration_s)
    assert np.all(rain[~inside] == 0.0)
    assert rain.max() == pytest.approx(90.0, rel=0.01)
    assert rain[inside].mean() == pytest.approx(90.0 * mean_fraction, rel=0.02)


# -- streets -------------------------------------------------------------------------------


def _run_street(street: StreetModel, rain_mm_h: float, stage_cm: float, hours: float) -> np.ndarray:
    steps = int(hours * HOUR / 30.0)
    rain = np.full(steps, rain_mm_h)
    stage = np.full(steps, stage_cm)
    return pond_depths_cm([street], rain, stage, 30.0)[:, 0]


def test_rain_the_drains_carry_never_ponds() -> None:
    """Rain below the drains' capacity (with the river low) leaves the street dry."""
    street = _street(drain_mm_h=30.0, runoff=1.0)
    assert _run_street(street, 29.0, -100.0, 3.0).max() == 0.0


def test_rain_beyond_the_drains_ponds_at_the_excess_rate() -> None:
    """Rain beyond capacity ponds at (runoff * rain - capacity) * catchment, in cm per hour."""
    street = _street(drain_mm_h=30.0, runoff=1.0, catchment=10.0)
    depth = _run_street(street, 50.0, -100.0, 1.0)
    assert depth[-1] == pytest.approx((50.0 - 30.0) * 10.0 / 10.0, rel=0.02)


def test_high_river_backs_up_into_the_street_to_its_level() -> None:
    """With the river 18 cm above the road and no tide gate, the street fills to about 18 cm."""
    depth = _run_street(_street(backflow=1.0), 0.0, 160.0, 6.0)
    assert depth[-1] == pytest.approx(18.0, abs=0.5)
    assert np.all(np.diff(depth) >= 0.0)


def test_tide_gates_keep_the_river_out() -> None:
    """With backflow 0 (working tide gates) a high river leaves a dry street dry."""
    assert _run_street(_street(backflow=0.0), 0.0, 170.0, 6.0).max() == 0.0


def test_a_river_above_the_outlets_slows_drainage() -> None:
    """A pond drains more slowly when the river stands just under the road than when it is low."""
    street = _street()
    steps = int(3 * HOUR / 30.0)
    rain = np.zeros(steps)
    rain[:120] = 40.0  # an hour of rain the drains cannot carry, then none
    low = pond_depths_cm([street], rain, np.full(steps, -50.0), 30.0)[:, 0]
    high = pond_depths_cm([street], rain, np.full(steps, 138.0), 30.0)[:, 0]
    half_an_hour_later = 180
    assert high[half_an_hour_later] > low[half_an_hour_later] + 3.0
    assert low[-1] == high[-1] == 0.0


@given(
    rain=st.lists(st.floats(0.0, 300.0), min_size=2, max_size=200),
    stage=st.floats(-300.0, 300.0),
    ground=st.floats(100.0, 200.0),
    drain=st.floats(0.0, 200.0),
    catchment=st.floats(1.0, 100.0),
    backflow=st.floats(0.0, 1.0),
    head=st.floats(1.0, 100.0),
)
@settings(max_examples=60, deadline=None)
def test_depth_is_never_negative(
    rain: list[float],
    stage: float,
    ground: float,
    drain: float,
    catchment: float,
    backflow: float,
    head: float,
) -> None:
    """Whatever the rain, river and street, the modelled depth is finite and never below 0."""
    street = _street(
        ground_cm=ground, drain_mm_h=drain, catchment=catchment, backflow=backflow, head_cm=head
    )
    rain_array = np.array(rain)
    depth = pond_depths_cm([street], rain_array, np.full(rain_array.size, stage), 60.0)
    assert np.all(np.isfinite(depth))
    assert depth.min() >= 0.0
    if stage <= ground and not any(rain):
        assert depth.max() == 0.0


def test_streets_drain_after_the_october_storm() -> None:
    """Every street floods in the storm and is dry again within four hours of its peak."""
    scenario = load_scenario(find_scenario("october-storm"))
    world = simulate_world(scenario, scenario.seed)
    for column, name in enumerate(world.streets):
        depth = world.depth_cm[:, column]
        peak = int(np.argmax(depth))
        assert depth[peak] > 10.0, name
        dry = peak + int(np.argmax(depth[peak:] < 0.5))
        assert depth[dry] < 0.5, name
        assert world.times_s[dry] - world.times_s[peak] < 4 * HOUR, name
        assert depth[-1] == 0.0, name


def test_low_streets_flood_deeper_and_longer_than_duong_12() -> None:
    """Quoc Huong and Nguyen Van Huong flood deeper and stay flooded longer than Duong 12."""
    scenario = load_scenario(find_scenario("october-storm"))
    world = simulate_world(scenario, scenario.seed)
    columns = {name: k for k, name in enumerate(world.streets)}
    peak = {name: world.depth_cm[:, k].max() for name, k in columns.items()}
    flooded = {name: np.count_nonzero(world.depth_cm[:, k] >= 10.0) for name, k in columns.items()}
    for low in ("Quoc Huong", "Nguyen Van Huong"):
        assert peak[low] > peak["Duong 12"] + 15.0
        assert flooded[low] > 1.5 * flooded["Duong 12"]


def test_quoc_huong_is_half_a_metre_deep_after_half_an_hour_of_heavy_rain() -> None:
    """As reported in the press: 30 minutes after heavy rain (> 50 mm/h) begins, ~0.5 m."""
    scenario = load_scenario(find_scenario("october-storm"))
    world = simulate_world(scenario, scenario.seed)
    heavy = int(np.argmax(world.rain_mm_h > 50.0))
    later = int(np.searchsorted(world.times_s, world.times_s[heavy] + 30 * 60.0))
    depth = world.depth_cm[later, world.streets.index("Quoc Huong")]
    assert 40.0 <= depth <= 65.0


# -- determinism ---------------------------------------------------------------------------


def test_same_seed_gives_identical_output() -> None:
    """Two runs with one seed give identical worlds and identical readings, bit for bit."""
    scenario = load_scenario(find_scenario("sensor-fails-mid-storm"))
    first = simulate_world(scenario, 7)
    second = simulate_world(scenario, 7)
    for name in ("times_s", "stage_cm", "rain_mm_h", "depth_cm"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    one, events_one = report(scenario, first, SENSORS, 7)
    two, events_two = report(scenario, second, SENSORS, 7)
    assert events_one == events_two
    for name in ("time_s", "skew_s", "level_cm", "distance_mm", "battery_v", "rssi", "seq",
                 "artefact", "sent_s", "backfill"):  # fmt: skip
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name), err_msg=name)


def test_another_seed_gives_other_noise_but_the_same_tide() -> None:
    """A different seed changes rain gusts and sensor noise; the tide is astronomy, not chance."""
    scenario = load_scenario(find_scenario("october-storm"))
    first, second = simulate_world(scenario, 1), simulate_world(scenario, 2)
    np.testing.assert_array_equal(first.stage_cm, second.stage_cm)
    assert not np.array_equal(first.rain_mm_h, second.rain_mm_h)
    one, _ = report(scenario, first, SENSORS, 1)
    two, _ = report(scenario, second, SENSORS, 2)
    assert not np.array_equal(one.time_s, two.time_s)


def test_world_time_grid_covers_the_scenario() -> None:
    """The model's grid starts at the scenario's start and ends at its end, step by step."""
    scenario = load_scenario(find_scenario("demo"))
    world = simulate_world(scenario, 1)
    assert world.times_s[0] == scenario.start_s
    assert world.times_s[-1] == scenario.end_s
    assert np.allclose(np.diff(world.times_s), scenario.step_s)
    assert math.isclose(scenario.duration_s, 4 * HOUR)
