"""Tests for scenarios without a broker: files, sensor faults, messages, ground truth, replay
files, the progress bar and the offline commands (list, truth, plot)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from floodwatch.registry import SHIPPED_REGISTRY, Sensor, load_registry
from simulators.load import LoadPlan, _payload, auto_processes, load_registry_geojson
from simulators.messages import TimeMap, build_messages, iso_times, time_map
from simulators.physics import World, simulate_world
from simulators.progress import Progress, render
from simulators.replay import RecordingError, parse_recording, recording_csv, replay_messages
from simulators.scenario import (
    Scenario,
    ScenarioError,
    check_against_registry,
    find_scenario,
    load_scenario,
    parse_offset,
    parse_scenario,
    shipped_scenarios,
)
from simulators.sensors import (
    CLOCK_SKEW,
    SPIKE,
    STUCK,
    VEHICLE,
    Reports,
    StatusEvent,
    report,
)
from simulators.truth import episodes, ground_truth
from tests.conftest import ROOT

REGISTRY = load_registry(SHIPPED_REGISTRY)
SENSORS: tuple[Sensor, ...] = tuple(REGISTRY.sensors.values())
SCENARIOS = ROOT / "scenarios"
SHIPPED = [path.stem for path in shipped_scenarios(SCENARIOS)]
HOUR = 3600.0

STREETS = """
[streets."Duong 12"]
ground_cm = 158
outlet_cm = 80
drain_mm_h = 40
catchment = 9
[streets."Quoc Huong"]
ground_cm = 142
outlet_cm = 60
drain_mm_h = 22
catchment = 15
[streets."Nguyen Van Huong"]
ground_cm = 146
outlet_cm = 60
drain_mm_h = 25
catchment = 13
"""


def _scenario(body: str = "", duration: str = "6h", seed: int = 3) -> Scenario:
    text = f"""
