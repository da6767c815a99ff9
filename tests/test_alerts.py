"""The alert engine (CONTRACT section 3, alerts/engine.py rules 1-12): scenarios and properties."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerts import (
    AlertEvent,
    EngineState,
    Event,
    FloodEpisode,
    ReadingArrays,
    UnknownAlert,
    UnknownSensor,
    acknowledge,
    check_stale,
    new_state,
    readings_to_arrays,
    rebuild,
    rebuild_window_start,
    sensor_payload,
    step,
    street_view,
)
from alerts.lifecycle import TABLE as LIFECYCLE_TABLE
from alerts.lifecycle import LifecycleError, transition
from alerts.rebuild import REBUILD_LOOKBACK_NS
from floodwatch.contract import CHANGES, LIFECYCLES, Change, Lifecycle, Reading
from floodwatch.registry import SHIPPED_REGISTRY, Registry, Sensor, load_registry
from ingest.line_protocol import encode_point

M = 60 * 10**9  # one minute in ns
T0 = 1_795_694_400 * 10**9  # 2026-11-26T12:00:00Z


def _sensor(
    sid: str,
    street: str,
    kind: str = "street",
    thresholds: tuple[float, ...] = (10.0, 20.0, 30.0, 50.0),
    interval_s: float = 60.0,
) -> Sensor:
    return Sensor(
        id=sid,
        name=sid,
        street=street,
        ward="An Khanh",
        kind="tide" if kind == "tide" else "street",
        lon=106.73,
        lat=10.80,
        thresholds_cm=thresholds,
        interval_s=interval_s,
    )


REGISTRY = Registry(
    sensors={
        s.id: s
        for s in (
            _sensor("s1", "Duong 12"),
            _sensor("s2", "Duong 12"),
            _sensor("s3", "Quoc Huong"),
            _sensor("low", "Quoc Huong", thresholds=(8.0, 15.0, 25.0, 40.0)),
            _sensor(
                "gauge",
                "Saigon River",
                kind="tide",
                thresholds=(140.0, 150.0, 160.0),
                interval_s=300.0,
            ),
        )
    },
    streets=(),
)
INDEX = {sid: i for i, sid in enumerate(REGISTRY.sensors)}


def series(
    sid: str,
    depths: Sequence[float],
    start_min: float = 0,
    every_min: float = 1,
    battery: Sequence[float] | None = None,
) -> ReadingArrays:
    """One sensor's readings, one every `every_min` minutes from T0 + start_min."""
    n = len(depths)
    times = T0 + np.round((start_min + every_min * np.arange(n)) * M).astype(np.int64)
    volts = np.full(n, np.nan) if battery is None else np.array(battery, dtype=np.float64)
    return ReadingArrays(
        np.full(n, INDEX[sid], dtype=np.int32), times, np.array(depths, dtype=np.float64), volts
    )


def run(
    *batches: ReadingArrays, registry: Registry = REGISTRY, state: EngineState | None = None
) -> tuple[EngineState, list[Event]]:
    """Each batch stepped in turn, `now` just after its newest reading."""
    state = new_state(registry, T0) if state is None else state
    events: list[Event] = []
    for batch in batches:
        now = int(batch.time_ns.max()) + 1 if len(batch) else T0
        state, out = step(state, batch, now)
        events.extend(out)
    return state, events


def brief(events: Sequence[Event], kinds: tuple[str, ...] = ()) -> list[tuple[object, ...]]:
    """(minute, sensor, kind, change, level) of each alert event, optionally of some kinds."""
    return [
        (
            (e.reading_time_ns - T0) / M if e.reading_time_ns is not None else None,
            e.sensor_id,
            e.kind,
            e.change,
            e.level,
        )
        for e in events
        if isinstance(e, AlertEvent) and (not kinds or e.kind in kinds)
    ]


def alert_events(events: Sequence[Event]) -> list[AlertEvent]:
    return [e for e in events if isinstance(e, AlertEvent)]


# ---------------------------------------------------------------------------------------------
# Table: one sensor's readings (one a minute) in, the exact alert events out.

