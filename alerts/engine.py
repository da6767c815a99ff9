"""The alert engine: readings in, alert events out. Every rule of CONTRACT section 3 lives here.

################################################################
# The rules
################################################################

Times are reading times unless a rule says `now`. "Consecutive" means consecutive readings of
one sensor in time order; "water readings" are the readings rule 2 trusts. Every duration
below is the contract's value at time scale 1; `new_state(..., time_scale=k)` divides them all
by k (rules 3, 5, 6, 7 and 9: a demo street played k times faster keeps its story; ingest and
the API take it from FLOODWATCH_TIME_SCALE / --time-scale, and production keeps 1).

 1. Late data. A reading not newer than the last reading judged for its sensor is ignored by
    every rule below and counted in `late_ignored`: ingest stores it, but an old backfill never
    raises, escalates, clears or refreshes anything (its arrival only shows that the sensor is
    alive, rule 7), and a redelivered reading is never judged twice. Within one batch each
    sensor's readings are judged in time order, so a backfill that arrives with (or before)
    newer readings is judged in full; a repeated (sensor, time) keeps the copy that arrived
    last. A clock ahead: "newer" is decided on times no later than `now`. A reading stamped
    after `now` (ingest accepts up to 5 minutes ahead) is judged as taken when it arrived, at
    `now` (several of one sensor in one batch keep their order, 1 ns apart, the last at `now`),
    and its events carry that time; so one reading from the future cannot make the sensor's
    real readings after it "late", and a clock running steadily ahead is judged by arrival.
    A reading from the future stamped no later than one already judged is a redelivery (or a
    clock gone back inside the future), ignored as late. Ingest stores the reading with its
    own stamp.
 2. Trust. A reading outside the physical range (CONTRACT section 2), or taken while its
    sensor is obstructed (rule 3), is not water: the ladder, the rate of rise and the "last
    known depth" skip it as if it had not arrived. Rules 8 and 9 still see it.
 3. Obstruction (street sensors): a vehicle and water told apart as in the field, and water when
    unsure (a missed car costs a false alert an operator dismisses; a missed flood costs far more).
    A vehicle under a distance sensor is a jump no water makes, to a roof steady to the millimetre,
    with no water of that depth on the street, then a jump back; water rises at most ~25 cm between
    readings a minute apart (the field's flash floods), is noisy, and its neighbours share it. So a
    reading opens an obstruction, unless one is open, when it rises more than a step above the
    higher of the two previous readings (both known; an obstructed one does not count), a step being
    40 cm, or 25 cm per minute since the previous reading if longer (at most 80 cm, below any car's
    roof), and it is not within 15 cm of the deepest latest reading, before it, of another sensor of
    its street (a flash flood reaching this sensor after its neighbours; whatever batch that reading
    came in, so a restart judges as the running engine did). Its base is the level before the jump.
    Any smaller rise, 15-25 cm a reading included, is water from its first reading, whether it keeps
    rising or then lies still to the millimetre. The obstruction closes at the first later reading
    back within a step of its base (the object left), or that, like the reading before it, moved
    more than 0.5 cm and less than a step (water moving: a roof does not). Another object taking the
    place of the first keeps it open; a jump never closes it. Blind spots, by design: an object
    lower than a step above the water (a cart, a kerb-high board) is taken for water, so a long one
    can raise a flood an operator dismisses; and a car under a sensor's second reading ever is not
    recognised (no history to measure it from). The river stage and rain are not the engine's to see
    (no rain gauge in the registry; the tide gauge's stage is not a street depth), so the street's
    own water is the context.
 4. Ladder and debounce. A water reading's raw level is how many of its sensor's thresholds
    (CONTRACT ladder or the registry's override) are at or below its depth. Level L is entered
    when two consecutive water readings both have raw level >= L, so one spike never raises;
    entering a higher level from a lower one is an escalation, whatever the jump.
 5. Hysteresis. Level L is left only when the water readings have stayed below its threshold
    minus 3 cm for 10 minutes (from the first such reading to the current one); the level
    falls to the highest level not so released. Falling to 0 clears the flood alert.
 6. Rate of rise (street sensors). A water reading rises when its depth is 10 cm or more above
    the lowest level held in the previous 15 minutes, a level being held when two consecutive
    water readings in that window were at or above it (one low spike is no baseline).
    `rising` is raised when two consecutive water readings rise, and cleared when the rise has
    stayed under 7 cm for 10 minutes (the same 3 cm and 10 minutes as the ladder).
 7. Stale. A sensor is stale when `now` is more than 3 intervals after the engine last heard
    it: the `now` of the last `step` that brought any reading of it, late ones included (the
    engine's start if it was never heard). Silence is about arrivals, not the readings' own
    clocks: a sensor whose clock runs minutes behind, or jumps back, or a replay of last
    month's readings, is not silent while its readings keep arriving. `check_stale` raises it,
    with the sensor's last reading time (3 intervals divided by the time scale); `step` clears
    it when a batch brings a reading to
    judge (a late one keeps a live sensor from going stale, but is no fresh data to end a
    silence with). Silence changes nothing else: only readings release a level (rule 5), so a
    silent sensor keeps its flood alert, which shows its last known depth and time.
 8. Battery. `battery_low` is raised when two consecutive readings carrying a voltage are
    under 3.3 V, and cleared by a reading at 3.4 V or more.
 9. Fault. A reading is faulty when it is outside the physical range, or when its sensor has
    been obstructed for 15 minutes or more. `fault` is raised by two consecutive faulty
    readings, and, judged at the end of each batch, by a street sensor whose value has not
    changed by more than 0.05 cm for 30 minutes while another sensor on its street moved 10 cm
    or more, between levels held by two consecutive readings, in the 30 minutes up to the flat
    sensor's last reading (stuck; the street's latest flat reading when several are flat).
    Only that live, recent movement counts: a neighbour silent or removed since is no
    witness, however much it moved before. It clears after two consecutive readings that are
    not faulty, once the value is no longer unchanged for 30 minutes.
10. Lifecycle. A (sensor, kind) has at most one active alert. Raised: active_unack.
    Acknowledged: active_unack -> active_ack, cleared_unack -> cleared_ack; acknowledging an
    acknowledged alert changes nothing. Escalated: back to active_unack, since a worse level
    needs a fresh acknowledgement. De-escalated: state kept. Cleared: active_unack ->
    cleared_unack, active_ack -> cleared_ack. A cleared_ack alert is closed and forgotten; a
    new alert of the same sensor and kind may be raised while an old one waits in
    cleared_unack.
11. Episodes. A flood episode of the ward begins when a street sensor's flood alert is raised
    while no street flood alert is active, and ends when the last one clears; it is then
    emitted as a FloodEpisode. Its peak is the deepest water reading under any of its alerts.
    Tide gauges have alerts but no episodes: a river stage is not a street depth.
12. Order and ids. The events of one call come out in (reading time, sensor, kind) order, with
    ids made of sensor, kind, change and reading time: replaying the same readings gives the
    same ids, and a restart rebuilt from the events (alerts.rebuild) raises nothing twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from alerts._vector import Bools, Floats, Ints, Segments, held_low
from alerts.errors import UnknownAlert
from alerts.events import AlertEvent, Event, FloodEpisode
from alerts.lifecycle import CLOSED, transition
from alerts.state import (
    NEVER,
    Alert,
    EngineConfig,
    EngineState,
    OpenEpisode,
    ReadingArrays,
    SensorArrays,
)
from floodwatch.contract import (
    BATTERY_LOW_V,  # rule 8
    STALE_INTERVALS,  # rule 7
    AlertKind,
    Change,
    level_name,
)

MINUTE_NS = 60 * 10**9
HYSTERESIS_CM = 3.0  # rule 5
HOLD_NS = 10 * MINUTE_NS  # rules 5, 6
RISE_CM = 10.0  # rule 6
RISE_WINDOW_NS = 15 * MINUTE_NS
BATTERY_CLEAR_V = 3.4
# Rule 3. Field floods rose up to ~25 cm between readings a minute apart; no water rises
# 40 cm in a minute. A jump beyond that (25 cm a minute for longer gaps, but never more than
# 80 cm: a car's roof is higher still) is an object, unless the street's water is that deep.
SURGE_CM = 40.0
SURGE_CM_PER_MIN = 25.0
SURGE_MAX_CM = 80.0
MAX_CONTEXT_PASSES = 8  # rule 3: chains of witnesses longer than this are cut short
NEAR_WATER_CM = 15.0  # "that deep": within this of a street sensor's last water depth
MOVING_CM = 0.5  # a change a parked car's roof never makes, and rising water does
OBSTRUCTION_FAULT_NS = 15 * MINUTE_NS  # rule 9
UNCHANGED_CM = 0.05
STUCK_NS = 30 * MINUTE_NS
NEIGHBOUR_MOVE_CM = 10.0
# How much water history the state keeps per sensor, for the windows of rules 6 and 9.
TAIL_NS = max(RISE_WINDOW_NS, STUCK_NS)


@dataclass(frozen=True, slots=True)
class Timers:
    """The rules' durations for one time scale: the constants above divided by it (rules 3, 5,
    6, 7 and 9 all run on these, so a demo played 60 times faster keeps its story)."""

    minute_ns: int
    hold_ns: int
    rise_window_ns: int
    obstruction_fault_ns: int
    stuck_ns: int
    tail_ns: int

    @classmethod
    def of(cls, time_scale: float) -> Timers:
        def scaled(ns: int) -> int:
            return max(1, round(ns / time_scale))

        return cls(
            minute_ns=scaled(MINUTE_NS),
            hold_ns=scaled(HOLD_NS),
            rise_window_ns=scaled(RISE_WINDOW_NS),
            obstruction_fault_ns=scaled(OBSTRUCTION_FAULT_NS),
            stuck_ns=scaled(STUCK_NS),
            tail_ns=scaled(TAIL_NS),
        )


@lru_cache(maxsize=8)
def timers(time_scale: float) -> Timers:
    return Timers.of(time_scale)


_RANK: Mapping[AlertKind, int] = {
    "flood": 0,
    "rising": 1,
    "fault": 2,
    "battery_low": 3,
    "stale": 4,
}
# Group offsets for the per-run running maximum of depths (valid depths lie within +-500 cm).
_PEAK_STRIDE = 4000.0
_PEAK_NONE = -1000.0


class _Change(NamedTuple):
    """One alert condition turning on, off, or (flood) to another level, from the vector pass."""

    time_ns: int
    sensor: int
    rank: int
    kind: AlertKind
    value: int  # flood: the new level; others: 1 on, 0 off
    depth_cm: float | None
    extra: float | None  # rising: the rise; battery_low: the voltage
    detail: str
    peak_cm: float | None
    peak_ns: int | None


@dataclass(frozen=True, slots=True)
class _Advance:
    arrays: SensorArrays
    tail: ReadingArrays
    changes: list[_Change]
    water: ReadingArrays  # the batch's water readings, sorted (rebuild uses them)
    judged: NDArray[np.int32]  # the sensors the batch brought new readings for


def step(
    state: EngineState, readings: ReadingArrays, now_ns: int
) -> tuple[EngineState, list[Event]]:
    """Judge a batch of readings (any sensors, any order): the new state and the events.

    `now_ns` is the engine's "now": it stamps the events (`at_ns`), ends staleness (rule 7)
    and caps reading times (rule 1: a reading stamped after it is judged as taken now); the
    rules themselves run on reading times.
    """
    cfg = state.config
    adv = _advance(cfg, state.arrays, state.tail, readings, now_ns)
    book = _Book.of(state)
    events: list[Event] = []
    for change in sorted(adv.changes):
        book.apply(change, now_ns, events)
    arrays = adv.arrays
    # Rule 7: every sensor of the batch was heard now; those with a reading judged are no
    # longer stale.
    if len(readings):
        heard = np.unique(readings.sensor)
        heard_ns = arrays.heard_ns.copy()
        heard_ns[heard] = np.maximum(heard_ns[heard], now_ns)
        arrays = arrays.evolve(heard_ns=heard_ns)
    judged = adv.judged
    fresh = judged[arrays.stale_on[judged]]
    if len(fresh):
        stale_on = arrays.stale_on.copy()
        stale_on[fresh] = False
        arrays = arrays.evolve(stale_on=stale_on)
        for i in sorted(fresh.tolist()):
            t = int(arrays.last_ns[i])
            change = _Change(
                t, i, _RANK["stale"], "stale", 0, _known(arrays, i), None, "", None, None
            )
            book.apply(change, now_ns, events)
    return book.state(state, arrays, adv.tail), events


def check_stale(state: EngineState, now_ns: int) -> tuple[EngineState, list[Event]]:
    """Raise `stale` for sensors not heard for more than 3 intervals before `now_ns` (rule 7).

    Call it periodically (every few seconds is plenty), with the same clock as `step`. It
    never clears anything and never touches a flood alert: a silent sensor keeps its level and
    last known depth. The event's reading time is the sensor's last reading (the engine's start
    if it was never heard).
    """
    cfg, a = state.config, state.arrays
    heard_at = np.where(a.heard_ns != NEVER, a.heard_ns, state.start_ns)
    limit = STALE_INTERVALS * cfg.interval_ns
    if cfg.time_scale != 1.0:
        limit = np.round(limit / cfg.time_scale).astype(np.int64)
    new = ~a.stale_on & (now_ns - heard_at > limit)
    if not new.any():
        return state, []
    stale_on = a.stale_on | new
    last = np.where(a.last_ns != NEVER, a.last_ns, state.start_ns)
    book = _Book.of(state)
    events: list[Event] = []
    changes = [
        _Change(int(last[i]), i, _RANK["stale"], "stale", 1, _known(a, i), None, "", None, None)
        for i in np.flatnonzero(new).tolist()
    ]
    for change in sorted(changes):
        book.apply(change, now_ns, events)
    return book.state(state, a.evolve(stale_on=stale_on), state.tail), events


def acknowledge(
    state: EngineState, alert_id: str, who: str, note: str, now_ns: int
) -> tuple[EngineState, list[Event]]:
    """An operator acknowledges an open alert (rule 10); raises UnknownAlert for an id that is
    not open. Acknowledging an acknowledged alert returns the state unchanged and no events."""
    alert = state.alerts.get(alert_id)
    if alert is None:
        raise UnknownAlert(alert_id, len(state.alerts))
    if not transition(alert.state, "acknowledged").emits:
        return state, []
    book = _Book.of(state)
    events: list[Event] = []
    book.acknowledge(alert, who, note, now_ns, events)
    return book.state(state, state.arrays, state.tail), events


def _known(a: SensorArrays, i: int) -> float | None:
    depth = float(a.last_water_cm[i])
    return None if np.isnan(depth) else depth


# ---------------------------------------------------------------------------------------------
# The vectorised pass: rules 1-9 over a whole batch, producing the changes the book records.


def _advance(
    cfg: EngineConfig, old: SensorArrays, tail: ReadingArrays, batch: ReadingArrays, now_ns: int
) -> _Advance:
    nobody = np.empty(0, dtype=np.int32)
    if not len(batch):
        return _Advance(old, tail, [], ReadingArrays.empty(), nobody)
    tm = timers(cfg.time_scale)
    # Rule 1: a clock ahead is judged by arrival; late readings are counted, not judged.
    batch, repeated, ahead_ns = _arrival_times(batch, now_ns, old.ahead_ns)
    fresh = batch.time_ns > old.last_ns[batch.sensor]
    if repeated is not None:
        fresh &= ~repeated
    late_ignored = old.late_ignored
    if not fresh.all():
        late_ignored = late_ignored + np.bincount(batch.sensor[~fresh], minlength=cfg.n)
        batch = batch.take(fresh)
        if not len(batch):
            arrays = old.evolve(late_ignored=late_ignored, ahead_ns=ahead_ns)
            return _Advance(arrays, tail, [], ReadingArrays.empty(), nobody)
    batch = _sorted_unique(batch, cfg.n)
    s, t, d, b = batch.sensor, batch.time_ns, batch.level_cm, batch.battery_v
    seg = Segments.of(s)
    street = ~cfg.tide[s]
    changes: list[_Change] = []
    new: dict[str, object] = {"late_ignored": late_ignored, "ahead_ns": ahead_ns}

    # Rule 3: obstruction.
    prev_d = seg.shift(d, old.last_cm)
    diff = d - prev_d  # NaN for a sensor's first reading ever
    prev_t = seg.shift(t, old.last_ns)
    # The most a water surface rises from one reading to the next (a sensor's first reading
    # ever has no gap: the cap).
    allowed = np.clip(SURGE_CM_PER_MIN * ((t - prev_t) / tm.minute_ns), SURGE_CM, SURGE_MAX_CM)
    # Jumps are measured from the higher of the two previous readings, so one low outlier
    # fakes none; with fewer than two readings known (NaN), nothing is a jump. The carried
    # reading before last is -inf if it was obstructed: known, but not water.
    prev2_d = seg.shift(prev_d, old.before_last_cm)
    first_guess = street & (d - np.maximum(prev_d, prev2_d) > allowed)
    moving = (np.abs(diff) > MOVING_CM) & (np.abs(diff) <= allowed)
    new["prev_moving"] = seg.carry(moving, old.prev_moving)
    obst = np.zeros(len(s), dtype=np.bool_)
    prev_obst = obst
    base, obst_since = d, t
    # Only sensors with a jump, or an obstruction carried in, can be obstructed.
    busy = (np.maximum.reduceat(first_guess, seg.first_idx) > 0) | old.obst_on[seg.seg_sensor]
    if busy.any():
        pick = np.flatnonzero(np.repeat(busy, seg.lengths))
        sub = Segments.of(s[pick])
        # Context: a jump to about the depth the street's water already has is water. The
        # water of this batch counts as much as that of earlier ones, so how readings were
        # batched changes no verdict (a restart replays its window in one batch): the context
        # of a reading comes only from earlier readings, so judging again with the water found
        # by the previous pass settles, in as many passes as the longest chain of witnesses.
        ranged = (d >= cfg.range_lo[s]) & (d <= cfg.range_hi[s])
        trusted = ranged
        for _ in range(MAX_CONTEXT_PASSES):
            near_water = (
                d[pick] <= _street_water_before(cfg, old, s, t, d, trusted, pick) + NEAR_WATER_CM
            )
            found, found_prev, found_base, found_since = _obstructions(
                sub,
                old,
                street[pick],
                d[pick],
                t[pick],
                prev_d[pick],
                prev2_d[pick],
                allowed[pick],
                moving[pick],
                near_water,
            )
            settled = ranged.copy()
            settled[pick] &= ~found
            if np.array_equal(settled, trusted):
                break
            trusted = settled
        obst, prev_obst = obst.copy(), obst.copy()
        obst[pick], prev_obst[pick] = found, found_prev
        base, obst_since = d.copy(), t.copy()
        base[pick], obst_since[pick] = found_base, found_since
        new["obst_base"] = sub.carry(found_base, old.obst_base)
        new["obst_since"] = sub.carry(found_since, old.obst_since)
    new["before_last_cm"] = seg.carry(np.where(prev_obst, -np.inf, prev_d), old.before_last_cm)
    new["obst_on"] = seg.carry(obst, old.obst_on)
    in_range = (d >= cfg.range_lo[s]) & (d <= cfg.range_hi[s])

    # Rule 9, per reading: faults, and how long the value has been unchanged.
    unchanged = np.abs(diff) <= UNCHANGED_CM
    flat_since = seg.fill(~unchanged, t, old.flat_since)
    new["flat_since"] = seg.carry(flat_since, old.flat_since)
    faulty = ~in_range | (obst & (t - obst_since >= tm.obstruction_fault_ns))
    prev_faulty = seg.shift(faulty, old.prev_fault)
    new["prev_fault"] = seg.carry(faulty, old.prev_fault)
    if faulty.any() or prev_faulty.any() or old.fault_on[seg.seg_sensor].any():
        long_unchanged = t - flat_since >= tm.stuck_ns
        fault = seg.latch(
            faulty & prev_faulty, ~faulty & ~prev_faulty & ~long_unchanged, old.fault_on
        )
        new["fault_on"] = seg.carry(fault, old.fault_on)
        for k in np.flatnonzero(fault != seg.shift(fault, old.fault_on)).tolist():
            detail = "" if not fault[k] else "out_of_range" if not in_range[k] else "obstructed"
            changes.append(
                _Change(
                    int(t[k]),
                    int(s[k]),
                    _RANK["fault"],
                    "fault",
                    int(fault[k]),
                    # An obstruction's fault carries the water level it started from: the last
                    # known depth, and what a restart needs to resume it.
                    float(base[k] if detail == "obstructed" else d[k]),
                    None,
                    detail,
                    None,
                    None,
                )
            )
    new["last_ns"] = seg.carry(t, old.last_ns)
    new["last_cm"] = seg.carry(d, old.last_cm)

    # Rule 8: battery, over the readings that carry a voltage.
    has_b = ~np.isnan(b)
    if has_b.any():
        bi = np.flatnonzero(has_b)
        segb = Segments.of(s[bi])
        volts = b[bi]
        low = volts < BATTERY_LOW_V
        batt = segb.latch(
            low & segb.shift(low, old.prev_batt_low), volts >= BATTERY_CLEAR_V, old.batt_on
        )
        new["prev_batt_low"] = segb.carry(low, old.prev_batt_low)
        new["batt_on"] = segb.carry(batt, old.batt_on)
        new["last_battery_v"] = segb.carry(volts, old.last_battery_v)
        for k in np.flatnonzero(batt != segb.shift(batt, old.batt_on)).tolist():
            r = int(bi[k])
            changes.append(
                _Change(
                    int(t[r]),
                    int(s[r]),
                    _RANK["battery_low"],
                    "battery_low",
                    int(batt[k]),
                    float(d[r]),
                    float(volts[k]),
                    "",
                    None,
                    None,
                )
            )

    # Rule 2: the rest judges water only.
    trusted = in_range & ~obst
    water = batch if trusted.all() else batch.take(trusted)
    # Only the history of the batch's sensors is needed, which keeps small batches cheap.
    in_batch = np.zeros(cfg.n, dtype=np.bool_)
    in_batch[seg.seg_sensor] = True
    mine = in_batch[tail.sensor]
    others = tail.take(~mine)
    merged, water_pos = _merge_tail(tail.take(mine), water, cfg.n)
    arrays = old.evolve(**new)
    if len(water):
        arrays, water_changes = _judge_water(cfg, arrays, old, water, merged, water_pos)
        changes.extend(water_changes)
    arrays, stuck_changes = _stuck(cfg, arrays, others, merged, seg.seg_sensor)
    changes.extend(stuck_changes)
    keep = merged.time_ns >= arrays.last_ns[merged.sensor] - tm.tail_ns
    # Each sensor's tail stays in time order; sensors need not be grouped.
    new_tail = ReadingArrays.concat([others, merged.take(keep)])
    return _Advance(arrays, new_tail, changes, water, seg.seg_sensor)


def _obstructions(
    seg: Segments,
    old: SensorArrays,
    street: Bools,
    d: Floats,
    t: Ints,
    prev_d: Floats,
    prev2_d: Floats,
    allowed: Floats,
    moving: Bools,
    near_water: Bools,
) -> tuple[Bools, Bools, Floats, Ints]:
    """Rule 3 for whole segments: each reading obstructed or not, the previous one obstructed
    or not, the base water level, and since when.

    Sequential at heart: a jump is measured from previous readings that were water, and opens
    an obstruction (setting its base) only if none is open. Solved as a fixed point: guess no
    reading is obstructed, judge every reading from the guess, repeat with the result. A
    reading's verdict depends only on the verdicts of readings before it, so each pass
    settles at least the first reading the previous pass got wrong in every segment, and the
    loop ends; with one vehicle at a time, the second pass confirms the first.
    """
    water_like = moving & seg.shift(moving, old.prev_moving)
    obst = np.zeros(len(d), dtype=np.bool_)
    # The carried reading before last is already -inf when it was obstructed.
    carried_water = np.zeros_like(old.obst_on)
    for _ in range(len(d) + 1):
        prev_obst = seg.shift(obst, old.obst_on)
        prev2_obst = seg.shift(prev_obst, carried_water)
        level_before = np.maximum(prev_d, np.where(prev2_obst, -np.inf, prev2_d))
        jump = street & (d - level_before > allowed) & ~near_water
        opens = jump & ~prev_obst
        base = seg.fill(opens, level_before, old.obst_base)
        closes = ((d <= base + allowed) | water_like) & ~jump
        judged = seg.latch(jump, closes, old.obst_on)
        if np.array_equal(judged, obst):
            break
        obst = judged
    return obst, prev_obst, base, seg.fill(opens, t, old.obst_since)


def _judge_water(
    cfg: EngineConfig,
    arrays: SensorArrays,
    old: SensorArrays,
    water: ReadingArrays,
    merged: ReadingArrays,
    water_pos: Ints,
) -> tuple[SensorArrays, list[_Change]]:
    """Rules 4, 5 and 6 over the batch's water readings, and the flood peaks."""
    s, t, d = water.sensor, water.time_ns, water.level_cm
    seg = Segments.of(s)
    tm = timers(cfg.time_scale)
    changes: list[_Change] = []
    new: dict[str, object] = {
        "last_water_ns": seg.carry(t, old.last_water_ns),
        "last_water_cm": seg.carry(d, old.last_water_cm),
    }

    # Rule 4: raw levels and the two-reading debounce.
    raw = (d[:, None] >= cfg.thresholds[s]).sum(axis=1, dtype=np.int8)
    new["prev_raw"] = seg.carry(raw, old.prev_raw)
    # Rule 5: one set/reset latch per level; the level is how many are set. A sensor at level 0
    # whose readings all stay under its first threshold stays at 0, so it is skipped: its runs
    # below the thresholds are never used, since entering a level breaks them.
    hot = (np.maximum.reduceat(raw, seg.first_idx) > 0) | (old.level[seg.seg_sensor] > 0)
    level = np.zeros(len(s), dtype=np.int8)
    below_since = old.below_since
    if hot.any():
        pick = None if hot.all() else np.flatnonzero(np.repeat(hot, seg.lengths))
        level_hot, below_since = _ladder(cfg, old, seg, raw, t, d, pick)
        if pick is None:
            level = level_hot
        else:
            level[pick] = level_hot
    new["below_since"] = below_since
    new["level"] = seg.carry(level, old.level)
    prev_level = seg.shift(level, old.level)

    # Rule 6: rate of rise against the lowest held level, history from the tail included.
    # Sensors whose water history spans under 7 cm cannot rise, nor stop being calm: skipped.
    mseg = Segments.of(merged.sensor)
    span = np.maximum.reduceat(merged.level_cm, mseg.first_idx) - np.minimum.reduceat(
        merged.level_cm, mseg.first_idx
    )
    lively = old.rise_on.copy()
    lively[mseg.seg_sensor] |= span >= RISE_CM - HYSTERESIS_CM
    lively &= ~cfg.tide
    rise = np.zeros(len(s))
    if lively.any():
        in_merged = lively[merged.sensor]
        sub = merged.take(in_merged)
        lowest = held_low(sub.sensor, sub.time_ns, sub.level_cm, tm.rise_window_ns)
        sub_pos = np.cumsum(in_merged, dtype=np.int64) - 1
        mine = np.flatnonzero(lively[s])
        rise[mine] = d[mine] - lowest[sub_pos[water_pos[mine]]]
    rises = ~cfg.tide[s] & (rise >= RISE_CM)
    calm = rise < RISE_CM - HYSTERESIS_CM
    calm_start = seg.run_start(calm, t, old.calm_since)
    rising = seg.latch(
        rises & seg.shift(rises, old.prev_rise),
        calm & (t - calm_start >= tm.hold_ns),
        old.rise_on,
    )
    new["prev_rise"] = seg.carry(rises, old.prev_rise)
    new["calm_since"] = seg.carry_run(calm, calm_start, old.calm_since)
    new["rise_on"] = seg.carry(rising, old.rise_on)
    for k in np.flatnonzero(rising != seg.shift(rising, old.rise_on)).tolist():
        changes.append(
            _Change(
                int(t[k]),
                int(s[k]),
                _RANK["rising"],
                "rising",
                int(rising[k]),
                float(d[k]),
                round(float(rise[k]), 2),
                "",
                None,
                None,
            )
        )

    # Peaks of flood alerts, then the level changes that carry them.
    flooded = level >= 1
    peak_cm: Floats | None = None
    peak_ns: Ints | None = None
    if flooded.any():
        peak_cm, peak_ns = _running_peaks(seg, old, flooded, prev_level, t, d)
        new["peak_cm"] = seg.carry(np.where(flooded, peak_cm, np.nan), old.peak_cm)
        new["peak_ns"] = seg.carry(np.where(flooded, peak_ns, NEVER), old.peak_ns)
    else:
        new["peak_cm"] = seg.carry(np.full(len(s), np.nan), old.peak_cm)
        new["peak_ns"] = seg.carry(np.full(len(s), NEVER, dtype=np.int64), old.peak_ns)
    for k in np.flatnonzero(level != prev_level).tolist():
        if level[k] >= 1 and peak_cm is not None and peak_ns is not None:
            peak: tuple[float | None, int | None] = (float(peak_cm[k]), int(peak_ns[k]))
        elif level[k] == 0 and not seg.first[k] and peak_cm is not None and peak_ns is not None:
            # A clear: the alert's final peak is the one as of the reading before.
            peak = (float(peak_cm[k - 1]), int(peak_ns[k - 1]))
        elif level[k] == 0:
            peak = (float(old.peak_cm[s[k]]), int(old.peak_ns[s[k]]))
        else:
            peak = (None, None)
        changes.append(
            _Change(
                int(t[k]),
                int(s[k]),
                _RANK["flood"],
                "flood",
                int(level[k]),
                float(d[k]),
                None,
                "",
                *peak,
            )
        )
    return arrays.evolve(**new), changes


