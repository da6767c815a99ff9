"""GeoJSON of the current state (sensors and streets), built from api.live without I/O.

Both show the alert engine's verdict (api.live.verdict) as `level`, with the latest depth
beside it (`level_cm`) and, where they differ, why (`verdict_note`, `hold_until`).

`/v1/sensors` is the IOC's hottest request, so its body is built once per state version and
second (the stale flags move with the clock) and served as bytes until then; each sensor's
Feature is serialised once per change of that sensor (or of its stale flag) and the body is
joined from those pieces, so a reading costs one Feature, not a thousand.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from api.live import (
    LiveState,
    SensorNow,
    Verdict,
    alert_state,
    level_name,
    summarise_alerts,
    verdict,
)
from api.times import iso
from floodwatch.contract import STREET_LEVEL_NAMES, TIDE_LEVEL_NAMES
from floodwatch.operations import Maintenance
from floodwatch.registry import STREET_THRESHOLDS_CM, Street

# Level-change and hold times repeat on every rebuild of a sensor or street: format each once.
_iso = functools.lru_cache(maxsize=8192)(iso)


def _history(history: tuple[tuple[int, int], ...], tide: bool) -> list[dict[str, Any]]:
    names = TIDE_LEVEL_NAMES if tide else STREET_LEVEL_NAMES
    return [
        {"level": lv, "level_name": names[lv] if lv < len(names) else f"level_{lv}", "at": _iso(t)}
        for lv, t in history
    ]


def collection_body(pieces: list[bytes], now_ns: int) -> bytes:
    """A FeatureCollection's JSON from its features' JSON, each encoded once and kept."""
    count = str(len(pieces)).encode()
    return b"".join(
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


def sensor_properties(now: SensorNow, now_ns: int) -> dict[str, Any]:
    """A sensor's map properties: registry facts, the engine's verdict (level, since when, and
    why the latest reading may differ from it) and the latest reading beside it."""
    sensor = now.sensor
    reading = now.reading
    stale = now.stale(now_ns)
    judged = verdict(now, stale)
    level, raw = judged.level, judged.reading_level
    alert = judged.alert
    top_level, top_state = summarise_alerts(now.alerts)
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
        "since": _iso(judged.since_ns) if judged.since_ns is not None else None,
        "flood_alert_id": alert.get("alert_id") if alert is not None else None,
        "flood_state": alert_state(alert) if alert is not None else None,
        "reading_level": raw,
        "reading_level_name": level_name(sensor, raw) if raw is not None else None,
        "verdict_note": judged.note,
        "hold_until": _iso(judged.hold_until_ns) if judged.hold_until_ns is not None else None,
        "history": _history(now.history, sensor.kind == "tide") if alert is not None else [],
        "alert_level": top_level,
        "alert_state": top_state,
        "battery_v": reading.battery_v if reading is not None else None,
        "rssi": reading.rssi if reading is not None else None,
        "online": now.online,
        "stale": stale,
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


def street_feature(
    street: Street, members: list[SensorNow], history: tuple[tuple[int, int], ...], now_ns: int
) -> dict[str, Any]:
    """A street with the engine's worst active flood level along it, never a raw reading;
    its depth is that of the worst sensor (highest level, then deepest latest reading; stale
    ones count with their last)."""
    worst: tuple[SensorNow, Verdict, bool] | None = None
    best_key: tuple[int, float] | None = None
    states: list[str] = []
    open_ids: list[str] = []
    peak: tuple[float, str | None] | None = None
    for now in members:
        stale = now.stale(now_ns)
        mine = verdict(now, stale)
        depth = now.reading.level_cm if now.reading is not None else float("-inf")
        key = (mine.level if mine.level is not None else -1, depth)
        if best_key is None or key > best_key:
            worst, best_key = (now, mine, stale), key
        alert = mine.alert
        if alert is not None:
            state = alert_state(alert)
            if state is not None:
                states.append(state)
            open_ids.append(str(alert.get("alert_id")))
            peak_cm = alert.get("peak_cm")
            if isinstance(peak_cm, int | float) and (peak is None or peak_cm > peak[0]):
                time = alert.get("peak_time")
                peak = (float(peak_cm), time if isinstance(time, str) else None)
    reading = worst[0].reading if worst is not None else None
    judged = worst[1] if worst is not None else None
    level = judged.level if judged is not None else None
    unacked = states.count("active_unack")
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
                level_name(worst[0].sensor, level)
                if worst is not None and level is not None
                else None
            ),
            "since": _iso(history[-1][1]) if history and level else None,
            "state": ("active_unack" if unacked else "active_ack" if states else None),
            "alerts": open_ids,
            "unacked": unacked,
            "peak_cm": peak[0] if peak is not None else None,
            "peak_time": peak[1] if peak is not None else None,
            "history": _history(history, False) if level else [],
            "worst_sensor": worst[0].sensor.id if worst is not None else None,
            "time": iso(reading.time_ns) if reading is not None else None,
            "reading_level": judged.reading_level if judged is not None else None,
            "verdict_note": judged.note if judged is not None else None,
            "hold_until": (
                _iso(judged.hold_until_ns)
                if judged is not None and judged.hold_until_ns is not None
                else None
            ),
            "stale": worst[2] if worst is not None else True,
            "alert_level": max((summarise_alerts(n.alerts)[0] for n in members), default=0),
            "thresholds_cm": list(
                worst[0].sensor.thresholds_cm if worst is not None else STREET_THRESHOLDS_CM
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
        street_feature(
            street, by_street.get(street.name, []), state.street_history(street.name), now_ns
        )
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
        self._body = collection_body(pieces, now_ns)
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


class StreetsBody(BodyCache):
    """The /v1/streets body: each street's Feature is rebuilt only when one of its sensors
    changed (or its stale flag moved), so a reading costs one street, not the registry."""

    def __init__(self) -> None:
        super().__init__(streets_collection)
        self._pieces: dict[str, tuple[tuple[object, ...], bytes]] = {}
        self._members: dict[str, list[SensorNow]] | None = None

    def get(self, state: LiveState, now_ns: int) -> bytes:
        key = (state.version, now_ns // 1_000_000_000)
        if key == self._key:
            return self._body
        if self._members is None:
            self._members = {}
            for now in state:
                self._members.setdefault(now.sensor.street, []).append(now)
        pieces: list[bytes] = []
        for street in state.registry.streets:
            members = self._members.get(street.name, [])
            history = state.street_history(street.name)
            version = (history, *((m.version, m.stale(now_ns)) for m in members))
            held = self._pieces.get(street.name)
            if held is None or held[0] != version:
                feature = street_feature(street, members, history, now_ns)
                held = (version, orjson.dumps(feature))
                self._pieces[street.name] = held
            pieces.append(held[1])
        self._body = collection_body(pieces, now_ns)
        self._key = key
        return self._body
