"""Partitions shared between live cluster workers (ingest/balance.py): who should release
what, given the members' announcements; pure, no servers."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.balance import Activity, Member, Release, decide, targets, view_with


def busy(*parts: int) -> Member:
    """A member whose partitions all took readings lately."""
    return Member(frozenset(parts), frozenset(parts))


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({"a": 8, "b": 0}, {"a": 4, "b": 4}),
        ({"a": 5, "b": 3, "c": 0}, {"a": 3, "b": 3, "c": 2}),
        ({"a": 0, "b": 3, "c": 5}, {"a": 2, "b": 3, "c": 3}),
        ({"a": 1, "b": 1}, {"a": 1, "b": 1}),
        ({"b": 2, "a": 2, "c": 1}, {"a": 2, "b": 2, "c": 1}),
        ({"a": 0, "b": 0}, {"a": 0, "b": 0}),
        ({}, {}),
    ],
)
def test_targets_share_the_active_partitions_as_evenly_as_counts_allow(
    counts: dict[str, int], expected: dict[str, int]
) -> None:
    """Targets are floor or ceil of T/M, ceil to those that hold the most (fewest moves)."""
    assert targets(counts) == expected


@given(st.dictionaries(st.text("abcdef", min_size=1, max_size=3), st.integers(0, 64), max_size=9))
def test_targets_sum_to_the_active_partitions_each_floor_or_ceil(counts: dict[str, int]) -> None:
    """Whatever the counts, the targets add up to them and differ by at most one."""
    got = targets(counts)
    assert sum(got.values()) == sum(counts.values())
    if counts:
        floor = sum(counts.values()) // len(counts)
        assert set(got.values()) <= {floor, floor + 1}
        # A member holding more never gets a smaller target than one holding less.
        for m in counts:
            for n in counts:
                if counts[m] > counts[n]:
                    assert got[m] >= got[n]


def test_a_worker_above_its_share_releases_its_quietest_partition() -> None:
    """The flooding ward's partition stays; among equals the last gained goes first."""
    view = {"a": busy(0, 1, 2, 3), "b": busy()}
    load = {0: 900, 1: 3, 2: 3, 3: 40}
    gained = {0: 1.0, 1: 5.0, 2: 9.0, 3: 2.0}
    assert decide("a", view, load, gained, None, 10.0, 5.0).release == 2
    # The one below asks; the one above does not (what it releases goes to the one below).
    assert decide("b", view, {}, {}, None, 10.0, 5.0).ask
    assert not decide("a", view, load, gained, None, 10.0, 5.0).ask


def test_one_release_at_a_time_until_another_member_announces_it() -> None:
    """After a release, the next waits for another member to hold it, or for settle_s."""
    view = {"a": busy(0, 1, 2), "b": busy()}
    last = Release(3, since=10.0)
    assert decide("a", view, {}, {}, last, 11.0, 5.0).release is None
    taken = {"a": busy(0, 1, 2), "b": busy(3)}
    assert decide("a", taken, {}, {}, last, 11.0, 5.0).release is not None
    assert decide("a", view, {}, {}, last, 15.5, 5.0).release is not None


def test_nothing_is_released_when_the_shares_are_fair() -> None:
    """At floor or ceil, nobody releases and everybody asks (a dead worker's partitions or a
    ward's first readings go to whoever asks first)."""
    view = {"a": busy(0, 1, 2), "b": busy(3, 4), "c": busy(5, 6, 7)}
    for me in view:
        d = decide(me, view, {}, {}, None, 0.0, 5.0)
        assert d.release is None and d.ask


def test_quiet_partitions_count_for_nobody_and_stay() -> None:
    """A partition with no reading lately is neither counted nor released (a released one
    would stay unowned, with no stale checks, until its next reading)."""
    quiet = Member(frozenset({0, 1, 2, 3}), frozenset({0}))
    view = {"a": quiet, "b": busy()}
    d = decide("a", view, {0: 50}, {}, None, 0.0, 5.0)
    assert d.release is None


