"""Scenarios end to end: `python -m simulators` publishing through a real mosquitto into
`python -m ingest` and a real influxd, compared reading by reading with what the scenario's
sensors report; and the load generator against the real broker."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service
from floodwatch.registry import SHIPPED_REGISTRY, Sensor, load_registry
from floodwatch.settings import parse_influx_url
from simulators.messages import TimeMap, build_messages
from simulators.physics import simulate_world
from simulators.scenario import Scenario, find_scenario, load_scenario, shipped_scenarios
from simulators.sensors import report
from tests.conftest import ROOT, own_login, process_env, wait_until

pytestmark = [
    pytest.mark.services,
    # conftest's spawn leaves its log files for the garbage collector to close.
    pytest.mark.filterwarnings("ignore:unclosed file .*[.]log:ResourceWarning"),
]

SENSORS: tuple[Sensor, ...] = tuple(load_registry(SHIPPED_REGISTRY).sensors.values())
Spawn = Callable[..., subprocess.Popen[bytes]]
# Stored values, per sensor: {epoch ms: (level_cm, distance_mm or None, seq)}.
Points = dict[str, dict[int, tuple[float, float | None, int]]]

# Three hours of the October storm with one of each fault, as a user would write it.
SHORT_STORM = """
title = "three hours of the October storm, every fault once"
start = 2026-10-09T15:30:00+07:00
duration = "3h"
seed = 21

[tide]
mean_cm = 15

[[storm]]
start = "30m"
duration = "80m"
peak_mm_h = 90
shape = "burst"

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

[sensors]
loss = 0.005

[[fault]]
sensor = "d12-01"
kind = "spike"
start = "20m"

[[fault]]
sensor = "qh-03"
kind = "vehicle"
start = "10m"
end = "25m"

[[fault]]
sensor = "nvh-03"
kind = "stuck"
start = "1h"

[[fault]]
sensor = "nvh-02"
kind = "dropout"
start = "40m"
end = "1h40m"
loss = 0.5

[[fault]]
sensor = "d12-04"
kind = "battery"
start = "0m"
rate_v_h = 0.4

[[fault]]
sensor = "nvh-05"
kind = "clock_skew"
start = "30m"
skew = "-3m20.25s"
drift_s_h = 4

[[fault]]
sensor = "qh-02"
kind = "outage"
start = "35m"
end = "2h05m"