title = "test"
start = 2026-10-09T14:00:00+07:00
duration = "{duration}"
seed = {seed}
[tide]
mean_cm = 15
[[storm]]
start = "2h"
duration = "80m"
peak_mm_h = 90
shape = "burst"
{STREETS}
{body}
"""
    scenario = parse_scenario(text, name="test")
    check_against_registry(scenario, REGISTRY)
    return scenario


def _run(scenario: Scenario) -> tuple[World, Reports, tuple[StatusEvent, ...]]:
    world = simulate_world(scenario, scenario.seed)
    reports, events = report(scenario, world, SENSORS, scenario.seed)
    return world, reports, events


def _rows(reports: Reports, sensor_id: str) -> np.ndarray:
    return np.flatnonzero(reports.of([s.id for s in SENSORS].index(sensor_id)))


# -- scenario files ------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenarios_load_and_fit_the_registry(name: str) -> None:
    """Every shipped scenario parses, models every street of the registry and lies in the past."""
    scenario = load_scenario(SCENARIOS / f"{name}.toml")
    check_against_registry(scenario, REGISTRY)
    assert scenario.description
    assert scenario.end_s < 1_795_600_000  # before 25 Nov 2026: always in the past


def test_the_issue_scenarios_are_shipped() -> None:
    """The calm day, king tide, storm, failing sensor, outage and demo scenarios all ship."""
    assert set(SHIPPED) >= {
        "calm-day",
        "king-tide-morning",
        "october-storm",
        "sensor-fails-mid-storm",
        "outage-backfill",
        "demo",
    }


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_truth_files_are_up_to_date(name: str) -> None:
    """Each scenario's NAME.truth.json equals what `truth` computes now (regenerate with
    `python -m simulators truth NAME -o scenarios/NAME.truth.json`)."""
    scenario = load_scenario(SCENARIOS / f"{name}.toml")
    world, reports, _ = _run(scenario)
    timemap = TimeMap(scenario.start_s, scenario.start_s)
    fresh = ground_truth(scenario, scenario.seed, world, reports, timemap)
    shipped = json.loads((SCENARIOS / f"{name}.truth.json").read_text())
    assert orjson.loads(orjson.dumps(fresh)) == shipped


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90m", 5400.0),
        ("1d2h", 93_600.0),
        ("6h30m", 23_400.0),
        ("45s", 45.0),
        ("1.5h", 5400.0),
        ("0m", 0.0),
    ],
)
def test_offsets_are_read_in_days_hours_minutes_seconds(text: str, expected: float) -> None:
    """Offsets and durations are written like 90m, 1d2h or 6h30m."""
    assert parse_offset(text) == expected


@pytest.mark.parametrize("text", ["", "90", "m", "1h 30m", "2w", "-5m"])
def test_malformed_offsets_are_refused(text: str) -> None:
    """Anything else is not an offset."""
    with pytest.raises(ValueError):
        parse_offset(text)


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ("start = 2026-10-09T14:00:00\n", "start"),
        ('duration = "soon"\n', "duration"),
        ("colour = 3\n", "colour"),
        ('[[storm]]\nstart = "1h"\nduration = "1h"\npeak_mm_h = 90\nshape = "square"\n', "shape"),
        ('[[storm]]\nstart = "1h"\nduration = "1h"\npeak_mm_h = -5\n', "peak_mm_h"),
        ('[[fault]]\nsensor = "qh-01"\nkind = "stuk"\nstart = "1h"\n', "kind"),
        ('[[fault]]\nsensor = "qh-01"\nkind = "spike"\nstart = "1h"\nend = "2h"\n', "end"),
        ('[[fault]]\nsensor = "qh-01"\nkind = "stuck"\nstart = "2h"\nend = "1h"\n', "before"),
        ("[tide.constituents]\nZ9 = [1, 2]\n", "Z9"),
        ('[streets."Quoc Huong"]\nground_cm = 100\noutlet_cm = 120\ndrain_mm_h = 1\n', "outlet"),
    ],
)
def test_scenario_mistakes_name_the_entry(change: str, names: str) -> None:
    """A wrong entry raises ScenarioError naming it, in one sentence with the file."""
    lines = ['title = "t"', "start = 2026-10-09T14:00:00+07:00", 'duration = "6h"']
    replaced = change.split(" =")[0]
    text = "\n".join(line for line in lines if not line.startswith(replaced)) + "\n" + change
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, name="bad", source="bad.toml")
    message = str(caught.value)
    assert message.startswith("bad.toml: ")
    assert names in message
    assert "\n" not in message


def test_scenario_must_model_every_street_and_name_known_sensors() -> None:
    """A registry street without a model, or a fault on an unknown sensor, is refused."""
    scenario = parse_scenario(
        'title = "t"\nstart = 2026-10-09T14:00:00+07:00\nduration = "1h"\n', name="t"
    )
    with pytest.raises(ScenarioError, match="Duong 12"):
        check_against_registry(scenario, REGISTRY)
    with pytest.raises(ScenarioError, match="nowhere"):
        _scenario('[[fault]]\nsensor = "nowhere"\nkind = "stuck"\nstart = "1h"\n')
    with pytest.raises(ScenarioError, match="distance"):
        _scenario('[[fault]]\nsensor = "qh-02"\nkind = "vehicle"\nstart = "1h"\n')


def test_unknown_scenario_name_lists_the_known_ones() -> None:
    """Asking for a scenario that does not exist names the ones that do."""
    with pytest.raises(ScenarioError, match="october-storm"):
        find_scenario("no-such-scenario", SCENARIOS)


# -- sensors and their faults --------------------------------------------------------------


def test_readings_follow_each_sensors_interval() -> None:
    """Each sensor reads at its registry interval from a phase within the first interval."""
    scenario = _scenario()
    _, reports, _ = _run(scenario)
    for index, sensor in enumerate(SENSORS):
        times = reports.time_s[reports.of(index)]
        assert np.allclose(np.diff(times), sensor.interval_s, atol=1e-3)
        assert scenario.start_s <= times[0] < scenario.start_s + sensor.interval_s
        assert times[-1] < scenario.end_s
        assert list(reports.seq[reports.of(index)]) == list(range(1, times.size + 1))


def test_a_sensor_alone_reads_as_it_does_among_all() -> None:
    """Simulating one sensor gives it exactly the readings it has in the whole registry."""
    scenario = _scenario('[[fault]]\nsensor = "qh-03"\nkind = "stuck"\nstart = "3h"\n')
    world = simulate_world(scenario, 5)
    alone, _ = report(scenario, world, (REGISTRY.sensors["qh-03"],), 5)
    everyone, _ = report(scenario, world, SENSORS, 5)
    rows = _rows(everyone, "qh-03")
    for name in ("time_s", "distance_mm", "battery_v", "rssi", "seq", "artefact", "sent_s"):
        np.testing.assert_array_equal(getattr(alone, name), getattr(everyone, name)[rows])


@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=10, deadline=None)
def test_any_seed_gives_readings_ingest_accepts(seed: int) -> None:
    """For any seed, depths stay in ingest's physical ranges and depth sensors never go below 0."""
    scenario = _scenario(duration="3h")
    world = simulate_world(scenario, seed)
    reports, _ = report(scenario, world, SENSORS, seed)
    street = np.array([SENSORS[i].kind == "street" for i in reports.sensor])
    assert reports.depth_cm[street].min() >= -10.0
    assert reports.depth_cm[street].max() <= 300.0
    assert np.nanmin(reports.level_cm[street]) >= 0.0
    assert np.nanmin(reports.distance_mm) >= 0.0
    assert reports.battery_v.min() > 0.0
    assert np.all((reports.rssi >= -200) & (reports.rssi <= 0))