FLAT8 = [8.0] * 3
SCENARIOS: list[tuple[str, str, list[float], list[tuple[object, ...]]]] = [
    # Rule 4: ladder and debounce.
    ("one spike above every threshold raises nothing", "s1", [*FLAT8, 60.0, 8.0, 8.0], []),
    (
        "two readings at level 1 raise it",
        "s1",
        [*FLAT8, 12.0, 12.5],
        [(4, "s1", "flood", "raised", 1)],
    ),
    ("exactly the threshold counts", "s1", [*FLAT8, 10.0, 10.0], [(4, "s1", "flood", "raised", 1)]),
    ("two readings must be consecutive", "s1", [*FLAT8, 12.0, 9.0, 12.0, 9.0, 12.0], []),
    (
        "the ladder is climbed level by level, each debounced",
        "s1",
        [*FLAT8, 12, 12, 16, 19, 22, 22, 26, 29, 33, 33, 38, 43, 48, 52, 52],
        [
            (4, "s1", "flood", "raised", 1),
            (7, "s1", "rising", "raised", None),
            (8, "s1", "flood", "escalated", 2),
            (12, "s1", "flood", "escalated", 3),
            (17, "s1", "flood", "escalated", 4),
        ],
    ),
    (
        "a spike during a flood does not escalate",
        "s1",
        [*FLAT8, 12, 12, 26, 12, 12],
        [(4, "s1", "flood", "raised", 1)],
    ),
    (
        "each pair enters the lower of its two levels",
        "s1",
        [*FLAT8, 12, 24, 35, 35],
        [
            (4, "s1", "flood", "raised", 1),
            (5, "s1", "flood", "escalated", 2),
            (5, "s1", "rising", "raised", None),
            (6, "s1", "flood", "escalated", 3),
        ],
    ),
    (
        "a per-sensor ladder overrides the default",
        "low",
        [5.0, 5.0, 9.0, 9.0],
        [(3, "low", "flood", "raised", 1)],
    ),
    (
        "the tide ladder is 140/150/160",
        "gauge",
        [135.0, 141.0, 142.0, 151.0, 152.0],
        [(2, "gauge", "flood", "raised", 1), (4, "gauge", "flood", "escalated", 2)],
    ),
    # Rule 5: hysteresis.
    (
        "hysteresis band: 8 cm never releases level 1",
        "s1",
        [*FLAT8, 12, 12] + [8.0] * 30,
        [(4, "s1", "flood", "raised", 1)],
    ),
    (
        "released after 10 minutes below threshold - 3 cm",
        "s1",
        [*FLAT8, 12, 12] + [6.5] * 12,
        [(4, "s1", "flood", "raised", 1), (15, "s1", "flood", "cleared", 0)],
    ),
    (
        "9 minutes below is not enough",
        "s1",
        [*FLAT8, 12, 12] + [6.5] * 10,
        [(4, "s1", "flood", "raised", 1)],
    ),
    (
        "one reading inside the band restarts the 10 minutes",
        "s1",
        [*FLAT8, 12, 12] + [6.5] * 6 + [7.5] + [6.5] * 11,
        [(4, "s1", "flood", "raised", 1), (22, "s1", "flood", "cleared", 0)],
    ),
    (
        "de-escalation: each level is left when its own band has held 10 minutes",
        "s1",
        [*FLAT8, 12, 16, 19, 22, 22] + [16.0] * 11 + [5.0] * 11,
        [
            (4, "s1", "flood", "raised", 1),
            (6, "s1", "rising", "raised", None),
            (7, "s1", "flood", "escalated", 2),
            (18, "s1", "flood", "deescalated", 1),
            (27, "s1", "rising", "cleared", None),
            (29, "s1", "flood", "cleared", 0),
        ],
    ),
    (
        "a drop below two bands releases both together",
        "s1",
        [*FLAT8, 12, 16, 19, 22, 22] + [5.0] * 11,
        [
            (4, "s1", "flood", "raised", 1),
            (6, "s1", "rising", "raised", None),
            (7, "s1", "flood", "escalated", 2),
            (18, "s1", "flood", "cleared", 0),
            (18, "s1", "rising", "cleared", None),
        ],
    ),
    # Rule 6: rate of rise.
    (
        "rising: 10 cm above the held 15-minute low on two readings",
        "s1",
        [-5.0, -5, -2, 1, 5.5, 6],
        [(5, "s1", "rising", "raised", None)],
    ),
    ("a low seen once is no baseline", "s1", [-5.0, -2, 1, 5.5, 6], []),
    (
        "a single low spike does not make the next readings a rise",
        "s1",
        [5.0, 5, 5, -8, 5, 6, 6, 6],
        [],
    ),
    (
        "rising and flooded on the same reading: flood first",
        "s1",
        [0.0, 0, 3, 6, 9, 10.5, 12],
        [(6, "s1", "flood", "raised", 1), (6, "s1", "rising", "raised", None)],
    ),
    (
        "a slow rise (9 cm in 15 minutes) is not rising",
        "s1",
        [x * 0.6 for x in range(30)],
        [(18, "s1", "flood", "raised", 1)],
    ),
    (
        "rising clears after the rise stays under 7 cm for 10 minutes",
        "s1",
        [-5.0, -5, -2, 1, 5.5, 6] + [0.0] * 12,
        [(5, "s1", "rising", "raised", None), (16, "s1", "rising", "cleared", None)],
    ),
    ("a river stage rise is not a rising alert", "gauge", [100.0, 115.0, 125.0, 130.0], []),
    # Rules 2, 3 and 9: trust, obstruction, faults.
    (
        "a value outside the physical range twice is a fault",
        "s1",
        [0.0, -40.0, -40.0, 0.0, 0.0],
        [(2, "s1", "fault", "raised", None), (4, "s1", "fault", "cleared", None)],
    ),
    ("one out-of-range reading is not a fault", "s1", [0.0, -40.0, 0.0, 0.0], []),
    (
        "out-of-range readings are not water",
        "s1",
        [*FLAT8, 12.0, 400.0, 400.0, 12.0],
        [(5, "s1", "fault", "raised", None), (6, "s1", "flood", "raised", 1)],
    ),
    (
        "a parked vehicle (jump, then flat) is not water",
        "s1",
        [1.0, 1.2, 140.0, 140.1, 139.9, 140.0, 140.0, 1.1, 1.0],
        [],
    ),
    (
        "coming back from one low outlier is not a vehicle",
        "s1",
        [4.0, 4.3, -10.0] + [6.0, 4.7] * 10,
        [],
    ),
    (
        "a long-parked vehicle is a fault, cleared when it leaves",
        "s1",
        [1.0, 1.2] + [140.0] * 17 + [1.1, 1.0, 1.2],
        [(18, "s1", "fault", "raised", None), (20, "s1", "fault", "cleared", None)],
    ),
    (
        "a vehicle parked in a flood holds the level",
        "s1",
        [*FLAT8, 12, 12, 12, 140, 140, 140, 140, 12, 12],
        [(4, "s1", "flood", "raised", 1)],
    ),
    (
        "a flash flood rising 20 cm at once is water from its first wet reading",
        "s1",
        [0.0, 0.0, 20.0, 23.0, 26.0, 29.0, 31.0, 33.0],
        [
            (3, "s1", "flood", "raised", 2),
            (3, "s1", "rising", "raised", None),
            (7, "s1", "flood", "escalated", 3),
        ],
    ),
    (
        "a flash flood rising 15-25 cm a reading is raised by its second wet reading",
        "s1",
        [0.0, 0.3, 0.1, 16.0, 38.0, 61.0, 80.0, 82.0],
        [
            (4, "s1", "flood", "raised", 1),
            (4, "s1", "rising", "raised", None),
            (5, "s1", "flood", "escalated", 3),
            (6, "s1", "flood", "escalated", 4),
        ],
    ),
    (
        "water that arrives fast and then sits still to 0.1 cm is water",
        "s1",
        [0.0, 0.1, 0.0, 15.4, 15.4, 15.5, 15.4, 15.4, 15.5] + [15.4] * 40,
        [
            (4, "s1", "flood", "raised", 1),
            (4, "s1", "rising", "raised", None),
            (27, "s1", "rising", "cleared", None),
        ],
    ),
    (
        "a 40 cm jump with no wet neighbour, steady to the millimetre, is an object",
        "s1",
        [0.5, 0.6, 45.0, 45.0, 45.1, 45.0, 0.6, 0.5],
        [],
    ),
    (
        "a second car taking the first one's place is not water",
        "s1",
        [1.0, 1.2, 164.0, 163.9, 152.6, 152.7, 152.6, 1.1, 1.0],
        [],
    ),
    (
        "a car, one dry reading, another car: still no water",
        "s1",
        [0.7, 0.8, 147.6, 147.6, 147.5, 0.7, 140.4, 140.3, 140.3, 0.8, 0.7],
        [],
    ),
    (
        "water that rose under a parked car is water again when the car leaves",
        "s1",
        [*FLAT8, 12, 12, 12, 140, 140, 140, 140, 30, 31.5, 33, 34.5, 36, 37.5],
        [
            (4, "s1", "flood", "raised", 1),
            (11, "s1", "flood", "escalated", 3),
            (11, "s1", "rising", "raised", None),
        ],
    ),
]


@pytest.mark.parametrize(
    ("name", "sid", "depths", "expected"), SCENARIOS, ids=[s[0] for s in SCENARIOS]
)
def test_scenario(
    name: str, sid: str, depths: list[float], expected: list[tuple[object, ...]]
) -> None:
    """Each rule's table row: the readings in, exactly these events out."""
    _, events = run(series(sid, depths))
    assert brief(events) == expected, name


def test_battery_low_needs_two_low_readings_and_clears_at_3_4_volts() -> None:
    """Rule 8: one sag is ignored, two consecutive lows raise, 3.4 V clears."""
    volts = [3.7, 3.25, 3.5, 3.28, 3.29, 3.35, 3.39, 3.45, 3.2]
    _, events = run(series("s1", [0.0] * len(volts), battery=volts))
    assert brief(events) == [
        (4, "s1", "battery_low", "raised", None),
        (7, "s1", "battery_low", "cleared", None),
    ]
    raised = alert_events(events)[0]
    assert raised.battery_v == 3.29


def test_battery_skips_readings_without_a_voltage() -> None:
    """Readings that carry no voltage do not break a pair of low ones."""
    _, events = run(series("s1", [0.0] * 3, battery=[3.2, float("nan"), 3.2]))
    assert brief(events) == [(2, "s1", "battery_low", "raised", None)]


def test_stale_after_three_missed_intervals_and_cleared_by_a_fresh_reading() -> None:
    """Rule 7: stale strictly after 3 intervals of silence; a fresh reading clears it."""
    last = T0 + 1 * M  # the last reading, which arrives 5 s after it was taken
    heard = last + 5 * 10**9
    state, _ = step(new_state(REGISTRY, T0), series("s1", [0.0, 0.0]), heard)
    state, events = check_stale(state, heard + 3 * M)
    assert [e for e in events if e.sensor_id == "s1"] == []  # type: ignore[union-attr]
    state, events = check_stale(state, heard + 3 * M + 1)
    mine = [e for e in alert_events(events) if e.sensor_id == "s1"]
    assert [(e.kind, e.change, e.reading_time_ns, e.at_ns) for e in mine] == [
        ("stale", "raised", last, heard + 3 * M + 1)
    ]
    state, again = check_stale(state, last + 30 * M)
    assert [e for e in alert_events(again) if e.sensor_id == "s1"] == []  # raised once only
    state, events = step(state, series("s1", [0.0], start_min=31), T0 + 31 * M)
    assert brief(events) == [(31, "s1", "stale", "cleared", None)]


def test_silence_is_timed_by_arrival_not_by_the_sensors_clock() -> None:
    """Rule 7: a sensor whose clock runs 7 minutes behind, or a replay of old readings, is not
    silent while its readings keep arriving; when they stop, it is stale 3 intervals later."""
    skew = 7 * M
    state = new_state(REGISTRY, T0)
    for minute in range(1, 30):
        arrived = T0 + minute * M
        state, events = step(state, _stamped("s1", arrived - skew), arrived)
        state, stale = check_stale(state, arrived + 30 * 10**9)
        assert [e for e in alert_events([*events, *stale]) if e.sensor_id == "s1"] == []
    last_arrival = T0 + 29 * M
    state, events = check_stale(state, last_arrival + 3 * M + 1)
    mine = [e for e in alert_events(events) if e.sensor_id == "s1"]
    assert [(e.change, e.reading_time_ns) for e in mine] == [("raised", last_arrival - skew)]
    state, events = step(state, _stamped("s1", last_arrival + 5 * M - skew), last_arrival + 5 * M)
    assert brief(events) == [(27, "s1", "stale", "cleared", None)]