def _ladder(
    cfg: EngineConfig,
    old: SensorArrays,
    seg: Segments,
    raw: NDArray[np.int8],
    t: Ints,
    d: Floats,
    pick: NDArray[np.intp] | None,
) -> tuple[NDArray[np.int8], Ints]:
    """Rules 4 and 5 for the readings in `pick` (whole segments; None for all): each reading's
    level, and the carried runs below each threshold."""
    if pick is not None:
        seg, raw, t, d = Segments.of(seg.sensor[pick]), raw[pick], t[pick], d[pick]
    thresholds = cfg.thresholds[seg.sensor]
    hold_ns = timers(cfg.time_scale).hold_ns
    entry = np.minimum(raw, seg.shift(raw, old.prev_raw))
    level = np.zeros(len(t), dtype=np.int8)
    below_since = old.below_since.copy()
    for j in range(cfg.max_levels):
        below = d < thresholds[:, j] - HYSTERESIS_CM
        start = seg.run_start(below, t, old.below_since[:, j])
        released = below & (t - start >= hold_ns)
        level += seg.latch(entry > j, released, old.level > j)
        below_since[:, j] = seg.carry_run(below, start, old.below_since[:, j])
    return level, below_since


def _running_peaks(
    seg: Segments,
    old: SensorArrays,
    flooded: Bools,
    prev_level: NDArray[np.int8],
    t: Ints,
    d: Floats,
) -> tuple[Floats, Ints]:
    """Per water reading under a flood alert: the alert's deepest reading so far, and when.

    One running maximum over the whole batch, with each flood run lifted by its own offset so
    no run sees an earlier one; a run open at the batch start is seeded with the carried peak.
    """
    n = len(t)
    begins = flooded & (prev_level == 0)
    group_mark = begins | seg.first
    group = np.cumsum(group_mark, dtype=np.int64)
    value = np.where(flooded, d, _PEAK_NONE)
    when = t.copy()
    cont = np.flatnonzero(seg.first & flooded & (prev_level >= 1))
    if len(cont):
        carried = old.peak_cm[seg.sensor[cont]]
        better = carried >= d[cont]
        value[cont] = np.where(better, carried, d[cont])
        when[cont] = np.where(better, old.peak_ns[seg.sensor[cont]], t[cont])
    lifted = value + group * _PEAK_STRIDE
    running = np.maximum.accumulate(lifted)
    record = group_mark.copy()
    record[1:] |= lifted[1:] > running[:-1]
    at = seg.fill(record, np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64))
    return value[at], when[at]