def test_noise_is_about_a_centimetre() -> None:
    """Published depth differs from the true depth by about 1 cm (rounded, never below 0)."""
    _, reports, _ = _run(_scenario())
    street = np.array([SENSORS[i].kind == "street" for i in reports.sensor])
    wet = street & (reports.true_cm > 5.0)
    error = reports.depth_cm[wet] - reports.true_cm[wet]
    assert 0.8 < error.std() < 1.2
    assert abs(error.mean()) < 0.2
    level_sensors = street & ~np.isnan(reports.level_cm)
    assert reports.level_cm[level_sensors].min() >= 0.0


def test_distance_sensors_send_mount_height_minus_depth() -> None:
    """A distance sensor's distance_mm is its mount height minus ten times the depth."""
    _, reports, _ = _run(_scenario())
    for index, sensor in enumerate(SENSORS):
        rows = reports.of(index)
        if sensor.sends != "distance_mm":
            assert not np.isnan(reports.level_cm[rows]).any()
            continue
        assert sensor.mount_height_mm is not None
        assert np.isnan(reports.level_cm[rows]).all()
        depth = (sensor.mount_height_mm - reports.distance_mm[rows]) / 10.0
        np.testing.assert_allclose(depth, reports.depth_cm[rows])


def test_a_spike_is_one_reading() -> None:
    """A spike adds its magnitude to exactly one reading, which is labelled an artefact."""
    scenario = _scenario('[[fault]]\nsensor = "d12-01"\nkind = "spike"\nstart = "30m"\n')
    _, reports, _ = _run(scenario)
    rows = _rows(reports, "d12-01")
    hit = rows[reports.artefact[rows] != 0]
    assert hit.size == 1
    assert reports.artefact[hit[0]] == SPIKE
    assert reports.depth_cm[hit[0]] - reports.true_cm[hit[0]] > 35.0
    assert reports.time_s[hit[0]] >= scenario.start_s + 1800.0


def test_a_parked_vehicle_is_a_jump_that_stays_flat() -> None:
    """A vehicle under a distance sensor reads near its height, flat, while it stays."""
    fault = '[[fault]]\nsensor = "qh-03"\nkind = "vehicle"\nstart = "30m"\nend = "1h30m"\n'
    _, reports, _ = _run(_scenario(fault + "height_cm = 135\n"))
    rows = _rows(reports, "qh-03")
    under = rows[reports.artefact[rows] == VEHICLE]
    assert 55 <= under.size <= 61
    assert np.all(np.abs(reports.depth_cm[under] - 135.0) < 1.5)
    assert reports.depth_cm[rows[reports.artefact[rows] == 0]].max() < 60.0


def test_a_stuck_sensor_repeats_one_value() -> None:
    """From the fault on, a stuck sensor repeats its last reading while the water moves."""
    _, reports, _ = _run(
        _scenario('[[fault]]\nsensor = "nvh-03"\nkind = "stuck"\nstart = "2h20m"\n')
    )
    rows = _rows(reports, "nvh-03")
    stuck = rows[reports.artefact[rows] == STUCK]
    assert stuck.size > 200
    assert np.unique(reports.level_cm[stuck]).size == 1
    assert np.ptp(reports.true_cm[stuck]) > 20.0
    assert reports.level_cm[stuck[0]] == reports.level_cm[stuck[0] - 1]