def _stamped(sid: str, time_ns: int, depth: float = 1.0) -> ReadingArrays:
    return ReadingArrays(
        np.array([INDEX[sid]], dtype=np.int32),
        np.array([time_ns], dtype=np.int64),
        np.array([depth]),
        np.array([np.nan]),
    )


def test_late_readings_keep_a_sensor_heard_but_do_not_end_a_silence() -> None:
    """Rules 1 and 7: readings stamped before the last judged one (a clock that jumped back)
    show the sensor is alive, so it does not go stale; once stale, only a reading the engine
    can judge ends the silence."""
    state, _ = step(new_state(REGISTRY, T0), series("s1", [0.0, 0.0], start_min=10), T0 + 11 * M)
    for minute in range(12, 18):  # its clock jumped back 10 minutes: all late, all heard
        state, events = step(state, series("s1", [0.0], start_min=minute - 10), T0 + minute * M)
        state, stale = check_stale(state, T0 + minute * M + 1)
        assert [e for e in alert_events([*events, *stale]) if e.sensor_id == "s1"] == []
    state, events = check_stale(state, T0 + 21 * M)
    assert [e.change for e in alert_events(events) if e.sensor_id == "s1"] == ["raised"]
    state, events = step(state, series("s1", [0.0], start_min=8), T0 + 22 * M)
    assert events == []
    assert bool(state.arrays.stale_on[INDEX["s1"]])
    state, events = step(state, series("s1", [0.0], start_min=22), T0 + 22 * M)
    assert brief(events) == [(22, "s1", "stale", "cleared", None)]


def test_sensors_never_heard_go_stale_from_the_engine_start() -> None:
    """A sensor that never reported is stale 3 intervals after the engine started."""
    state = new_state(REGISTRY, T0)
    state, events = check_stale(state, T0 + 3 * M + 1)
    assert sorted(e.sensor_id for e in alert_events(events)) == ["low", "s1", "s2", "s3"]
    state, events = check_stale(state, T0 + 15 * M + 1)  # the tide gauge reports every 5 min
    assert [e.sensor_id for e in alert_events(events)] == ["gauge"]


def test_a_stale_sensor_keeps_its_flood_alert_and_last_known_depth() -> None:
    """Rule 7: silence never clears or lowers a flood; the map shows the last known depth."""
    state, _ = run(series("s1", [*FLAT8, 23.0, 24.0]))
    state, events = check_stale(state, T0 + 10 * 60 * M)
    assert brief(events, ("flood",)) == []
    stale = next(e for e in alert_events(events) if e.sensor_id == "s1")
    # Not "hazard": only the flood alert has a level; the stale one keeps the depth.
    assert (stale.level, stale.level_name, stale.depth_cm) == (None, None, 24.0)
    view = {s.street: s for s in street_view(state)}["Duong 12"]
    assert (view.level, view.sensor_id, view.depth_cm, view.stale) == (2, "s1", 24.0, True)
    assert view.reading_time_ns == T0 + 4 * M
    # Coming back dry: the flood is left only after 10 minutes of readings below 7 cm.
    state, events = step(state, series("s1", [2.0] * 11, start_min=600), T0 + 611 * M)
    assert brief(events, ("flood", "stale")) == [
        (610, "s1", "flood", "cleared", 0),
        (610, "s1", "stale", "cleared", None),  # the batch's newest reading ends the silence
    ]


def test_late_readings_are_ignored_counted_and_raise_nothing() -> None:
    """Rule 1: a backfill older than the last judged reading is not judged at all."""
    state, _ = run(series("s1", [0.0] * 3, start_min=60))
    state, events = step(state, series("s1", [40.0] * 30, start_min=20), T0 + 63 * M)
    assert events == []
    assert int(state.arrays.late_ignored[INDEX["s1"]]) == 30
    assert int(state.arrays.last_ns[INDEX["s1"]]) == T0 + 62 * M


def test_a_redelivered_reading_is_not_judged_twice() -> None:
    """The same (sensor, time) again, in a later batch or the same one, counts once."""
    state, events = run(series("s1", [*FLAT8, 12.0]), series("s1", [12.0], start_min=3))
    assert brief(events) == []
    assert int(state.arrays.late_ignored[INDEX["s1"]]) == 1
    twice = ReadingArrays.concat([series("s1", [*FLAT8, 12.0]), series("s1", [30.0], start_min=3)])
    _, events = run(twice)  # the copy that arrived last wins: 30 cm at minute 3
    assert alert_events(events) == []


def test_a_backfill_arriving_with_newer_readings_is_judged_in_time_order() -> None:
    """Rule 1: within one batch, readings are sorted, so an out-of-order backfill counts."""
    newer = series("s1", [12.0, 12.0], start_min=5)
    older = series("s1", [*FLAT8, 8.0, 12.0])
    _, events = run(ReadingArrays.concat([newer, older]))
    assert brief(events) == [(5, "s1", "flood", "raised", 1)]


def test_splitting_a_series_into_batches_changes_nothing() -> None:
    """The same readings in one batch or one by one give the same events."""
    depths = [*FLAT8, 12, 16, 19, 22, 22] + [16.0] * 11 + [5.0] * 11
    whole = series("s1", depths)
    _, together = run(whole)
    _, apart = run(*(whole.take(np.array([k])) for k in range(len(depths))))
    assert [dataclasses.replace(e, at_ns=0) for e in alert_events(together)] == [
        dataclasses.replace(e, at_ns=0) for e in alert_events(apart)
    ]


def _flood(state: EngineState | None = None) -> tuple[EngineState, list[Event]]:
    return run(series("s1", [*FLAT8, 12.0, 12.0]), state=state)


def test_lifecycle_acknowledged_then_cleared_is_closed() -> None:
    """Rule 10: active_unack -> active_ack (who, when, note) -> cleared_ack, then forgotten."""
    state, events = _flood()
    alert_id = alert_events(events)[0].alert_id
    assert alert_id == f"s1:flood:{T0 + 4 * M}"
    state, acked = acknowledge(state, alert_id, "op-lan", "crew sent", T0 + 6 * M)
    (ack,) = alert_events(acked)
    assert (ack.change, ack.state, ack.who, ack.note, ack.acked_ns, ack.reading_time_ns) == (
        "acknowledged",
        "active_ack",
        "op-lan",
        "crew sent",
        T0 + 6 * M,
        None,
    )
    assert ack.event_id == f"{alert_id}:acknowledged:{T0 + 6 * M}"
    assert state.alerts[alert_id].state == "active_ack"
    state, events = run(series("s1", [2.0] * 11, start_min=5), state=state)
    (cleared,) = alert_events(events)
    assert (cleared.change, cleared.state, cleared.who) == ("cleared", "cleared_ack", "op-lan")
    assert alert_id not in state.alerts and state.active == {}


def test_lifecycle_cleared_unacknowledged_waits_for_an_acknowledgement() -> None:
    """Rule 10: active_unack -> cleared_unack -> (ack) cleared_ack; a new alert may come."""
    state, events = _flood()
    first = alert_events(events)[0].alert_id
    state, events = run(series("s1", [2.0] * 11, start_min=5), state=state)
    assert [(e.change, e.state) for e in alert_events(events)] == [("cleared", "cleared_unack")]
    state, events = run(series("s1", [11.0, 11.5], start_min=16), state=state)
    second = alert_events(events)[0].alert_id
    assert second != first and set(state.alerts) == {first, second}
    state, events = acknowledge(state, first, "op", "", T0 + 20 * M)
    assert [(e.change, e.state) for e in alert_events(events)] == [("acknowledged", "cleared_ack")]
    assert set(state.alerts) == {second}