def _stuck(
    cfg: EngineConfig,
    arrays: SensorArrays,
    others: ReadingArrays,
    mine: ReadingArrays,
    judged: NDArray[np.int32],
) -> tuple[SensorArrays, list[_Change]]:
    """Rule 9, stuck: judged once per batch for the sensors it brought readings from, against
    the water history of every sensor (the batch's own, merged, and the others' tails)."""
    stuck_ns = timers(cfg.time_scale).stuck_ns
    last = arrays.last_ns[judged]
    candidates = judged[
        ~cfg.tide[judged]
        & (last - arrays.flat_since[judged] >= stuck_ns)
        & ~arrays.obst_on[judged]
        & ~arrays.fault_on[judged]
    ]
    if not len(candidates):
        return arrays, []
    merged, _ = _merge_tail(others, mine, cfg.n)
    if not len(merged):
        return arrays, []
    # Which sensors moved in the 30 minutes before the street's flat sensor last read, from
    # the water history: between levels held by two consecutive readings, so that one spike is
    # not a move. Only that window counts, so a neighbour silent (or removed) since is no
    # witness: its tail is older.
    until = np.full(len(cfg.streets), NEVER, dtype=np.int64)
    np.maximum.at(until, cfg.street_of[candidates], arrays.last_ns[candidates])
    ms, md, mt = merged.sensor, merged.level_cm, merged.time_ns
    upto = until[cfg.street_of[ms]]
    witness = upto != NEVER
    recent = witness & (mt <= upto) & (mt >= np.where(witness, upto, 0) - stuck_ns)
    pair_ok = np.zeros(len(ms), dtype=np.bool_)
    pair_ok[:-1] = (ms[1:] == ms[:-1]) & recent[:-1] & recent[1:]
    upper = np.empty(len(ms))
    lower = np.empty(len(ms))
    upper[:-1], lower[:-1] = np.minimum(md[:-1], md[1:]), np.maximum(md[:-1], md[1:])
    mseg = Segments.of(ms)
    hi = np.maximum.reduceat(np.where(pair_ok, upper, -np.inf), mseg.first_idx)
    lo = np.minimum.reduceat(np.where(pair_ok, lower, np.inf), mseg.first_idx)
    moved = np.zeros(cfg.n, dtype=np.bool_)
    moved[mseg.seg_sensor] = hi - lo >= NEIGHBOUR_MOVE_CM
    street_moves = np.bincount(cfg.street_of, weights=moved, minlength=len(cfg.streets))
    neighbour_moved = street_moves[cfg.street_of[candidates]] - moved[candidates] > 0
    stuck = candidates[neighbour_moved]
    if not len(stuck):
        return arrays, []
    fault_on = arrays.fault_on.copy()
    fault_on[stuck] = True
    changes = [
        _Change(
            int(arrays.last_ns[i]),
            i,
            _RANK["fault"],
            "fault",
            1,
            float(arrays.last_cm[i]),
            None,
            "stuck",
            None,
            None,
        )
        for i in stuck.tolist()
    ]
    return arrays.evolve(fault_on=fault_on), changes


