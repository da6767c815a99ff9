"""`/v1/streets`: the registry's streets, each with the worst current level along it."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Response

from api.deps import ServicesDep, ViewerDep
from api.geo import streets_collection
from api.routes.sensors import GeoJSONResponse, SearchQuery
from api.schemas import StreetCollection, error_responses

router = APIRouter(tags=["streets"])


@router.get(
    "/v1/streets",
    summary="Streets (LineStrings) with the worst current level along each",
    description="From memory, like /v1/sensors; not paged (the registry bounds it). With "
    "`q`, only the streets whose name contains it, accents and case ignored.",
    response_class=GeoJSONResponse,
    responses={200: {"model": StreetCollection}, **error_responses(401, 403)},
)
async def list_streets(services: ServicesDep, _: ViewerDep, q: SearchQuery = None) -> Response:
    if q is not None:
        found = services.registry.find_streets(q)
        body = streets_collection(services.state, services.clock(), found)
        return GeoJSONResponse(orjson.dumps(body))
    return GeoJSONResponse(services.streets_body.get(services.state, services.clock()))
