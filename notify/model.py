"""What the notifier knows of an alert and what it decides to send, as frozen values."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from alerts.events import AlertEvent
from floodwatch.contract import level_name
from floodwatch.registry import Registry, ascii_name, search_key

# What a notification announces: the alert was raised, its level went up or down, nobody
# acknowledged it in time (sent to the next tier), it was acknowledged, it cleared.
MessageKind = Literal[
    "raised",
    "escalated",
    "deescalated",
    "unacknowledged",
    "acknowledged",
    "cleared",
    "episode",
    "maintenance_over",  # the sensor's maintenance ended with this alert still unacknowledged
]
MESSAGE_KINDS: tuple[MessageKind, ...] = (
    "raised",
    "escalated",
    "deescalated",
    "unacknowledged",
    "acknowledged",
    "cleared",
    "episode",
    "maintenance_over",
)


@dataclass(frozen=True, slots=True)
class AlertFacts:
    """One alert as of its latest event, with the registry's ward and sensor name."""

    alert_id: str
    event_id: str
    seq: int
    sensor_id: str
    sensor_name: str
    street: str
    ward: str
    kind: str
    change: str
    state: str
    level: int
    level_name: str
    at_ns: int  # when the engine decided
    since_ns: int  # when the alert was raised (the time in its id)
    depth_cm: float | None = None
    tide: bool = False  # a river gauge: `depth_cm` is the river's stage
    detail: str = ""
    battery_v: float | None = None
    rise_cm: float | None = None
    peak_cm: float | None = None
    who: str | None = None
    note: str | None = None
    # English forms of the names, where the registry has them (`name_en`, `street_en`).
    sensor_name_en: str = ""
    street_en: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, object]) -> AlertFacts:
        return cls(**doc)  # type: ignore[arg-type]


def raised_ns(alert_id: str, fallback: int) -> int:
    """The time in an alert id `{sensor}:{kind}:{t}`: when the alert was raised."""
    tail = alert_id.rpartition(":")[2]
    return int(tail) if tail.isdigit() else fallback


def street_names(registry: Registry, name: str) -> tuple[str, str]:
    """A street's Vietnamese name (with diacritics) and English name from the registry, found by
    either form, accents and case ignored; (name, name without marks) if the registry has none."""
    key = search_key(name)
    for street in registry.streets:
        if key in (search_key(street.name), search_key(street.name_en)):
            return street.name, street.name_en
    for sensor in registry.sensors.values():
        if key in (search_key(sensor.street), search_key(sensor.street_en)):
            return sensor.street, sensor.street_en
    return name, ascii_name(name)


def facts_from_event(event: AlertEvent, registry: Registry) -> AlertFacts:
    sensor = registry.get(event.sensor_id)
    street, street_en = (
        (sensor.street, sensor.street_en) if sensor else street_names(registry, event.street)
    )
    return AlertFacts(
        alert_id=event.alert_id,
        event_id=event.event_id,
        seq=event.seq,
        sensor_id=event.sensor_id,
        sensor_name=sensor.name if sensor else event.sensor_id,
        street=street,
        ward=sensor.ward if sensor else "",
        kind=event.kind,
        change=event.change,
        state=event.state,
        # Only flood alerts carry a level; the other kinds route and read as level 0.
        level=event.level or 0,
        level_name=event.level_name or "",
        at_ns=event.at_ns,
        since_ns=event.raised_ns,
        depth_cm=event.depth_cm,
        tide=bool(sensor and sensor.kind == "tide"),
        detail=event.detail,
        battery_v=event.battery_v,
        rise_cm=event.rise_cm,
        peak_cm=event.peak_cm,
        who=event.who,
        note=event.note,
        sensor_name_en=sensor.name_en if sensor else "",
        street_en=street_en,
    )


@dataclass(frozen=True, slots=True)
class Send:
    """One recipient to be told one thing about one alert."""

    recipient: str
    message: MessageKind
    tier: int  # 0: the first recipients; n: the n-th escalation tier
    facts: AlertFacts
    quiet: bool  # may wait for the end of quiet hours (never for flood or rising)
    unacked_min: float | None = None  # `unacknowledged`: minutes nobody acknowledged it
    cause: str = ""  # the notification id's cause when no event is behind it (maintenance_over)


def facts_from_retained(doc: object, registry: Registry, now_ns: int) -> list[AlertFacts]:
    """Unacknowledged alerts in a sensor's retained `alerts/{id}` state (what a notifier that
    starts afresh has missed), as facts of a `raised` event numbered 0, so that any real event
    of the alert (numbered from 1) still applies after it."""
    if not isinstance(doc, dict) or not isinstance(doc.get("alerts"), list):
        return []
    sensor_id = str(doc.get("sensor", ""))
    sensor = registry.get(sensor_id)
    tide = bool(sensor and sensor.kind == "tide")
    depth = doc.get("depth_cm")
    street, street_en = (
        (sensor.street, sensor.street_en)
        if sensor
        else street_names(registry, str(doc.get("street", "")))
    )
    out = []
    for item in doc["alerts"]:
        if not isinstance(item, dict) or item.get("state") != "active_unack":
            continue
        alert_id = str(item.get("alert_id", ""))
        kind = str(item.get("kind", ""))
        level = item.get("level", doc.get("level", 0))
        level = int(level) if isinstance(level, int) else 0
        out.append(
            AlertFacts(
                alert_id=alert_id,
                event_id=f"{alert_id}:retained",
                seq=0,
                sensor_id=sensor_id,
                sensor_name=sensor.name if sensor else sensor_id,
                street=street,
                ward=sensor.ward if sensor else "",
                kind=kind,
                change="raised",
                state="active_unack",
                level=level,
                level_name=level_name(tide, level) if kind == "flood" else "",
                at_ns=now_ns,
                since_ns=raised_ns(alert_id, now_ns),
                depth_cm=float(depth) if isinstance(depth, int | float) else None,
                tide=tide,
                detail=str(item.get("detail", "")),
                sensor_name_en=sensor.name_en if sensor else "",
                street_en=street_en,
            )
        )
    return out


def facts_from_episode(doc: object, registry: Registry) -> AlertFacts | None:
    """A finished flood episode as the facts of its summary notification (None if malformed)."""
    if not isinstance(doc, dict):
        return None
    try:
        episode_id = str(doc["episode_id"])
        streets = [str(s) for s in doc["streets"]]
        peak_sensor = str(doc["peak_sensor_id"])
        start_ns, end_ns = int(doc["start_ns"]), int(doc["end_ns"])
        max_level = int(doc["max_level"])
        peak_cm = float(doc["peak_cm"])
    except (KeyError, TypeError, ValueError):
        return None
    sensor = registry.get(peak_sensor)
    names = [street_names(registry, s) for s in streets]
    return AlertFacts(
        alert_id=episode_id,
        event_id=f"{episode_id}:ended",
        seq=1,
        sensor_id=peak_sensor,
        sensor_name=sensor.name if sensor else peak_sensor,
        street=", ".join(vi for vi, _ in names),
        ward=sensor.ward if sensor else "",
        kind="flood",
        change="episode",
        state="cleared_unack",
        level=max_level,
        level_name=str(doc.get("max_level_name", level_name(False, max_level))),
        at_ns=end_ns,
        since_ns=start_ns,
        depth_cm=peak_cm,
        peak_cm=peak_cm,
        sensor_name_en=sensor.name_en if sensor else "",
        street_en=", ".join(en for _, en in names),
    )
