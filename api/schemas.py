"""The API's JSON shapes, with what every field means and its unit, for the OpenAPI document.

Hot routes serialise plain dicts with orjson and declare these models as their documented
response; the tests check that what they send validates against them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from floodwatch.contract import Lifecycle
from floodwatch.notes import note_problem

TIME = "ISO 8601 with offset (UTC unless `tz` chose another zone), millisecond precision."
AlertState = Lifecycle


class Health(BaseModel):
    """The process is alive and serving requests."""

    status: Literal["ok"] = Field(description="Always `ok`; any answer at all means alive.")


class Readiness(BaseModel):
    """Whether the API can reach what it serves from: the MQTT broker and InfluxDB."""

    status: Literal["ready", "not ready"] = Field(
        description="`ready` when both the broker and the database answered and the live "
        "feed is subscribed, else `not ready`."
    )
    broker: bool = Field(description="The MQTT broker accepted a TCP connection.")
    database: bool = Field(description="InfluxDB answered its /ping endpoint.")
    live_feed: bool = Field(
        default=False,
        description="The API is subscribed to the pipeline's MQTT topics (current state is live).",
    )
    problems: list[str] = Field(
        default_factory=list,
        description="One sentence per unreachable dependency; empty when ready.",
    )


class ErrorOut(BaseModel):
    """An error answer."""

    detail: str = Field(description="One sentence saying what is wrong and what to do.")


class PointGeometry(BaseModel):
    type: Literal["Point"] = Field(description="GeoJSON geometry type.")
    coordinates: list[float] = Field(
        min_length=2, max_length=2, description="[longitude, latitude] in degrees (WGS 84)."
    )


class LineStringGeometry(BaseModel):
    type: Literal["LineString"] = Field(description="GeoJSON geometry type.")
    coordinates: list[list[float]] = Field(
        description="The street's vertices, each [longitude, latitude] in degrees (WGS 84)."
    )


class LevelChange(BaseModel):
    level: int = Field(description="The level entered.")
    level_name: str = Field(description="Its name.")
    at: datetime = Field(description=f"When it was entered; {TIME}")


class MaintenanceInfo(BaseModel):
    """Who put a sensor under maintenance, why, and until when."""

    who: str = Field(description="The operator who put it under maintenance.")
    reason: str = Field(description="Why, in the operator's words.")
    since: datetime = Field(description=f"Start of the maintenance; {TIME}")
    until: datetime = Field(description=f"When it ends by itself unless ended before; {TIME}")
    scope: Literal["sensor", "street"] = Field(
        description="`street` when the whole street was put under maintenance."
    )
    street: str | None = Field(description="The street, for a street's maintenance.")


class SensorProperties(BaseModel):
    """A sensor's registry facts and its current state (from the live feed, not InfluxDB)."""

    id: str = Field(description="Sensor id, as in the registry and the MQTT topics.")
    name: str = Field(description="Name of the place in Vietnamese, e.g. Quốc Hương, đoạn giữa.")
    name_en: str = Field(description="The same name in ASCII/English, e.g. Quoc Huong middle.")
    street: str = Field(
        description="Street (or river, for a tide gauge) the sensor is on, in Vietnamese."
    )
    street_en: str = Field(description="The street's ASCII/English name, e.g. Quoc Huong.")
    ward: str = Field(description="Ward.")
    kind: Literal["street", "tide"] = Field(
        description="`street`: water depth on a road; `tide`: river gauge (stage)."
    )
    level_cm: float | None = Field(
        description="Latest water depth above the road in cm (street), or river stage in cm "
        "(tide); null before the first reading."
    )
    time: datetime | None = Field(description=f"Time of the latest reading; {TIME}")
    level: int | None = Field(
        description="The alert engine's verdict: the level of the sensor's active flood alert "
        "(0 normal, 1 flooded >=10 cm, 2 hazard >=20, 3 impassable >=30, 4 closed >=50; tide "
        "gauges 1-3 are alarms I-III), 0 when none is active; null before any reading. "
        "Debounced and held as the engine holds it: one spike never raises it."
    )
    level_name: str | None = Field(description="Name of `level` (normal, flooded, hazard, ...).")
    since: datetime | None = Field(
        description=f"When the sensor entered its current level (null at level 0); {TIME}"
    )
    flood_alert_id: str | None = Field(description="The active flood alert's id, if any.")
    flood_state: AlertState | None = Field(description="That alert's lifecycle state.")
    reading_level: int | None = Field(
        description="Ladder rung the latest reading alone reaches, without debounce or hold."
    )
    reading_level_name: str | None = Field(description="Name of `reading_level`.")
    verdict_note: Literal["fault", "stale", "draining", "unconfirmed"] | None = Field(
        description="Why the latest reading and `level` differ: `fault` (a fault alert is "
        "active), `stale` (no recent reading; the depth is the last known), `draining` (the "
        "reading is below the level, which the engine holds), `unconfirmed` (the reading is "
        "above the level: one reading is not a flood until the next confirms it); null when "
        "they agree."
    )
    hold_until: datetime | None = Field(
        description="Draining: when the engine's hold on `level` ends if the water stays "
        f"down (10 minutes below the threshold minus 3 cm, from the readings seen); {TIME}"
    )
    history: list[LevelChange] = Field(
        description="The active flood alert's levels, oldest first (escalations and "
        "de-escalations as this API saw them); empty with no flood alert."
    )
    alert_level: int = Field(
        description="Highest level among the sensor's active alerts from the alert engine; "
        "0 when none is active."
    )
    alert_state: AlertState | None = Field(
        description="State of the sensor's most important alert (active before cleared, "
        "unacknowledged first); null when it has none needing attention."
    )
    battery_v: float | None = Field(description="Battery voltage of the latest reading, V.")
    rssi: int | None = Field(description="Radio signal strength of the latest reading, dBm.")
    online: bool | None = Field(
        description="Last `online`/`offline` status the sensor published; null if none seen."
    )
    stale: bool = Field(
        description="No reading has arrived for 3 reporting intervals (or none ever), or the "
        "alert engine says the sensor is stale: the depth shown is the last known one. Judged "
        "by arrival, so a replay of old readings is live."
    )
    interval_s: float = Field(description="Expected reporting interval, seconds.")
    thresholds_cm: list[float] = Field(description="The sensor's alert ladder, cm, ascending.")
    mount_height_mm: float | None = Field(
        description="A distance sensor's height above the dry road, mm, as now calibrated "
        "(depth = (mount height - distance) / 10); null for a sensor that sends its depth."
    )
    maintenance: MaintenanceInfo | None = Field(
        description="Set while the sensor is under maintenance (its readings are still stored "
        "and judged, its alerts notify nobody); null otherwise."
    )


