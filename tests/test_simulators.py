"""Tests for the simulated sensors: the pure water model, its payloads, and the publishing CLI."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from floodwatch.localservices import Service
from floodwatch.mqtt import Delivery, MqttConnection
from floodwatch.registry import SHIPPED_REGISTRY, Sensor, load_registry
from floodwatch.settings import parse_mqtt_url
from floodwatch.topics import Topics
from simulators.street import (
    PEAK_BOUNDS_CM,
    TIDE_M2_PERIOD_S,
    Fleet,
    SimulatedReading,
    build_fleet,
    initial_state,
    iso_time,
    measure,
    reading_payload,
    shower_depth_cm,
    step,
    tide_stage_cm,
)
from tests.conftest import ROOT, process_env, wait_until

SENSORS: tuple[Sensor, ...] = tuple(load_registry(SHIPPED_REGISTRY).sensors.values())
# 2026-11-26T18:05:00+07:00, the contract's example reading.
T0 = 1_795_691_100.0
HOUR = 3600.0


def _fleet(seed: int = 1, **kwargs: float) -> Fleet:
    return build_fleet(SENSORS, seed, **kwargs)


def _run(fleet: Fleet, times: np.ndarray) -> list[tuple[SimulatedReading, ...]]:
    state = initial_state(fleet)
    steps = []
    for time_s in times:
        state, readings = step(fleet, state, float(time_s))
        steps.append(readings)
    return steps


def _street_depths(fleet: Fleet, times: np.ndarray) -> np.ndarray:
    """Measured depths, one row per time and one column per sensor."""
    return np.array([measure(fleet, float(t)).depth_cm for t in times])


def _index(fleet: Fleet, predicate: Callable[[Sensor], bool]) -> list[int]:
    return [i for i, sensor in enumerate(fleet.sensors) if predicate(sensor)]


# -- the pure model ---------------------------------------------------------------------------


def test_same_seed_same_readings() -> None:
    """Two fleets with one seed produce identical readings at identical times."""
    times = T0 + np.arange(20) * 300.0
    assert _run(_fleet(7), times) == _run(_fleet(7), times)


def test_other_seed_other_readings() -> None:
    """A different seed changes the readings."""
    times = T0 + np.arange(5) * 300.0
    assert _run(_fleet(7), times) != _run(_fleet(8), times)


def test_subset_reads_like_full_fleet() -> None:
    """A sensor simulated alone reads exactly as it does among the whole registry."""
    times = T0 + np.arange(10) * 420.0
    alone = build_fleet([s for s in SENSORS if s.id == "qh-03"], 3)
    everyone = _fleet(3)
    position = everyone.ids.index("qh-03")
    for single, full in zip(_run(alone, times), _run(everyone, times), strict=True):
        assert single == (full[position],)


def test_seq_counts_each_sensors_readings() -> None:
    """Every sensor's seq starts at 1 and grows by one per reading."""
    steps = _run(_fleet(), T0 + np.arange(4) * 5.0)
    for n, readings in enumerate(steps, start=1):
        assert {r.seq for r in readings} == {n}
        assert [r.sensor_id for r in readings] == [s.id for s in SENSORS]


def test_street_level_never_negative() -> None:
    """Depth sensors on streets never publish a negative level, even on a dry road with noise."""
    fleet = _fleet(11)
    street_level = _index(fleet, lambda s: s.kind == "street" and s.sends == "level_cm")
    dry_seen = False
    for readings in _run(fleet, T0 + np.arange(0, 2 * HOUR, 37.0)):
        for i in street_level:
            level = readings[i].level_cm
            assert level is not None
            assert level >= 0.0
            assert math.copysign(1.0, level) == 1.0  # not -0.0
            dry_seen |= readings[i].depth_cm < 0
            assert orjson.loads(reading_payload(readings[i]))["level_cm"] >= 0.0
    assert dry_seen, "noise should sometimes put the modelled depth below the road"


def test_distance_is_mount_height_minus_depth() -> None:
    """A distance sensor's distance is its mount height minus ten times the depth, to 1 mm."""
    fleet = _fleet(5)
    distance_sensors = _index(fleet, lambda s: s.sends == "distance_mm")
    assert distance_sensors
    for readings in _run(fleet, T0 + np.arange(0, HOUR, 61.0)):
        for i in distance_sensors:
            reading, mount = readings[i], fleet.sensors[i].mount_height_mm
            assert mount is not None
            assert reading.level_cm is None
            assert reading.distance_mm is not None
            assert abs(reading.distance_mm - (mount - 10.0 * reading.depth_cm)) <= 0.5


def test_showers_flood_and_drain_each_street() -> None:
    """Each street sensor is mostly dry, peaks at 15-45 cm once per cycle, then drains."""
    fleet = _fleet(2)
    depths = _street_depths(fleet, T0 + np.arange(0, HOUR, 10.0))
    for i in _index(fleet, lambda s: s.kind == "street"):
        column = depths[:, i]
        assert PEAK_BOUNDS_CM[0] - 2 <= column.max() <= PEAK_BOUNDS_CM[1] + 2
        assert np.mean(np.abs(column) < 2.0) > 0.3, "the road should be dry a good part of the time"