def test_dropouts_lose_readings_without_a_trace_but_a_seq_gap() -> None:
    """Readings lost in a dropout are never sent; seq still counts them."""
    fault = '[[fault]]\nsensor = "nvh-02"\nkind = "dropout"\nstart = "1h"\nend = "3h"\n'
    _, reports, _ = _run(_scenario(fault + "loss = 0.5\n"))
    rows = _rows(reports, "nvh-02")
    lost = rows[~reports.published[rows]]
    assert 40 <= lost.size <= 80
    assert np.all(reports.time_s[lost] >= reports.time_s[rows[0]] + HOUR - 60.0)
    sent_seq = reports.seq[rows[reports.published[rows]]]
    assert np.diff(sent_seq).max() > 1


def test_a_dying_battery_goes_low_then_silent() -> None:
    """A battery fault drains below 3.3 V, then the sensor stops and says offline."""
    fault = '[[fault]]\nsensor = "d12-04"\nkind = "battery"\nstart = "0h"\nrate_v_h = 0.3\n'
    _, reports, events = _run(_scenario(fault))
    rows = _rows(reports, "d12-04")
    sent = rows[reports.published[rows]]
    assert reports.battery_v[sent].min() < 3.3
    assert reports.battery_v[sent].min() >= 3.0
    assert not reports.published[rows[-1]]
    index = [s.id for s in SENSORS].index("d12-04")
    offline = [e for e in events if e.sensor == index]
    assert [e.online for e in offline] == [False]
    assert offline[0].time_s > reports.time_s[sent[-1]]


def test_a_skewed_clock_shifts_timestamps_not_values() -> None:
    """Clock skew moves a sensor's timestamps by the skew plus its drift; values stay true."""
    fault = '[[fault]]\nsensor = "nvh-05"\nkind = "clock_skew"\nstart = "1h"\nskew = "-7m13.5s"\n'
    _, reports, _ = _run(_scenario(fault + "drift_s_h = 6\n"))
    rows = _rows(reports, "nvh-05")
    skewed = rows[reports.artefact[rows] == CLOCK_SKEW]
    assert skewed.size > 100
    elapsed_h = (reports.time_s[skewed] - reports.time_s[skewed[0]]) / HOUR
    start_offset = (reports.time_s[skewed[0]] - (_scenario().start_s + HOUR)) / HOUR
    np.testing.assert_allclose(
        reports.skew_s[skewed], -433.5 + 6.0 * (elapsed_h + start_offset), atol=1e-3
    )
    assert np.all(reports.skew_s[rows[reports.artefact[rows] == 0]] == 0.0)


def test_an_outage_backfills_kept_readings_in_arrays_of_at_most_1000() -> None:
    """An outage's readings go out when the link returns, in arrays of at most 1000, after an
    `online` status; readings beyond the buffer are lost, oldest first."""
    faults = (
        '[[fault]]\nsensor = "d12-04"\nkind = "outage"\nstart = "10m"\nend = "20h"\n'
        '[[fault]]\nsensor = "nvh-05"\nkind = "outage"\nstart = "1h"\nend = "3h"\nbuffer = 30\n'
    )
    scenario = _scenario(faults, duration="22h")
    _, reports, events = _run(scenario)
    d12 = _rows(reports, "d12-04")
    kept = d12[reports.backfill[d12]]
    assert kept.size == 1440  # the default buffer: 12 h at 30 s
    assert np.all(reports.sent_s[kept] == scenario.start_s + 20 * HOUR)
    assert np.count_nonzero(~reports.published[d12]) >= 2340 - 1440
    nvh = _rows(reports, "nvh-05")
    window = nvh[(reports.time_s[nvh] >= scenario.start_s + HOUR)]
    window = window[reports.time_s[window] < scenario.start_s + 3 * HOUR]
    assert np.count_nonzero(reports.backfill[window]) == 30
    assert not reports.published[window[:30]].any()  # the oldest are overwritten

    messages = build_messages(reports, events, TimeMap(scenario.start_s, scenario.start_s))
    index = [s.id for s in SENSORS].index("d12-04")
    mine = [m for m in messages if m.sensor == index]
    arrays = [m for m in mine if m.readings > 1]
    assert [m.readings for m in arrays] == [1000, 440]
    back = mine.index(arrays[0])
    assert mine[back - 1].channel == "status"
    assert mine[back - 1].payload == b"online"
    items = orjson.loads(arrays[0].payload)
    assert len(items) == 1000
    assert [item["seq"] for item in items] == sorted(item["seq"] for item in items)


