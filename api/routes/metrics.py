"""`/metrics`: the API's own counters in Prometheus text format.

Open like the health probes: it shows request counts, stream clients and cache sizes, no
sensor data and nothing about keys, and Prometheus scrapes it without a key. Keep the API's
port off the public internet (or block /metrics at the proxy) if even that is too much.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import ServicesDep
from floodwatch.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics of the API (requests, stream clients, cache)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}},
)
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE)
