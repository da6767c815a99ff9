"""Readings that reach the engine behind newer ones of their sensor (alerts/reorder.py): with
a LateReplay the engine makes every alert event the in-order run makes, and none twice; the
plain engine (rule 1) misses some, so the disorder these tests make is one that matters.

The flood is the clustered fault rows' (tests/cluster_faults.py: the shipped flash flood, one
ward per street, six hours of readings), decoded as ingest decodes it and cut into batches of
what a worker takes at the fault tests' pace, 0.1 s of arrival apart; NATS's disorder is a run
of some sensors' readings held back and delivered a few batches later. No broker, no database.
"""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts import AlertEvent, acknowledge, check_stale, new_state, step
from alerts.events import Event
from alerts.reorder import LateReplay
from alerts.state import EngineState, ReadingArrays, readings_to_arrays
from floodwatch.mqtt import Delivery
from floodwatch.registry import Registry, load_registry
from floodwatch.topics import Topics
from ingest.pipeline import judge
from tests.cluster_faults import flood_messages, ward_split_registry

BATCH = 60
END_S = 1_796_000_000
SECOND = 10**9
START_NS = (END_S + 60) * SECOND
WINDOW_NS = 30 * SECOND


def _flood(dest: Path) -> tuple[Registry, list[ReadingArrays]]:
    registry = load_registry(ward_split_registry(dest / "wards.geojson"))
    topics = Topics("reorder")
    planned = flood_messages(registry, END_S)
    deliveries = [
        Delivery(topics.reading(p.sensor_id), p.payload, False, START_NS, k, 1, 0)
        for k, p in enumerate(planned)
    ]
    index = new_state(registry, START_NS).sensor_index
    batches = []
    for k in range(0, len(deliveries), BATCH):
        decoded = judge(topics, registry, deliveries[k : k + BATCH])
        batches.append(readings_to_arrays(decoded.readings, index))
    return registry, batches


@pytest.fixture(scope="module")
def flood(tmp_path_factory: pytest.TempPathFactory) -> tuple[Registry, list[ReadingArrays]]:
    return _flood(tmp_path_factory.mktemp("reorder"))


def now(k: int) -> int:
    return START_NS + k * SECOND // 10


def ids(events: list[Event]) -> list[str]:
    return [e.event_id for e in events if isinstance(e, AlertEvent) and e.kind != "stale"]


def in_order(registry: Registry, batches: list[ReadingArrays]) -> list[str]:
    """The plain engine's events (rule 1 alone), batch after batch."""
    state = new_state(registry, START_NS)
    made: list[str] = []
    for k, batch in enumerate(batches):
        state, events = step(state, batch, now(k))
        made += ids(events)
    return made


def disorder(
    batches: list[ReadingArrays], sensors: set[int], first: int, held: int, delay: int
) -> list[ReadingArrays]:
    """`sensors`' readings of batches first..first+held-1 delivered with batch
    first+held+delay instead (as NATS hands over what waited for a new leader)."""
    out = list(batches)
    late: list[ReadingArrays] = []
    for k in range(first, min(first + held, len(out))):
        mine = np.isin(out[k].sensor, list(sensors))
        late.append(out[k].take(mine))
        out[k] = out[k].take(~mine)
    at = min(first + held + delay, len(out) - 1)
    out[at] = ReadingArrays.concat([*late, out[at]])
    return out


def with_replay(registry: Registry, batches: list[ReadingArrays]) -> tuple[list[str], int]:
    state: EngineState = new_state(registry, START_NS)
    replay = LateReplay(WINDOW_NS)
    made: list[str] = []
    replayed = 0
    for k, batch in enumerate(batches):
        done = replay.step(state, batch, now(k))
        state = done.state
        made += ids(done.events)
        replayed += done.replayed
    return made, replayed