# -- messages and timestamps ---------------------------------------------------------------


def test_messages_follow_the_contract() -> None:
    """Every reading message is a contract reading object with ts in +07:00 and one level field."""
    scenario = _scenario()
    _, reports, events = _run(scenario)
    messages = build_messages(reports, events, TimeMap(scenario.start_s, scenario.start_s))
    assert [m.at_s for m in messages] == sorted(m.at_s for m in messages)
    for message in messages[:500]:
        doc = orjson.loads(message.payload)
        sensor = SENSORS[message.sensor]
        field = "distance_mm" if sensor.sends == "distance_mm" else "level_cm"
        assert list(doc) == ["ts", field, "battery_v", "rssi", "seq"]
        assert doc["ts"].endswith("+07:00")
        assert isinstance(doc["rssi"], int)
        if field == "distance_mm":
            assert isinstance(doc["distance_mm"], int)


def test_iso_times_are_hcmc_time_with_milliseconds() -> None:
    """Stamps are Ho Chi Minh City local time with milliseconds and +07:00."""
    stamps = iso_times(np.array([1_795_691_100.0, 0.0126 + 1_795_691_100.0]))
    assert stamps == ["2026-11-26T18:05:00.000+07:00", "2026-11-26T18:05:00.013+07:00"]


def test_timestamp_modes_map_the_scenario_onto_the_clock() -> None:
    """original keeps dates; recent shifts by whole days to end within a day before now; wall
    compresses time by the speed from now."""
    start, end, now = 1_791_000_000.0, 1_791_086_400.0, 1_795_691_100.0
    assert time_map("original", start, end, now, 60.0).stamp_one(start) == start
    recent = time_map("recent", start, end, now, 60.0)
    shift = recent.stamp_one(start) - start
    assert shift % 86_400.0 == 0.0
    assert now - 86_400.0 < recent.stamp_one(end) <= now
    wall = time_map("wall", start, end, now, 60.0)
    assert wall.stamp_one(start) == now
    assert wall.stamp_one(end) == now + 86_400.0 / 60.0
    with pytest.raises(ValueError):
        time_map("wall", start, end, now, 0.0)


# -- ground truth --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("depths", "expected"),
    [
        ([0, 5, 9, 5, 0], []),
        ([0, 20, 0], [(0.5, 1.5, 20.0, 1, 2)]),
        ([12, 12, 0, 0], [(0.0, 1.0 + 1 / 6, 12.0, 0, 1)]),
        ([0, 0, 35, 55], [(1.0 + 10 / 35, None, 55.0, 3, 4)]),
        ([0, 30, 0, 10], [(1 / 3, 1 + 2 / 3, 30.0, 1, 3), (3.0, None, 10.0, 3, 1)]),
    ],
)
def test_episodes_cross_the_first_threshold(
    depths: list[float], expected: list[tuple[float, float | None, float, float, int]]
) -> None:
    """An episode runs from the first-threshold crossing up to the crossing back down."""
    times = np.arange(len(depths), dtype=np.float64)
    found = episodes(times, np.array(depths, dtype=np.float64), (10.0, 20.0, 30.0, 50.0))
    got = [(e.start_s, e.end_s, e.peak_cm, e.peak_s, e.level) for e in found]
    assert len(got) == len(expected)
    for one, other in zip(got, expected, strict=True):
        assert one[0] == pytest.approx(other[0])
        assert (one[1] is None) == (other[1] is None)
        if one[1] is not None:
            assert one[1] == pytest.approx(other[1])
        assert one[2:] == other[2:]


