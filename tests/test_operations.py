"""Operators' changes as pure values (floodwatch.operations): maintenance validation, registry
overrides (calibration, added, retired, restored sensors), the decoder's `retired_sensor`, the
engine reconfigured under a running state, and maintenance timelines in the notifier's pure
core with an injectable clock."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import orjson
import pytest

from alerts import AlertEvent, ReadingArrays, check_stale, new_state, readings_to_arrays, step
from alerts.reconfigure import reconfigure
from floodwatch.contract import Reading
from floodwatch.decode import decode_message
from floodwatch.operations import (
    MAINTENANCE_MAX_S,
    LiveRegistry,
    Maintenance,
    OperationError,
    Override,
    SensorChange,
    apply_overrides,
    calibration_change,
    start_maintenance,
)
from floodwatch.registry import SHIPPED_REGISTRY, load_registry
from floodwatch.topics import Topics
from notify.escalation import Track, on_event, on_maintenance_end, on_tick
from notify.model import AlertFacts, Send
from notify.plan import plan
from notify.routing import parse_routing

S = 10**9
MIN = 60 * S
T0 = 1_796_000_000 * S
BASE = load_registry(SHIPPED_REGISTRY)
TOPICS = Topics("fw")


# ---- maintenance records ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "reason", "until_ns", "fix"),
    [
        ("lan", "pump repair", T0, "not in the future"),
        ("lan", "pump repair", T0 - MIN, "not in the future"),
        ("lan", "pump repair", T0 + (MAINTENANCE_MAX_S + 1) * S, "14 days"),
        ("lan", "   ", T0 + MIN, "reason is required"),
        ("", "pump repair", T0 + MIN, "who is required"),
        ("lan", "x" * 1001, T0 + MIN, "keep it to 1000"),
    ],
    ids=["now", "past", "too-far", "blank-reason", "no-who", "long-reason"],
)
def test_a_maintenance_is_refused_with_a_sentence(
    who: str, reason: str, until_ns: int, fix: str
) -> None:
    """Expiry in the future and bounded, a reason and a who: else one sentence saying what."""
    with pytest.raises(OperationError, match=fix):
        start_maintenance("qh-02", who, reason, until_ns, T0)


def test_a_maintenance_is_active_from_its_start_until_its_expiry_and_round_trips() -> None:
    record = start_maintenance("qh-02", " lan ", "pump repair", T0 + 30 * MIN, T0)
    assert record.who == "lan" and record.since_ns == T0
    assert [record.active_at(t) for t in (T0 - 1, T0, T0 + 30 * MIN - 1, T0 + 30 * MIN)] == [
        False,
        True,
        True,
        False,
    ]
    assert Maintenance.from_json("qh-02", record.to_json()) == record
    assert Maintenance.from_json("qh-02", b"") is None
    assert Maintenance.from_json("qh-02", b'{"who": 1}') is None
    assert Maintenance.from_json("qh-02", b"not json") is None


def test_a_change_round_trips_through_mqtt_and_influx() -> None:
    change = SensorChange("d12-02", "calibrated", "lan", "new bracket", T0, {"x": [1, 2]})
    assert SensorChange.from_json(change.to_json()) == change
    measurement, tags, fields, time_ns = change.influx_point()
    assert measurement == "sensor_change" and time_ns == T0
    assert SensorChange.from_influx(tags, fields, time_ns) == change
    assert SensorChange.from_json(b'{"sensor": "x", "change": "exploded"}') is None


# ---- registry overrides -------------------------------------------------------------------------


def test_calibration_changes_only_the_named_fields_and_is_audited_with_old_and_new() -> None:
    before = BASE.sensors["d12-02"]
    override, change = calibration_change(
        before, {"mount_height_mm": 2050.0}, "lan", "re-measured", T0
    )
    registry, problems = apply_overrides(BASE, {"d12-02": override})
    assert problems == []
    after = registry.sensors["d12-02"]
    assert after.mount_height_mm == 2050.0
    assert replace(after, mount_height_mm=before.mount_height_mm) == before
    assert change.detail == {"mount_height_mm": [before.mount_height_mm, 2050.0]}
    assert (change.who, change.why, change.change) == ("lan", "re-measured", "calibrated")


@pytest.mark.parametrize(
    ("sensor", "patch", "fix"),
    [
        ("d12-02", {"thresholds_cm": [20.0, 10.0]}, "strictly increasing"),
        ("d12-02", {"mount_height_mm": -5.0}, "greater than 0"),
        ("qh-02", {"mount_height_mm": 1500.0}, "no mount height"),
        ("d12-02", {"name": "x"}, "cannot be changed here"),
        ("d12-02", {}, "nothing"),
    ],
)
def test_a_bad_calibration_is_refused(sensor: str, patch: dict[str, object], fix: str) -> None:
    with pytest.raises(OperationError, match=fix):
        calibration_change(BASE.sensors[sensor], patch, "lan", "why", T0)


def test_added_retired_and_restored_sensors() -> None:
    """An added sensor needs coordinates; a retired one leaves `sensors` for `retired`; a bad
    override is skipped with its sentence while the others apply."""
    added = Override(
        "qh-09",
        {"name": "Quốc Hương, cuối", "street": "Quốc Hương", "ward": "An Khánh", "kind": "street"},
        (106.735, 10.8056),
    )
    retired = Override("qh-04", retired=True)
    broken = Override("nowhere-1", {"name": "x"})
    registry, problems = apply_overrides(
        BASE, {"qh-09": added, "qh-04": retired, "nowhere-1": broken}
    )
    assert "qh-09" in registry.sensors and registry.sensors["qh-09"].name_en == "Quoc Huong, cuoi"
    assert "qh-04" not in registry.sensors and "qh-04" in registry.retired
    assert len(problems) == 1 and "give its coordinates" in problems[0]
    live = LiveRegistry(BASE)
    assert live.apply("qh-04", retired.to_json()) is not None
    assert live.apply("qh-04", retired.to_json()) is None  # the same again changes nothing
    restored = live.apply("qh-04", b"")
    assert restored is not None and restored.sensors == BASE.sensors and not restored.retired


def test_a_retired_sensors_readings_are_dead_lettered_as_retired() -> None:
    registry, _ = apply_overrides(BASE, {"qh-04": Override("qh-04", retired=True)})
    decoded = decode_message(
        TOPICS, registry, TOPICS.reading("qh-04"), b'{"level_cm": 3.0}', T0, False
    )
    assert decoded.readings == [] or len(decoded.readings) == 0
    [rejection] = decoded.rejections
    assert rejection.code == "retired_sensor" and "retired" in rejection.reason
    unknown = decode_message(TOPICS, registry, TOPICS.reading("zz-1"), b"{}", T0, False)
    assert unknown.rejections[0].code == "unknown_sensor"


def test_a_new_mount_height_changes_the_depth_of_later_readings_only() -> None:
    """Depth is computed at decoding: a reading keeps the mount height it was decoded with
    (mount height = distance + 10 x depth, both stored)."""
    payload = b'{"ts": 1796000000000, "distance_mm": 1750}'
    topic = TOPICS.reading("d12-02")
    before = decode_message(TOPICS, BASE, topic, payload, T0, False).readings[0]
    override, _ = calibration_change(
        BASE.sensors["d12-02"], {"mount_height_mm": 1900.0}, "lan", "why", T0
    )
    registry, _ = apply_overrides(BASE, {"d12-02": override})
    after = decode_message(TOPICS, registry, topic, payload, T0, False).readings[0]
    assert BASE.sensors["d12-02"].mount_height_mm == 1800.0
    assert (before.level_cm, after.level_cm) == (5.0, 15.0)
    assert after.distance_mm is not None and after.distance_mm + 10 * after.level_cm == 1900.0


# ---- the engine under a changing registry ----------------------------------------------


def _readings(sensor: str, depths: list[float], start_min: int) -> list[Reading]:
    return [Reading(sensor, T0 + (start_min + k) * MIN, d) for k, d in enumerate(depths)]


def test_new_thresholds_raise_and_clear_nothing_by_themselves() -> None:
    """A flood at 25 cm (hazard); the ladder moves above it: no event at the change, the
    alert stays open at its level; the next reading is judged on the new ladder."""
    state = new_state(BASE, T0)
    batch = readings_to_arrays(_readings("qh-02", [25.0, 25.0], 0), state.sensor_index)
    state, events = step(state, batch, T0 + 2 * MIN)
    assert [(e.kind, e.change, e.level) for e in events if isinstance(e, AlertEvent)] == [
        ("flood", "raised", 2)
    ]
    override, _ = calibration_change(
        BASE.sensors["qh-02"], {"thresholds_cm": [30.0, 40.0, 60.0]}, "lan", "why", T0
    )
    registry, _ = apply_overrides(BASE, {"qh-02": override})
    changed = reconfigure(state, registry, T0 + 2 * MIN)
    assert changed.alerts == state.alerts and changed.active == state.active
    i = changed.sensor_index["qh-02"]
    assert list(changed.config.thresholds[i, :3]) == [30.0, 40.0, 60.0]
    assert changed.config.thresholds.shape[1] == 4  # other sensors keep 4 rungs
    assert int(changed.arrays.level[i]) == 2  # the alert's level is the engine's memory
    later = readings_to_arrays(_readings("qh-02", [25.0], 2), changed.sensor_index)
    _, events = step(changed, later, T0 + 3 * MIN)
    # 25 cm is below the new first rung, but a flood leaves only after 10 minutes below.
    assert [e for e in events if isinstance(e, AlertEvent) and e.kind == "flood"] == []


def test_an_added_sensor_is_judged_and_a_retired_one_never_goes_stale() -> None:
    state = new_state(BASE, T0)
    added = Override(
        "qh-09",
        {"name": "Quốc Hương 9", "street": "Quốc Hương", "ward": "An Khánh", "kind": "street"},
        (106.735, 10.8056),
    )
    registry, _ = apply_overrides(BASE, {"qh-09": added, "qh-04": Override("qh-04", retired=True)})
    state = reconfigure(state, registry, T0 + 60 * MIN)
    assert state.sensor_index["qh-09"] == len(BASE.sensors)
    batch = readings_to_arrays(_readings("qh-09", [15.0, 15.0], 61), state.sensor_index)
    state, events = step(state, batch, T0 + 63 * MIN)
    assert ("qh-09", "flood", "raised") in [
        (e.sensor_id, e.kind, e.change) for e in events if isinstance(e, AlertEvent)
    ]
    _, stale = check_stale(state, T0 + 64 * MIN)
    stale_ids = {e.sensor_id for e in stale if isinstance(e, AlertEvent)}
    # Every sensor of the file went stale an hour after the start, except the retired one;
    # the added one was heard.
    assert "qh-04" not in stale_ids and "qh-09" not in stale_ids and "qh-02" in stale_ids
    empty = ReadingArrays(np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    assert step(state, empty, T0 + 64 * MIN)[1] == []


# ---- maintenance in the notifier's core -----------------------------------------------

ROUTING = parse_routing(
    """