def test_quoc_huong_and_nguyen_van_huong_deeper_than_duong_12() -> None:
    """Every Quoc Huong and Nguyen Van Huong sensor peaks above every Duong 12 sensor."""
    for seed in range(5):
        fleet = _fleet(seed)
        peaks = _street_depths(fleet, T0 + np.arange(0, HOUR, 15.0)).max(axis=0)
        duong_12 = peaks[_index(fleet, lambda s: s.street_en == "Duong 12")]
        deeper = peaks[_index(fleet, lambda s: s.street_en in ("Quoc Huong", "Nguyen Van Huong"))]
        assert deeper.min() > duong_12.max()


def test_shower_period_is_configurable() -> None:
    """The noise-free shower repeats after the configured period and not before."""
    fleet = _fleet(shower_period_s=1800.0)
    now = shower_depth_cm(fleet, T0)
    np.testing.assert_allclose(shower_depth_cm(fleet, T0 + 1800.0), now, atol=1e-6)
    assert not np.allclose(shower_depth_cm(fleet, T0 + 900.0), now)


def test_speed_accelerates_the_water_not_the_clock() -> None:
    """At speed 60 the water at time t is the water at speed 1 at time 60 t; ts stays t."""
    fast, slow = _fleet(speed=60.0), _fleet()
    t = 29_919_545.0
    np.testing.assert_allclose(shower_depth_cm(fast, t), shower_depth_cm(slow, 60.0 * t))
    np.testing.assert_allclose(tide_stage_cm(fast, t), tide_stage_cm(slow, 60.0 * t))
    _, readings = step(fast, initial_state(fast), t)
    assert {r.time_s for r in readings} == {t}


def test_tide_is_semidiurnal_around_zero() -> None:
    """The tide gauge swings about 1.5 m either side of 0 with a period near 12.4 hours."""
    fleet = _fleet(4)
    gauge = fleet.ids.index("phu-an")
    step_s = 600.0
    stage = _street_depths(fleet, T0 + np.arange(0, 10 * 86_400.0, step_s))[:, gauge]
    assert 130.0 < stage.max() < 175.0
    assert -175.0 < stage.min() < -130.0
    assert abs(stage.mean()) < 15.0
    spectrum = np.abs(np.fft.rfft(stage - stage.mean()))
    frequencies = np.fft.rfftfreq(stage.size, d=step_s)
    period_h = 1.0 / frequencies[1 + np.argmax(spectrum[1:])] / HOUR
    assert period_h == pytest.approx(TIDE_M2_PERIOD_S / HOUR, rel=0.05)


def test_battery_and_rssi_stay_plausible() -> None:
    """Battery stays within 3.6-4.1 V and drifts; rssi is an integer in -100..-70 dBm."""
    fleet = _fleet(9)
    steps = _run(fleet, T0 + np.arange(0, 3 * 86_400.0, 1800.0))
    batteries = np.array([[r.battery_v for r in readings] for readings in steps])
    assert batteries.min() >= 3.6
    assert batteries.max() <= 4.1
    assert (batteries.max(axis=0) - batteries.min(axis=0) > 0.2).all()
    for readings in steps:
        for r in readings:
            assert isinstance(r.rssi, int)
            assert -100 <= r.rssi <= -70


@pytest.mark.parametrize(
    ("time_s", "expected"),
    [
        (0.0, "1970-01-01T07:00:00.000+07:00"),
        (T0, "2026-11-26T18:05:00.000+07:00"),
        (T0 + 0.0126, "2026-11-26T18:05:00.013+07:00"),
        (T0 + 21_599.9996, "2026-11-27T00:05:00.000+07:00"),
    ],
)
def test_iso_time_is_hcmc_time_with_milliseconds(time_s: float, expected: str) -> None:
    """Timestamps are local Ho Chi Minh City time, rounded to milliseconds, with +07:00."""
    assert iso_time(time_s) == expected


def test_payload_follows_the_contract() -> None:
    """A payload holds ts, one level field, battery_v, rssi and seq, with ts carrying +07:00."""
    fleet = _fleet()
    _, readings = step(fleet, initial_state(fleet), T0)
    for reading in readings:
        doc = orjson.loads(reading_payload(reading))
        level_key = "distance_mm" if reading.distance_mm is not None else "level_cm"
        assert list(doc) == ["ts", level_key, "battery_v", "rssi", "seq"]
        moment = datetime.fromisoformat(doc["ts"])
        assert moment.utcoffset() == timedelta(hours=7)
        assert moment.timestamp() == T0
        assert doc["seq"] == 1
    qh_01 = orjson.loads(reading_payload(readings[fleet.ids.index("qh-01")]))
    assert isinstance(qh_01["distance_mm"], int)