def test_storm_truth_has_floods_and_the_calm_day_only_artefacts() -> None:
    """The October storm closes Quoc Huong (>= 50 cm); the calm day floods nothing but has
    a spike, a vehicle and a skewed clock to catch."""
    storm = json.loads((SCENARIOS / "october-storm.truth.json").read_text())
    qh = [e for s, v in storm["sensors"].items() if s.startswith("qh") for e in v["episodes"]]
    assert max(e["level"] for e in qh) == 4
    assert all(e["end"] is not None for e in qh)
    assert storm["sensors"]["phu-an"]["episodes"][0]["level_name"] in ("alarm_2", "alarm_3")
    calm = json.loads((SCENARIOS / "calm-day.truth.json").read_text())
    assert all(not v["episodes"] for v in calm["sensors"].values())
    kinds = {k for v in calm["sensors"].values() for a in v["artefacts"] for k in a["kinds"]}
    assert kinds == {"spike", "vehicle", "clock_skew"}


def test_truth_artefacts_carry_the_published_timestamps() -> None:
    """An artefact's ts in the truth is the ts its reading is published with."""
    scenario = load_scenario(SCENARIOS / "calm-day.toml")
    world, reports, events = _run(scenario)
    timemap = TimeMap(scenario.start_s, scenario.start_s)
    truth = ground_truth(scenario, scenario.seed, world, reports, timemap)
    published = {
        (SENSORS[m.sensor].id, orjson.loads(m.payload)["ts"])
        for m in build_messages(reports, events, timemap)
        if m.channel == "reading"
    }
    sensors = truth["sensors"]
    assert isinstance(sensors, dict)
    for sensor_id, entry in sensors.items():
        for group in entry["artefacts"]:
            assert group["from"] == group["ts"][0]
            assert group["until"] == group["ts"][-1]
            for ts in group["ts"]:
                assert (sensor_id, ts) in published


def test_published_readings_show_every_true_flood() -> None:
    """A naive detector (two consecutive published readings at the first threshold) finds
    every true episode of the storm within ten minutes of its start."""
    scenario = load_scenario(SCENARIOS / "october-storm.toml")
    world, reports, _ = _run(scenario)
    truth = ground_truth(
        scenario, scenario.seed, world, reports, TimeMap(scenario.start_s, scenario.start_s)
    )
    sensors = truth["sensors"]
    assert isinstance(sensors, dict)
    for index, sensor in enumerate(SENSORS):
        rows = np.flatnonzero(reports.of(index) & reports.published)
        wet = reports.depth_cm[rows] >= sensor.thresholds_cm[0]
        confirmed = reports.time_s[rows[1:][wet[1:] & wet[:-1]]]
        for episode in sensors[sensor.id]["episodes"]:
            start = _epoch(episode["start"])
            near = confirmed[(confirmed >= start - 600) & (confirmed <= start + 600)]
            assert near.size, (sensor.id, episode["start"])


def test_calm_day_spikes_are_single_but_the_van_persists() -> None:
    """On the calm day no two consecutive readings of a spiking sensor pass 10 cm, while the
    parked van holds a depth of over a metre for hours: debounce alone cannot catch it."""
    scenario = load_scenario(SCENARIOS / "calm-day.toml")
    _, reports, _ = _run(scenario)
    for sensor_id in ("d12-01", "qh-02"):
        rows = _rows(reports, sensor_id)
        rows = rows[reports.published[rows]]
        wet = reports.depth_cm[rows] >= 10.0
        assert wet.sum() == 1
        assert not (wet[1:] & wet[:-1]).any()
    rows = _rows(reports, "qh-03")
    van = rows[reports.published[rows] & (reports.artefact[rows] == VEHICLE)]
    assert reports.time_s[van[-1]] - reports.time_s[van[0]] > 2 * HOUR
    assert reports.depth_cm[van].min() > 100.0


def _epoch(ts: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ts).timestamp()


# -- replay files --------------------------------------------------------------------------


def test_a_scenarios_readings_replay_as_published() -> None:
    """truth --readings writes a CSV that replay reads back into the same payload values."""
    scenario = _scenario('[[fault]]\nsensor = "qh-03"\nkind = "stuck"\nstart = "3h"\n')
    _, reports, _ = _run(scenario)
    timemap = TimeMap(scenario.start_s, scenario.start_s)
    recording = parse_recording(recording_csv(reports, timemap), REGISTRY)
    replayed = [orjson.loads(m.payload) for m in replay_messages(recording, timemap)]
    original = [
        orjson.loads(m.payload) for m in build_messages(reports, (), timemap) if m.readings == 1
    ]
    key = lambda doc: (doc["ts"], doc["seq"], doc.get("level_cm"), doc.get("distance_mm"))  # noqa: E731
    assert sorted(map(key, replayed)) == sorted(map(key, original))
    arrays = replay_messages(recording, timemap, batch=100)
    assert sum(m.readings for m in arrays) == len(replayed)
    assert max(m.readings for m in arrays) == 100


