"""`/v1/sensors` (current state, from memory) and `/v1/sensors/{id}/readings` (InfluxDB)."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import anyio.to_thread
import orjson
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime

from api import history
from api.deps import ServicesDep, ViewerDep
from api.errors import BadParameter
from api.geo import sensor_feature, sensors_collection
from api.schemas import ReadingPage, SensorCollection, SensorFeature, error_responses
from api.times import checked, influx_zone, iso, iso_many, to_ns, zone
from floodwatch.registry import Sensor

router = APIRouter(tags=["sensors"])

GEOJSON = "application/geo+json"
CSV = "text/csv"
# Hard cap on points per page: a week at one reading a minute (10,080) fits in one page.
MAX_POINTS = 20_000
DEFAULT_RANGE = timedelta(hours=24)
SENSOR_ID = r"^[a-z0-9][a-z0-9_-]{0,63}$"
EVERY = r"^[1-9][0-9]{0,5}(s|m|h|d|w)$"
CURSOR = r"^[0-9]{1,19}$"

SensorId = Annotated[
    str,
    Path(
        pattern=SENSOR_ID,
        description="Sensor id from the registry, e.g. qh-02.",
        openapi_examples={"qh-02": {"value": "qh-02"}},
    ),
]


SearchQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=100,
        description="Search text, accents and case ignored: `quoc huong` finds Quốc Hương "
        "(Vietnamese or English names).",
        openapi_examples={"street": {"value": "quoc huong"}},
    ),
]


TzQuery = Annotated[
    str,
    Query(
        max_length=64,
        description="Zone the times are shown in: UTC (default) or an IANA name such as "
        "Asia/Ho_Chi_Minh (the ward's zone, UTC+07:00).",
    ),
]


class GeoJSONResponse(JSONResponse):
    """GeoJSON (RFC 7946 media type); takes bytes already serialised, as the caches hold them.

    A JSONResponse subclass, so OpenAPI documents the declared model rather than a string.
    """

    media_type = GEOJSON

    def render(self, content: Any) -> bytes:
        return content if isinstance(content, bytes) else super().render(content)


def _sensor(services: ServicesDep, sensor_id: str) -> Sensor:
    sensor = services.registry.get(sensor_id)
    if sensor is None:
        raise HTTPException(404, f"No sensor {sensor_id!r}; GET /v1/sensors lists them.")
    return sensor


@router.get(
    "/v1/sensors",
    summary="Every sensor with its current depth, alert state, battery and stale flag",
    description="GeoJSON FeatureCollection of the whole registry, from memory (kept live "
    "from MQTT). Not paged: the registry bounds it and it is always complete. With `q`, only "
    "the sensors whose id, name or street contains it, accents and case ignored.",
    response_class=GeoJSONResponse,
    responses={200: {"model": SensorCollection}, **error_responses(401, 403)},
)
async def list_sensors(services: ServicesDep, _: ViewerDep, q: SearchQuery = None) -> Response:
    if q is not None:
        found = frozenset(s.id for s in services.registry.find_sensors(q))
        body = sensors_collection(services.state, services.clock(), found)
        return GeoJSONResponse(orjson.dumps(body))
    body_bytes = services.sensors_body.get(services.state, services.clock())
    return GeoJSONResponse(body_bytes)


@router.get(
    "/v1/sensors/{sensor_id}",
    summary="One sensor with its current state",
    response_class=GeoJSONResponse,
    responses={200: {"model": SensorFeature}, **error_responses(401, 403, 404)},
)
async def get_sensor(sensor_id: SensorId, services: ServicesDep, _: ViewerDep) -> Response:
    sensor = _sensor(services, sensor_id)
    now = services.state.get(sensor.id)
    assert now is not None
    return GeoJSONResponse(orjson.dumps(sensor_feature(now, services.clock())))


def _wants_csv(request: Request, fmt: str | None) -> bool:
    if fmt is not None:
        return fmt == "csv"
    best, best_q = "json", 0.0
    for part in request.headers.get("accept", "").split(","):
        media, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.strip().lower()
        kind = "csv" if media == CSV else "json" if media in ("application/json", "*/*") else None
        if kind is not None and q > best_q:
            best, best_q = kind, q
    return best == "csv"


@router.get(
    "/v1/sensors/{sensor_id}/readings",
    summary="A sensor's readings: raw, or downsampled per `every` with `agg`",
    description=(
        "Oldest first, at most `limit` points per page (hard cap "
        f'{MAX_POINTS:,}). When more remain, `next` (JSON) or the `Link: <...>; rel="next"` '
        "header (CSV) gives the next page; follow it until there is none. CSV when "
        "`Accept: text/csv` (or `format=csv`). Without `start`/`end`: the last 24 hours. "
        "Downsampled points are bucket starts (GROUP BY time(`every`), empty buckets "
        "omitted), aligned to midnight in `tz` (InfluxQL tz()); the first bucket may start "
        "before `start` but holds only readings in the range."
    ),
    responses={
        200: {
            "model": ReadingPage,
            "content": {CSV: {"schema": {"type": "string"}}},
            "headers": {
                "Link": {
                    "description": 'CSV only: `<url>; rel="next"` when more pages remain.',
                    "schema": {"type": "string"},
                }
            },
        },
        **error_responses(401, 403, 404, 502, 503),
    },
)
async def readings(
    sensor_id: SensorId,
    request: Request,
    services: ServicesDep,
    _: ViewerDep,
    start: Annotated[
        AwareDatetime | None,
        Query(description="Range start (inclusive), ISO 8601 with offset. Default: end - 24 h."),
    ] = None,
    end: Annotated[
        AwareDatetime | None,
        Query(description="Range end (exclusive), ISO 8601 with offset. Default: now."),
    ] = None,
    every: Annotated[
        str | None,
        Query(
            pattern=EVERY,
            description="Bucket width to downsample to: a number and s, m, h, d or w "
            "(e.g. 5m). Absent: raw readings.",
        ),
    ] = None,
    agg: Annotated[
        Literal["mean", "max", "min", "last"] | None,
        Query(description="Aggregate per bucket (needs `every`; default mean)."),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_POINTS, description=f"Points per page, 1 to {MAX_POINTS:,}.")
    ] = MAX_POINTS,
    cursor: Annotated[
        str | None,
        Query(pattern=CURSOR, description="Opaque page cursor from `next`; leave it unset."),
    ] = None,
    tz: Annotated[
        str,
        Query(
            max_length=64,
            description="Zone for the times shown, and where `every` buckets start (a day "
            "from local midnight): UTC (default) or an IANA name such as Asia/Ho_Chi_Minh (the "
            "ward's zone, UTC+07:00).",
        ),
    ] = "UTC",
    format: Annotated[
        Literal["json", "csv"] | None,
        Query(description="Overrides the Accept header: json or csv."),
    ] = None,
) -> Response:
    sensor = _sensor(services, sensor_id)
    zone_info = zone(tz)
    bucket_zone = influx_zone(tz)
    now_ns = services.clock()
    end_ns = to_ns(checked(end, "end")) if end is not None else now_ns
    if start is not None:
        start_ns = to_ns(checked(start, "start"))
    else:
        start_ns = end_ns - int(DEFAULT_RANGE.total_seconds()) * 10**9
    if start_ns >= end_ns:
        raise BadParameter("start", "start is not before end: send a start earlier than end")
    if agg is not None and every is None:
        raise BadParameter("agg", "agg needs every (the bucket width), e.g. every=5m&agg=max")
    query_start = start_ns
    if cursor is not None:
        query_start = int(cursor)
        if not start_ns <= query_start < end_ns:
            raise BadParameter("cursor", "cursor does not belong to this range; drop it")
    page = await anyio.to_thread.run_sync(
        history.series,
        services.influx,
        history.SeriesQuery(
            sensor.id,
            query_start,
            end_ns,
            limit,
            every,
            (agg or "mean") if every else None,
            bucket_zone if every else None,
        ),
    )
    next_url = None
    if page.next_cursor is not None:
        params = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
        params.append(("cursor", str(page.next_cursor)))
        next_url = f"{request.url.path}?{urlencode(params)}"
    headers = {"X-Page-Limit": str(limit), "X-Page-Max-Limit": str(MAX_POINTS)}
    times = iso_many(page.times, zone_info)
    if _wants_csv(request, format):
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(("time", *page.columns))
        columns = [["" if v is None else v for v in column] for column in page.values]
        writer.writerows(zip(times, *columns, strict=True))
        if next_url is not None:
            headers["Link"] = f'<{next_url}>; rel="next"'
        headers["X-Page-Count"] = str(len(times))
        return Response(out.getvalue(), media_type=f"{CSV}; charset=utf-8", headers=headers)
    keys = ("time", *page.columns)
    points = [dict(zip(keys, row, strict=True)) for row in zip(times, *page.values, strict=True)]
    body = {
        "sensor": sensor.id,
        "start": iso(start_ns, zone_info),
        "end": iso(end_ns, zone_info),
        "tz": tz,
        "every": every,
        "agg": (agg or "mean") if every else None,
        "limit": limit,
        "max_limit": MAX_POINTS,
        "count": len(points),
        "next": next_url,
        "points": points,
    }
    return Response(orjson.dumps(body), media_type="application/json", headers=headers)