def test_escalation_needs_a_new_acknowledgement_and_deescalation_keeps_it() -> None:
    """Rule 10: a worse level returns an acknowledged alert to active_unack."""
    state, events = _flood()
    alert_id = alert_events(events)[0].alert_id
    state, _ = acknowledge(state, alert_id, "op", "seen", T0 + 5 * M)
    state, events = run(series("s1", [15, 18, 21, 21], start_min=5), state=state)
    (esc,) = [e for e in alert_events(events) if e.kind == "flood"]
    assert (esc.change, esc.state, esc.level, esc.who) == ("escalated", "active_unack", 2, None)
    state, _ = acknowledge(state, alert_id, "op", "worse", T0 + 9 * M)
    state, events = run(series("s1", [16.0] * 11, start_min=9), state=state)
    (de,) = [e for e in alert_events(events) if e.kind == "flood"]
    assert (de.change, de.state, de.level, de.who) == ("deescalated", "active_ack", 1, "op")


LIFECYCLE_ROWS: list[tuple[str, Lifecycle | None, Change, Lifecycle, bool, str]] = [
    # name, before, change, after, emits, what happens to the acknowledgement
    ("raised", None, "raised", "active_unack", True, "keep"),
    ("acknowledged", "active_unack", "acknowledged", "active_ack", True, "set"),
    ("acknowledged twice", "active_ack", "acknowledged", "active_ack", False, "keep"),
    ("cleared, then acknowledged", "cleared_unack", "acknowledged", "cleared_ack", True, "set"),
    ("escalated while unacknowledged", "active_unack", "escalated", "active_unack", True, "drop"),
    ("escalated after an ack asks again", "active_ack", "escalated", "active_unack", True, "drop"),
    ("de-escalated unacknowledged", "active_unack", "deescalated", "active_unack", True, "keep"),
    ("de-escalated keeps the ack", "active_ack", "deescalated", "active_ack", True, "keep"),
    ("cleared unacknowledged waits", "active_unack", "cleared", "cleared_unack", True, "keep"),
    ("cleared after an ack is closed", "active_ack", "cleared", "cleared_ack", True, "keep"),
]


@pytest.mark.parametrize(
    ("name", "before", "change", "after", "emits", "ack"),
    LIFECYCLE_ROWS,
    ids=[r[0] for r in LIFECYCLE_ROWS],
)
def test_lifecycle_table_row(
    name: str, before: Lifecycle | None, change: Change, after: Lifecycle, emits: bool, ack: str
) -> None:
    """Rule 10 is one table (alerts/lifecycle.py): each row as the contract states it."""
    assert tuple(transition(before, change)) == (after, emits, ack), name


def test_the_lifecycle_refuses_what_the_table_does_not_allow() -> None:
    """A change the table does not list is refused with what is allowed instead; nothing
    leaves a closed alert but a repeated acknowledgement."""
    states: list[Lifecycle | None] = [None, *LIFECYCLES]
    listed = {(b, c) for _, b, c, *_ in LIFECYCLE_ROWS} | {("cleared_ack", "acknowledged")}
    assert set(LIFECYCLE_TABLE) == listed
    for before, change in itertools.product(states, CHANGES):
        if (before, change) not in listed:
            with pytest.raises(LifecycleError, match=f"cannot be {change}"):
                transition(before, change)


def test_changed_at_moves_with_every_change_and_raised_at_stays() -> None:
    """Issue 10: a row shows its last change. The alert's changed time is the engine's now at
    its raise, escalation, acknowledgement and clear; raised_at stays the first reading's."""
    state, events = _flood()
    alert_id = alert_events(events)[0].alert_id
    raised_ns = T0 + 4 * M
    assert state.alerts[alert_id].changed_ns == raised_ns + 1
    state, events = run(series("s1", [21.0, 21.5], start_min=5), state=state)
    assert [e.change for e in alert_events(events) if e.kind == "flood"] == ["escalated"]
    assert state.alerts[alert_id].changed_ns == T0 + 6 * M + 1
    payload = orjson.loads(sensor_payload(state, "s1"))
    (item,) = [a for a in payload["alerts"] if a["kind"] == "flood"]
    assert (item["raised_at"], item["changed_at"]) == (
        "2026-11-26T12:04:00.000+00:00",
        "2026-11-26T12:06:00.000+00:00",
    )
    # The reading behind the escalation, for the page's "since" and history (issue 10).
    assert item["reading_time"] == "2026-11-26T12:06:00.000+00:00"
    state, _ = acknowledge(state, alert_id, "op", "", T0 + 8 * M)
    assert state.alerts[alert_id].changed_ns == T0 + 8 * M
    (item,) = [
        a for a in orjson.loads(sensor_payload(state, "s1"))["alerts"] if a["kind"] == "flood"
    ]
    # An acknowledgement is a change, not a reading: reading_time stays the escalation's.
    assert (item["changed_at"], item["reading_time"]) == (
        "2026-11-26T12:08:00.000+00:00",
        "2026-11-26T12:06:00.000+00:00",
    )


def test_only_flood_alerts_carry_a_level_name() -> None:
    """Issue 10: a battery, rising, stale or fault alert has no level: not "flooded" because
    the street is; its events and its retained item leave level and level_name out."""
    state, events = run(
        series("s1", [*FLAT8, 12.0, 12.5, 25.0, 25.5], battery=[3.2] * 7),
        series("gauge", [150.0, 151.0], start_min=8),
    )
    state, stale = check_stale(state, T0 + 60 * M)
    named = {
        (e.sensor_id, e.kind): (e.level, e.level_name)
        for e in alert_events([*events, *stale])
        if e.change == "raised"
    }
    assert named[("s1", "flood")] == (1, "flooded")
    assert named[("gauge", "flood")] == (2, "alarm_2")
    for key, value in named.items():
        if key[1] != "flood":
            assert value == (None, None), key
    assert {k for _, k in named} >= {"flood", "battery_low", "rising", "stale"}
    as_json = [orjson.loads(e.to_json()) for e in alert_events(stale)]
    assert all("level" not in doc and "level_name" not in doc for doc in as_json)
    payload = orjson.loads(sensor_payload(state, "s1"))
    assert all("level" not in a for a in payload["alerts"] if a["kind"] != "flood")


def test_acknowledging_twice_changes_nothing() -> None:
    """A repeated acknowledgement (an operator double-click, an HTTP retry) is a no-op."""
    state, events = _flood()
    alert_id = alert_events(events)[0].alert_id
    state, _ = acknowledge(state, alert_id, "op", "", T0 + 5 * M)
    again, events = acknowledge(state, alert_id, "someone else", "", T0 + 6 * M)
    assert events == [] and again is state


def test_acknowledging_an_unknown_alert_says_what_ids_look_like() -> None:
    """An unknown or closed id raises UnknownAlert with a message that helps."""
    state, _ = _flood()
    with pytest.raises(UnknownAlert, match=r"no open alert has id 'nope' \(1 alerts are open\)"):
        acknowledge(state, "nope", "op", "", T0)


def test_every_kind_follows_the_same_lifecycle() -> None:
    """Rising, battery, fault and stale alerts are raised, acknowledged and cleared alike."""
    state, events = run(series("s1", [-5.0, -5, -2, 1, 5.5, 6], battery=[3.2] * 6))
    kinds = {e.kind: e.alert_id for e in alert_events(events)}
    assert set(kinds) == {"rising", "battery_low"}
    for alert_id in kinds.values():
        state, acked = acknowledge(state, alert_id, "op", "", T0 + 6 * M)
        assert [e.state for e in alert_events(acked)] == ["active_ack"]


def test_stuck_sensor_while_a_neighbour_moves_is_a_fault() -> None:
    """Rule 9: a value unchanged for 30 minutes while the street's other sensor rises."""
    frozen = series("s1", [4.0] * 40)
    rising = series("s2", [0.5 * k for k in range(40)])  # 15 cm in its last 30 minutes
    _, events = run(ReadingArrays.concat([frozen, rising]))
    stuck = [e for e in alert_events(events) if e.kind == "fault"]
    assert [(e.sensor_id, e.change, e.detail, e.reading_time_ns) for e in stuck] == [
        ("s1", "raised", "stuck", T0 + 39 * M)
    ]
    # Unchanged but on a quiet street: no fault (a dry road can read the same all day).
    _, events = run(ReadingArrays.concat([frozen, series("s2", [0.0, 0.1] * 20)]))
    assert [e for e in alert_events(events) if e.kind == "fault"] == []
    # Once the stuck sensor moves again (and no faulty readings remain), the fault clears.
    state, _ = run(ReadingArrays.concat([frozen, rising]))
    state, events = run(series("s1", [4.5, 5.0], start_min=40), state=state)
    assert brief(events, ("fault",)) == [(40, "s1", "fault", "cleared", None)]