def _street_water_before(
    cfg: EngineConfig,
    old: SensorArrays,
    s: NDArray[Any],
    t: Ints,
    d: Floats,
    water: Bools,
    pick: NDArray[Any],
) -> Floats:
    """Per picked reading: the deepest last known water depth, strictly before it, among the
    other sensors of its street (-inf where none is known; tide gauges have no street depth):
    from this batch's readings taken as water (`water`) or, before them, the last water reading
    of earlier batches. Its own depth is left out: water it read before is no witness for the
    jump it reads now."""
    out = np.full(len(pick), -np.inf)
    pick_s, pick_t = s[pick], t[pick]
    for street in np.unique(cfg.street_of[pick_s]).tolist():
        here = np.flatnonzero(cfg.street_of[pick_s] == street)
        for j in np.flatnonzero((cfg.street_of == street) & ~cfg.tide).tolist():
            mine = (s == j) & water
            times, depths = t[mine], d[mine]
            if not np.isnan(old.last_water_cm[j]):
                times = np.concatenate(([old.last_water_ns[j]], times))
                depths = np.concatenate(([old.last_water_cm[j]], depths))
            if len(times) == 0:
                continue
            k = np.searchsorted(times, pick_t[here], side="left") - 1
            seen = (k >= 0) & (pick_s[here] != j)
            value = np.where(seen, depths[np.clip(k, 0, None)], -np.inf)
            out[here] = np.maximum(out[here], value)
    return out