@pytest.mark.parametrize(
    ("seed", "kwargs"),
    [(-1, {}), (1, {"speed": 0.0}), (1, {"speed": math.inf}), (1, {"shower_period_s": -5.0})],
)
def test_build_fleet_rejects_bad_values(seed: int, kwargs: dict[str, float]) -> None:
    """A negative seed, or a speed or shower period that is not a positive number, is refused."""
    with pytest.raises(ValueError):
        build_fleet(SENSORS, seed, **kwargs)


@given(
    seed=st.integers(min_value=0, max_value=2**64 - 1),
    time_s=st.floats(min_value=0.0, max_value=4_102_444_800.0),
    speed=st.sampled_from([1.0, 60.0, 3600.0]),
)
def test_any_seed_and_time_gives_valid_payloads(seed: int, time_s: float, speed: float) -> None:
    """For any seed and time every payload decodes and holds exactly one of the level fields."""
    fleet = build_fleet(SENSORS, seed, speed=speed)
    _, readings = step(fleet, initial_state(fleet), time_s)
    for reading, sensor in zip(readings, SENSORS, strict=True):
        doc = orjson.loads(reading_payload(reading))
        assert ("level_cm" in doc) != ("distance_mm" in doc)
        assert ("distance_mm" in doc) == (sensor.sends == "distance_mm")
        assert datetime.fromisoformat(doc["ts"]).utcoffset() == timedelta(hours=7)
        value = doc.get("level_cm", doc.get("distance_mm"))
        assert math.isfinite(value)
        if sensor.kind == "street" and sensor.sends == "level_cm":
            assert value >= 0.0


# -- the command line -------------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulators", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_names_the_environment_variables() -> None:
    """`live --help` exits 0 and names each option's FLOODWATCH_* variable; the bare --help
    says that no command means `live`."""
    result = _cli("live", "--help")
    assert result.returncode == 0
    for variable in ("FLOODWATCH_MQTT_URL", "FLOODWATCH_INTERVAL", "FLOODWATCH_SPEED"):
        assert variable in result.stdout
    overview = _cli("--help")
    assert overview.returncode == 0
    assert "runs `live`" in overview.stdout


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("--interval", "-1"), "--interval"),
        (("--interval", "nan"), "--interval"),
        (("--speed", "0"), "--speed"),
        (("--duration", "soon"), "--duration"),
        (("--count", "1.5"), "--count"),
        (("--seed", "-3"), "--seed"),
        (("--sensors", "d12-01,nowhere"), "--sensors"),
    ],
)
def test_invalid_option_exits_2_with_one_line(args: tuple[str, ...], flag: str) -> None:
    """An invalid option exits 2 with one line naming the flag and its variable."""
    result = _cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    variable = "FLOODWATCH_" + flag.removeprefix("--").upper()
    assert lines[0].startswith("simulators: ")
    assert flag in lines[0]
    assert variable in lines[0]


@pytest.mark.services
# conftest's spawn leaves its log file for the garbage collector to close.
@pytest.mark.filterwarnings("ignore:unclosed file .*simulators-[0-9]+[.]log:ResourceWarning")
def test_publishes_readings_and_statuses(
    broker: Service,
    influxd: Service,
    unique: str,
    spawn: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """Each simulated sensor publishes online, its readings, then offline, on the real broker."""
    topics = Topics(unique)
    deliveries: list[Delivery] = []
    lock = threading.Lock()

    def collect(delivery: Delivery) -> None:
        with lock:
            deliveries.append(delivery)

    def received() -> list[Delivery]:
        with lock:
            return list(deliveries)

    listener = MqttConnection(
        parse_mqtt_url(broker.url("admin")),
        f"{unique}-listener",
        subscriptions=[(topics.all_readings, 1), (topics.all_statuses, 1)],
        on_delivery=collect,
    )
    listener.start(timeout_s=10)
    try:
        # The subscription is in place once a probe comes back through it.
        listener.publish(topics.status("probe"), b"probe", qos=1)
        wait_until(lambda: bool(received()), 10, "the listener's probe")
        proc = spawn(
            "simulators",
            "--count",
            "2",
            "--interval",
            "0.1",
            "--sensors",
            "d12-01,qh-01",
            env=process_env(broker, influxd, unique, unique),
        )
        code = proc.wait(timeout=60)
        log = "".join(p.read_text() for p in tmp_path.glob("simulators-*.log"))
        assert code == 0, log

        def by_sensor(sensor_id: str, channel: str) -> list[bytes]:
            topic = topics.status(sensor_id) if channel == "status" else topics.reading(sensor_id)
            return [d.payload for d in received() if d.topic == topic]

        wait_until(
            lambda: all(len(by_sensor(s, "status")) >= 2 for s in ("d12-01", "qh-01")),
            10,
            "both sensors' offline status",
        )
        for sensor_id, field in (("d12-01", "level_cm"), ("qh-01", "distance_mm")):
            assert by_sensor(sensor_id, "status") == [b"online", b"offline"], log
            readings = [orjson.loads(p) for p in by_sensor(sensor_id, "reading")]
            assert [r["seq"] for r in readings] == [1, 2], log
            assert all(field in r for r in readings)
        assert "published 4 readings from 2 sensors" in log
    finally:
        listener.stop()