def test_a_flash_flood_seen_every_2_minutes_is_water() -> None:
    """Rule 3: 25 cm a minute is water, so 50 cm between readings 2 minutes apart is too."""
    _, events = run(series("s1", [0.0, 0.2, 0.1, 50.0, 99.0, 99.5], every_min=2))
    assert brief(events) == [(8, "s1", "flood", "raised", 4), (8, "s1", "rising", "raised", None)]


def test_a_big_jump_to_the_depth_of_the_streets_water_is_water() -> None:
    """Rule 3, context: a neighbour already reads 45 cm, so a jump from 2 to 50 cm is the same
    water arriving; the same jump on a dry street is an object."""
    wet = series("s2", [44.0, 45.0, 45.5, 46.0])
    jump = series("s1", [2.0, 2.1, 50.0, 50.0, 50.1], start_min=4)
    _, events = run(wet, jump)
    assert brief(events, ("flood",)) == [
        (1, "s2", "flood", "raised", 3),
        (7, "s1", "flood", "raised", 4),
    ]
    _, events = run(series("s2", [0.0, 0.1, 0.0, 0.1]), jump)
    assert brief(events, ("flood",)) == []


def test_a_neighbour_silent_for_30_days_accuses_nobody() -> None:
    """Rule 9: sensor s2 rises 14 cm and goes silent; 30 days later s1 reads a steady 0.0 cm.
    Only movement in the 30 minutes before s1's readings counts, so no stuck fault."""
    state, _ = run(series("s2", [0.0, 0.0, 4.0, 8.0, 12.0, 14.0, 14.0]))
    day = 24 * 60
    state, events = run(series("s1", [0.0] * 45, start_min=30 * day), state=state)
    assert brief(events) == []


def test_only_movement_in_the_last_30_minutes_makes_a_stuck_fault() -> None:
    """Rule 9: a neighbour's move that ended 40 minutes before the flat sensor's reading is
    no witness; the same move 10 minutes before it is."""
    flat = series("s1", [4.0] * 80)
    old_move = series("s2", [0.0, 0.0, 12.0, 12.0] + [12.0] * 10, start_min=20)
    _, events = run(ReadingArrays.concat([flat, old_move]))
    assert brief(events, ("fault",)) == []
    late_move = series("s2", [0.0, 0.0, 12.0, 12.0], start_min=70)
    _, events = run(ReadingArrays.concat([flat, late_move]))
    assert brief(events, ("fault",)) == [(79, "s1", "fault", "raised", None)]


def step_at(
    state: EngineState, depths: Sequence[float], stamps_min: Sequence[float], now_min: float
) -> tuple[EngineState, list[Event]]:
    """s1's readings stamped at `stamps_min`, arriving together at `now_min`."""
    n = len(depths)
    batch = ReadingArrays(
        np.full(n, INDEX["s1"], dtype=np.int32),
        T0 + np.round(np.array(stamps_min) * M).astype(np.int64),
        np.array(depths, dtype=np.float64),
        np.full(n, np.nan),
    )
    return step(state, batch, T0 + round(now_min * M))


def test_one_reading_from_a_clock_4_minutes_ahead_does_not_blind_the_sensor() -> None:
    """Rule 1: a reading stamped 4 minutes ahead is judged as taken when it arrived, so the
    real readings after it are newer and a steady rise is raised on time."""
    state = new_state(REGISTRY, T0)
    events: list[Event] = []
    plan = [(0.0, 0), (0.5, 1), (0.4, 2 + 4), (6.0, 3), (11.0, 4), (14.0, 5), (17.0, 6)]
    for k, (depth, stamp) in enumerate(plan):
        state, out = step_at(state, [depth], [stamp], k + 0.01)
        events.extend(out)
    assert int(state.arrays.late_ignored.sum()) == 0
    floods = [e for e in alert_events(events) if e.kind == "flood"]
    # Raised by the second reading at or above 10 cm (minute 5), as with a right clock.
    assert [(e.change, e.level, e.reading_time_ns) for e in floods] == [("raised", 1, T0 + 5 * M)]


def test_a_sensor_whose_clock_runs_4_minutes_ahead_is_judged_by_arrival() -> None:
    """Rule 1: every reading 4 minutes ahead; each is judged at its arrival, in order, and
    several ahead in one batch keep their order."""
    state = new_state(REGISTRY, T0)
    state, first = step_at(state, [0.0, 0.1, 12.0], [4, 5, 6], 2.01)
    state, second = step_at(state, [13.0, 14.0], [7, 8], 4.01)
    events = alert_events(first + second)
    assert [(e.kind, e.change, e.reading_time_ns) for e in events] == [
        ("flood", "raised", T0 + round(4.01 * M) - 1),
        ("rising", "raised", T0 + round(4.01 * M) - 1),
    ]
    assert int(state.arrays.late_ignored.sum()) == 0
    assert int(state.arrays.last_ns[INDEX["s1"]]) == T0 + round(4.01 * M)


def test_a_reading_from_the_future_redelivered_is_not_judged_twice() -> None:
    """Rule 1: a splash stamped 4 minutes ahead arrives, then again (a redelivery after a
    reconnect): judged once, so the one spike raises nothing; a real reading after it is
    judged."""
    state = new_state(REGISTRY, T0)
    events: list[Event] = []
    for depth, stamp, now in [(0.0, 0, 0.01), (0.1, 1, 1.01), (60.0, 6, 1.5), (60.0, 6, 1.9)]:
        state, out = step_at(state, [depth], [stamp], now)
        events.extend(out)
    state, out = step_at(state, [0.2, 0.2], [2, 6], 2.01)  # and once more within a batch
    events.extend(out)
    assert brief(events) == []
    assert int(state.arrays.late_ignored[INDEX["s1"]]) == 2
    assert float(state.arrays.last_cm[INDEX["s1"]]) == 0.2


def test_a_time_scale_runs_every_timer_faster() -> None:
    """A street played 60 times faster: the 10-minute hold is 10 s of reading time and stale
    is 3 s after the last arrival for a sensor of 60 s."""
    fast = new_state(REGISTRY, T0, time_scale=60.0)
    s = 10**9
    times = T0 + np.arange(30, dtype=np.int64) * s
    depths = np.array([0.0, 12.0, 12.0] + [6.5] * 27)
    batch = ReadingArrays(
        np.full(30, INDEX["s1"], dtype=np.int32), times, depths, np.full(30, np.nan)
    )
    state, events = step(fast, batch, int(times[-1]) + 1)
    floods = [e for e in alert_events(events) if e.kind == "flood"]
    assert [(e.change, e.reading_time_ns) for e in floods] == [
        ("raised", T0 + 2 * s),
        ("cleared", T0 + 13 * s),
    ]
    state, stale = check_stale(state, int(times[-1]) + 3 * s + 2)
    assert [(e.sensor_id, e.kind) for e in alert_events(stale) if e.sensor_id == "s1"] == [
        ("s1", "stale")
    ]
    with pytest.raises(ValueError, match="time_scale"):
        new_state(REGISTRY, T0, time_scale=0.0)


def test_a_flood_episode_spans_streets_from_first_entry_to_last_clear() -> None:
    """Rule 11: one episode per ward flood, with peak, minutes to peak and to drain."""
    s1 = series("s1", [*FLAT8, 12, 14, 18, 22, 26, 26, 20] + [5.0] * 11)  # clears at minute 20
    s3 = series("s3", [8.0, 8.0, 11.0, 11.0, 11.0] + [5.0] * 20, start_min=8)  # clears at 23
    _, events = run(ReadingArrays.concat([s1, s3]))
    episodes = [e for e in events if isinstance(e, FloodEpisode)]
    assert len(episodes) == 1
    ep = episodes[0]
    assert (ep.start_ns, ep.end_ns) == (T0 + 4 * M, T0 + 23 * M)
    assert (ep.peak_cm, ep.peak_ns, ep.peak_sensor_id) == (26.0, T0 + 7 * M, "s1")
    assert (ep.max_level, ep.max_level_name) == (2, "hazard")
    assert (ep.minutes_to_peak, ep.minutes_to_drain) == (3.0, 16.0)
    assert ep.streets == ("Duong 12", "Quoc Huong") and ep.sensors == ("s1", "s3")
    flood_events = [e for e in alert_events(events) if e.kind == "flood"]
    assert {e.episode_id for e in flood_events} == {ep.episode_id}
    assert events[-1] is ep  # emitted with the clear that ends it


