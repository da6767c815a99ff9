"""What each sensor looks like now (latest reading, status, alert state), held in memory.

Pure: api.feed applies MQTT messages and api.history the start-up snapshot from InfluxDB;
time is passed in. Everything here runs on the event loop's thread, so nothing is locked.
Alert payloads are the alert engine's (`{root}/v1/alerts/{id}`): kept as opaque dicts, of
which only `level`, `level_name`, `state`, `alert_id` and `kind` are read.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

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
        now.version += 1
        self.version += 1
        return True

    def alerts(self) -> Iterator[tuple[SensorNow, Alert]]:
        for now in self._sensors.values():
            for alert in now.alerts:
                yield now, alert