[[fault]]
sensor = "qh-04"
kind = "outage"
start = "1h"
end = "2h"
buffer = 20
"""


@pytest.fixture
def env(broker: Service, influxd: Service, unique: str) -> dict[str, str]:
    environment = process_env(broker, influxd, unique, unique)
    own_login(broker, environment)
    return environment


@pytest.fixture
def db(influxd: Service, unique: str) -> Iterator[InfluxClient]:
    client = InfluxClient(parse_influx_url(influxd.url("admin")), unique)
    yield client
    client.close()


@pytest.fixture
def ingest(spawn: Spawn, env: dict[str, str], tmp_path: Path) -> subprocess.Popen[bytes]:
    """`python -m ingest`, subscribed before the test publishes anything."""
    proc = spawn("ingest", "--stats-interval", "1", env=env)
    log = tmp_path / "ingest-0.log"
    wait_until(lambda: b"ingesting" in log.read_bytes(), 30, "ingest to subscribe")
    return proc


def _expected(scenario: Scenario, timemap: TimeMap) -> Points:
    """Every reading the scenario publishes, as ingest should store it (last write wins)."""
    world = simulate_world(scenario, scenario.seed)
    reports, events = report(scenario, world, SENSORS, scenario.seed)
    points: Points = {sensor.id: {} for sensor in SENSORS}
    for message in build_messages(reports, events, timemap):
        if message.channel != "reading":
            continue
        sensor = SENSORS[message.sensor]
        doc = orjson.loads(message.payload)
        for item in doc if isinstance(doc, list) else [doc]:
            ms = round(_epoch_s(item["ts"]) * 1000)
            if "distance_mm" in item:
                assert sensor.mount_height_mm is not None
                level = (sensor.mount_height_mm - item["distance_mm"]) / 10.0
                points[sensor.id][ms] = (level, float(item["distance_mm"]), item["seq"])
            else:
                points[sensor.id][ms] = (item["level_cm"], None, item["seq"])
    return points


def _epoch_s(ts: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ts).timestamp()


def _stored_count(db: InfluxClient) -> int:
    series = db.query('SELECT count("level_cm") FROM "water_level"')
    return int(series[0]["values"][0][1]) if series else 0


def _stored(db: InfluxClient) -> Points:
    points: Points = {}
    for series in db.query(
        'SELECT "level_cm", "distance_mm", "seq" FROM "water_level" GROUP BY "sensor"', epoch="ms"
    ):
        rows = points.setdefault(series["tags"]["sensor"], {})
        for ms, level, distance, seq in series["values"]:
            rows[int(ms)] = (level, distance, seq)
    return points


def _assert_stored_as_reported(db: InfluxClient, expected: Points, what: str) -> None:
    total = sum(len(rows) for rows in expected.values())
    wait_until(lambda: _stored_count(db) >= total, 30, f"{total} readings of {what} stored")
    stored = _stored(db)
    for sensor_id, rows in expected.items():
        got = stored.get(sensor_id, {})
        assert len(got) == len(rows), sensor_id
        assert got.keys() == rows.keys(), sensor_id
        for ms, (level, distance, seq) in rows.items():
            stored_level, stored_distance, stored_seq = got[ms]
            assert stored_level == pytest.approx(level, abs=1e-9), (sensor_id, ms)
            assert stored_distance == distance, (sensor_id, ms)
            assert stored_seq == seq, (sensor_id, ms)


def _log(tmp_path: Path, module: str) -> str:
    return "".join(p.read_text() for p in sorted(tmp_path.glob(f"{module}-*.log")))


def test_accelerated_scenario_is_stored_as_its_sensors_report(
    spawn: Spawn,
    env: dict[str, str],
    ingest: subprocess.Popen[bytes],
    db: InfluxClient,
    tmp_path: Path,
) -> None:
    """Three hours with every fault, played at 3600x (three seconds), land in InfluxDB reading
    for reading: values, seq, skewed stamps, backfilled arrays; the truth file agrees."""
    path = tmp_path / "short-storm.toml"
    path.write_text(SHORT_STORM)
    truth_path = tmp_path / "truth.json"
    began = time.monotonic()
    proc = spawn(
        "simulators", "run", str(path), "--speed", "3600", "--truth", str(truth_path), env=env
    )
    assert proc.wait(timeout=30) == 0, _log(tmp_path, "simulators")
    assert 2.5 < time.monotonic() - began < 20.0, "3 h at 3600x should take about 3 s"
    scenario = load_scenario(path)
    expected = _expected(scenario, TimeMap(scenario.start_s, scenario.start_s))
    _assert_stored_as_reported(db, expected, "the short storm")

    truth = json.loads(truth_path.read_text())
    for sensor_id, entry in truth["sensors"].items():
        assert entry["readings"]["published"] == len(expected[sensor_id]), sensor_id
    assert truth["sensors"]["qh-02"]["readings"]["backfilled"] == 90  # 35m to 2h05m
    assert truth["sensors"]["qh-02"]["silences"]
    log = _log(tmp_path, "simulators")
    total = sum(len(rows) for rows in expected.values())
    assert f"published {total} readings" in log
    statuses = db.query(
        'SELECT "online" FROM "sensor_status" WHERE "sensor" = \'qh-02\'', epoch="ms"
    )
    assert [row[1] for row in statuses[0]["values"]] == [True, False, True, False]


@pytest.mark.slow  # whole floods
@pytest.mark.parametrize("name", [path.stem for path in shipped_scenarios(ROOT / "scenarios")])
def test_shipped_scenario_runs_end_to_end(
    name: str,
    spawn: Spawn,
    env: dict[str, str],
    ingest: subprocess.Popen[bytes],
    db: InfluxClient,
    tmp_path: Path,
) -> None:
    """Each shipped scenario, published as fast as the broker takes it, is stored exactly as
    its sensors report it, and matches the counts of its shipped ground truth."""
    proc = spawn("simulators", "run", name, "--speed", "0", env=env)
    assert proc.wait(timeout=30) == 0, _log(tmp_path, "simulators")
    scenario = load_scenario(find_scenario(name, ROOT / "scenarios"))
    expected = _expected(scenario, TimeMap(scenario.start_s, scenario.start_s))
    _assert_stored_as_reported(db, expected, name)
    truth = json.loads((ROOT / "scenarios" / f"{name}.truth.json").read_text())
    for sensor_id, entry in truth["sensors"].items():
        assert entry["readings"]["published"] == len(expected[sensor_id]), sensor_id


def test_demo_loops_with_live_timestamps(
    spawn: Spawn,
    env: dict[str, str],
    ingest: subprocess.Popen[bytes],
    db: InfluxClient,
    tmp_path: Path,
) -> None:
    """The stack's invocation (`run demo --timestamps wall --loop`) stamps readings with the
    wall clock and, on its second pass, continues each sensor's seq."""
    began_ms = time.time() * 1000
    proc = spawn(
        "simulators",
        "run",
        "demo",
        "--speed",
        "4800",
        "--timestamps",
        "wall",
        "--loop",
        "--sensors",
        "qh-02,phu-an",
        env=env,
    )

    def seqs() -> list[int]:
        series = db.query('SELECT "seq" FROM "water_level" WHERE "sensor" = \'qh-02\'', epoch="ms")
        return [row[1] for row in series[0]["values"]] if series else []

    # 4 h at 4800x is 3 s a pass: qh-02 (60 s) reads 240 times a pass.
    wait_until(lambda: max(seqs(), default=0) > 250, 25, "the demo's second pass")
    proc.terminate()
    assert proc.wait(timeout=15) == 0, _log(tmp_path, "simulators")
    series = db.query('SELECT "level_cm" FROM "water_level"', epoch="ms")
    stamps = np.array([row[0] for row in series[0]["values"]], dtype=np.float64)
    assert stamps.min() >= began_ms - 1000
    assert stamps.max() <= time.time() * 1000 + 1000
    assert sorted(seqs()) == list(range(1, len(seqs()) + 1))


