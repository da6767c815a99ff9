"""What the notifier knows of an alert and what it decides to send, as frozen values."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from alerts.events import AlertEvent
from floodwatch.registry import Registry

# What a notification announces: the alert was raised, its level went up or down, nobody
# acknowledged it in time (sent to the next tier), it was acknowledged, it cleared.
MessageKind = Literal[
    "raised", "escalated", "deescalated", "unacknowledged", "acknowledged", "cleared"
]
MESSAGE_KINDS: tuple[MessageKind, ...] = (
    "raised",
    "escalated",
    "deescalated",
    "unacknowledged",
    "acknowledged",
    "cleared",
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

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, object]) -> AlertFacts:
        return cls(**doc)  # type: ignore[arg-type]


def raised_ns(alert_id: str, fallback: int) -> int:
    """The time in an alert id `{sensor}:{kind}:{t}`: when the alert was raised."""
    tail = alert_id.rpartition(":")[2]
    return int(tail) if tail.isdigit() else fallback


def facts_from_event(event: AlertEvent, registry: Registry) -> AlertFacts:
    sensor = registry.get(event.sensor_id)
    return AlertFacts(
        alert_id=event.alert_id,
        event_id=event.event_id,
        seq=event.seq,
        sensor_id=event.sensor_id,
        sensor_name=sensor.name if sensor else event.sensor_id,
        street=event.street,
        ward=sensor.ward if sensor else "",
        kind=event.kind,
        change=event.change,
        state=event.state,
        level=event.level,
        level_name=event.level_name,
        at_ns=event.at_ns,
        since_ns=raised_ns(event.alert_id, event.at_ns),
        depth_cm=event.depth_cm,
        tide=bool(sensor and sensor.kind == "tide"),
        detail=event.detail,
        battery_v=event.battery_v,
        rise_cm=event.rise_cm,
        peak_cm=event.peak_cm,
        who=event.who,
        note=event.note,
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