def _arrival_times(
    batch: ReadingArrays, now_ns: int, ahead_ns: Ints
) -> tuple[ReadingArrays, Bools | None, Ints]:
    """Rule 1 for a clock that runs ahead: a reading stamped after `now` is judged as taken when
    it arrived, at `now` (several of one sensor keep their order, 1 ns apart, the last at
    `now`), so one reading from the future cannot make the sensor's next real ones "late".

    Returns the batch with those times, which of its readings repeat a stamp from the future
    already judged (a redelivery; for equal stamps within the batch, all but the last to
    arrive) or None if none is ahead, and the sensors' latest stamps from the future."""
    ahead = batch.time_ns > now_ns
    if not ahead.any():
        return batch, None, ahead_ns
    idx = np.flatnonzero(ahead)
    # Stable: equal stamps of a sensor stay in arrival order.
    order = idx[np.lexsort((batch.time_ns[idx], batch.sensor[idx]))]
    sensor, stamp = batch.sensor[order], batch.time_ns[order]
    again = stamp <= ahead_ns[sensor]
    again[:-1] |= (sensor[1:] == sensor[:-1]) & (stamp[1:] == stamp[:-1])
    repeated = np.zeros(len(batch), dtype=np.bool_)
    repeated[order[again]] = True
    judged = order[~again]
    time_ns = batch.time_ns.copy()
    if len(judged):
        seg = Segments.of(batch.sensor[judged])
        number = np.cumsum(seg.first) - 1
        time_ns[judged] = now_ns - (seg.last_idx[number] - np.arange(len(judged)))
    latest = ahead_ns.copy()
    np.maximum.at(latest, sensor, stamp)
    return ReadingArrays(batch.sensor, time_ns, batch.level_cm, batch.battery_v), repeated, latest


