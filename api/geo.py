"""GeoJSON of the current state (sensors and streets), built from api.live without I/O.

`/v1/sensors` is the IOC's hottest request, so its body is built once per state version and
second (the stale flags move with the clock) and served as bytes until then; each sensor's
Feature is serialised once per change of that sensor (or of its stale flag) and the body is
joined from those pieces, so a reading costs one Feature, not a thousand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from api.live import LiveState, SensorNow, depth_level, level_name, summarise_alerts
from api.times import iso
from floodwatch.operations import Maintenance
from floodwatch.registry import STREET_THRESHOLDS_CM, Street


def sensor_properties(now: SensorNow, now_ns: int) -> dict[str, Any]:
    """A sensor's map properties: registry facts plus its latest reading and alert state."""
    sensor = now.sensor
    reading = now.reading
    level = depth_level(sensor, reading.level_cm) if reading is not None else None
    alert_level, alert_state = summarise_alerts(now.alerts)
    return {
        "id": sensor.id,
        "name": sensor.name,
        "name_en": sensor.name_en,
        "street": sensor.street,
        "street_en": sensor.street_en,
        "ward": sensor.ward,
        "kind": sensor.kind,
        "level_cm": reading.level_cm if reading is not None else None,
        "time": iso(reading.time_ns) if reading is not None else None,
        "level": level,
        "level_name": level_name(sensor, level) if level is not None else None,
        "alert_level": alert_level,
        "alert_state": alert_state,
        "battery_v": reading.battery_v if reading is not None else None,
        "rssi": reading.rssi if reading is not None else None,
        "online": now.online,
        "stale": now.stale(now_ns),
        "interval_s": sensor.interval_s,
        "thresholds_cm": list(sensor.thresholds_cm),
        "mount_height_mm": sensor.mount_height_mm,
        "maintenance": maintenance_json(now.under_maintenance(now_ns)),
    }


def maintenance_json(record: Maintenance | None) -> dict[str, Any] | None:
    """A sensor's maintenance as /v1/sensors and /v1/maintenance show it (None: not under)."""
    if record is None:
        return None
    return {
        "who": record.who,
        "reason": record.reason,
        "since": iso(record.since_ns),
        "until": iso(record.until_ns),
        "scope": record.scope,
        "street": record.street or None,
    }


def sensor_feature(now: SensorNow, now_ns: int) -> dict[str, Any]:
    sensor = now.sensor
    return {
        "type": "Feature",
        "id": sensor.id,
        "geometry": {"type": "Point", "coordinates": [sensor.lon, sensor.lat]},
        "properties": sensor_properties(now, now_ns),
    }


def sensors_collection(
    state: LiveState, now_ns: int, only: frozenset[str] | None = None
) -> dict[str, Any]:
    """Every sensor, or those whose id is in `only` (a search's result)."""
    features = [
        sensor_feature(now, now_ns) for now in state if only is None or now.sensor.id in only
    ]
    return {
        "type": "FeatureCollection",
        "generated_at": iso(now_ns),
        "numberMatched": len(features),
        "numberReturned": len(features),
        "features": features,
    }


def street_feature(street: Street, members: list[SensorNow], now_ns: int) -> dict[str, Any]:
    """A street with the worst current depth among its sensors (stale ones keep their last)."""
    worst: SensorNow | None = None
    for now in members:
        if now.reading is not None and (
            worst is None or worst.reading is None or now.reading.level_cm > worst.reading.level_cm
        ):
            worst = now
    reading = worst.reading if worst is not None else None
    level = None
    if worst is not None and reading is not None:
        level = depth_level(worst.sensor, reading.level_cm)
    return {
        "type": "Feature",
        "id": street.name,
        "geometry": {"type": "LineString", "coordinates": [list(p) for p in street.coordinates]},
        "properties": {
            "name": street.name,
            "name_en": street.name_en,
            "ward": street.ward,
            "sensors": [now.sensor.id for now in members],
            "level_cm": reading.level_cm if reading is not None else None,
            "level": level,
            "level_name": (
                level_name(worst.sensor, level) if worst is not None and level is not None else None
            ),
            "worst_sensor": worst.sensor.id if worst is not None else None,
            "time": iso(reading.time_ns) if reading is not None else None,
            "stale": worst.stale(now_ns) if worst is not None else True,
            "alert_level": max((summarise_alerts(n.alerts)[0] for n in members), default=0),
            "thresholds_cm": list(
                worst.sensor.thresholds_cm if worst is not None else STREET_THRESHOLDS_CM
            ),
        },
    }


def streets_collection(
    state: LiveState, now_ns: int, streets: Sequence[Street] | None = None
) -> dict[str, Any]:
    """The registry's streets (or only `streets`, a search's result) as a FeatureCollection."""
    by_street: dict[str, list[SensorNow]] = {}
    for now in state:
        by_street.setdefault(now.sensor.street, []).append(now)
    features = [
        street_feature(street, by_street.get(street.name, []), now_ns)
        for street in (state.registry.streets if streets is None else streets)
    ]
    return {
        "type": "FeatureCollection",
        "generated_at": iso(now_ns),
        "numberMatched": len(features),
        "numberReturned": len(features),
        "features": features,
    }


class SensorsBody:
    """The /v1/sensors body, rebuilt from per-sensor serialised Features as they change."""

    def __init__(self) -> None:
        self._pieces: dict[str, tuple[tuple[int, bool, bool], bytes]] = {}
        self._key: tuple[int, int] | None = None
        self._body = b""

    def get(self, state: LiveState, now_ns: int) -> bytes:
        key = (state.version, now_ns // 1_000_000_000)
        if key == self._key:
            return self._body
        pieces: list[bytes] = []
        for now in state:
            # Maintenance ends with the clock too: its expiry changes the Feature.
            version = (now.version, now.stale(now_ns), now.under_maintenance(now_ns) is None)
            held = self._pieces.get(now.sensor.id)
            if held is None or held[0] != version:
                held = (version, orjson.dumps(sensor_feature(now, now_ns)))
                self._pieces[now.sensor.id] = held
            pieces.append(held[1])
        count = str(len(pieces)).encode()
        self._body = b"".join(
            (
                b'{"type":"FeatureCollection","generated_at":',
                orjson.dumps(iso(now_ns)),
                b',"numberMatched":',
                count,
                b',"numberReturned":',
                count,
                b',"features":[',
                b",".join(pieces),
                b"]}",
            )
        )
        self._key = key
        return self._body


class BodyCache:
    """One serialised body per (state version, second): rebuilt only when either moves."""

    def __init__(self, build: Callable[[LiveState, int], dict[str, Any]]) -> None:
        self._build = build
        self._key: tuple[int, int] | None = None
        self._body = b""

    def get(self, state: LiveState, now_ns: int) -> bytes:
        key = (state.version, now_ns // 1_000_000_000)
        if key != self._key:
            self._body = orjson.dumps(self._build(state, now_ns))
            self._key = key
        return self._body
