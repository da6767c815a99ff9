"""The partitioned-ingest benchmark's harness (bench/ingest_workers.py), without timing: its
registry spreads the load evenly over the workers, and its backlog is what the drain's end
condition assumes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
from hypothesis import given
from hypothesis import strategies as st

from bench.ingest_workers import (
    PARTITIONS,
    SENSORS_PER_WARD,
    WARDS,
    backlog,
    balanced_wards,
    owned_partitions,
    write_registry,
)
from floodwatch.cluster import partition, partition_plan
from floodwatch.registry import load_registry


def test_the_bench_registry_splits_evenly_over_1_2_4_and_8_partitions(tmp_path: Path) -> None:
    path = tmp_path / "sensors.geojson"
    ids = write_registry(path, balanced_wards(WARDS, PARTITIONS), SENSORS_PER_WARD)
    registry = load_registry(path)  # the loader accepts it: every field valid
    assert sorted(registry.sensors) == sorted(ids)
    assert len(ids) == WARDS * SENSORS_PER_WARD
    for partitions in (1, 2, 4, 8):
        plan = partition_plan(registry, partitions)
        assert sorted(plan) == list(range(partitions))
        assert {len(sensors) for sensors in plan.values()} == {len(ids) // partitions}


@given(st.sampled_from([1, 2, 3, 4, 8]), st.integers(1, 4))
def test_balanced_wards_fill_every_partition_equally(partitions: int, per: int) -> None:
    wards = balanced_wards(partitions * per, partitions)
    assert len(set(wards)) == partitions * per
    per_partition = Counter(partition(ward, partitions) for ward in wards)
    assert per_partition == dict.fromkeys(range(partitions), per)


def test_workers_own_every_partition_once() -> None:
    for workers in (1, 2, 3, 8):
        owns = owned_partitions(workers, PARTITIONS)
        assert len(owns) == workers
        assert sorted(p for own in owns for p in own) == list(range(PARTITIONS))


def test_every_sensor_ends_on_the_same_reading_time() -> None:
    """The drain ends when every sensor's reading at the last ts is stored."""
    messages = backlog(["a", "b", "c"], 5, 1_000_000)
    assert len(messages) == 15
    last = {sid: orjson.loads(body)["ts"] for sid, body in messages}
    assert set(last.values()) == {1_000_000 + 4 * 1000}
    assert len({(sid, orjson.loads(body)["ts"]) for sid, body in messages}) == 15