def _sorted_unique(batch: ReadingArrays, n_sensors: int) -> ReadingArrays:
    """The batch sorted by (sensor, time); of readings with the same sensor and time, the one
    that arrived last."""
    s, t = batch.sensor, batch.time_ns
    if len(s) < 2:
        return batch
    # A stable sort by sensor alone keeps arrival order within a sensor, usually time order
    # already; 16-bit keys get numpy's radix sort.
    key = s.astype(np.int16) if n_sensors <= np.iinfo(np.int16).max else s
    order = np.argsort(key, kind="stable")
    s1, t1 = s[order], t[order]
    same = s1[1:] == s1[:-1]
    dt = t1[1:] - t1[:-1]
    if (dt[same] <= 0).any():
        order = np.lexsort((t, s))
        s1, t1 = s[order], t[order]
        same = s1[1:] == s1[:-1]
        dup = same & (t1[1:] == t1[:-1])
        if dup.any():
            keep = np.ones(len(order), dtype=np.bool_)
            keep[:-1] = ~dup
            order = order[keep]
    return batch.take(order)


def _merge_tail(
    tail: ReadingArrays, water: ReadingArrays, n_sensors: int
) -> tuple[ReadingArrays, Ints]:
    """The tail and the new water readings in one (sensor, time) order, and where the new
    ones went. Within a sensor both are in time order, and every tail reading is older than
    the new readings (rule 1), so a stable sort by sensor is enough."""
    if not len(tail):
        return water, np.arange(len(water), dtype=np.int64)
    both = ReadingArrays.concat([tail, water])
    key = both.sensor.astype(np.int16) if n_sensors <= np.iinfo(np.int16).max else both.sensor
    order = np.argsort(key, kind="stable")
    where = np.empty(len(order), dtype=np.int64)
    where[order] = np.arange(len(order), dtype=np.int64)
    return both.take(order), where[len(tail) :]


