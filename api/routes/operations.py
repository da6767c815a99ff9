"""Operators' changes to sensors while everything runs (floodwatch.operations, CONTRACT
section 6): maintenance of a sensor or a street, calibration and thresholds, added and retired
sensors; the audit of those changes; and each alert's notification history.

The API publishes each change on the broker (the retained record, then the audit event on
`changes/{id}`, which ingest stores) and applies it to its own live state at once; ingest, the
notifier and other API instances apply the retained record when it reaches them.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Annotated, Any

import anyio.to_thread
import orjson
from fastapi import APIRouter, HTTPException, Path, Query, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from api.deps import OperatorDep, Services, ServicesDep, ViewerDep
from api.errors import BrokerUnavailable
from api.geo import maintenance_json, sensor_properties
from api.routes.alerts import AlertId
from api.routes.sensors import SensorId
from api.schemas import error_responses
from api.times import iso
from floodwatch.contract import EVENT_MEMORY_NS
from floodwatch.errors import BrokerError, RegistryError
from floodwatch.operations import (
    CHANGE_MEASUREMENT,
    MAX_REASON,
    Maintenance,
    OperationError,
    Override,
    SensorChange,
    apply_overrides,
    calibration_change,
    check_text,
    override_sensor,
    start_maintenance,
    street_maintenance_for,
)
from floodwatch.registry import RESERVED_IDS, Sensor, search_key, sensor_as_properties
from floodwatch.topics import Topics

router = APIRouter(tags=["operations"])
log = logging.getLogger(__name__)

MAX_CHANGES = 1000
SYSTEM = "floodwatch"  # who ends an expired maintenance

Reason = Annotated[
    str,
    Query(min_length=1, max_length=MAX_REASON, description="Why, in a few words (audited)."),
]
StreetName = Annotated[
    str,
    Path(
        min_length=1,
        max_length=200,
        description="The street's name as in the registry (Vietnamese or English).",
    ),
]


class MaintenanceIn(BaseModel):
    """Put a sensor (or every sensor of a street) under maintenance."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=MAX_REASON, description="Why (audited).")
    until: AwareDatetime = Field(
        description="When it ends by itself: in the future, at most 14 days away."
    )


class CalibrationIn(BaseModel):
    """New calibration for one sensor; give at least one of the two."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=MAX_REASON, description="Why (audited).")
    mount_height_mm: float | None = Field(
        default=None, gt=0, le=10_000, description="A distance sensor's new height above the road."
    )
    thresholds_cm: list[float] | None = Field(
        default=None, min_length=1, max_length=10, description="The new alert ladder, ascending."
    )


class SensorIn(BaseModel):
    """A new sensor, with the registry file's properties (CONTRACT section 1)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=MAX_REASON, description="Why (audited).")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="Its id and broker login.")
    name: str = Field(min_length=1, max_length=200)
    name_en: str | None = Field(default=None, max_length=200)
    street: str = Field(min_length=1, max_length=200)
    ward: str = Field(min_length=1, max_length=200)
    kind: str = Field(description="`street` or `tide`.")
    sends: str = Field(default="level_cm", description="`level_cm` or `distance_mm`.")
    mount_height_mm: float | None = None
    thresholds_cm: list[float] | None = Field(default=None, max_length=10)
    interval_s: float | None = None
    lon: float
    lat: float


def _json(body: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code, media_type="application/json")


def _refuse(status: int, message: str) -> HTTPException:
    return HTTPException(status, message)


def _in_force(services: Services, sensor_id: str) -> Sensor:
    """The sensor of the registry in force, or the 404 every operator route gives."""
    sensor = services.registry.get(sensor_id)
    if sensor is None:
        raise _refuse(404, f"no sensor {sensor_id!r} in the registry; see GET /v1/sensors")
    return sensor


def _reason(text: str) -> str:
    try:
        return check_text(text, "reason", MAX_REASON)
    except OperationError as exc:
        raise _refuse(422, str(exc)) from exc


