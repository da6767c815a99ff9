"""What each sensor looks like now (latest reading, status, alert state), held in memory.

Pure: api.feed applies MQTT messages and api.history the start-up snapshot from InfluxDB;
time is passed in. Everything here runs on the event loop's thread, so nothing is locked.
Alert payloads are the alert engine's (`{root}/v1/alerts/{id}`): kept as opaque dicts, of
which only `level`, `level_name`, `state`, `alert_id`, `kind` and their times are read.

One truth (issue 10 section 1): a sensor's `level` is the engine's verdict, the level of its
active flood alert, never the raw rung of its latest reading. Where the two differ the
`Verdict` says why in a word (draining, unconfirmed, stale, fault), and for draining water
when the engine's hold (rule 5: 10 minutes below the threshold minus 3 cm, at --time-scale)
ends, from the readings' own times (replayed from InfluxDB at start). Every time shown is
the engine's reading time, never when this process heard of it: "since" and the escalation
history come from the alert items' `raised_at` and `reading_time` and, after a restart, the
engine's stored `alert_event` rows.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson

from alerts.engine import HYSTERESIS_CM, timers
from floodwatch import contract
from floodwatch.contract import (
    ACTIVE_STATES,
    LIFECYCLES,
    STALE_INTERVALS,
    Reading,
    StatusChange,
)
from floodwatch.operations import Maintenance
from floodwatch.registry import Registry, Sensor

Alert = Mapping[str, Any]


def depth_level(sensor: Sensor, level_cm: float) -> int:
    """The ladder rung the depth reaches (0: below the first threshold); no debounce."""
    return bisect.bisect_right(sensor.thresholds_cm, level_cm)


def level_name(sensor: Sensor, level: int) -> str:
    """The contract's name for a rung of this sensor's ladder."""
    return contract.level_name(sensor.kind == "tide", level)


@dataclass(frozen=True, slots=True)
class AlertPayload:
    """A retained `alerts/{id}` payload: its alerts, and the object around them if any."""

    alerts: tuple[Alert, ...]
    envelope: Mapping[str, Any] | None = None  # the top-level object minus `alerts`


def parse_alert_payload(payload: bytes, sensor_id: str) -> AlertPayload:
    """The alerts in a retained `alerts/{id}` payload; empty payload: none. ValueError if bad.

    Accepts one alert object, a list of them, or an object with an `alerts` list (the alert
    engine's shape: the sensor's level, depth and stale flag around its active alerts).
    """
    if not payload.strip():
        return AlertPayload(())
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"alert payload for {sensor_id!r} is not JSON: {exc}") from exc
    envelope = None
    if isinstance(doc, dict) and isinstance(doc.get("alerts"), list):
        envelope = {k: v for k, v in doc.items() if k != "alerts"}
        doc = doc["alerts"]
    items = doc if isinstance(doc, list) else [doc]
    alerts: list[Alert] = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError(f"alert payload for {sensor_id!r} holds a non-object item")
        alert = dict(item)
        alert["sensor"] = sensor_id
        if not isinstance(alert.get("alert_id"), str) or not alert["alert_id"]:
            alert["alert_id"] = f"{sensor_id}:{alert.get('kind') or 'alert'}"
        alerts.append(alert)
    return AlertPayload(tuple(alerts), envelope)


def alert_level(alert: Alert) -> int | None:
    level = alert.get("level")
    return level if type(level) is int and 0 <= level <= 9 else None


def alert_state(alert: Alert) -> str | None:
    state = alert.get("state")
    return state if state in LIFECYCLES else None


def summarise_alerts(alerts: Sequence[Alert]) -> tuple[int, str | None]:
    """(highest level among active alerts or 0, the state of the alert that matters most).

    Most important: the highest active level, unacknowledged before acknowledged; with
    nothing active, a cleared alert still awaiting acknowledgement.
    """
    best: tuple[int, int, int] | None = None
    best_state: str | None = None
    for alert in alerts:
        state = alert_state(alert)
        if state is None:
            continue
        active = state in ACTIVE_STATES
        level = alert_level(alert) or 0
        rank = (int(active), level if active else 0, int(state.endswith("_unack")))
        if state == "cleared_ack":
            continue
        if best is None or rank > best:
            best, best_state = rank, state
    level = best[1] if best is not None and best[0] else 0
    return level, best_state


def alert_time_ns(alert: Alert, *keys: str) -> int | None:
    """The first of these ISO 8601 (or epoch-ns) times the engine's alert object carries."""
    for key in keys:
        value = alert.get(key)
        if type(value) is int and value > 10**17:
            return value
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                moment = datetime.fromisoformat(value)
                if moment.tzinfo is not None:
                    return int(moment.timestamp()) * 10**9 + moment.microsecond * 1000
    return None