# ---------------------------------------------------------------------------------------------
# The rare path: alert records, lifecycle and episodes, one change at a time (rules 10-12).


class _Book:
    """Mutable copies of the open alerts and the episode while one call records its changes."""

    def __init__(self, state: EngineState) -> None:
        self.cfg = state.config
        self.alerts: dict[str, Alert] = dict(state.alerts)
        self.active: dict[tuple[str, AlertKind], str] = dict(state.active)
        # The episode is edited in place while the book is open, frozen when it closes.
        self.episode = None if state.episode is None else _Draft.of(state.episode)
        index, tide = self.cfg.index, self.cfg.tide
        self.street_floods = sum(
            1 for sid, kind in self.active if kind == "flood" and not tide[index[sid]]
        )

    @classmethod
    def of(cls, state: EngineState) -> _Book:
        return cls(state)

    def state(self, old: EngineState, arrays: SensorArrays, tail: ReadingArrays) -> EngineState:
        return replace(
            old,
            arrays=arrays,
            tail=tail,
            alerts=self.alerts,
            active=self.active,
            episode=None if self.episode is None else self.episode.freeze(),
        )

    def apply(self, ch: _Change, now_ns: int, events: list[Event]) -> None:
        sensor_id = self.cfg.sensor_ids[ch.sensor]
        alert_id = self.active.get((sensor_id, ch.kind))
        if alert_id is None:
            if ch.value > 0:
                self._raise(sensor_id, ch, now_ns, events)
            return  # nothing active to clear: a condition that ended before it was recorded
        alert = self.alerts[alert_id]
        if ch.value == 0:
            self._clear(alert, ch, now_ns, events)
        elif ch.kind == "flood" and ch.value != alert.level:
            change: Change = "escalated" if ch.value > alert.level else "deescalated"
            updated = _move(
                alert,
                change,
                now_ns,
                level=ch.value,
                reading_time_ns=ch.time_ns,
                depth_cm=ch.depth_cm,
                peak_cm=ch.peak_cm,
                peak_ns=ch.peak_ns,
            )
            self.alerts[alert_id] = updated
            events.append(self._event(updated, change, now_ns, ch))
            self._track_episode(updated)

    def acknowledge(
        self, alert: Alert, who: str, note: str, now_ns: int, events: list[Event]
    ) -> None:
        updated = _move(alert, "acknowledged", now_ns, who=who, note=note, acked_ns=now_ns)
        if updated.state == CLOSED:
            del self.alerts[alert.alert_id]
        else:
            self.alerts[alert.alert_id] = updated
        events.append(self._event(updated, "acknowledged", now_ns, None))

    def _raise(self, sensor_id: str, ch: _Change, now_ns: int, events: list[Event]) -> None:
        episode_id = None
        if ch.kind == "flood" and not self.cfg.tide[ch.sensor]:
            if self.episode is None:
                self.episode = _Draft(f"flood:{ch.time_ns}", ch.time_ns)
            episode_id = self.episode.episode_id
            self.street_floods += 1
        alert = Alert.raised(
            sensor_id,
            ch.kind,
            ch.time_ns,
            level=ch.value,
            depth_cm=ch.depth_cm,
            detail=ch.detail,
            peak_cm=ch.peak_cm,
            peak_ns=ch.peak_ns,
            episode_id=episode_id,
            changed_ns=now_ns,
        )
        self.alerts[alert.alert_id] = alert
        self.active[(sensor_id, ch.kind)] = alert.alert_id
        events.append(self._event(alert, "raised", now_ns, ch))
        self._track_episode(alert)

    def _clear(self, alert: Alert, ch: _Change, now_ns: int, events: list[Event]) -> None:
        updated = _move(
            alert, "cleared", now_ns, level=0, reading_time_ns=ch.time_ns, depth_cm=ch.depth_cm
        )
        if alert.kind == "flood":
            updated = replace(updated, peak_cm=ch.peak_cm, peak_ns=ch.peak_ns)
            self._track_episode(updated)
        del self.active[(alert.sensor_id, alert.kind)]
        if updated.state == CLOSED:
            del self.alerts[alert.alert_id]
        else:
            self.alerts[alert.alert_id] = updated
        events.append(self._event(updated, "cleared", now_ns, ch))
        if alert.kind == "flood" and alert.episode_id is not None:
            self.street_floods -= 1
            self._close_episode_if_dry(ch.time_ns, events)

    def _track_episode(self, alert: Alert) -> None:
        ep = self.episode
        if ep is not None and alert.episode_id == ep.episode_id:
            ep.track(alert)

    def _close_episode_if_dry(self, end_ns: int, events: list[Event]) -> None:
        ep = self.episode
        if ep is None or self.street_floods:
            return
        cfg = self.cfg
        sensors = tuple(sorted(ep.sensors))
        streets = tuple(sorted({cfg.streets[cfg.street_of[cfg.index[s]]] for s in sensors}))
        events.append(
            FloodEpisode(
                episode_id=ep.episode_id,
                start_ns=ep.start_ns,
                end_ns=end_ns,
                peak_cm=ep.peak_cm,
                peak_ns=ep.peak_ns,
                peak_sensor_id=ep.peak_sensor_id,
                max_level=ep.max_level,
                max_level_name=level_name(False, ep.max_level),
                streets=streets,
                sensors=sensors,
            )
        )
        self.episode = None

    def _event(self, alert: Alert, change: Change, now_ns: int, ch: _Change | None) -> AlertEvent:
        i = self.cfg.index[alert.sensor_id]
        # Only a flood alert has a level: a battery or stale alert is not "flooded".
        flood = alert.kind == "flood"
        extra = None if ch is None else ch.extra
        return alert.event(
            change,
            at_ns=now_ns,
            reading_time_ns=None if ch is None else ch.time_ns,
            street=self.cfg.streets[self.cfg.street_of[i]],
            level=alert.level if flood else None,
            level_name=level_name(bool(self.cfg.tide[i]), alert.level) if flood else None,
            battery_v=extra if alert.kind == "battery_low" else None,
            rise_cm=extra if alert.kind == "rising" else None,
        )


