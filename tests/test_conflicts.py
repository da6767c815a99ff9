"""Two messages for the same (sensor, time) that disagree (issue 12 §2): the first stands, the
second is dead-lettered, and the stored point never mixes the two. The rule's table, then end
to end on the real broker and influxd."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from floodwatch.contract import Reading
from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service
from floodwatch.mqtt import MqttConnection
from ingest.pipeline import RecentReadings
from tests.conftest import IngestProcess, wait_until

T = 1_795_000_000_000_000_000
FIRST = Reading("d12-04", T, 50.0, 1500.0, 3.7, -80, 7)


@pytest.mark.parametrize(
    ("second", "conflict"),
    [
        pytest.param(FIRST, False, id="the same message again (a redelivery) is no conflict"),
        pytest.param(FIRST._replace(battery_v=None, rssi=None, seq=None), False, id="a subset"),
        pytest.param(Reading("d12-04", T, 5.0), True, id="another level"),
        pytest.param(FIRST._replace(distance_mm=1400.0, level_cm=60.0), True, id="other distance"),
        pytest.param(FIRST._replace(seq=8), True, id="another seq: another message"),
        pytest.param(FIRST._replace(battery_v=3.1), True, id="another battery voltage"),
        pytest.param(FIRST._replace(time_ns=T + 1, level_cm=5.0), False, id="another time"),
        pytest.param(FIRST._replace(sensor_id="qh-02", level_cm=5.0), False, id="another sensor"),
    ],
)
def test_a_second_reading_conflicts_only_where_both_say_something_different(
    second: Reading, conflict: bool
) -> None:
    recent = RecentReadings()
    assert recent.conflict(FIRST) is None
    found = recent.conflict(second)
    assert (found is not None) == conflict
    if conflict:
        assert found == FIRST


def test_what_was_merged_is_what_later_readings_are_checked_against() -> None:
    """A subset fills in what the first lacked; a third message must agree with the union."""
    recent = RecentReadings()
    assert recent.conflict(Reading("qh-02", T, 10.0)) is None
    assert recent.conflict(Reading("qh-02", T, 10.0, battery_v=3.7)) is None
    assert recent.conflict(Reading("qh-02", T, 10.0, battery_v=3.6)) is not None


def test_the_oldest_keys_are_forgotten_past_the_capacity() -> None:
    recent = RecentReadings(capacity=2)
    for i in range(3):
        assert recent.conflict(Reading("qh-02", T + i, 10.0)) is None
    assert recent.conflict(Reading("qh-02", T, 99.0)) is None  # forgotten
    assert recent.conflict(Reading("qh-02", T + 2, 99.0)) is not None


@pytest.fixture
def ingest(ingest_env: dict[str, str], tmp_path: Path) -> Iterator[IngestProcess]:
    proc = IngestProcess(ingest_env, tmp_path)
    proc.start()
    yield proc
    proc.stop()


def test_a_contradicting_second_message_is_dead_lettered_not_merged(
    broker: Service, influx: InfluxClient, ingest: IngestProcess, unique: str
) -> None:
    """d12-04 (mounted at 2,000 mm) sends distance_mm 1500 (50 cm of water), then level_cm 5 with
    the same ts, as in the issue: the stored point is the first message whole, the second is a
    dead letter with code `conflicting_reading`."""
    topic = f"{unique}/v1/sensors/d12-04/reading"
    ts = T // 1_000_000
    first = {"ts": ts, "distance_mm": 1500, "battery_v": 3.7, "rssi": -80, "seq": 7}
    second = {"ts": ts, "level_cm": 5.0}
    sensor = MqttConnection(broker.endpoint("d12-04"), "d12-04")
    sensor.start()
    try:
        for doc in (first, second):
            assert sensor.publish_and_wait(topic, orjson.dumps(doc))
    finally:
        sensor.stop()

    def dead() -> list[str]:
        series = influx.query('SELECT "reason", "code" FROM "deadletter"')
        return [row[2] for row in series[0]["values"]] if series else []

    wait_until(lambda: dead() == ["conflicting_reading"], 20, "the second message dead-lettered")
    [series] = influx.query('SELECT * FROM "water_level"')
    [row] = [dict(zip(series["columns"], values, strict=True)) for values in series["values"]]
    assert (row["level_cm"], row["distance_mm"]) == (50.0, 1500.0)
    assert (row["battery_v"], row["rssi"], row["seq"]) == (3.7, -80, 7)