@pytest.mark.parametrize(
    ("csv", "line", "words"),
    [
        ("sensor,ts,level_cm\nnowhere,2026-10-09T14:00:00+07:00,1\n", 2, "registry"),
        ("sensor,ts,level_cm\nqh-02,2026-10-09T14:00:00,1\n", 2, "offset"),
        ("sensor,ts,level_cm\nqh-02,1795691100,1\n", 2, "milliseconds"),
        ("sensor,ts,level_cm,distance_mm\nqh-02,1795691100000,1,300\n", 2, "exactly one"),
        ("sensor,ts,level_cm\nqh-02,1795691100000,deep\n", 2, "not a number"),
        ("sensor,ts,distance_mm\nqh-02,1795691100000,300\n", 2, "mount_height_mm"),
        ("id,ts,level_cm\n", 0, "sensor"),
    ],
)
def test_replay_refuses_rows_ingest_would_refuse(csv: str, line: int, words: str) -> None:
    """A bad row stops replay before anything is sent, naming its line and the problem."""
    with pytest.raises(RecordingError) as caught:
        parse_recording(csv, REGISTRY, "rec.csv")
    assert words in str(caught.value)
    if line:
        assert f"rec.csv line {line}:" in str(caught.value)


# -- load payloads and processes -----------------------------------------------------------


def test_load_payloads_are_valid_contract_arrays() -> None:
    """Load arrays hold consecutive readings one second apart, stamped in epoch ms."""
    items = orjson.loads(_payload(1_795_000_000_000, 200, 100, 3))
    assert len(items) == 100
    assert [i["ts"] for i in items] == [1_795_000_000_000 + (200 + k) * 1000 for k in range(100)]
    assert all(set(i) == {"ts", "level_cm", "battery_v", "rssi", "seq"} for i in items)
    single = orjson.loads(_payload(1_795_000_000_000, 7, 1, 0))
    assert isinstance(single, dict)


def test_load_picks_enough_processes_but_not_more_than_cpus() -> None:
    """--processes 0 starts one process per capacity share, capped by the CPUs."""
    assert auto_processes("array", 50_000, cpus=2) == 1
    assert auto_processes("single", 15_000, cpus=2) == 2
    assert auto_processes("single", 100_000, cpus=4) == 4


def test_load_registry_is_a_valid_registry(tmp_path: Path) -> None:
    """The registry written for the load's sensors loads, with every virtual id."""
    from floodwatch.settings import MqttEndpoint

    plan = LoadPlan(MqttEndpoint("127.0.0.1", 1883), "x", 250, 1000.0, "array", 100, 1.0, 1)
    path = tmp_path / "load.geojson"
    path.write_bytes(load_registry_geojson(plan))
    registry = load_registry(path)
    assert len(registry.sensors) == 250
    assert "load-00249" in registry.sensors


# -- progress bar --------------------------------------------------------------------------


def test_progress_bar_renders_fraction_and_eta() -> None:
    """The bar shows the fraction done, a note and, midway, the time left."""
    line = render("storm", 0.5, "10 readings", 30.0)
    assert line.startswith("storm [############------------]  50% 10 readings")
    assert line.endswith("ETA 0:30")
    assert "ETA" not in render("storm", 1.0, "", 30.0)


def test_progress_bar_is_silent_off_a_terminal(tmp_path: Path) -> None:
    """Writing to a file (not a TTY) draws nothing."""
    with (tmp_path / "out").open("w") as stream:
        bar = Progress("x", stream=stream)
        bar.update(0.5, force=True)
        bar.finish()
    assert (tmp_path / "out").read_text() == ""


@given(fraction=st.floats(-1.0, 2.0), elapsed=st.floats(0.0, 1e6))
@settings(max_examples=50, deadline=None)
def test_progress_bar_never_breaks(fraction: float, elapsed: float) -> None:
    """Any fraction and elapsed time renders one line with a full-width bar."""
    line = render("x", fraction, "", elapsed)
    assert "\n" not in line
    assert line.count("#") + line.count("-") >= 24


