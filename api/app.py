"""The API's shell: `create_app(settings)` builds the FastAPI app, its clients and its routes.

Nothing is read at import time; the InfluxDB client lives for the app's lifespan. Only the
health endpoints exist so far (CONTRACT section 4): `/healthz` says the process is alive and
`/readyz` says whether the broker and the database can be reached.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Literal

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, Request, Response, status
from pydantic import BaseModel, Field

from floodwatch.influx import InfluxClient
from floodwatch.registry import load_registry
from floodwatch.settings import MqttEndpoint, Settings

# A readiness probe must answer well inside an orchestrator's probe timeout (compose: 5 s).
PROBE_TIMEOUT_S = 2.0

ProbeFn = Callable[[], str | None]


class Health(BaseModel):
    """The process is alive and serving requests."""

    status: Literal["ok"] = Field(description="Always `ok`; any answer at all means alive.")


class Readiness(BaseModel):
    """Whether the API can reach what it serves from: the MQTT broker and InfluxDB."""

    status: Literal["ready", "not ready"] = Field(
        description="`ready` when both the broker and the database answered, else `not ready`."
    )
    broker: bool = Field(description="The MQTT broker accepted a TCP connection.")
    database: bool = Field(description="InfluxDB answered its /ping endpoint.")
    problems: list[str] = Field(
        default_factory=list,
        description="One sentence per unreachable dependency; empty when ready.",
    )


@dataclass(frozen=True, slots=True)
class Probes:
    """The blocking reachability checks behind /readyz; run them in a worker thread."""

    mqtt: MqttEndpoint
    influx: InfluxClient

    def broker(self) -> str | None:
        """None if the broker accepts a TCP connection, else a sentence saying why not."""
        try:
            with socket.create_connection((self.mqtt.host, self.mqtt.port), PROBE_TIMEOUT_S):
                return None
        except OSError as exc:
            return f"The MQTT broker at {self.mqtt} does not accept connections ({exc})."

    def database(self) -> str | None:
        """None if InfluxDB answers /ping, else a sentence saying why not."""
        if self.influx.ping():
            return None
        return f"InfluxDB at {self.influx.endpoint} does not answer /ping."


def _probes(request: Request) -> Probes:
    probes: Probes = request.app.state.probes
    return probes


ProbesDep = Annotated[Probes, Depends(_probes)]


def _version() -> str:
    try:
        return version("floodwatch")
    except PackageNotFoundError:
        return "0.1.0"


def create_app(settings: Settings) -> FastAPI:
    """Build the API for these settings; raises RegistryError if the sensor registry is wrong."""
    registry = load_registry(settings.registry_path)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        influx = InfluxClient(settings.influx, settings.influx_db, timeout_s=PROBE_TIMEOUT_S)
        app.state.probes = Probes(settings.mqtt, influx)
        try:
            yield
        finally:
            influx.close()

    app = FastAPI(
        title="Floodwatch API",
        version=_version(),
        description="Flood-sensor readings and alerts for An Khanh ward, Ho Chi Minh City.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.registry = registry

    @app.get("/healthz", tags=["health"], summary="The process is alive")
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get(
        "/readyz",
        tags=["health"],
        summary="The broker and the database are reachable",
        responses={status.HTTP_503_SERVICE_UNAVAILABLE: {"model": Readiness}},
    )
    async def readyz(probes: ProbesDep, response: Response) -> Readiness:
        found: dict[str, str | None] = {}

        async def check(name: str, probe: ProbeFn) -> None:
            found[name] = await anyio.to_thread.run_sync(probe)

        async with anyio.create_task_group() as tg:
            tg.start_soon(check, "broker", probes.broker)
            tg.start_soon(check, "database", probes.database)
        problems = [p for p in (found["broker"], found["database"]) if p is not None]
        if problems:
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Readiness(
            status="not ready" if problems else "ready",
            broker=found["broker"] is None,
            database=found["database"] is None,
            problems=problems,
        )

    return app