def flood_alert(alerts: Sequence[Alert]) -> Alert | None:
    """The sensor's active flood alert (the engine keeps at most one, rule 10)."""
    for alert in alerts:
        if alert.get("kind") == "flood" and alert_state(alert) in ACTIVE_STATES:
            return alert
    return None


# Why the latest reading and the engine's verdict differ, worst first (the page words them).
VerdictNote = Literal["fault", "stale", "draining", "unconfirmed"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The engine's level for a sensor, since when, and why the latest reading may differ."""

    level: int | None  # None: never heard and no alert
    since_ns: int | None  # when the current level began (None at level 0)
    alert: Alert | None  # the active flood alert behind it
    reading_level: int | None  # the raw rung of the latest reading, for comparison
    note: VerdictNote | None
    hold_until_ns: int | None  # draining: when the engine's hold ends, if no rise comes


def verdict(now: SensorNow, stale: bool) -> Verdict:
    """The engine's verdict on one sensor, beside its latest reading (pure)."""
    alert = flood_alert(now.alerts)
    reading = now.reading
    raw = depth_level(now.sensor, reading.level_cm) if reading is not None else None
    if alert is not None:
        level: int | None = alert_level(alert) or 0
    else:
        level = None if reading is None else 0
    since = now.history[-1][1] if alert is not None and now.history else None
    note: VerdictNote | None = None
    hold_until = None
    if any(a.get("kind") == "fault" and alert_state(a) in ACTIVE_STATES for a in now.alerts):
        note = "fault"
    elif stale and reading is not None:
        note = "stale"
    elif raw is not None and level is not None and raw < level:
        note = "draining"
        below = now.below_since[level - 1] if level - 1 < len(now.below_since) else None
        # The engine's hold, at the same --time-scale as its timers (rule 5).
        hold_until = below + timers(now.time_scale).hold_ns if below is not None else None
    elif raw is not None and level is not None and raw > level:
        note = "unconfirmed"
    return Verdict(level, since, alert, raw, note, hold_until)


@dataclass(slots=True)
class SensorNow:
    """One sensor's current state; replaced field by field as messages arrive."""

    sensor: Sensor
    reading: Reading | None = None
    online: bool | None = None
    alerts: tuple[Alert, ...] = ()
    alerts_envelope: Mapping[str, Any] | None = None
    alerts_at_ns: int = 0
    version: int = 0  # bumped on every change, so a cached rendering knows it is out of date
    # When a reading of this sensor last arrived (any reading, even an old one from a backfill),
    # and when the one now shown (its newest) arrived.
    heard_ns: int | None = None
    fresh_ns: int | None = None
    # When the sensor itself last sent a reading (not the broker's or the database's replay).
    live_ns: int | None = None
    time_scale: float = 1.0  # --time-scale: a demo street's intervals run this much faster
    # Per threshold, when the current run of readings below it minus 3 cm began (None: the
    # latest reading is not below it): the engine's hold on draining water (rule 5).
    below_since: list[int | None] = field(default_factory=list)
    # The active flood alert's levels as this process saw them change: (level, since_ns).
    history: tuple[tuple[int, int], ...] = ()
    flood_alert_id: str | None = None
    # The sensor's maintenance record (floodwatch.operations), None when there is none.
    maintenance: Maintenance | None = None

    def under_maintenance(self, now_ns: int) -> Maintenance | None:
        record = self.maintenance
        return record if record is not None and record.active_at(now_ns) else None

    def stale(self, now_ns: int) -> bool:
        """Stale when the alert engine says so, or when silent for more than 3 reporting
        intervals by arrival, the engine's own measure (CONTRACT section 3, rule 7): a replay
        of old readings is live, and a sensor that stops arriving goes stale here even while
        ingest, and so the engine, is down."""
        if self.reading is None or self.heard_ns is None:
            return True
        # The engine's verdict: it ends a silence only with a new newest reading, so one that
        # arrived after the verdict ends it here too (the engine's update follows); an old
        # backfill does not.
        envelope = self.alerts_envelope
        engine_says_stale = envelope is not None and envelope.get("stale") is True
        if engine_says_stale and (self.fresh_ns is None or self.fresh_ns <= self.alerts_at_ns):
            return True
        limit_ns = STALE_INTERVALS * self.sensor.interval_s * 1e9 / self.time_scale
        return now_ns - self.heard_ns > limit_ns


class LiveState:
    """Every registered sensor's current state, with a version that changes on every update."""

    def __init__(self, registry: Registry, time_scale: float = 1.0) -> None:
        self.registry = registry
        self.time_scale = time_scale
        self._sensors = {
            sid: SensorNow(sensor, time_scale=time_scale)
            for sid, sensor in registry.sensors.items()
        }
        self.version = 0
        self._members: dict[str, list[str]] = {}
        for sid, sensor in registry.sensors.items():
            if sensor.kind == "street":
                self._members.setdefault(sensor.street, []).append(sid)
        # Flood alerts' level changes read back from the engine's stored events at start.
        self._seeded: dict[str, tuple[tuple[int, int], ...]] = {}
        # The notifier's retained record per alert (`notifications/{alert_id}`), as JSON.
        self.notifications: dict[str, bytes] = {}
        # Maintenance records of sensors not (or not yet) in the registry in force.
        self._maintenance_elsewhere: dict[str, Maintenance] = {}

    def apply_registry(self, registry: Registry) -> None:
        """An operator changed the registry: sensors change, appear, or leave (retired)."""
        sensors: dict[str, SensorNow] = {}
        for sid, sensor in registry.sensors.items():
            now = self._sensors.get(sid)
            if now is None:
                now = SensorNow(sensor, time_scale=self.time_scale)
                now.maintenance = self._maintenance_elsewhere.pop(sid, None)
            now.sensor = sensor
            now.version += 1
            sensors[sid] = now
        for sid, gone in self._sensors.items():
            if sid not in sensors and gone.maintenance is not None:
                self._maintenance_elsewhere[sid] = gone.maintenance
        self._sensors = sensors
        self.registry = registry
        self._members = {}
        for sid, sensor in registry.sensors.items():
            if sensor.kind == "street":
                self._members.setdefault(sensor.street, []).append(sid)
        self.version += 1

    def apply_maintenance(self, sensor_id: str, record: Maintenance | None) -> bool:
        """Keep the sensor's maintenance record; True if a shown sensor changed."""
        now = self._sensors.get(sensor_id)
        if now is None:
            if record is None:
                self._maintenance_elsewhere.pop(sensor_id, None)
            else:
                self._maintenance_elsewhere[sensor_id] = record
            return False
        if now.maintenance == record:
            return False
        now.maintenance = record
        now.version += 1
        self.version += 1
        return True

    def maintenance_records(self) -> list[Maintenance]:
        held = [n.maintenance for n in self._sensors.values() if n.maintenance is not None]
        return held + list(self._maintenance_elsewhere.values())

    def __iter__(self) -> Iterator[SensorNow]:
        return iter(self._sensors.values())

    def __len__(self) -> int:
        return len(self._sensors)

    def get(self, sensor_id: str) -> SensorNow | None:
        return self._sensors.get(sensor_id)

    def with_readings(self) -> int:
        return sum(1 for s in self._sensors.values() if s.reading is not None)

    def apply_reading(
        self, reading: Reading, heard_ns: int | None = None, *, live: bool = False
    ) -> bool:
        """Keep the reading if it is the sensor's newest (a replay of the newest overwrites).

        `heard_ns` is when it arrived; without it (the start-up snapshot from InfluxDB) the
        reading's own time stands in, as in the alert engine's rebuild. A `live` reading (one
        the sensor sent just now, not a broker's replay) marks the sensor online: it is
        talking, whatever status an earlier run left behind.
        """
        now = self._sensors.get(reading.sensor_id)
        if now is None:
            return False
        heard = reading.time_ns if heard_ns is None else heard_ns
        if now.heard_ns is None or heard > now.heard_ns:
            now.heard_ns = heard
        if live:
            now.live_ns = heard if now.live_ns is None else max(now.live_ns, heard)
            if now.online is not True:
                now.online = True
                now.version += 1
                self.version += 1
        held = now.reading
        if held is not None and (reading.time_ns < held.time_ns or reading == held):
            return False
        now.reading = reading
        now.fresh_ns = heard
        _track_below(now, reading.level_cm, reading.time_ns)
        now.version += 1
        self.version += 1
        return True

    def apply_status(self, status: StatusChange) -> bool:
        """A sensor's `online`/`offline`. A retained `offline` is the broker's memory of some
        earlier disconnect (a simulator run that ended, say): it does not override readings
        the sensor sent live within its stale window."""
        now = self._sensors.get(status.sensor_id)
        if now is None or now.online == status.online:
            return False
        if (
            status.retained
            and not status.online
            and now.live_ns is not None
            and status.time_ns - now.live_ns <= STALE_INTERVALS * now.sensor.interval_s * 1e9
        ):
            return False
        now.online = status.online
        now.version += 1
        self.version += 1
        return True

    def apply_alerts(
        self,
        sensor_id: str,
        alerts: tuple[Alert, ...],
        at_ns: int,
        envelope: Mapping[str, Any] | None = None,
    ) -> bool:
        """Replace the sensor's alerts with a retained payload's; False if nothing changed."""
        now = self._sensors.get(sensor_id)
        if now is None or (now.alerts == alerts and now.alerts_envelope == envelope):
            return False
        now.alerts = alerts
        now.alerts_envelope = envelope
        now.alerts_at_ns = at_ns
        _track_history(now, at_ns, self._seeded)
        now.version += 1
        self.version += 1
        return True

    def street_history(self, street: str) -> tuple[tuple[int, int], ...]:
        """The street's worst flood level as it changed during the current flood: (level,
        since_ns), oldest first, in the engine's reading times; empty while no flood alert is
        active on it. Made from its sensors' histories, so it is as right after a restart as
        they are."""
        return street_history(
            self._sensors[sid].history
            for sid in self._members.get(street, ())
            if flood_alert(self._sensors[sid].alerts) is not None
        )

    def replay_below(self, levels: Iterable[tuple[str, int, float]]) -> int:
        """Rule 5's runs below each threshold from stored (sensor, time, level_cm) readings up
        to each sensor's newest, so a restarted API's "holds until" is the engine's, not one
        counted from its own first reading. Returns how many sensors it set."""
        by_sensor: dict[str, list[tuple[int, float]]] = {}
        for sensor_id, time_ns, level_cm in levels:
            by_sensor.setdefault(sensor_id, []).append((time_ns, level_cm))
        changed = 0
        for sensor_id, points in by_sensor.items():
            now = self._sensors.get(sensor_id)
            if now is None or now.reading is None:
                continue
            held = now.reading
            now.below_since = []
            for time_ns, level_cm in sorted(p for p in points if p[0] < held.time_ns):
                _track_below(now, level_cm, time_ns)
            _track_below(now, held.level_cm, held.time_ns)
            now.version += 1
            changed += 1
        if changed:
            self.version += 1
        return changed

    def seed_history(self, events: Sequence[Mapping[str, Any]]) -> int:
        """Flood alerts' level changes from the engine's stored `alert_event` rows (oldest
        first), so a restarted API shows the whole escalation history, not only what it saw
        since. Returns how many sensors' shown histories changed."""
        for alert_id, steps in history_from_events(events).items():
            self._seeded[alert_id] = steps
        changed = 0
        for now in self._sensors.values():
            if now.flood_alert_id in self._seeded:
                merged = _merge(self._seeded[now.flood_alert_id], now.history)
                if merged != now.history:
                    now.history = merged
                    now.version += 1
                    changed += 1
        if changed:
            self.version += 1
        return changed

    def alerts(self) -> Iterator[tuple[SensorNow, Alert]]:
        for now in self._sensors.values():
            for alert in now.alerts:
                yield now, alert


def _track_below(now: SensorNow, level_cm: float, time_ns: int) -> None:
    """Rule 5's runs below each threshold minus 3 cm, from this sensor's newest readings."""
    thresholds = now.sensor.thresholds_cm
    if len(now.below_since) != len(thresholds):
        now.below_since = [None] * len(thresholds)
    for j, limit in enumerate(thresholds):
        if level_cm < limit - HYSTERESIS_CM:
            if now.below_since[j] is None:
                now.below_since[j] = time_ns
        else:
            now.below_since[j] = None


def _track_history(
    now: SensorNow, at_ns: int, seeded: Mapping[str, tuple[tuple[int, int], ...]]
) -> None:
    """The flood alert's level changes, each at the time of the reading the engine judged it
    on (never when this process heard of it): a new alert starts the list, a new level
    extends it. `at_ns` (arrival) stands in only when the engine sent no time at all."""
    alert = flood_alert(now.alerts)
    if alert is None:
        now.history, now.flood_alert_id = (), None
        return
    level = alert_level(alert) or 0
    alert_id = str(alert.get("alert_id"))
    # The reading behind the alert's latest level change (the item's own `reading_time`);
    # an older engine sends only the sensor's last reading, which is the same reading when
    # the payload follows the change at once.
    changed = alert_time_ns(alert, "reading_time") or alert_time_ns(
        now.alerts_envelope or {}, "reading_time"
    )
    raised = alert_time_ns(alert, "raised_at")
    if alert_id != now.flood_alert_id or not now.history:
        now.flood_alert_id = alert_id
        known = seeded.get(alert_id, ())
        if known and known[-1][0] == level:
            now.history = known
        elif known:
            now.history = _merge(known, ((level, changed or at_ns),))
        elif raised is not None and (changed is None or changed <= raised):
            now.history = ((level, raised),)
        else:
            # Seen first mid-flood (a restart without stored events): the current level since
            # its last change; the steps before it are not known.
            now.history = ((level, changed or raised or at_ns),)
    elif now.history[-1][0] != level:
        since = max(changed or at_ns, now.history[-1][1])
        now.history = (*now.history, (level, since))


def _merge(
    known: tuple[tuple[int, int], ...], seen: tuple[tuple[int, int], ...]
) -> tuple[tuple[int, int], ...]:
    """Stored level changes, then those seen live after them; a repeated level is dropped."""
    out = list(known)
    last_t = out[-1][1] if out else None
    for level, t in seen:
        if last_t is not None and t < last_t:
            continue
        if not out or out[-1][0] != level:
            out.append((level, t))
    return tuple(out)


def history_from_events(
    events: Sequence[Mapping[str, Any]],
) -> dict[str, tuple[tuple[int, int], ...]]:
    """Each flood alert's (level, reading time) steps from `alert_event` rows (`alert_id`,
    `change`, `level`, `time`: the reading behind the change), oldest first (pure)."""
    out: dict[str, list[tuple[int, int]]] = {}
    for row in sorted(events, key=lambda r: int(r.get("time") or 0)):
        if row.get("kind", "flood") != "flood" or row.get("change") not in (
            "raised",
            "escalated",
            "deescalated",
        ):
            continue
        alert_id, level, t = row.get("alert_id"), row.get("level"), row.get("time")
        if not isinstance(alert_id, str) or type(level) is not int or type(t) is not int:
            continue
        steps = out.setdefault(alert_id, [])
        if not steps or steps[-1][0] != level:
            steps.append((level, t))
    return {k: tuple(v) for k, v in out.items()}


def street_history(
    histories: Iterable[tuple[tuple[int, int], ...]],
) -> tuple[tuple[int, int], ...]:
    """The worst level over several sensors' level histories as it changed (pure)."""
    timelines = [h for h in histories if h]
    moments = sorted({t for h in timelines for _, t in h})
    out: list[tuple[int, int]] = []
    for t in moments:
        worst = 0
        for h in timelines:
            at = [lv for lv, since in h if since <= t]
            if at:
                worst = max(worst, at[-1])
        if worst and (not out or out[-1][0] != worst):
            out.append((worst, t))
    return tuple(out)