def test_replay_publishes_a_recording(
    spawn: Spawn,
    env: dict[str, str],
    ingest: subprocess.Popen[bytes],
    db: InfluxClient,
    tmp_path: Path,
) -> None:
    """Readings written by `truth --readings` replay, in arrays of 50, into the same points."""
    csv = tmp_path / "demo.csv"
    truth = spawn("simulators", "truth", "demo", "-o", str(tmp_path / "t.json"), "--readings",
                  str(csv), env=env)  # fmt: skip
    assert truth.wait(timeout=30) == 0
    proc = spawn("simulators", "replay", str(csv), "--batch", "50", env=env)
    assert proc.wait(timeout=30) == 0, _log(tmp_path, "simulators")
    scenario = load_scenario(find_scenario("demo", ROOT / "scenarios"))
    expected = _expected(scenario, TimeMap(scenario.start_s, scenario.start_s))
    _assert_stored_as_reported(db, expected, "the replayed demo")


@pytest.mark.parametrize(("mode", "per_message"), [("array", 100), ("single", 1)])
def test_load_reports_what_the_broker_acknowledged(
    mode: str,
    per_message: int,
    spawn: Spawn,
    env: dict[str, str],
    broker: Service,
    tmp_path: Path,
) -> None:
    """`load` holds a modest rate from two processes and reports readings and messages/s.
    As admin: ingest's login may not publish readings (the broker refuses them with 0x87,
    which `load` once counted as acknowledged)."""
    admin = {**env, "FLOODWATCH_MQTT_URL": broker.url("admin")}
    proc = spawn(
        "simulators", "load", "--sensors", "20", "--rate", "4000", "--duration", "1.5",
        "--mode", mode, "--processes", "2", "--json", env=admin,
    )  # fmt: skip
    assert proc.wait(timeout=60) == 0, _log(tmp_path, "simulators")
    line = next(line for line in _log(tmp_path, "simulators").splitlines() if line.startswith("{"))
    result = json.loads(line)
    assert result["processes"] == 2
    assert result["unacknowledged"] == 0 and result["refused_messages"] == 0
    assert 5000 <= result["readings"] <= 6200
    assert result["messages"] * per_message == result["readings"]
    assert 3000 <= result["readings_per_s"] <= 4400
