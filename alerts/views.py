"""Read-only views of the engine state for the map and the retained MQTT alert topics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

from alerts.state import NEVER, EngineState
from floodwatch.contract import Lifecycle, iso_time, level_name


@dataclass(frozen=True, slots=True)
class StreetStatus:
    """A street on the map: the worst level among its sensors, and which sensor shows it."""

    street: str
    level: int
    level_name: str
    sensor_id: str  # the worst sensor: highest level, then deepest last known depth
    depth_cm: float | None  # its last known depth (a stale sensor shows its last one)
    reading_time_ns: int | None
    stale: bool  # the worst sensor is stale
    alert_id: str | None  # its active flood alert
    alert_state: Lifecycle | None
    sensors: tuple[str, ...]


def street_view(state: EngineState) -> tuple[StreetStatus, ...]:
    """Each street's status, in registry order. Tide gauges are left out: a river stage is not
    a depth on a street, and their alarm levels are a different ladder."""
    cfg, a = state.config, state.arrays
    out: list[StreetStatus] = []
    street_sensors = ~cfg.tide
    for number, street in enumerate(cfg.streets):
        members = np.flatnonzero(street_sensors & (cfg.street_of == number))
        if not len(members):
            continue
        depth = np.nan_to_num(a.last_water_cm[members], nan=-np.inf)
        # Highest level first, then the deepest.
        worst = int(members[np.lexsort((-depth, -a.level[members].astype(np.int64)))[0]])
        sensor_id = cfg.sensor_ids[worst]
        level = int(a.level[worst])
        alert_id = state.active.get((sensor_id, "flood"))
        known = not np.isnan(a.last_water_cm[worst])
        out.append(
            StreetStatus(
                street=street,
                level=level,
                level_name=level_name(False, level),
                sensor_id=sensor_id,
                depth_cm=float(a.last_water_cm[worst]) if known else None,
                reading_time_ns=int(a.last_water_ns[worst]) if known else None,
                stale=bool(a.stale_on[worst]),
                alert_id=alert_id,
                alert_state=None if alert_id is None else state.alerts[alert_id].state,
                sensors=tuple(cfg.sensor_ids[i] for i in members.tolist()),
            )
        )
    return tuple(out)


def sensor_payload(state: EngineState, sensor_id: str) -> bytes:
    """The retained `alerts/{id}` payload (CONTRACT section 2): the sensor's active alerts as
    JSON, or b"" (which clears the retained message) when none is active."""
    cfg, a = state.config, state.arrays
    i = cfg.index[sensor_id]
    active = [
        state.alerts[alert_id]
        for (sid, _), alert_id in sorted(state.active.items())
        if sid == sensor_id
    ]
    if not active:
        return b""
    level = int(a.level[i])
    doc: dict[str, object] = {
        "sensor": sensor_id,
        "street": cfg.streets[cfg.street_of[i]],
        "level": level,
        "level_name": level_name(bool(cfg.tide[i]), level),
        "stale": bool(a.stale_on[i]),
        "alerts": [],
    }
    if a.last_water_ns[i] != NEVER:
        doc["depth_cm"] = float(a.last_water_cm[i])
        doc["reading_time"] = iso_time(int(a.last_water_ns[i]))
    alerts: list[dict[str, object]] = []
    for alert in active:
        item: dict[str, object] = {
            "alert_id": alert.alert_id,
            "kind": alert.kind,
            "state": alert.state,
            "raised_at": iso_time(alert.raised_ns),
            # The last change (raise, escalation, acknowledgement): what a row shows as "since".
            "changed_at": iso_time(
                alert.raised_ns if alert.changed_ns is None else alert.changed_ns
            ),
            # The reading behind its last raise, escalation or de-escalation: when the page's
            # "since" and escalation history say the water got there (changed_at is our now).
            "reading_time": iso_time(alert.reading_time_ns),
        }
        if alert.detail:
            item["detail"] = alert.detail
        if alert.kind == "flood":
            item["level"] = alert.level
            if a.peak_ns[i] != NEVER:
                item["peak_cm"] = float(a.peak_cm[i])
                item["peak_time"] = iso_time(int(a.peak_ns[i]))
        if alert.acked_ns is not None:
            item["acked_at"] = iso_time(alert.acked_ns)
            item["who"] = alert.who
            item["note"] = alert.note
        alerts.append(item)
    doc["alerts"] = alerts
    return orjson.dumps(doc)
