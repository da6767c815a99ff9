"""`/healthz` (alive) and `/readyz` (broker, database and live feed reachable); always open."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.to_thread
from fastapi import APIRouter, Response, status

from api.deps import ServicesDep
from api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="The broker and the database are reachable",
    responses={status.HTTP_503_SERVICE_UNAVAILABLE: {"model": Readiness}},
)
async def readyz(services: ServicesDep, response: Response) -> Readiness:
    probes = services.probes
    found: dict[str, str | None] = {}

    async def check(name: str, probe: Callable[[], str | None]) -> None:
        found[name] = await anyio.to_thread.run_sync(probe)

    async with anyio.create_task_group() as tg:
        tg.start_soon(check, "broker", probes.broker)
        tg.start_soon(check, "database", probes.database)
    problems = [p for p in (found["broker"], found["database"]) if p is not None]
    live = services.feed.connected
    # A reachable broker the feed is not subscribed to means the current state is not live.
    if found["broker"] is None and not live:
        problems.append(
            f"The live feed is not subscribed to the MQTT broker at {services.settings.mqtt} yet."
        )
    if problems:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(
        status="not ready" if problems else "ready",
        broker=found["broker"] is None,
        database=found["database"] is None,
        live_feed=live,
        problems=problems,
    )