def test_tide_alarms_are_not_street_flood_episodes() -> None:
    """A tide gauge's alarm never opens an episode nor colours a street."""
    state, events = run(series("gauge", [141.0] * 3 + [130.0] * 12))
    assert not any(isinstance(e, FloodEpisode) for e in events)
    assert [e.episode_id for e in alert_events(events)] == [None, None]
    assert "Saigon River" not in {s.street for s in street_view(state)}


def test_street_view_shows_the_worst_sensor_of_each_street() -> None:
    """Each street takes the highest level among its sensors, then the deepest."""
    batch = ReadingArrays.concat(
        [
            series("s1", [*FLAT8, 12.0, 12.0]),
            series("s2", [*FLAT8, 21.0, 22.0]),
            series("s3", [3.0] * 5),
        ]
    )
    state, _ = run(batch)
    view = {s.street: s for s in street_view(state)}
    assert (view["Duong 12"].level_name, view["Duong 12"].sensor_id) == ("hazard", "s2")
    assert view["Duong 12"].alert_state == "active_unack"
    assert (view["Quoc Huong"].level, view["Quoc Huong"].sensor_id) == (0, "s3")
    assert view["Duong 12"].sensors == ("s1", "s2")


def test_retained_payload_is_the_active_alerts_or_empty() -> None:
    """alerts/{id} carries the sensor's active alerts, and b'' once none is active."""
    state, _ = _flood()
    doc = orjson.loads(sensor_payload(state, "s1"))
    assert (doc["level_name"], doc["depth_cm"], doc["alerts"][0]["kind"]) == (
        "flooded",
        12.0,
        "flood",
    )
    assert sensor_payload(state, "s2") == b""
    state, _ = run(series("s1", [2.0] * 11, start_min=5), state=state)
    assert sensor_payload(state, "s1") == b""


def test_replaying_the_same_readings_gives_the_same_event_ids() -> None:
    """Rule 12: ids come from sensor, kind, change and reading time, never from a counter."""
    batch = series("s1", [*FLAT8, 12, 16, 19, 22, 22] + [5.0] * 11)
    _, first = run(batch)
    _, second = run(batch)
    ids = [e.event_id for e in alert_events(first)]
    assert ids == [e.event_id for e in alert_events(second)]
    assert len(set(ids)) == len(ids)


def test_events_round_trip_through_json_and_influxdb_fields() -> None:
    """to_json/from_json and influx_point/from_influx give back the same event."""
    state, events = _flood()
    state, acked = acknowledge(state, alert_events(events)[0].alert_id, "op", 'a "note"', T0 + M)
    for event in alert_events(events + acked):
        assert AlertEvent.from_json(event.to_json()) == event
        measurement, tags, fields, time_ns = event.influx_point()
        line = encode_point(measurement, tags, fields, time_ns)
        assert line.startswith("alert_event,change=")
        # InfluxQL hands whole floats back as integers.
        as_read = {
            k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in fields.items()
        }
        assert AlertEvent.from_influx(tags, as_read) == event
    doc = orjson.loads(alert_events(events)[0].to_json())
    assert doc["reading_time"] == "2026-11-26T12:04:00.000+00:00"


def test_episode_serialises_for_mqtt_and_influxdb() -> None:
    """A FloodEpisode has JSON and one line-protocol point."""
    _, events = run(series("s1", [*FLAT8, 12, 12] + [5.0] * 11))
    (ep,) = [e for e in events if isinstance(e, FloodEpisode)]
    doc = orjson.loads(ep.to_json())
    assert doc["minutes_to_peak"] == 0.0 and doc["streets"] == ["Duong 12"]
    assert encode_point(*ep.influx_point()).startswith("flood_episode episode_id=")


def test_readings_to_arrays_converts_decoded_readings() -> None:
    """Decoded readings become columns; a missing battery becomes NaN."""
    readings = [
        Reading("s2", T0, 12.5, None, 3.7, -80, 1),
        Reading("s1", T0 + M, 3.0),
    ]
    arrays = readings_to_arrays(readings, INDEX)
    assert arrays.sensor.tolist() == [1, 0]
    assert arrays.time_ns.tolist() == [T0, T0 + M]
    assert arrays.level_cm.tolist() == [12.5, 3.0]
    assert arrays.battery_v[0] == 3.7 and np.isnan(arrays.battery_v[1])
    assert len(readings_to_arrays([], INDEX)) == 0
    with pytest.raises(UnknownSensor, match="'ghost'"):
        readings_to_arrays([Reading("ghost", T0, 1.0)], INDEX)


def test_the_shipped_registry_builds_an_engine() -> None:
    """Every sensor of sensors.geojson gets a ladder, an interval and a street."""
    registry = load_registry(SHIPPED_REGISTRY)
    state = new_state(registry, T0)
    assert state.config.n == len(registry.sensors)
    d12_03 = state.config.index["d12-03"]
    assert state.config.thresholds[d12_03].tolist() == [8.0, 15.0, 25.0, 40.0]
    assert {s.street for s in street_view(state)} == {"Đường 12", "Quốc Hương", "Nguyễn Văn Hưởng"}


def test_a_restart_during_a_long_obstruction_does_not_take_the_car_for_water() -> None:
    """A car parked for longer than the rebuild window is resumed from its fault event."""
    depths = [1.0, 1.1] * 5 + [150.0] * 120 + [1.2, 1.0] * 10  # parked from minute 10 to 129
    readings = series("s1", depths)
    before, after = readings.take(np.arange(100)), readings.take(np.arange(100, len(depths)))
    _, whole = run(before, after)
    _, stored = run(before)
    assert [(e.kind, e.change, e.detail, e.depth_cm) for e in alert_events(stored)] == [
        ("fault", "raised", "obstructed", 1.1)
    ]
    restart = T0 + 101 * M
    since = rebuild_window_start(stored, restart)
    assert since == restart - 55 * M  # only 55 minutes of readings come back: all car
    window = before.take(before.time_ns >= since)
    rebuilt = rebuild(REGISTRY, stored, window, since, restart)
    _, resumed = run(after, state=rebuilt)
    assert resumed == [e for e in whole if e not in stored]
    assert brief(resumed) == [(131, "s1", "fault", "cleared", None)]


def test_rebuild_window_reaches_back_to_an_open_floods_last_change() -> None:
    """The readings needed go back to the last change of an open flood, for its peak."""
    state, events = run(series("s1", [*FLAT8, 12, 12] + [14.0] * 100))
    restart = T0 + 200 * M
    assert rebuild_window_start(events, restart) == T0 + 4 * M
    window = series("s1", [*FLAT8, 12, 12] + [14.0] * 100)
    rebuilt = rebuild(REGISTRY, events, window, T0, restart)
    assert rebuilt.alerts == state.alerts and rebuilt.episode == state.episode
    assert float(rebuilt.arrays.peak_cm[INDEX["s1"]]) == 14.0
    assert int(rebuilt.arrays.peak_ns[INDEX["s1"]]) == T0 + 5 * M


def test_rebuild_window_reaches_back_from_the_newest_stored_reading() -> None:
    """The rules' memory is read back from the last reading judged (hours behind the clock in
    a backlog or a replay), never from after the clock (a reading stamped ahead)."""
    now = T0 + 600 * M
    assert rebuild_window_start([], now, T0 + 100 * M) == T0 + 100 * M - REBUILD_LOOKBACK_NS
    assert rebuild_window_start([], now, now + 5 * M) == now - REBUILD_LOOKBACK_NS
    assert rebuild_window_start([], now) == now - REBUILD_LOOKBACK_NS


