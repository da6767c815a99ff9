"""`/v1/events`: flood events (episodes) from the AlertSource."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Query, Request, Response
from pydantic import AwareDatetime

from api.deps import AlertsDep, ServicesDep, ViewerDep
from api.errors import BadParameter
from api.routes.sensors import CURSOR, SENSOR_ID, TzQuery
from api.schemas import EpisodePage, error_responses
from api.times import checked, iso, to_ns, zone

router = APIRouter(tags=["events"])

MAX_EVENTS = 1000


@router.get(
    "/v1/events",
    summary="Flood events: start, end, peak depth and time, minutes to peak and to drain",
    description="Oldest first, paged by `limit` and `next` (never truncated).",
    responses={200: {"model": EpisodePage}, **error_responses(401, 403, 502, 503)},
)
async def list_events(
    request: Request,
    services: ServicesDep,
    source: AlertsDep,
    _: ViewerDep,
    since: Annotated[
        AwareDatetime | None, Query(description="Events starting at or after this time.")
    ] = None,
    until: Annotated[
        AwareDatetime | None, Query(description="Events starting before this time.")
    ] = None,
    sensor: Annotated[
        str | None,
        Query(pattern=SENSOR_ID, description="Only events this sensor took part in."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENTS, description="Events per page.")] = 100,
    cursor: Annotated[
        str | None,
        Query(pattern=CURSOR, description="Opaque page cursor from `next`; leave it unset."),
    ] = None,
    tz: TzQuery = "UTC",
) -> Response:
    zone_info = zone(tz)
    since_ns = to_ns(checked(since, "since")) if since is not None else None
    until_ns = to_ns(checked(until, "until")) if until is not None else None
    if since_ns is not None and until_ns is not None and since_ns >= until_ns:
        raise BadParameter("since", "since is not before until: send a since earlier than until")
    if cursor is not None:
        since_ns = max(since_ns or 0, int(cursor))
    episodes = await source.episodes(since_ns=since_ns, until_ns=until_ns, sensor_id=sensor)
    page = list(episodes[:limit])
    next_url = None
    if len(episodes) > limit:
        params = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
        params.append(("cursor", str(episodes[limit].start_ns)))
        next_url = f"{request.url.path}?{urlencode(params)}"
    registry = services.registry
    events = []
    for e in page:
        peak = registry.get(e.peak_sensor) if e.peak_sensor is not None else None
        events.append(
            {
                "event_id": e.event_id,
                "start": iso(e.start_ns, zone_info),
                "end": iso(e.end_ns, zone_info) if e.end_ns is not None else None,
                "peak_cm": e.peak_cm,
                "peak_time": iso(e.peak_ns, zone_info) if e.peak_ns is not None else None,
                "peak_sensor": e.peak_sensor,
                "peak_street": peak.street if peak is not None else None,
                "max_level": e.max_level,
                "max_level_name": e.max_level_name,
                "minutes_to_peak": e.minutes_to_peak,
                "minutes_to_drain": e.minutes_to_drain,
                "streets": list(e.streets),
                "sensors": list(e.sensors),
            }
        )
    body = {
        "events": events,
        "count": len(events),
        "limit": limit,
        "max_limit": MAX_EVENTS,
        "next": next_url,
    }
    return Response(orjson.dumps(body), media_type="application/json")
