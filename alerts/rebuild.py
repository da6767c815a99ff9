"""Restart safety: the engine state rebuilt from what was stored, so that after a restart the open
alerts are exactly those before it (nothing raised twice, nothing forgotten).

Two sources, both already in InfluxDB:
- the alert events the engine emitted: which alerts are open, in which lifecycle state, at which
  level, acknowledged by whom, and the flood episode in progress;
- the readings since `rebuild_window_start(events, now_ns, newest_ns)`: the short memory of the
  rules (the debounce's previous reading, hysteresis and rate-of-rise windows, obstructions,
  unchanged values) and the peaks of open floods since their last event. These readings are replayed
  through the same vectorised pass as `step`, silently; the replay's own alert decisions are
  then replaced by what the events say.

What cannot come back: a sensor silent for longer than the window restarts its debounce (its
first reading after the restart has no previous reading to pair with); a backfill the
running engine ignored as late (rule 1) is replayed as if judged, which can shift a rate-of-rise
window for at most 15 minutes; an obstruction open when the window starts is known only
from its fault's events (a shorter one has closed before the rules' memory reaches back, see
REBUILD_LOOKBACK_NS), so one whose fault closed before the earliest event passed in is replayed
as water (a faulted one that opened inside the window is replayed as the running engine saw
it); and when each sensor was last heard (rule 7 times silence by
arrival, which is not stored), so it is taken as its last stored reading's own time: a sensor
whose clock runs more than 3 intervals behind can show stale from the restart until its next
reading arrives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import assert_never

import numpy as np

from alerts.engine import MINUTE_NS, OBSTRUCTION_FAULT_NS, TAIL_NS, _advance, timers
from alerts.events import AlertEvent, Event
from alerts.state import (
    NEVER,
    Alert,
    EngineConfig,
    EngineState,
    OpenEpisode,
    ReadingArrays,
    initial_arrays,
    new_state,
)
from floodwatch.registry import Registry

# Memory of the rules (30 min), plus the longest an obstruction can stay open without becoming a
# fault (15 min), plus a margin for sensors reporting every few minutes. The replay cannot see an
# obstruction that was already open when its window starts (rule 3 measures a jump from two
# earlier readings): the readings under it would be replayed as water, and kept in the tail that
# rules 6 and 9 look back on (a parked car's roof would read as a neighbour that moved, and make
# a stuck fault of a quiet sensor). An obstruction that lasts 15 minutes becomes a fault, and is
# seeded from its events; one that does not has closed 15 minutes into the window, before any
# reading the rules' 30-minute memory still reaches.
REBUILD_LOOKBACK_NS = TAIL_NS + OBSTRUCTION_FAULT_NS + 10 * MINUTE_NS


def rebuild_window_start(events: Iterable[Event], now_ns: int, newest_ns: int | None = None) -> int:
    """From when to read stored readings back for `rebuild`: the lookback before the newest
    stored reading (`newest_ns`, no later than `now_ns`; `now_ns` when none is known), or
    earlier if an open flood alert's latest change is older (its peak since then is needed).

    The rules' memory reaches back from the last reading judged, not from the wall clock: a
    partition taken over with a backlog behind it (readings hours older than the clock), or a
    restart after a long stop, finds its debounce, hysteresis and rate-of-rise windows where
    its readings stopped, and the readings redelivered from there are recognised as judged."""
    anchor = now_ns if newest_ns is None else min(newest_ns, now_ns)
    start = anchor - REBUILD_LOOKBACK_NS
    for alert in _open_alerts(_alert_events(events)).values():
        if alert.kind == "flood" and alert.active:
            start = min(start, alert.reading_time_ns)
    return start


def rebuild(
    registry: Registry,
    events: Iterable[Event],
    readings: ReadingArrays,
    since_ns: int,
    now_ns: int,
    time_scale: float = 1.0,
) -> EngineState:
    """The engine state after a restart at `now_ns`.

    `events`: every alert event stored since at least the oldest open alert was raised (more is
    harmless; FloodEpisode records are ignored). `readings`: every stored reading from
    `since_ns` on, as arrays for this registry's sensor index, with `since_ns` at or before
    `rebuild_window_start(events, now_ns)`. A sensor with no reading since `since_ns` has been
    silent since then at least, so that is where its stale clock starts.
    """
    fresh = new_state(registry, since_ns, time_scale)
    fault_ns = timers(time_scale).obstruction_fault_ns
    cfg = fresh.config
    # Events of a sensor this registry lacks (added by an operator at run time, whose
    # override arrives after the restart: alerts.reconfigure) are left out.
    alert_events = [e for e in _alert_events(events) if e.sensor_id in cfg.index]
    alerts = _open_alerts(alert_events)
    active = {(a.sensor_id, a.kind): a.alert_id for a in alerts.values() if a.active}

    # Seed the one memory older than the window: an obstruction that has already become a fault
    # (its fault carries the base water level), so the replay does not take the car for water.
    # Not one that opened inside the window: the replay sees that one open, and a seed would
    # misjudge the water readings before it.
    seed = initial_arrays(cfg.n, cfg.max_levels)
    seeds = _obstructions_open_at(alert_events, cfg.index, since_ns)
    for i in _opened_in_window(cfg, seeds, readings, now_ns):
        del seeds[i]
    for i, (base_cm, raised_ns) in seeds.items():
        seed.obst_on[i] = True
        seed.obst_base[i] = base_cm
        # The fault came with the second reading obstructed for 15 minutes: the obstruction
        # opened 15 minutes before it at the latest, so every reading from the raise on is
        # faulty (rule 9), as it was for the running engine.
        seed.obst_since[i] = raised_ns - fault_ns
    adv = _advance(cfg, seed, fresh.tail, readings, now_ns)

    # The replay's alert decisions give way to what the events say.
    a = adv.arrays.copy()
    for flag in (a.level, a.rise_on, a.batt_on, a.fault_on, a.stale_on, a.late_ignored):
        flag[:] = 0
    a.peak_cm[:] = np.nan
    a.peak_ns[:] = NEVER
    # Arrival times are not stored: a sensor was heard when its last stored reading was taken.
    a.heard_ns[:] = np.where(a.last_ns != NEVER, np.minimum(a.last_ns, now_ns), NEVER)
    water = adv.water
    for (sensor_id, kind), alert_id in active.items():
        i = cfg.index[sensor_id]
        alert = alerts[alert_id]
        # Exhaustive: a new kind fails type-checking here (and raises at run time) until it
        # says which memory it restores.
        match kind:
            case "flood":
                a.level[i] = alert.level
                a.peak_cm[i], a.peak_ns[i] = _peak_since(alert, water, i)
            case "rising":
                a.rise_on[i] = True
            case "battery_low":
                a.batt_on[i] = True
            case "fault":
                a.fault_on[i] = True
            case "stale":
                a.stale_on[i] = True
                # A sensor silent for the whole window keeps the staleness clock of its alert.
                if a.last_ns[i] == NEVER:
                    a.last_ns[i] = alert.raised_ns
            case _:
                assert_never(kind)
    return replace(
        fresh,
        arrays=a,
        tail=adv.tail,
        alerts=alerts,
        active=active,
        episode=_open_episode(alert_events, alerts),
    )


def _alert_events(events: Iterable[Event]) -> list[AlertEvent]:
    return [e for e in events if isinstance(e, AlertEvent)]


def _obstructions_open_at(
    events: list[AlertEvent], index: Mapping[str, int], since_ns: int
) -> dict[int, tuple[float, int]]:
    """Per sensor index, the obstruction faults that may still have been open at `since_ns`:
    raised (with the base water level and the raise's reading time) and not cleared by a
    reading at or before `since_ns`. An active fault always counts; a cleared one (acknowledged
    or not) counts when its clearing reading lies inside the window, since the obstruction
    behind it may have closed there. The latest raise wins per sensor."""
    raised: dict[str, AlertEvent] = {}
    cleared_ns: dict[str, int] = {}
    for e in events:
        if e.kind != "fault" or e.detail != "obstructed":
            continue
        if e.change == "raised" and e.depth_cm is not None:
            raised[e.alert_id] = e
        elif e.change == "cleared" and e.reading_time_ns is not None:
            cleared_ns[e.alert_id] = e.reading_time_ns
    seeds: dict[int, tuple[float, int]] = {}
    for alert_id, e in raised.items():
        if cleared_ns.get(alert_id, since_ns + 1) <= since_ns or e.depth_cm is None:
            continue
        i = index[e.sensor_id]
        if i not in seeds or e.raised_ns > seeds[i][1]:
            seeds[i] = (e.depth_cm, e.raised_ns)
    return seeds


def _opened_in_window(
    cfg: EngineConfig,
    seeds: Mapping[int, tuple[float, int]],
    readings: ReadingArrays,
    now_ns: int,
) -> list[int]:
    """The seeded sensors whose obstruction the replay opens by itself: by the fault's raise,
    unseeded, it is open from the same water level and has been for 15 minutes.

    Such a car arrived inside the window, after readings of the water it stands in, and a seed
    would take those readings for the end of an older obstruction: the reading before the
    window counts as obstructed (known, not water), so a rise between the window's first two
    readings fakes a jump with the wrong base, and the car keeps that base when it takes the
    jump's place. A car parked before the window cannot be found this way, since no reading
    under it is within a step of its base."""
    if not seeds:
        return []
    raised = np.full(cfg.n, NEVER, dtype=np.int64)
    for i, (_, raised_ns) in seeds.items():
        raised[i] = raised_ns
    upto = readings.take(readings.time_ns <= raised[readings.sensor])
    fresh = initial_arrays(cfg.n, cfg.max_levels)
    a = _advance(cfg, fresh, ReadingArrays.empty(), upto, now_ns).arrays
    fault_ns = timers(cfg.time_scale).obstruction_fault_ns
    return [
        i
        for i, (base_cm, raised_ns) in seeds.items()
        if a.obst_on[i] and a.obst_base[i] == base_cm and a.obst_since[i] <= raised_ns - fault_ns
    ]


def _open_alerts(events: list[AlertEvent]) -> dict[str, Alert]:
    """Each alert as its latest event left it; alerts closed (cleared_ack) are dropped."""
    latest: dict[str, AlertEvent] = {}
    reading: dict[str, AlertEvent] = {}
    for e in events:
        if e.alert_id not in latest or e.seq > latest[e.alert_id].seq:
            latest[e.alert_id] = e
        if e.reading_time_ns is not None and (
            e.alert_id not in reading or e.seq > reading[e.alert_id].seq
        ):
            reading[e.alert_id] = e
    return {
        alert_id: Alert.from_event(e, reading.get(alert_id, e).reading_time_ns)
        for alert_id, e in latest.items()
        if e.state != "cleared_ack"
    }


def _peak_since(alert: Alert, water: ReadingArrays, i: int) -> tuple[float, int]:
    """An open flood alert's peak: its last event's, or a deeper water reading since then."""
    peak_cm = np.nan if alert.peak_cm is None else alert.peak_cm
    peak_ns = NEVER if alert.peak_ns is None else alert.peak_ns
    mine = np.flatnonzero((water.sensor == i) & (water.time_ns > alert.reading_time_ns))
    if len(mine):
        k = mine[int(np.argmax(water.level_cm[mine]))]
        if np.isnan(peak_cm) or water.level_cm[k] > peak_cm:
            peak_cm, peak_ns = float(water.level_cm[k]), int(water.time_ns[k])
    return peak_cm, peak_ns


def _open_episode(events: list[AlertEvent], alerts: dict[str, Alert]) -> OpenEpisode | None:
    """The episode of the active street flood alerts, from every event that belongs to it."""
    ids = {a.episode_id for a in alerts.values() if a.active and a.episode_id is not None}
    if not ids:
        return None
    episode_id = min(ids)  # one at a time by construction; min() only makes it deterministic
    mine = [e for e in events if e.episode_id == episode_id]
    best = min(
        (-e.peak_cm, e.peak_ns, e.sensor_id)
        for e in mine
        if e.peak_cm is not None and e.peak_ns is not None
    )
    return OpenEpisode(
        episode_id=episode_id,
        start_ns=int(episode_id.rsplit(":", 1)[1]),
        peak_cm=-best[0],
        peak_ns=best[1],
        peak_sensor_id=best[2],
        max_level=max(e.level or 0 for e in mine),
        sensors=frozenset(e.sensor_id for e in mine),
    )