async def _publish(services: Services, items: list[tuple[str, bytes, bool]]) -> None:
    def run() -> None:
        for topic, payload, retain in items:
            services.feed.publish(topic, payload, retain)

    try:
        await anyio.to_thread.run_sync(run)
    except BrokerError as exc:
        raise BrokerUnavailable(f"the change was not published: {exc}") from exc


def _topics(services: Services) -> Topics:
    return services.feed.topics


# ---- maintenance ------------------------------------------------------------------------------


async def _begin(
    services: Services, records: list[Maintenance], who: str, reason: str
) -> list[dict[str, Any]]:
    topics = _topics(services)
    items: list[tuple[str, bytes, bool]] = []
    for record in records:
        change = SensorChange(
            record.sensor_id, "maintenance_started", who, reason, record.since_ns, record.to_dict()
        )
        items.append((topics.maintenance(record.sensor_id), record.to_json(), True))
        items.append((topics.sensor_changes(record.sensor_id), change.to_json(), False))
    await _publish(services, items)
    for record in records:
        # Here at once (a GET right after sees it); the broker's echo then changes nothing.
        services.feed.handler.operation(topics.maintenance(record.sensor_id), record.to_json())
    return [{"sensor": r.sensor_id, **(maintenance_json(r) or {})} for r in records]


async def _end(
    services: Services, sensor_ids: list[str], who: str, reason: str, expired: bool = False
) -> list[str]:
    """End the maintenance of these sensors (those under one); the ids ended."""
    topics = _topics(services)
    now_ns = services.clock()
    items: list[tuple[str, bytes, bool]] = []
    ended: list[str] = []
    for sensor_id in sensor_ids:
        held = next(
            (m for m in services.state.maintenance_records() if m.sensor_id == sensor_id), None
        )
        if held is None:
            continue
        at_ns = held.until_ns if expired else now_ns
        change = SensorChange(
            sensor_id,
            "maintenance_expired" if expired else "maintenance_ended",
            who,
            reason,
            at_ns,
            held.to_dict(),
        )
        items.append((topics.maintenance(sensor_id), b"", True))
        items.append((topics.sensor_changes(sensor_id), change.to_json(), False))
        ended.append(sensor_id)
    await _publish(services, items)
    for sensor_id in ended:
        services.feed.handler.operation(topics.maintenance(sensor_id), b"")
    return ended


async def _join_street_maintenance(services: Services, sensor: Sensor, who: str) -> None:
    """A sensor joining a street under maintenance (added, or restored) is put under the
    street's maintenance before it joins, so no process knows it without its maintenance."""
    record = street_maintenance_for(services.state.maintenance_records(), sensor, services.clock())
    if record is not None:
        await _begin(services, [record], who, record.reason)


def _until_ns(until: datetime) -> int:
    return int(until.timestamp()) * 10**9 + until.microsecond * 1000


def _street_sensors(services: Services, street: str) -> tuple[str, list[str]]:
    # Accents and case ignored, as the search does: "quoc huong" is Quốc Hương.
    wanted = search_key(street)
    matches = [
        s
        for s in services.registry.sensors.values()
        if wanted in (search_key(s.street), search_key(s.street_en))
    ]
    if not matches:
        raise _refuse(404, f"no sensor is on a street named {street[:80]!r}; see GET /v1/streets")
    return matches[0].street, [s.id for s in matches]


@router.get(
    "/v1/maintenance",
    summary="Sensors under maintenance now",
    responses=error_responses(401, 403),
)
async def list_maintenance(services: ServicesDep, _: ViewerDep) -> Response:
    now_ns = services.clock()
    items = [
        {"sensor": m.sensor_id, **(maintenance_json(m) or {})}
        for m in sorted(services.state.maintenance_records(), key=lambda m: m.sensor_id)
        if m.active_at(now_ns)
    ]
    return _json({"maintenance": items})


