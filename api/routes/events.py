"""`/v1/events`: flood events (episodes) from the AlertSource."""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import quote, urlencode

import anyio.to_thread
import orjson
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import AwareDatetime

from api import history, report
from api.alerts import AlertSource, FloodEpisode
from api.cap import PUBLIC_KINDS
from api.deps import AlertsDep, ServicesDep, ViewerDep
from api.errors import BadParameter
from api.i18n import DEFAULT_LANG, Lang
from api.routes.sensors import CURSOR, SENSOR_ID, TzQuery
from api.schemas import EpisodePage, error_responses
from api.times import checked, iso, to_ns, zone
from floodwatch.registry import ascii_name

router = APIRouter(tags=["events"])

MAX_EVENTS = 1000
# Points per sensor chart: enough for a smooth line on paper, few enough to print fast.
CHART_POINTS = 240
# The report's charts and series reach this far before the start and after the end.
MARGIN_NS = 30 * 60 * 10**9
_EPISODE_START = re.compile(r"flood:([0-9]{1,19})")
EventId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="An event id from GET /v1/events, e.g. flood:1795651200000000000.",
    ),
]


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
    english = {s.street: s.street_en for s in registry.sensors.values()}
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
                "peak_street_en": peak.street_en if peak is not None else None,
                "max_level": e.max_level,
                "max_level_name": e.max_level_name,
                "minutes_to_peak": e.minutes_to_peak,
                "minutes_to_drain": e.minutes_to_drain,
                "streets": list(e.streets),
                "streets_en": [english.get(s, ascii_name(s)) for s in e.streets],
                "sensors": list(e.sensors),
                "report": f"/v1/events/{quote(e.event_id, safe=':')}/report",
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


async def _episode(source: AlertSource, event_id: str) -> FloodEpisode:
    """The episode with this id; 404 if there is none. The engine's ids hold their start
    time, so only that instant is read."""
    match = _EPISODE_START.fullmatch(event_id)
    since, until = (int(match.group(1)), int(match.group(1)) + 1) if match else (None, None)
    for episode in await source.episodes(since_ns=since, until_ns=until, sensor_id=None):
        if episode.event_id == event_id:
            return episode
    raise HTTPException(404, f"No flood event {event_id[:80]!r}; list them with GET /v1/events.")


async def _report(
    services: ServicesDep, source: AlertSource, event_id: str
) -> report.EpisodeReport:
    episode = await _episode(source, event_id)
    now_ns = services.clock()
    end_ns = episode.end_ns if episode.end_ns is not None else now_ns
    changes = await source.changes(since_ns=episode.start_ns - MARGIN_NS, kinds=PUBLIC_KINDS)
    timeline = report.timeline_rows(changes, episode, end_ns)
    # Sensors: those of the episode, and any whose alerts are on its timeline.
    wanted = set(episode.sensors) | {row.sensor_id for row in timeline}
    sensors = [s for s in services.registry.sensors.values() if s.id in wanted]
    start, stop = episode.start_ns - MARGIN_NS, end_ns + MARGIN_NS
    every_s = max(1, (stop - start) // CHART_POINTS // 10**9)
    series: dict[str, report.Series] = {}
    for sensor in sensors:
        page = await anyio.to_thread.run_sync(
            history.series,
            services.influx,
            history.SeriesQuery(sensor.id, start, stop, CHART_POINTS * 2, f"{every_s}s", "max"),
        )
        series[sensor.id] = report.Series(page.times, page.values[0])
    return report.EpisodeReport(episode, sensors, timeline, series, now_ns)


@router.get(
    "/v1/events/{event_id}/report",
    summary="A flood event's printable report (HTML, Vietnamese or English), or its CSV",
    description=(
        "Streets, peak depth and time, minutes to peak and to drain, the alert and "
        "acknowledgement timeline, and a depth chart per sensor (inline SVG, so it prints "
        "without JavaScript; print it from the browser for a PDF). Times in the ward's zone "
        "(UTC+07:00). `format=csv` (or /report.csv) gives the same figures as CSV."
    ),
    response_class=HTMLResponse,
    responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
        **error_responses(401, 403, 404, 502, 503),
    },
)
async def event_report(
    event_id: EventId,
    request: Request,
    services: ServicesDep,
    source: AlertsDep,
    _: ViewerDep,
    lang: Annotated[
        Literal["vi", "en"], Query(description="Language: vi (default) or en.")
    ] = DEFAULT_LANG,
    format: Annotated[Literal["html", "csv"], Query(description="html (default) or csv.")] = "html",
) -> Response:
    built = await _report(services, source, event_id)
    if format == "csv":
        return _csv(built, lang)
    html = report.report_html(built, lang, request.url.path)
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})


@router.get(
    "/v1/events/{event_id}/report.csv",
    summary="A flood event's report figures as CSV",
    description="The report's figures in three CSV blocks separated by an empty line: the "
    "summary (field,value), the alert timeline, and each sensor's depth series.",
    response_class=Response,
    responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
        **error_responses(401, 403, 404, 502, 503),
    },
)
async def event_report_csv(
    event_id: EventId,
    services: ServicesDep,
    source: AlertsDep,
    _: ViewerDep,
    lang: Annotated[
        Literal["vi", "en"], Query(description="Names in vi (default) or en.")
    ] = DEFAULT_LANG,
) -> Response:
    return _csv(await _report(services, source, event_id), lang)


def _csv(built: report.EpisodeReport, lang: Lang) -> Response:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", built.episode.event_id)
    return Response(
        report.report_csv(built, lang),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
    )