# -- offline commands ----------------------------------------------------------------------


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulators", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_lists_every_command() -> None:
    """`python -m simulators --help` names every command and how to get its own help."""
    result = _cli("--help")
    assert result.returncode == 0
    for command in ("run", "truth", "plot", "list", "replay", "load", "live"):
        assert f"  {command}" in result.stdout


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("run", ["--speed", "--timestamps", "FLOODWATCH_TIMESTAMPS", "original", "1440"]),
        ("truth", ["--readings", "floodwatch-truth/1"]),
        ("plot", ["PNG", "--output"]),
        ("replay", ["--batch", "epoch milliseconds"]),
        ("load", ["--rate", "--processes", "PUBACK", "FLOODWATCH_RATE"]),
        ("live", ["--shower-period", "FLOODWATCH_INTERVAL"]),
    ],
)
def test_each_command_explains_itself(command: str, words: list[str]) -> None:
    """Each command's --help describes it and names its options and variables."""
    result = _cli(command, "--help")
    assert result.returncode == 0
    for word in words:
        assert word in result.stdout, word


def test_list_names_the_shipped_scenarios() -> None:
    """`list` prints each shipped scenario with its length and title."""
    result = _cli("list")
    assert result.returncode == 0
    for name in SHIPPED:
        assert name in result.stdout


def test_truth_command_writes_json_and_readings(tmp_path: Path) -> None:
    """`truth` prints the ground truth, and with --readings writes a replayable CSV."""
    csv = tmp_path / "readings.csv"
    result = _cli("truth", "demo", "--readings", str(csv))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["format"] == "floodwatch-truth/1"
    assert doc == json.loads((SCENARIOS / "demo.truth.json").read_text())
    recording = parse_recording(csv.read_text(), REGISTRY)
    published = sum(v["readings"]["published"] for v in doc["sensors"].values())
    assert recording.time_s.size == published


def test_truth_with_another_seed_changes_the_noise_not_the_floods() -> None:
    """--seed changes the readings; the tide and the floods under it barely move."""
    one = json.loads(_cli("truth", "king-tide-morning").stdout)
    two = json.loads(_cli("truth", "king-tide-morning", "--seed", "99").stdout)
    assert one["seed"] == 2
    assert two["seed"] == 99
    assert one["river"] == two["river"]
    assert one["sensors"] != two["sensors"]


def test_plot_writes_a_png(tmp_path: Path) -> None:
    """`plot` draws the scenario into a PNG file."""
    out = tmp_path / "storm.png"
    result = _cli("plot", "sensor-fails-mid-storm", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().startswith(b"\x89PNG")
    assert out.stat().st_size > 20_000


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("run", "no-such-scenario"), "no scenario named"),
        (("run", "demo", "--timestamps", "soon"), "--timestamps"),
        (("run", "demo", "--speed", "-1"), "--speed"),
        (("run", "demo", "--loop"), "--timestamps wall"),
        (("run", "demo", "--timestamps", "wall", "--speed", "0"), "--speed"),
        (("run", "demo", "--sensors", "qh-01,nowhere"), "--sensors"),
        (("truth", "demo", "--seed", "-4"), "--seed"),
        (("load", "--mode", "bulk"), "--mode"),
        (("load", "--batch", "5000"), "--batch"),
        (("replay", "/no/such/file.csv"), "cannot read"),
    ],
)
def test_command_mistakes_exit_2_with_one_line(args: tuple[str, ...], words: str) -> None:
    """A wrong option or scenario exits 2 with one line saying what to fix."""
    result = _cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("simulators: ")
    assert words in lines[0]


def test_scenario_can_be_given_as_a_path(tmp_path: Path) -> None:
    """A scenario file outside the project is found by its path."""
    path = tmp_path / "my-storm.toml"
    path.write_text(
        'title = "mine"\nstart = 2026-10-09T14:00:00+07:00\nduration = "2h"\n' + STREETS
    )
    result = _cli("truth", str(path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["scenario"] == "my-storm"
    assert math.isclose(
        sum(v["readings"]["taken"] for v in json.loads(result.stdout)["sensors"].values()),
        sum(int(2 * HOUR // s.interval_s) for s in SENSORS),
        abs_tol=len(SENSORS),
    )