def test_the_view_trusts_this_worker_for_its_own_partitions() -> None:
    """Another member's stale claim to a partition this worker holds is dropped."""
    announced = {"a": busy(0), "b": busy(1, 2)}
    view = view_with("a", busy(0, 2), announced)
    assert view == {"a": busy(0, 2), "b": busy(1)}


def test_activity_counts_readings_within_the_window() -> None:
    """Readings taken per partition over the window, from cumulative counts."""
    a = Activity().observe(0.0, (0, 0, 0), window_s=10.0)
    a = a.observe(5.0, (4, 0, 1), window_s=10.0)
    assert a.load() == {0: 4, 2: 1}
    a = a.observe(12.0, (4, 7, 1), window_s=10.0)
    assert a.load() == {1: 7}
    assert Activity().observe(1.0, (2, 0)).load() == {0: 2}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 3), min_size=1, max_size=24),
    st.integers(1, 4),
    st.integers(0, 2**32 - 1),
)
def test_releases_reach_fair_shares_and_go_to_workers_below_theirs(
    holders: list[int], joining: int, seed: int
) -> None:
    """Workers holding any split of busy partitions, and more joining empty: repeating the
    decisions (one release per worker per round, each released partition pinned to one of the
    workers that ask) ends with every worker at floor or ceil of its share within as many rounds
    as there are partitions, and a released partition never goes to a worker that does not
    need it."""
    rng = random.Random(seed)
    names = [f"w{k}" for k in range(4 + joining)]
    owned: dict[str, set[int]] = {n: set() for n in names[: max(holders) + 1]}
    for part, k in enumerate(holders):
        owned[names[k]].add(part)
    for n in names[max(holders) + 1 :][:joining]:
        owned[n] = set()
    partitions = len(holders)
    members = len(owned)
    floor, extra = divmod(partitions, members)
    now = 0.0
    last: dict[str, Release | None] = dict.fromkeys(owned)
    for _ in range(partitions + 1):
        view = {n: busy(*p) for n, p in owned.items()}
        if all(floor <= len(p) <= floor + (1 if extra else 0) for p in owned.values()):
            break
        decisions = {n: decide(n, view, {}, {}, last[n], now, 5.0) for n in owned}
        askers = [n for n, d in decisions.items() if d.ask]
        for n, d in decisions.items():
            if d.release is None:
                continue
            shares = targets({k: len(v) for k, v in owned.items()})
            below = [m for m in askers if len(owned[m]) < shares[m]]
            assert below, "a partition was released with no worker below its share asking"
            taker = rng.choice(below)
            owned[n].discard(d.release)
            owned[taker].add(d.release)
            last[n] = Release(d.release, now)
        now += 1.0
    counts = sorted(len(p) for p in owned.values())
    assert counts[0] >= floor and counts[-1] <= floor + (1 if extra else 0), owned


@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "c", "d", "e"]),
        st.frozensets(st.integers(0, 15), max_size=8),
        min_size=1,
    ),
    st.data(),
)
def test_only_a_worker_above_its_share_releases_and_only_to_one_below(
    owned: dict[str, frozenset[int]], data: st.DataObject
) -> None:
    """For any view: a release comes from a worker above its target while another is below
    (who asks), and a worker below its target always asks."""
    view = {m: Member(p, p) for m, p in owned.items()}
    counts = {m: len(p) for m, p in owned.items()}
    shares = targets(counts)
    load = {p: data.draw(st.integers(0, 50)) for ps in owned.values() for p in ps}
    for me in view:
        d = decide(me, view, load, {}, None, 0.0, 5.0)
        below = [m for m in view if m != me and counts[m] < shares[m]]
        if d.release is not None:
            assert counts[me] > shares[me] and below and d.release in owned[me]
            assert not d.ask
        if counts[me] < shares[me]:
            assert d.ask and d.release is None