# ---------------------------------------------------------------------------------------------
# Properties over random series.

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def walks(
    draw: st.DrawFn,
    lo: float = -5.0,
    hi: float = 70.0,
    max_len: int = 60,
    step_cm: float = 4.0,
    min_len: int = 2,
) -> list[float]:
    """A depth series, one reading a minute: a bounded random walk with flat stretches."""
    n = draw(st.integers(min_len, max_len))
    start = draw(st.floats(lo, hi))
    steps = draw(
        st.lists(st.one_of(st.just(0.0), st.floats(-step_cm, step_cm)), min_size=n, max_size=n)
    )
    # Rounded, then clipped, so that the bounds hold for the values actually sent.
    return [float(x) for x in np.clip(np.round(start + np.cumsum(steps), 1), lo, hi)]


@st.composite
def streets(draw: st.DrawFn, length: int | None = None) -> list[float]:
    """A walk with what the street adds: parked cars (flat, high), spikes both ways."""
    depths = draw(walks(min_len=length or 2, max_len=length or 60))
    n = len(depths)
    for _ in range(draw(st.integers(0, 3))):
        at, stay = draw(st.integers(0, n - 1)), draw(st.integers(1, 25))
        roof = draw(st.floats(100.0, 170.0))
        for k in range(at, min(n, at + stay)):
            depths[k] = round(roof + draw(st.sampled_from([0.0, 0.0, 0.1, -0.1])), 1)
    for _ in range(draw(st.integers(0, 3))):
        depths[draw(st.integers(0, n - 1))] = draw(st.sampled_from([-9.0, 25.0, 90.0, 400.0]))
    return depths


def level_timeline(events: Sequence[Event], sensor_id: str) -> list[tuple[int, int]]:
    """(reading time, flood level from then on) for each flood event of the sensor."""
    return [
        (e.reading_time_ns, e.level or 0)
        for e in alert_events(events)
        if e.kind == "flood" and e.sensor_id == sensor_id and e.reading_time_ns is not None
    ]


def level_at(timeline: list[tuple[int, int]], t: int) -> int:
    level = 0
    for when, value in timeline:
        if when > t:
            break
        level = value
    return level


@PROPERTY
@given(
    dry=st.lists(st.floats(0.0, 3.0), min_size=2, max_size=20),
    rises=st.lists(st.floats(15.0, 25.0), min_size=2, max_size=12),
)
def test_a_flash_flood_is_raised_by_its_second_reading_at_10_cm(
    dry: list[float], rises: list[float]
) -> None:
    """Rule 3: water rising 15-25 cm at every reading, from any dry start, is water: its flood
    is raised by the second consecutive reading at or above 10 cm."""
    depths = [round(x, 1) for x in [*dry, *(dry[-1] + np.cumsum(rises))]]
    _, events = run(series("s1", depths))
    wet = [k for k in range(1, len(depths)) if depths[k - 1] >= 10 and depths[k] >= 10]
    raised = [e for e in alert_events(events) if e.kind == "flood" and e.change == "raised"]
    assert [e.reading_time_ns for e in raised] == [T0 + wet[0] * M]


@PROPERTY
@given(
    dry=st.lists(st.floats(0.0, 3.0), min_size=2, max_size=20),
    roof=st.floats(100.0, 170.0),
    wobble=st.lists(st.sampled_from([0.0, 0.0, 0.1, -0.1]), min_size=1, max_size=40),
    after=st.lists(st.floats(0.0, 3.0), min_size=0, max_size=10),
)
def test_a_parked_vehicle_on_a_dry_street_never_raises_a_flood(
    dry: list[float], roof: float, wobble: list[float], after: list[float]
) -> None:
    """Rule 3: a jump to a roof steady to the millimetre, no wet neighbour, then a jump back
    (or none yet): never a flood alert, however long it stays."""
    depths = [round(x, 1) for x in [*dry, *(roof + np.array(wobble)), *after]]
    _, events = run(series("s2", [0.0, 0.1] * 5), series("s1", depths, start_min=10))
    assert brief(events, ("flood", "rising")) == []


# Two engines stepped one reading at a time: fewer examples keep it at a few seconds.
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    depths=walks(lo=0.0, hi=40.0, min_len=3, max_len=30),
    glitch=st.integers(0, 10**6),
    ahead_s=st.integers(1, 300),
)
def test_one_reading_from_the_future_never_hides_the_next_ones(
    depths: list[float], glitch: int, ahead_s: int
) -> None:
    """Rule 1: one reading stamped up to 5 minutes ahead, each arriving as it is taken: no
    later reading is ignored as late, and the flood events are those of a right clock, but
    for the glitched reading's own time."""
    k = glitch % len(depths)
    right = new_state(REGISTRY, T0)
    wrong = new_state(REGISTRY, T0)
    got: list[Event] = []
    want: list[Event] = []
    for n, depth in enumerate(depths):
        stamp = n + (ahead_s / 60 if n == k else 0.0)
        wrong, out = step_at(wrong, [depth], [stamp], n + 0.001)
        got.extend(out)
        right, out = step_at(right, [depth], [n], n + 0.001)
        want.extend(out)
    assert int(wrong.arrays.late_ignored.sum()) == 0
    assert [(e.kind, e.change, e.level) for e in alert_events(got)] == [
        (e.kind, e.change, e.level) for e in alert_events(want)
    ]


@PROPERTY
@given(
    moves=walks(lo=0.0, hi=60.0, min_len=2, max_len=40, step_cm=8.0),
    gap_min=st.integers(31, 60 * 24 * 60),
    flat=st.floats(0.0, 5.0),
)
def test_a_neighbour_silent_for_over_30_minutes_never_makes_a_stuck_fault(
    moves: list[float], gap_min: int, flat: float
) -> None:
    """Rule 9: however s2 moved, once it has been silent for more than 30 minutes before
    every reading of s1, a flat s1 gets no stuck fault."""
    state, _ = run(series("s2", moves))
    start = len(moves) - 1 + gap_min
    state, events = run(series("s1", [round(flat, 1)] * 40, start_min=start), state=state)
    assert brief(events, ("fault",)) == []


@PROPERTY
@given(base=walks(lo=-5.0, hi=9.9), where=st.integers(0, 10**6), spike=st.floats(10.0, 300.0))
def test_one_reading_above_a_threshold_never_raises_a_flood(
    base: list[float], where: int, spike: float
) -> None:
    """A series below 10 cm but for one reading, of any depth, raises no flood alert."""
    depths = list(base)
    depths[where % len(depths)] = spike
    _, events = run(series("s1", depths))
    assert brief(events, ("flood",)) == []


@PROPERTY
@given(base=walks(lo=0.0, hi=6.0), where=st.integers(0, 10**6), spike=st.floats(-10.0, 300.0))
def test_one_spike_on_a_quiet_sensor_raises_nothing_at_all(
    base: list[float], where: int, spike: float
) -> None:
    """On a series within a 6 cm band, one reading of any depth raises no alert of any kind."""
    depths = list(base)
    depths[where % len(depths)] = spike
    _, events = run(series("s1", depths))
    assert alert_events(events) == []


@PROPERTY
@given(depths=walks(lo=-10.0, hi=9.99))
def test_a_series_below_10_cm_raises_no_flood_alert(depths: list[float]) -> None:
    """Never reaching the first threshold means never flooded, however it moves."""
    _, events = run(series("s1", depths))
    assert brief(events, ("flood",)) == []


@PROPERTY
@given(
    depths=walks(),
    raises=st.lists(st.floats(0.0, 15.0), min_size=4, max_size=4),
)
def test_raising_a_threshold_never_adds_alerts(depths: list[float], raises: list[float]) -> None:
    """With every threshold raised (or kept), the level is never higher at any reading, so no
    alert is active that was not active with the original ladder.

    (The number of raise events can grow: a higher ladder may split one long flood into two.)
    """
    higher = tuple(float(x) for x in np.array([10.0, 20.0, 30.0, 50.0]) + np.cumsum(raises))
    strict = Registry(
        sensors={**REGISTRY.sensors, "s1": _sensor("s1", "Duong 12", thresholds=higher)},
        streets=(),
    )
    _, base_events = run(series("s1", depths))
    _, strict_events = run(series("s1", depths), registry=strict)
    base, tight = level_timeline(base_events, "s1"), level_timeline(strict_events, "s1")
    for k in range(len(depths)):
        t = T0 + k * M
        assert level_at(tight, t) <= level_at(base, t)