@router.post(
    "/v1/maintenance/sensors/{sensor_id}",
    summary="Put a sensor under maintenance (operator role)",
    description="Its readings are still stored and judged; its alerts notify nobody until "
    "`until` or the end of maintenance (DELETE). Audited as a `maintenance_started` change.",
    responses=error_responses(401, 403, 404, 503),
)
async def begin_sensor(
    sensor_id: SensorId, body: MaintenanceIn, services: ServicesDep, operator: OperatorDep
) -> Response:
    _in_force(services, sensor_id)
    try:
        record = start_maintenance(
            sensor_id, operator.name, body.reason, _until_ns(body.until), services.clock()
        )
    except OperationError as exc:
        raise _refuse(422, str(exc)) from exc
    done = await _begin(services, [record], operator.name, record.reason)
    return _json(done[0])


@router.delete(
    "/v1/maintenance/sensors/{sensor_id}",
    summary="End a sensor's maintenance (operator role)",
    responses=error_responses(401, 403, 404, 503),
)
async def end_sensor(
    sensor_id: SensorId, services: ServicesDep, operator: OperatorDep, reason: Reason
) -> Response:
    ended = await _end(services, [sensor_id], operator.name, _reason(reason))
    if not ended:
        raise _refuse(404, f"sensor {sensor_id!r} is not under maintenance")
    return _json({"ended": ended})


@router.post(
    "/v1/maintenance/streets/{street}",
    summary="Put every sensor of a street under maintenance (operator role)",
    responses=error_responses(401, 403, 404, 503),
)
async def begin_street(
    street: StreetName, body: MaintenanceIn, services: ServicesDep, operator: OperatorDep
) -> Response:
    name, sensor_ids = _street_sensors(services, street)
    now_ns = services.clock()
    try:
        records = [
            start_maintenance(
                sid, operator.name, body.reason, _until_ns(body.until), now_ns, "street", name
            )
            for sid in sensor_ids
        ]
    except OperationError as exc:
        raise _refuse(422, str(exc)) from exc
    done = await _begin(services, records, operator.name, records[0].reason)
    return _json({"street": name, "maintenance": done})


@router.delete(
    "/v1/maintenance/streets/{street}",
    summary="End the maintenance of every sensor of a street (operator role)",
    responses=error_responses(401, 403, 404, 503),
)
async def end_street(
    street: StreetName, services: ServicesDep, operator: OperatorDep, reason: Reason
) -> Response:
    _, sensor_ids = _street_sensors(services, street)
    ended = await _end(services, sensor_ids, operator.name, _reason(reason))
    if not ended:
        raise _refuse(404, f"no sensor of {street[:80]!r} is under maintenance")
    return _json({"ended": ended})


async def expire_maintenance(services: Services, period_s: float = 1.0) -> None:
    """Runs for the API's life: clears each maintenance whose time is up (the record and a
    `maintenance_expired` change at its expiry time: every API instance writes the same)."""
    while True:
        await asyncio.sleep(period_s)
        now_ns = services.clock()
        due = [m.sensor_id for m in services.state.maintenance_records() if m.until_ns <= now_ns]
        if not due or not services.feed.connected:
            continue
        try:
            await _end(services, due, SYSTEM, "maintenance time is up", expired=True)
        except BrokerUnavailable as exc:
            log.warning("maintenance expiry not published yet: %s", exc)
        except Exception:  # the loop must outlive one bad record
            log.exception("maintenance expiry failed; retrying")


# ---- calibration and the registry ---------------------------------------------------------------


def _override_of(services: Services, sensor_id: str) -> Override | None:
    return services.feed.handler.live_registry.overrides.get(sensor_id)


async def _change_registry(
    services: Services, override: Override | None, sensor_id: str, change: SensorChange
) -> None:
    """Publish the override (None: drop it) and the audit event, and apply it here."""
    topics = _topics(services)
    payload = b"" if override is None else override.to_json()
    await _publish(
        services,
        [
            (topics.registry_override(sensor_id), payload, True),
            (topics.sensor_changes(sensor_id), change.to_json(), False),
        ],
    )
    services.feed.handler.operation(topics.registry_override(sensor_id), payload)