def test_a_held_back_run_is_judged_in_its_place_and_nothing_is_decided_twice(
    flood: tuple[Registry, list[ReadingArrays]],
) -> None:
    registry, batches = flood
    reference = in_order(registry, batches)
    index = new_state(registry, START_NS).sensor_index
    # Three sensors' readings of 4 batches (about 40 minutes of their reading time) held back
    # 30 batches (3 s of arrival): the first flood's rise on Quốc Hương.
    sensors = {index["qh-01"], index["qh-02"], index["qh-04"]}
    shuffled = disorder(batches, sensors, 14, 4, 30)
    missed_plain = set(reference) - set(in_order(registry, shuffled))
    made, replayed = with_replay(registry, shuffled)
    assert missed_plain, "this disorder changes nothing for the plain engine: not a test"
    assert replayed > 0
    assert not set(reference) - set(made), "events of the in-order run missing"
    assert not [i for i, n in Counter(made).items() if n > 1], "an event decided twice"


@pytest.mark.slow  # six whole-flood runs
@settings(max_examples=6, deadline=None)
@given(
    st.sets(st.integers(0, 13), min_size=1, max_size=6),
    st.integers(0, 75),
    st.integers(1, 12),
    st.integers(0, 60),
)
def test_any_held_back_run_within_the_window_misses_nothing(
    tmp_path_factory: pytest.TempPathFactory,
    sensors: set[int],
    first: int,
    held: int,
    delay: int,
) -> None:
    registry, batches = _FLOOD.get(tmp_path_factory)
    reference = _FLOOD.reference
    made, _ = with_replay(registry, disorder(batches, sensors, first, held, delay))
    assert not set(reference) - set(made)
    assert not [i for i, n in Counter(made).items() if n > 1]


class _Cached:
    def __init__(self) -> None:
        self.value: tuple[Registry, list[ReadingArrays]] | None = None
        self.reference: list[str] = []

    def get(self, factory: pytest.TempPathFactory) -> tuple[Registry, list[ReadingArrays]]:
        if self.value is None:
            self.value = _flood(factory.mktemp("reorder-h"))
            self.reference = in_order(*self.value)
        return self.value


_FLOOD = _Cached()


def test_readings_behind_newer_ones_judged_before_the_window_stay_late(
    flood: tuple[Registry, list[ReadingArrays]],
) -> None:
    """Rule 1 stands past the window: held back longer than it, they are stored, not
    judged (the replay does not reach back)."""
    registry, batches = flood
    index = new_state(registry, START_NS).sensor_index
    shuffled = disorder(batches, {index["qh-01"]}, 14, 4, 30)
    state = new_state(registry, START_NS)
    replay = LateReplay(SECOND)  # 1 s: 10 batches
    replayed = 0
    for k, batch in enumerate(shuffled):
        done = replay.step(state, batch, now(k))
        state, replayed = done.state, replayed + done.replayed
    assert replayed == 0


def test_acknowledgements_and_stale_ticks_are_kept_through_a_replay(
    flood: tuple[Registry, list[ReadingArrays]],
) -> None:
    """An alert acknowledged between the late readings' place and their arrival is still
    acknowledged after the replay (the acknowledgement is stepped again in its place)."""
    registry, batches = flood
    index = new_state(registry, START_NS).sensor_index
    shuffled = disorder(batches, {index["nvh-03"]}, 14, 4, 30)
    state = new_state(registry, START_NS)
    replay = LateReplay(WINDOW_NS)
    acked: str | None = None
    replayed = 0
    for k, batch in enumerate(shuffled):
        done = replay.step(state, batch, now(k))
        state, replayed = done.state, replayed + done.replayed
        state, _ = replay.operate(state, functools.partial(check_stale, now_ns=now(k)), now(k))
        if acked is None and k >= 18 and state.alerts:
            acked = next(iter(state.alerts))
            ack = functools.partial(acknowledge, alert_id=acked, who="ioc", note="", now_ns=now(k))
            state, events = replay.operate(state, ack, now(k))
            assert events
    assert replayed > 0 and acked is not None
    if acked in state.alerts:
        assert state.alerts[acked].state in {"active_ack", "cleared_unack", "cleared"}