@PROPERTY
@given(
    depths=walks(lo=-5.0, hi=60.0),
    later=st.lists(st.integers(1, 10**6), min_size=1, max_size=5),
)
def test_a_silent_sensor_never_clears_a_flood(depths: list[float], later: list[int]) -> None:
    """However long a flooded sensor stays silent, its flood alert stays at its level."""
    ramp = np.arange(depths[-1] + 3.0, 33.0, 3.0).tolist()  # a plausible rise, never a jump
    state, _ = run(series("s1", [*depths, *ramp, 33.0, 33.0]))
    level = int(state.arrays.level[INDEX["s1"]])
    assert level >= 1
    alert_id = state.active[("s1", "flood")]
    now = int(state.arrays.last_ns[INDEX["s1"]])
    for minutes in sorted(later):
        state, events = check_stale(state, now + minutes * M)
        assert brief(events, ("flood",)) == []
        assert state.active[("s1", "flood")] == alert_id
        assert int(state.arrays.level[INDEX["s1"]]) == level
    assert state.arrays.stale_on[INDEX["s1"]] == (max(later) > 3)


@st.composite
def fleets(draw: st.DrawFn) -> tuple[dict[str, list[float]], list[int], list[float]]:
    """Several sensors reporting every minute, cut into time-ordered batches."""
    length = draw(st.integers(10, 70))
    depths = {
        sid: draw(
            walks(min_len=length, max_len=length)
            | streets(length)
            | st.just([round(5.0 + 20.0 * np.sin(k / 7.0), 1) for k in range(length)])
        )
        for sid in ("s1", "s2", "s3")
    }
    cuts = sorted(set(draw(st.lists(st.integers(1, length - 1), max_size=6))))
    volts = draw(st.lists(st.floats(3.1, 3.6), min_size=length, max_size=length))
    return depths, cuts, volts


def _fleet_batches(
    depths: dict[str, list[float]], cuts: list[int], volts: list[float]
) -> list[ReadingArrays]:
    length = len(volts)
    bounds = [0, *cuts, length]
    out = []
    for a, b in itertools.pairwise(bounds):
        parts = [
            series(sid, d[a:b], start_min=a, battery=volts[a:b] if sid == "s2" else None)
            for sid, d in depths.items()
        ]
        out.append(ReadingArrays.concat(parts))
    return out


def _drive(
    state: EngineState, batches: list[ReadingArrays], ack_every: int, first: int = 0
) -> tuple[EngineState, list[list[Event]]]:
    """Step each batch, check staleness, and acknowledge the oldest open alert now and then."""
    per_batch: list[list[Event]] = []
    for number, batch in enumerate(batches, start=first):
        now = int(batch.time_ns.max()) + M
        state, events = step(state, batch, now)
        state, stale = check_stale(state, now + 2 * M)
        events += stale
        if ack_every and number % ack_every == 0 and state.alerts:
            oldest = min(state.alerts)
            state, acked = acknowledge(state, oldest, "op", f"batch {number}", now + 3 * M)
            events += acked
        per_batch.append(events)
    return state, per_batch


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fleet=fleets(),
    restart_at=st.integers(0, 10**6),
    ack_every=st.integers(0, 3),
    behind_min=st.sampled_from([0, 6 * 60]),
)
def test_a_restart_rebuilt_from_events_continues_like_an_uninterrupted_run(
    fleet: tuple[dict[str, list[float]], list[int], list[float]],
    restart_at: int,
    ack_every: int,
    behind_min: int,
) -> None:
    """Stop after any batch, rebuild from the stored events and readings, go on: the events
    after the restart and the open alerts are exactly those of a run that never stopped;
    also when the readings run hours behind the clock (a backlog, a replay)."""
    _restart_continues_like_an_uninterrupted_run(fleet, restart_at, ack_every, behind_min)


def test_a_car_parked_as_the_rebuild_window_opens_is_not_a_moving_neighbour() -> None:
    """A short obstruction (no fault) near the start of the replayed readings: the replay must
    not take the car for water, or its roof reads as a neighbour that moved 100 cm and makes a
    stuck fault of the quiet sensor next to it (found by the restart property)."""
    s2 = [100.0] + [0.0] * 22 + [100.0] * 11 + [0.0] * 29  # a car from minute 23 to 33
    fleet = ({"s1": [0.0] * 63, "s2": s2, "s3": [0.0] * 63}, [59], [3.5] * 63)
    _restart_continues_like_an_uninterrupted_run(fleet, 0, 0)


@pytest.mark.parametrize("ack_every", [0, 1])
def test_a_long_obstruction_cleared_inside_the_rebuild_window_is_resumed(ack_every: int) -> None:
    """A car parked from before the replayed readings, whose fault cleared (and, acknowledged,
    closed) inside them: the replay resumes it from its fault events, not as water."""
    s2 = [0.0] * 3 + [120.0] * 30 + [0.0] * 37  # parked from minute 3 to 32
    fleet = ({"s1": [0.0] * 70, "s2": s2, "s3": [0.0] * 70}, [60, 61], [3.5] * 70)
    _restart_continues_like_an_uninterrupted_run(fleet, 0, ack_every)


@pytest.mark.parametrize("ack_every", [0, 1])
def test_a_car_parked_inside_the_rebuild_window_is_not_seeded_from_before_it(
    ack_every: int,
) -> None:
    """A car that arrives inside the replayed readings and becomes a fault before the restart:
    the replay sees it arrive, and must not also be seeded with it as parked from before the
    window, or the window's second reading (20 cm over the first) reads as a jump over 0 cm,
    the car keeps that base, and its leaving (back to 20 cm) never clears the fault (found by
    the restart property)."""
    s2 = [0.0, 20.0] + [100.0] * 17 + [20.0] * 2  # a car from minute 2 to 18, fault at 18
    fleet = ({"s2": s2}, [19], [3.5] * 21)
    _restart_continues_like_an_uninterrupted_run(fleet, 0, ack_every)


def _restart_continues_like_an_uninterrupted_run(
    fleet: tuple[dict[str, list[float]], list[int], list[float]],
    restart_at: int,
    ack_every: int,
    behind_min: int = 0,
) -> None:
    batches = _fleet_batches(*fleet)
    k = 1 + restart_at % len(batches)
    whole, whole_events = _drive(new_state(REGISTRY, T0), batches, ack_every)

    before, before_events = _drive(new_state(REGISTRY, T0), batches[:k], ack_every)
    stored_events = [e for batch in before_events for e in batch]
    newest_ns = int(batches[k - 1].time_ns.max())
    restart_ns = newest_ns + 4 * M + behind_min * M
    stored = ReadingArrays.concat(batches[:k])
    # The database holds readings from T0 on: what it gives back starts there at the earliest.
    since = max(T0, rebuild_window_start(stored_events, restart_ns, newest_ns))
    window = stored.take(stored.time_ns >= since)
    rebuilt = rebuild(REGISTRY, stored_events, window, since, restart_ns)

    assert rebuilt.alerts == before.alerts
    assert rebuilt.active == before.active
    assert rebuilt.episode == before.episode
    after, after_events = _drive(rebuilt, batches[k:], ack_every, first=k)
    assert after_events == whole_events[k:]
    assert after.alerts == whole.alerts and after.episode == whole.episode
    assert np.array_equal(after.arrays.level, whole.arrays.level)


@PROPERTY
@given(depths=walks() | streets(), cuts=st.lists(st.integers(1, 59), max_size=8))
def test_batch_boundaries_never_change_the_events(depths: list[float], cuts: list[int]) -> None:
    """One sensor's series, parked cars and spikes included, judged whole or cut anywhere
    gives the same events."""
    whole = series("s1", depths)
    bounds = [0, *sorted({c for c in cuts if c < len(depths)}), len(depths)]
    parts = [whole.take(np.arange(a, b)) for a, b in itertools.pairwise(bounds)]
    _, together = run(whole)
    _, apart = run(*parts)
    assert [dataclasses.replace(e, at_ns=0) for e in alert_events(together)] == [
        dataclasses.replace(e, at_ns=0) for e in alert_events(apart)
    ]