[channels.log]
type = "log"
[recipients.gis]
channels = ["log"]
[recipients.chief]
channels = ["log"]

[[rules]]
kinds = ["flood"]
min_level = 1
notify = ["gis"]
escalate = [{ after_min = 10, notify = ["chief"] }]
""",
    "maintenance.toml",
    {},
)


def _facts(change: str, seq: int, at_min: float) -> AlertFacts:
    at = T0 + int(at_min * MIN)
    return AlertFacts(
        alert_id=f"qh-02:flood:{T0}",
        event_id=f"qh-02:flood:{T0}:{change}:{at}",
        seq=seq,
        sensor_id="qh-02",
        sensor_name="Quốc Hương",
        street="Quốc Hương",
        ward="An Khánh",
        kind="flood",
        change=change,
        state="active_ack" if change == "acknowledged" else "active_unack",
        level=1,
        level_name="flooded",
        at_ns=at,
        since_ns=T0,
        depth_cm=12.0,
    )


class Shell:
    """The notifier's shell in miniature: events and ticks at a given clock, maintenance
    records, and what is sent or suppressed (as service.Notifier does with plan)."""

    def __init__(self) -> None:
        self.tracks: dict[str, Track] = {}
        self.maintenance: dict[str, Maintenance] = {}
        self.sent: list[tuple[float, str, str]] = []
        self.suppressed: list[tuple[float, str, str]] = []

    def _out(self, sends: list[Send], now: int) -> None:
        silenced = {s: m.reason for s, m in self.maintenance.items() if m.active_at(now)}
        for d in plan(sends, ROUTING, "", now, silenced):
            row = ((now - T0) / MIN, d.recipient, d.message)
            (self.suppressed if d.suppressed else self.sent).append(row)

    def event(self, facts: AlertFacts, now_min: float) -> None:
        now = T0 + int(now_min * MIN)
        changed, sends = on_event(self.tracks, facts, ROUTING, now)
        self.tracks.update(changed)
        self._out(sends, now)

    def tick(self, now_min: float) -> None:
        now = T0 + int(now_min * MIN)
        for sensor_id, record in list(self.maintenance.items()):
            if record.until_ns <= now:
                del self.maintenance[sensor_id]
                changed, sends = on_maintenance_end(self.tracks, sensor_id, ROUTING, now)
                self.tracks.update(changed)
                self._out(sends, now)
        changed, sends, _ = on_tick(self.tracks, now)
        self.tracks.update(changed)
        self._out(sends, now)


def test_maintenance_silences_raise_and_escalation_and_expiry_announces_the_open_alert() -> None:
    """Under maintenance from minute 0 to 30: the raise (minute 1) and the 10-minute tier
    (minute 11) go to nobody; at the expiry the open alert is announced to its first
    recipients, and its ladder starts again (the chief at minute 40)."""
    shell = Shell()
    shell.maintenance["qh-02"] = start_maintenance("qh-02", "lan", "pump", T0 + 30 * MIN, T0)
    shell.event(_facts("raised", 1, 1), 1)
    for minute in (5, 11, 20, 29):
        shell.tick(minute)
    assert shell.sent == []
    assert shell.suppressed == [(1, "gis", "raised"), (11, "chief", "unacknowledged")]
    for minute in (30, 35, 40):
        shell.tick(minute)
    assert shell.sent == [(30, "gis", "maintenance_over"), (40, "chief", "unacknowledged")]


def test_an_alert_acknowledged_or_cleared_during_maintenance_stays_quiet_after_it() -> None:
    shell = Shell()
    shell.maintenance["qh-02"] = start_maintenance("qh-02", "lan", "pump", T0 + 30 * MIN, T0)
    shell.event(_facts("raised", 1, 1), 1)
    shell.event(replace(_facts("acknowledged", 2, 3), who="lan"), 3)
    for minute in (11, 30, 45):
        shell.tick(minute)
    assert shell.sent == []
    assert [m for _, _, m in shell.suppressed] == ["raised", "acknowledged"]


def test_without_maintenance_nothing_is_suppressed() -> None:
    shell = Shell()
    shell.event(_facts("raised", 1, 1), 1)
    shell.tick(12)
    assert shell.sent == [(1, "gis", "raised"), (12, "chief", "unacknowledged")]
    assert shell.suppressed == []


def test_an_override_message_is_json_the_other_processes_read() -> None:
    override = Override("qh-09", {"name": "x"}, (106.7, 10.8), retired=False)
    doc = orjson.loads(override.to_json())
    assert doc == {
        "sensor": "qh-09",
        "properties": {"name": "x"},
        "retired": False,
        "coordinates": [106.7, 10.8],
    }
    assert Override.from_json("qh-09", override.to_json()) == override
    assert Override.from_json("qh-09", b"[]") is None
