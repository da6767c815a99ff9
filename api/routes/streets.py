"""`/v1/streets`: the registry's streets, each with the alert engine's worst active flood level
along it; and the acknowledgement of a street's open flood alerts in one action."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Path, Response

from api.alerts import Acknowledgement, alert_json
from api.deps import AlertsDep, OperatorDep, ServicesDep, ViewerDep
from api.errors import AlertConflict, AlertNotFound
from api.geo import streets_collection
from api.live import LiveState, flood_alert
from api.routes.sensors import GeoJSONResponse, SearchQuery
from api.schemas import AckIn, Me, StreetAckOut, StreetCollection, error_responses
from floodwatch.registry import Registry, Street, search_key

router = APIRouter(tags=["streets"])

StreetName = Annotated[
    str,
    Path(
        min_length=1,
        max_length=200,
        description="The street's registry name (or its English/ASCII name), URL-encoded, "
        "e.g. Quoc%20Huong.",
    ),
]


@router.get(
    "/v1/streets",
    summary="Streets (LineStrings) with the alert engine's worst active flood level on each",
    description="From memory, like /v1/sensors; not paged (the registry bounds it). `level` "
    "is the engine's verdict (the worst active flood alert along the street), never a raw "
    "reading: one spike paints nothing; `level_cm` is the latest depth beside it. With `q`, "
    "only the streets whose name contains it, accents and case ignored.",
    response_class=GeoJSONResponse,
    responses={200: {"model": StreetCollection}, **error_responses(401, 403)},
)
async def list_streets(services: ServicesDep, _: ViewerDep, q: SearchQuery = None) -> Response:
    if q is not None:
        found = services.registry.find_streets(q)
        body = streets_collection(services.state, services.clock(), found)
        return GeoJSONResponse(orjson.dumps(body))
    return GeoJSONResponse(services.streets_body.get(services.state, services.clock()))


def find_street(registry: Registry, name: str) -> Street | None:
    """A street by its registry name or its English/ASCII name, accents and case optional."""
    wanted = search_key(name)
    for street in registry.streets:
        if wanted in (search_key(street.name), search_key(street.name_en)):
            return street
    return None


def open_floods(state: LiveState, street: str) -> list[tuple[str, str]]:
    """(alert_id, state) of each active flood alert on the street's sensors."""
    found: list[tuple[str, str]] = []
    for now in state:
        if now.sensor.street == street:
            alert = flood_alert(now.alerts)
            if alert is not None:
                found.append((str(alert.get("alert_id")), str(alert.get("state"))))
    return found


@router.post(
    "/v1/streets/{street}/acknowledge",
    summary="Acknowledge every open flood alert on a street in one action (operator role)",
    description="Acknowledges each of the street's active, unacknowledged flood alerts with "
    "the same note, through the alert engine as POST /v1/alerts/{id}/ack does. 404 when the "
    "street has no active flood alert; 409 when all of them are already acknowledged.",
    responses={200: {"model": StreetAckOut}, **error_responses(401, 403, 404, 409, 503)},
)
async def acknowledge_street(
    street: StreetName,
    body: AckIn,
    services: ServicesDep,
    source: AlertsDep,
    operator: OperatorDep,
) -> Response:
    found = find_street(services.registry, street)
    if found is None:
        raise HTTPException(404, f"No street {street[:80]!r}; GET /v1/streets lists them.")
    floods = open_floods(services.state, found.name)
    if not floods:
        raise AlertNotFound(f"{found.name} has no active flood alert to acknowledge.")
    waiting = [alert_id for alert_id, state in floods if state == "active_unack"]
    if not waiting:
        raise AlertConflict(f"Every flood alert on {found.name} is already acknowledged.")
    ack = Acknowledgement(by=operator.name, note=body.note, at_ns=services.clock())
    results = await asyncio.gather(
        *(source.acknowledge(alert_id, ack) for alert_id in waiting), return_exceptions=True
    )
    done: list[dict[str, Any]] = []
    already: list[str] = []
    for alert_id, result in zip(waiting, results, strict=True):
        if isinstance(result, AlertConflict | AlertNotFound):
            already.append(alert_id)  # acknowledged or cleared meanwhile: nothing left to do
        elif isinstance(result, BaseException):
            raise result
        else:
            done.append(alert_json(result, services.registry.get(result.sensor_id)))
    if not done:
        raise AlertConflict(f"Every flood alert on {found.name} is already acknowledged.")
    out = {
        "street": found.name,
        "by": operator.name,
        "note": body.note,
        "acknowledged": done,
        "already": already,
    }
    return Response(orjson.dumps(out), media_type="application/json")


@router.get(
    "/v1/me",
    summary="Who the presented key belongs to, and its role",
    description="Lets a client (the IOC page) offer only what the key may do: Acknowledge "
    "controls only for the operator role.",
    response_model=Me,
    responses=error_responses(401, 403),
)
async def whoami(principal: ViewerDep) -> Me:
    return Me(name=principal.name, role=principal.role, anonymous=principal.anonymous)