def _move(alert: Alert, change: Change, now_ns: int, **fields: Any) -> Alert:
    """The alert after `change` (rule 10's table, alerts/lifecycle.py), with `fields` updated:
    one more event, changed now."""
    row = transition(alert.state, change)
    if row.ack == "drop":
        fields.update(who=None, note=None, acked_ns=None)
    return replace(alert, state=row.after, seq=alert.seq + 1, changed_ns=now_ns, **fields)


class _Draft:
    """The open episode while a book is open: edited in place, frozen into an OpenEpisode."""

    __slots__ = (
        "episode_id",
        "max_level",
        "peak_cm",
        "peak_ns",
        "peak_sensor_id",
        "sensors",
        "start_ns",
    )

    def __init__(self, episode_id: str, start_ns: int) -> None:
        self.episode_id = episode_id
        self.start_ns = start_ns
        self.peak_cm = -np.inf
        self.peak_ns = start_ns
        self.peak_sensor_id = ""
        self.max_level = 0
        self.sensors: set[str] = set()

    @classmethod
    def of(cls, ep: OpenEpisode) -> _Draft:
        draft = cls(ep.episode_id, ep.start_ns)
        draft.peak_cm, draft.peak_ns, draft.peak_sensor_id = (
            ep.peak_cm,
            ep.peak_ns,
            ep.peak_sensor_id,
        )
        draft.max_level, draft.sensors = ep.max_level, set(ep.sensors)
        return draft

    def track(self, alert: Alert) -> None:
        if alert.peak_cm is not None and alert.peak_ns is not None:
            # Deeper wins, then earlier, then the smaller id: the same answer in any order.
            mine = (-alert.peak_cm, alert.peak_ns, alert.sensor_id)
            if mine < (-self.peak_cm, self.peak_ns, self.peak_sensor_id):
                self.peak_cm, self.peak_ns = alert.peak_cm, alert.peak_ns
                self.peak_sensor_id = alert.sensor_id
        self.max_level = max(self.max_level, alert.level)
        self.sensors.add(alert.sensor_id)

    def freeze(self) -> OpenEpisode:
        return OpenEpisode(
            episode_id=self.episode_id,
            start_ns=self.start_ns,
            peak_cm=self.peak_cm,
            peak_ns=self.peak_ns,
            peak_sensor_id=self.peak_sensor_id,
            max_level=self.max_level,
            sensors=frozenset(self.sensors),
        )
