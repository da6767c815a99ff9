"""`/v1/streets`: the registry's streets, each with the worst current level along it."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import ServicesDep, ViewerDep
from api.routes.sensors import GeoJSONResponse
from api.schemas import StreetCollection, error_responses

router = APIRouter(tags=["streets"])


@router.get(
    "/v1/streets",
    summary="Streets (LineStrings) with the worst current level along each",
    description="From memory, like /v1/sensors; not paged (the registry bounds it).",
    response_class=GeoJSONResponse,
    responses={200: {"model": StreetCollection}, **error_responses(401, 403)},
)
async def list_streets(services: ServicesDep, _: ViewerDep) -> Response:
    return GeoJSONResponse(services.streets_body.get(services.state, services.clock()))