class SensorFeature(BaseModel):
    type: Literal["Feature"] = Field(description="GeoJSON object type.")
    id: str = Field(description="Sensor id.")
    geometry: PointGeometry
    properties: SensorProperties


class SensorCollection(BaseModel):
    """Every registered sensor: the whole registry, never truncated."""

    type: Literal["FeatureCollection"] = Field(description="GeoJSON object type.")
    generated_at: datetime = Field(description=f"When this answer was built; {TIME}")
    numberMatched: int = Field(description="Sensors in the registry.")
    numberReturned: int = Field(description="Sensors in this answer; always numberMatched.")
    features: list[SensorFeature]


class StreetProperties(BaseModel):
    name: str = Field(description="Street name in Vietnamese, as in the registry.")
    name_en: str = Field(description="Street name in ASCII/English, e.g. Duong 12.")
    ward: str = Field(description="Ward.")
    sensors: list[str] = Field(description="Ids of the sensors on this street.")
    level: int | None = Field(
        description="The alert engine's worst active flood level along the street (0 "
        "normal .. 4 closed), never a raw reading; null when no sensor has reported."
    )
    level_name: str | None = Field(description="Name of `level`.")
    level_cm: float | None = Field(
        description="Latest depth of the worst sensor (highest level, then deepest; a stale "
        "one counts with its last known depth), cm. Null when none has reported."
    )
    worst_sensor: str | None = Field(description="Id of that sensor.")
    time: datetime | None = Field(description=f"Time of its latest reading; {TIME}")
    since: datetime | None = Field(
        description=f"When the street entered `level` (null at level 0); {TIME}"
    )
    state: Literal["active_unack", "active_ack"] | None = Field(
        description="`active_unack` while any flood alert on the street awaits "
        "acknowledgement, `active_ack` when all are acknowledged, null with none active."
    )
    alerts: list[str] = Field(description="Ids of the street's active flood alerts.")
    unacked: int = Field(description="How many of them await acknowledgement.")
    peak_cm: float | None = Field(description="Deepest reading under those alerts, cm.")
    peak_time: datetime | None = Field(description=f"When it was read; {TIME}")
    history: list[LevelChange] = Field(
        description="The street's level during the current flood, oldest first (its "
        "escalations and de-escalations); empty at level 0."
    )
    reading_level: int | None = Field(
        description="Ladder rung of the worst sensor's latest reading alone."
    )
    verdict_note: Literal["fault", "stale", "draining", "unconfirmed"] | None = Field(
        description="Why that reading and `level` differ (see /v1/sensors); null if they agree."
    )
    hold_until: datetime | None = Field(
        description=f"Draining: when the engine's hold ends if the water stays down; {TIME}"
    )
    stale: bool = Field(description="That sensor is stale (or no sensor has reported).")
    alert_level: int = Field(description="Highest active alert level on the street; 0 if none.")
    thresholds_cm: list[float] = Field(description="The worst sensor's ladder, cm.")


