"""`/v1/alerts`, `/v1/alerts/{id}`, its acknowledgement, and `/v1/alerts.cap` (CAP 1.2).

All of it goes through the AlertSource seam (api.alerts), never to MQTT or InfluxDB directly.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import AwareDatetime

from api.alerts import Acknowledgement, AlertRecord, alert_json
from api.cap import (
    ATOM_MEDIA_TYPE,
    CAP_SENDER,
    PUBLIC_KINDS,
    atom_feed,
    cap_messages,
)
from api.deps import AlertsDep, OperatorDep, ServicesDep, ViewerDep
from api.errors import AlertNotFound, BadParameter
from api.routes.sensors import TzQuery
from api.schemas import AckIn, AlertOut, AlertPage, error_responses
from api.times import checked, to_ns, zone
from floodwatch.contract import EVENT_MEMORY_NS

router = APIRouter(tags=["alerts"])

MAX_ALERTS = 1000
AlertId = Annotated[
    str, Path(min_length=1, max_length=200, description="The alert engine's alert id.")
]


def encode_cursor(key: tuple[int, str]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[int, str]:
    """The (changed_at, alert_id) after which a page starts; BadParameter if not ours."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        changed, alert_id = orjson.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise BadParameter("cursor", "cursor is not one this API gave out; drop it") from None
    if type(changed) is not int or not isinstance(alert_id, str):
        raise BadParameter("cursor", "cursor is not one this API gave out; drop it")
    return changed, alert_id


def _sort_key(record: AlertRecord) -> tuple[int, str]:
    return -(record.changed_at_ns or 0), record.alert_id


def page_after(
    records: Sequence[AlertRecord], cursor: str | None, limit: int
) -> tuple[list[AlertRecord], str | None]:
    """Keyset paging over records sorted newest first: stable while alerts change."""
    ordered = sorted(records, key=_sort_key)
    if cursor is not None:
        after = decode_cursor(cursor)
        ordered = [r for r in ordered if _sort_key(r) > after]
    page = ordered[:limit]
    more = len(ordered) > limit
    return page, encode_cursor(_sort_key(page[-1])) if more and page else None


def _json(body: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code, media_type="application/json")


@router.get(
    "/v1/alerts",
    summary="Alerts: active ones, or all (cleared and past too)",
    responses={200: {"model": AlertPage}, **error_responses(401, 403, 502, 503)},
)
async def list_alerts(
    request: Request,
    services: ServicesDep,
    source: AlertsDep,
    _: ViewerDep,
    state: Annotated[
        Literal["active", "all"],
        Query(description="`active` (default): active_unack and active_ack; `all`: any state."),
    ] = "active",
    since: Annotated[
        AwareDatetime | None,
        Query(description="Only alerts that changed at or after this time (ISO 8601, offset)."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_ALERTS, description="Alerts per page.")] = 100,
    cursor: Annotated[
        str | None,
        Query(max_length=400, description="Opaque page cursor from `next`; leave it unset."),
    ] = None,
    tz: TzQuery = "UTC",
) -> Response:
    zone_info = zone(tz)
    since_ns = to_ns(checked(since, "since")) if since is not None else None
    records = await source.list(state=state, since_ns=since_ns)
    page, next_cursor = page_after(records, cursor, limit)
    next_url = None
    if next_cursor is not None:
        params = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
        next_url = f"{request.url.path}?{urlencode([*params, ('cursor', next_cursor)])}"
    registry = services.registry
    return _json(
        {
            "alerts": [alert_json(r, registry.get(r.sensor_id), zone_info) for r in page],
            "count": len(page),
            "limit": limit,
            "max_limit": MAX_ALERTS,
            "next": next_url,
        }
    )


@router.get(
    "/v1/alerts.cap",
    summary="Alerts as CAP 1.2 messages in an Atom feed",
    description=(
        "One Atom entry per alert, holding the alert's latest CAP 1.2 message inline: "
        "msgType Alert when it became active, Update when its level changed, Cancel when it "
        "cleared (kept for 24 h), each Update and Cancel with `references` to the earlier "
        "messages. category Met, certainty Observed, severity from the level (1 Minor, "
        "2 Moderate, 3 Severe, 4 Extreme), area: the sensor's street with a 100 m circle. "
        "Sensor-health alerts (stale, battery_low, fault) are not included. Built from the "
        "alert engine's stored events, so every API process serves the same identifiers."
    ),
    response_class=Response,
    responses={
        200: {"content": {ATOM_MEDIA_TYPE: {"schema": {"type": "string"}}}},
        **error_responses(401, 403, 502, 503),
    },
)
async def alerts_cap(services: ServicesDep, source: AlertsDep, _: ViewerDep) -> Response:
    now_ns = services.clock()
    changes = await source.changes(since_ns=now_ns - EVENT_MEMORY_NS, kinds=PUBLIC_KINDS)
    messages = cap_messages(changes, now_ns, CAP_SENDER)
    body = atom_feed(messages, CAP_SENDER, services.registry, now_ns)
    return Response(body, media_type=ATOM_MEDIA_TYPE)


@router.get(
    "/v1/alerts/{alert_id}",
    summary="One alert, current or past",
    responses={200: {"model": AlertOut}, **error_responses(401, 403, 404, 502, 503)},
)
async def get_alert(
    alert_id: AlertId,
    services: ServicesDep,
    source: AlertsDep,
    _: ViewerDep,
    tz: TzQuery = "UTC",
) -> Response:
    zone_info = zone(tz)
    record = await source.get(alert_id)
    if record is None:
        raise AlertNotFound(f"no alert {alert_id[:80]!r}; list current ones with GET /v1/alerts")
    return _json(alert_json(record, services.registry.get(record.sensor_id), zone_info))


@router.post(
    "/v1/alerts/{alert_id}/ack",
    summary="Acknowledge an alert (operator role)",
    description="Moves active_unack to active_ack (or cleared_unack to cleared_ack), "
    "recording who (the key's name), when and the note.",
    responses={200: {"model": AlertOut}, **error_responses(401, 403, 404, 409, 503)},
)
async def acknowledge(
    alert_id: AlertId,
    body: AckIn,
    services: ServicesDep,
    source: AlertsDep,
    operator: OperatorDep,
) -> Response:
    ack = Acknowledgement(by=operator.name, note=body.note, at_ns=services.clock())
    record = await source.acknowledge(alert_id, ack)
    return _json(alert_json(record, services.registry.get(record.sensor_id)))