def _sensor_json(services: Services, sensor_id: str) -> dict[str, Any]:
    now = services.state.get(sensor_id)
    if now is None:
        return {"id": sensor_id, "retired": True}
    return sensor_properties(now, services.clock())


@router.patch(
    "/v1/sensors/{sensor_id}/calibration",
    summary="Change a sensor's mount height or thresholds (operator role)",
    description="Takes effect within seconds in ingest, the engine, the API and the notifier, "
    "without a restart; readings keep the calibration they were taken under (their depth is "
    "computed at ingest). The change itself raises and clears no alert. Audited as a "
    "`calibrated` change with the old and new values.",
    responses=error_responses(401, 403, 404, 503),
)
async def calibrate(
    sensor_id: SensorId, body: CalibrationIn, services: ServicesDep, operator: OperatorDep
) -> Response:
    before = _in_force(services, sensor_id)
    patch = body.model_dump(exclude_none=True, exclude={"reason"})
    try:
        override, change = calibration_change(
            before, patch, operator.name, body.reason, services.clock()
        )
    except OperationError as exc:
        raise _refuse(422, str(exc)) from exc
    held = _override_of(services, sensor_id)
    if held is not None:
        # Earlier changes to other fields stay.
        override = Override(
            sensor_id, {**held.properties, **override.properties}, held.coordinates, held.retired
        )
    await _change_registry(services, override, sensor_id, change)
    return _json(_sensor_json(services, sensor_id))


@router.post(
    "/v1/registry/sensors",
    summary="Add a sensor (operator role)",
    description="Ingest accepts its readings within seconds. Its broker login is not made "
    "here: an administrator creates it with `python -m floodwatch.credentials`.",
    responses=error_responses(401, 403, 409, 503),
    status_code=201,
)
async def add_sensor(body: SensorIn, services: ServicesDep, operator: OperatorDep) -> Response:
    registry = services.registry
    if body.id in registry.sensors or body.id in registry.retired or body.id in RESERVED_IDS:
        raise _refuse(
            409,
            f"sensor id {body.id!r} is taken (in the registry, retired, or a service's login); "
            "choose another id, or restore a retired sensor",
        )
    props = body.model_dump(exclude_none=True, exclude={"reason", "lon", "lat"})
    override = Override(body.id, props, (body.lon, body.lat))
    try:
        reason = check_text(body.reason, "reason", MAX_REASON)
        sensor = override_sensor(registry, override)
    except (OperationError, RegistryError) as exc:
        raise _refuse(422, str(exc)) from exc
    detail = {**sensor_as_properties(sensor), "coordinates": [sensor.lon, sensor.lat]}
    change = SensorChange(body.id, "sensor_added", operator.name, reason, services.clock(), detail)
    await _join_street_maintenance(services, sensor, operator.name)
    await _change_registry(services, override, body.id, change)
    return _json(_sensor_json(services, body.id), 201)


@router.delete(
    "/v1/registry/sensors/{sensor_id}",
    summary="Retire a sensor (operator role)",
    description="Its readings are dead-lettered from then on with code `retired_sensor`; "
    "it leaves /v1/sensors. Its stored readings and events stay.",
    responses=error_responses(401, 403, 404, 503),
)
async def retire_sensor(
    sensor_id: SensorId, services: ServicesDep, operator: OperatorDep, reason: Reason
) -> Response:
    _in_force(services, sensor_id)
    held = _override_of(services, sensor_id)
    override = Override(
        sensor_id,
        held.properties if held else {},
        held.coordinates if held else None,
        retired=True,
    )
    change = SensorChange(
        sensor_id, "sensor_retired", operator.name, _reason(reason), services.clock()
    )
    await _change_registry(services, override, sensor_id, change)
    return _json({"id": sensor_id, "retired": True})