class StreetFeature(BaseModel):
    type: Literal["Feature"] = Field(description="GeoJSON object type.")
    id: str = Field(description="Street name.")
    geometry: LineStringGeometry
    properties: StreetProperties


class StreetCollection(BaseModel):
    type: Literal["FeatureCollection"] = Field(description="GeoJSON object type.")
    generated_at: datetime = Field(description=f"When this answer was built; {TIME}")
    numberMatched: int = Field(description="Streets in the registry.")
    numberReturned: int = Field(description="Streets in this answer; always numberMatched.")
    features: list[StreetFeature]


class ReadingPoint(BaseModel):
    """One reading (raw) or one time bucket (downsampled: only `time` and `level_cm`)."""

    time: datetime = Field(
        description=f"Reading time, or the bucket's start when downsampled; {TIME}"
    )
    level_cm: float | None = Field(
        description="Depth above the road (street) or river stage (tide), cm; downsampled: "
        "the bucket's mean, max, min or last."
    )
    distance_mm: float | None = Field(
        default=None, description="Raw sensor-to-surface distance, mm, when the sensor sent it."
    )
    battery_v: float | None = Field(default=None, description="Battery voltage, V.")
    rssi: int | None = Field(default=None, description="Radio signal strength, dBm.")
    seq: int | None = Field(default=None, description="The sensor's message counter.")
    ts_from_receipt: bool | None = Field(
        default=None,
        description="True when the sensor sent no time and the receive time stands in.",
    )


class ReadingPage(BaseModel):
    """One page of a sensor's time series, oldest first."""

    sensor: str = Field(description="Sensor id.")
    start: datetime = Field(description=f"Start of the range (inclusive); {TIME}")
    end: datetime = Field(description=f"End of the range (exclusive); {TIME}")
    tz: str = Field(description="Zone the times are shown in (IANA name or UTC).")
    every: str | None = Field(description="Bucket width when downsampled (e.g. 5m), else null.")
    agg: Literal["mean", "max", "min", "last"] | None = Field(
        description="Aggregate per bucket when downsampled, else null."
    )
    limit: int = Field(description="Most points this page could hold (the request's `limit`).")
    max_limit: int = Field(description="Hard cap on points per page, whatever `limit` asks.")
    count: int = Field(description="Points in this page.")
    next: str | None = Field(
        description="Relative URL of the next page (same query plus `cursor`); null on the "
        "last page. Pages are never silently truncated: follow `next` until null."
    )
    points: list[ReadingPoint]


class AlertOut(BaseModel):
    """An alert from the alert engine, as the API shows it."""

    model_config = ConfigDict(extra="forbid")

    alert_id: str = Field(description="The engine's alert id.")
    sensor: str = Field(description="Sensor id.")
    street: str | None = Field(description="The sensor's street, from the registry.")
    street_en: str | None = Field(description="The street's ASCII/English name.")
    kind: str = Field(
        description="Alert kind: e.g. flood (level ladder), rising, stale, battery_low, fault."
    )
    level: int | None = Field(description="Alert level 0-4 (CONTRACT section 3), if any.")
    level_name: str | None = Field(description="Name of the level (flooded, hazard, ...).")
    state: AlertState | None = Field(description="Lifecycle state; null if the engine sent none.")
    active: bool = Field(description="State is active_unack or active_ack.")
    changed_at: datetime | None = Field(description=f"When the state last changed; {TIME}")
    acked_by: str | None = Field(description="Who acknowledged it (API key name).")
    acked_at: datetime | None = Field(description=f"When it was acknowledged; {TIME}")
    note: str | None = Field(description="The acknowledging operator's note.")
    payload: dict[str, Any] = Field(description="The engine's alert object as published.")