@router.post(
    "/v1/registry/sensors/{sensor_id}/restore",
    summary="Bring a retired sensor back (operator role)",
    responses=error_responses(401, 403, 404, 503),
)
async def restore_sensor(
    sensor_id: SensorId, services: ServicesDep, operator: OperatorDep, reason: Reason
) -> Response:
    held = _override_of(services, sensor_id)
    if held is None or not held.retired:
        raise _refuse(404, f"sensor {sensor_id!r} is not retired")
    override = Override(sensor_id, held.properties, held.coordinates, retired=False)
    # A sensor of the file with nothing else changed goes back to the file's entry.
    base = services.feed.handler.live_registry.base
    keep = override if (held.properties or held.coordinates) else None
    if keep is not None:
        _, problems = apply_overrides(base, {sensor_id: keep})
        if problems:
            raise _refuse(422, problems[0])
    change = SensorChange(
        sensor_id, "sensor_restored", operator.name, _reason(reason), services.clock()
    )
    restored = override_sensor(base, keep) if keep is not None else base.get(sensor_id)
    if restored is not None:
        await _join_street_maintenance(services, restored, operator.name)
    await _change_registry(services, keep, sensor_id, change)
    return _json(_sensor_json(services, sensor_id))


# ---- the audit and the notification history ---------------------------------------------------


def _changes(services: Services, sensor_id: str | None) -> list[dict[str, Any]]:
    since = services.clock() - EVENT_MEMORY_NS
    if sensor_id is None:
        sql = f'SELECT * FROM "{CHANGE_MEASUREMENT}" WHERE time >= $since ORDER BY time DESC'
        params: dict[str, str | int] = {"since": since}
    else:
        sql = (
            f'SELECT * FROM "{CHANGE_MEASUREMENT}" WHERE "sensor" = $sensor AND time >= $since '
            "ORDER BY time DESC"
        )
        params = {"since": since, "sensor": sensor_id}
    rows = services.influx.query(f"{sql} LIMIT {MAX_CHANGES}", params, epoch="ns")
    out: list[dict[str, Any]] = []
    for series in rows:
        columns = series["columns"]
        for row in series["values"]:
            doc = dict(zip(columns, row, strict=True))
            tags = {"sensor": str(doc.get("sensor") or ""), "change": str(doc.get("change"))}
            change = SensorChange.from_influx(tags, doc, int(doc["time"]))
            if change is not None:
                item = change.to_dict()
                item["at"] = iso(change.at_ns)
                out.append(item)
    return out


@router.get(
    "/v1/changes",
    summary="Operators' changes to sensors, newest first (the last 30 days)",
    description="Maintenance started, ended or expired; calibrations; sensors added, retired "
    "or restored; each with who, why and what (`detail`). Stored by ingest.",
    responses=error_responses(401, 403, 502, 503),
)
async def list_changes(
    services: ServicesDep,
    _: ViewerDep,
    sensor: Annotated[
        str | None,
        Query(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="Only this sensor's."),
    ] = None,
) -> Response:
    items = await anyio.to_thread.run_sync(_changes, services, sensor)
    return _json({"changes": items})


@router.get(
    "/v1/alerts/{alert_id}/notifications",
    summary="Who was told of an alert, when, and by which channel",
    description="The notifier's record (`notifications/{alert_id}` on the broker): each "
    "notification with its status (`delivered`, `pending`, `held`, `dead`, or `suppressed` "
    "while the sensor was under maintenance), the escalation's next step, and the sensor's "
    "maintenance. An alert nobody was told of has an empty list.",
    responses=error_responses(401, 403),
)
async def alert_notifications(alert_id: AlertId, services: ServicesDep, _: ViewerDep) -> Response:
    held = services.state.notifications.get(alert_id)
    if held is not None:
        return Response(held, media_type="application/json")
    sensor_id = alert_id.split(":", 1)[0]
    now = services.state.get(sensor_id)
    under = now.under_maintenance(services.clock()) if now is not None else None
    return _json(
        {
            "alert_id": alert_id,
            "notifications": [],
            "escalation": None,
            "maintenance": None if under is None else under.to_dict(),
        }
    )