class AlertPage(BaseModel):
    alerts: list[AlertOut] = Field(description="Alerts, most recently changed first.")
    count: int = Field(description="Alerts in this page.")
    limit: int = Field(description="Most alerts this page could hold.")
    max_limit: int = Field(description="Hard cap on alerts per page.")
    next: str | None = Field(description="Relative URL of the next page; null on the last.")


class AckIn(BaseModel):
    """An operator's acknowledgement."""

    model_config = ConfigDict(extra="forbid")

    note: str = Field(
        default="",
        max_length=1000,
        description="What the operator saw or did: free text on one line (tabs allowed; line "
        "breaks, NUL and other control characters are refused with 422).",
    )

    @field_validator("note")
    @classmethod
    def _storable(cls, note: str) -> str:
        problem = note_problem(note)
        if problem is not None:
            raise ValueError(problem)
        return note


class Me(BaseModel):
    """Who the presented key belongs to."""

    name: str = Field(description="The key's name (`anonymous` without a key, when allowed).")
    role: Literal["viewer", "operator"] = Field(description="What the key may do.")
    anonymous: bool = Field(description="True when no key was sent (anonymous reads).")


class StreetAckOut(BaseModel):
    """The result of acknowledging a street's flood alerts in one action."""

    street: str = Field(description="The street's registry name.")
    by: str = Field(description="Who acknowledged (the API key's name).")
    note: str = Field(description="The one note recorded on every alert.")
    acknowledged: list[AlertOut] = Field(description="The alerts this request acknowledged.")
    already: list[str] = Field(
        description="Ids of alerts that were acknowledged or cleared meanwhile."
    )


class EpisodeOut(BaseModel):
    """A flood event of the ward: from the first street sensor entering level 1 (flooded,
    10 cm) until the last one clears."""

    event_id: str = Field(description="The episode's id.")
    start: datetime = Field(description=f"First street sensor entered level 1; {TIME}")
    end: datetime | None = Field(description=f"Last one cleared; null while ongoing; {TIME}")
    peak_cm: float | None = Field(description="Deepest water on a street during it, cm.")
    peak_time: datetime | None = Field(description=f"When the peak was reached; {TIME}")
    peak_sensor: str | None = Field(description="Sensor that measured the peak.")
    peak_street: str | None = Field(description="That sensor's street.")
    peak_street_en: str | None = Field(description="That street's ASCII/English name.")
    max_level: int | None = Field(description="Highest level reached (1 flooded .. 4 closed).")
    max_level_name: str | None = Field(description="Name of `max_level`.")
    minutes_to_peak: float | None = Field(description="Minutes from start to peak.")
    minutes_to_drain: float | None = Field(description="Minutes from peak to end.")
    streets: list[str] = Field(description="Streets that flooded (Vietnamese names).")
    streets_en: list[str] = Field(description="The same streets' ASCII/English names.")
    report: str = Field(
        description="Path of the episode's printable report (add ?lang=en, or .csv)."
    )
    sensors: list[str] = Field(description="Sensors that reached level 1.")


class EpisodePage(BaseModel):
    events: list[EpisodeOut] = Field(description="Flood events, oldest start first.")
    count: int = Field(description="Events in this page.")
    limit: int = Field(description="Most events this page could hold.")
    max_limit: int = Field(description="Hard cap on events per page.")
    next: str | None = Field(description="Relative URL of the next page; null on the last.")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error answers, always JSON `{"detail": ...}`."""
    text = {
        401: "No key, or a wrong one (`WWW-Authenticate: Bearer`).",
        403: "The key's role may not do this (operator needed).",
        404: "No such sensor or alert.",
        409: "The alert's state does not allow this.",
        502: "InfluxDB refused the query.",
        503: "InfluxDB or the MQTT broker is unavailable; retry later.",
    }
    schema = ErrorOut.model_json_schema()
    return {
        code: {"description": text[code], "content": {"application/json": {"schema": schema}}}
        for code in codes
    }
