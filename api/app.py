"""The API's shell: `create_app(settings, options)` builds the FastAPI app, its clients and its
routes (CONTRACT section 4). Nothing is read at import time.

At start (lifespan) the API subscribes to the pipeline's MQTT topics and loads each sensor's
last stored reading from InfluxDB, so current state (`/v1/sensors`, `/v1/streets`,
`/v1/stream`) is served from memory; only time series and alert history query InfluxDB.
Neither the broker nor the database has to be up for the API to start: it retries both in
the background and says so in /readyz.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import anyio.to_thread
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from alerts.engine import timers
from api import history, problems
from api.alerts import AlertSource, EngineAlerts
from api.auth import KeyStore
from api.config import ApiOptions
from api.deps import Probes, Services
from api.errors import AlertConflict, AlertNotFound, BadParameter, BrokerUnavailable
from api.eventlog import EventLog
from api.feed import FeedHandler, LiveFeed
from api.geo import SensorsBody, StreetsBody
from api.live import LiveState
from api.metrics import Metrics, MetricsMiddleware
from api.routes import alerts, events, health, metrics, operations, page, sensors, stream, streets
from api.schemas import ErrorOut
from api.security import SecurityHeaders, configured_image_origins
from api.streamlimit import StreamLimit
from floodwatch.errors import InfluxError, InfluxUnavailable
from floodwatch.influx import InfluxClient
from floodwatch.registry import Registry, load_registry
from floodwatch.settings import MqttEndpoint, Settings
from floodwatch.topics import Topics

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0
QUERY_TIMEOUT_S = 10.0
# How long start-up waits for the broker before serving anyway (it keeps retrying).
FIRST_CONNECT_WAIT_S = 1.0
SNAPSHOT_RETRY_S = 5.0
# How far back the start-up snapshot reads flood alert events (an open flood is younger).
HISTORY_WINDOW_NS = 2 * 86_400 * 10**9
# Readings read back at start beyond two holds: a sensor's reporting interval and clock skew.
HOLD_MARGIN_NS = 5 * 60 * 10**9
# The only body the API takes is an acknowledgement: a note of at most 1,000 characters.
MAX_BODY_BYTES = 16_384


@dataclass(frozen=True, slots=True)
class AlertContext:
    """What an AlertSource may build on: the registry, topics, live state, InfluxDB and the
    broker (to reach the alert engine)."""

    registry: Registry
    topics: Topics
    state: LiveState
    influx: InfluxClient
    mqtt: MqttEndpoint
    feed: LiveFeed  # the API's one MQTT connection (the broker binds its login to one id)


AlertSourceFactory = Callable[[AlertContext], AlertSource]


def engine_alerts(context: AlertContext) -> AlertSource:
    """Reads from the retained state and InfluxDB; acknowledgements through the engine."""
    return EngineAlerts(context.state, context.influx, context.feed, context.topics)


def _version() -> str:
    try:
        return version("floodwatch")
    except PackageNotFoundError:
        return "0.1.0"


def _problem(status_code: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code)


def _document_errors(app: FastAPI) -> None:
    """Make the OpenAPI document show the API's real error answers: every error, validation
    (422) and unknown parameters (400) included, is `{"detail": one sentence}`."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = generate()
        error = {"application/json": {"schema": ErrorOut.model_json_schema()}}
        for methods in doc.get("paths", {}).values():
            for operation in methods.values():
                responses = operation.setdefault("responses", {})
                if "422" in responses:
                    responses["422"] = {
                        "description": "A parameter or the body is invalid: one sentence "
                        "naming it and saying what to send instead.",
                        "content": error,
                    }
                responses.setdefault(
                    "400",
                    {
                        "description": "A query parameter this operation does not take; the "
                        "sentence names it.",
                        "content": error,
                    },
                )
        schemas = doc.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = doc
        return doc

    # FastAPI's documented way to customise the document: replace the app's openapi().
    setattr(app, "openapi", openapi)  # noqa: B010


def _declared_query(dependant: Dependant) -> frozenset[str]:
    """The query parameters a route takes, its dependencies' included."""
    names: set[str] = set()
    stack = [dependant]
    while stack:
        current = stack.pop()
        names.update(field.alias for field in current.query_params)
        stack.extend(current.dependencies)
    return frozenset(names)


# Where a route's declared query parameters are kept, worked out at its first request.
_DECLARED = "_floodwatch_declared_query"


def reject_unknown_query(request: Request) -> None:
    """400 for a query parameter the route does not take (a typo must not be ignored).

    The IOC page (`/`, outside the schema) is left alone: its options live in the browser.
    """
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not route.include_in_schema:
        return
    declared: frozenset[str] | None = getattr(route, _DECLARED, None)
    if declared is None:
        declared = _declared_query(route.dependant)
        setattr(route, _DECLARED, declared)
    unknown = problems.unknown_parameters(request.query_params.keys(), declared)
    if unknown:
        raise HTTPException(400, problems.unknown_parameter_sentence(unknown, declared))


def _install_error_handlers(app: FastAPI) -> None:
    async def bad_parameter(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BadParameter)
        return _problem(422, problems.sentence(exc.message))

    async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _problem(422, problems.validation_detail(exc.errors()))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail
        # Starlette's own answers for a wrong path or method are a bare phrase.
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"There is no {request.url.path[:80]}; see /docs for the API's paths."
        elif exc.status_code == 405 and detail == "Method Not Allowed":
            detail = f"{request.url.path[:80]} does not take {request.method}; see /docs."
        return JSONResponse({"detail": detail}, exc.status_code, headers=exc.headers)

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return _problem(404, str(exc))

    async def conflict(request: Request, exc: Exception) -> JSONResponse:
        return _problem(409, str(exc))

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return _problem(503, f"{exc}; retry later.")

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s: InfluxDB refused: %s", request.method, request.url.path, exc)
        return _problem(502, "InfluxDB refused the query; the API's log has the details.")

    app.add_exception_handler(BadParameter, bad_parameter)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(AlertNotFound, not_found)
    app.add_exception_handler(AlertConflict, conflict)
    app.add_exception_handler(BrokerUnavailable, unavailable)
    app.add_exception_handler(InfluxUnavailable, unavailable)
    app.add_exception_handler(InfluxError, refused)


async def _load_snapshot(
    influx: InfluxClient, registry: Registry, state: LiveState, tried: asyncio.Event
) -> None:
    """Each sensor's last stored reading, retried until InfluxDB answers; live ones win."""
    while True:
        try:
            readings = await anyio.to_thread.run_sync(history.latest_readings, influx, registry)
        except InfluxError as exc:
            log.warning("start-up snapshot from InfluxDB failed (%s); retrying", exc)
            tried.set()
            await asyncio.sleep(SNAPSHOT_RETRY_S)
            continue
        # Arrival times are not stored: a reading's own time stands in, never later than now
        # (a sensor clock running ahead must not keep it from going stale).
        now = time.time_ns()
        applied = sum(state.apply_reading(r, min(r.time_ns, now)) for r in readings)
        log.info("start-up snapshot: %d sensors' last readings from InfluxDB", applied)
        await _load_flood_history(influx, state, now)
        tried.set()
        return


async def _load_flood_history(influx: InfluxClient, state: LiveState, now_ns: int) -> None:
    """Flood alerts' escalation steps from the engine's stored events (one query, the last
    HISTORY_WINDOW_NS), so the page's history survives an API restart; without them each
    alert starts from its retained item (its raise, or its current level since its last
    change)."""
    try:
        rows = await anyio.to_thread.run_sync(
            history.alert_events, influx, now_ns - HISTORY_WINDOW_NS, None, ("flood",)
        )
    except InfluxError as exc:
        log.warning("flood alert history from InfluxDB not read (%s); shown as seen live", exc)
        return
    changed = state.seed_history(rows)
    log.info("start-up snapshot: %d flood alert events, %d histories", len(rows), changed)
    # The engine's hold (rule 5) counts from the first reading of a run below a threshold:
    # the stored readings of the last hold (at --time-scale), with a margin, replay the runs.
    hold_ns = timers(state.time_scale).hold_ns
    try:
        levels = await anyio.to_thread.run_sync(
            history.recent_levels, influx, now_ns - 2 * hold_ns - HOLD_MARGIN_NS
        )
    except InfluxError as exc:
        log.warning("recent readings not read (%s); holds count from the snapshot", exc)
        return
    state.replay_below(levels)


def _register_gauges(app: FastAPI, metrics_: Metrics) -> None:
    """Gauges read the running app's services when scraped (0 before start-up)."""

    def read(get: Callable[[Services], float]) -> Callable[[], float]:
        def value() -> float:
            services: Services | None = getattr(app.state, "services", None)
            return get(services) if services is not None else 0.0

        return value

    metrics_.gauge(
        "floodwatch_api_cache_sensors",
        "Sensors whose latest reading is held in memory.",
        read(lambda s: float(s.state.with_readings())),
    )
    metrics_.gauge(
        "floodwatch_api_stream_buffer_events",
        "Events held for /v1/stream clients that resume.",
        read(lambda s: float(len(s.events))),
    )
    metrics_.gauge(
        "floodwatch_api_live_feed_connected",
        "1 when the API is subscribed to the MQTT broker.",
        read(lambda s: float(s.feed.connected)),
    )


def create_app(
    settings: Settings,
    options: ApiOptions | None = None,
    *,
    alert_source: AlertSourceFactory = engine_alerts,
    clock: Callable[[], int] = time.time_ns,
) -> FastAPI:
    """Build the API; raises RegistryError or KeyFileError if its files are wrong.

    `alert_source` is the seam for the alert engine: a factory given an AlertContext.
    """
    options = options or ApiOptions()
    registry = load_registry(settings.registry_path)
    keys = KeyStore(options.api_keys)
    topics = Topics(settings.topic_root)
    metrics_ = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        probe_client = InfluxClient(settings.influx, settings.influx_db, timeout_s=PROBE_TIMEOUT_S)
        influx = InfluxClient(settings.influx, settings.influx_db, timeout_s=QUERY_TIMEOUT_S)
        state = LiveState(registry, settings.time_scale)
        event_log = EventLog(options.stream_buffer)
        handler = FeedHandler(topics, registry, state, event_log, metrics_, clock)
        feed = LiveFeed(
            settings.mqtt, topics, handler, asyncio.get_running_loop(), options.client_id
        )

        context = AlertContext(registry, topics, state, influx, settings.mqtt, feed)
        services = Services(
            settings=settings,
            options=options,
            state=state,
            events=event_log,
            metrics=metrics_,
            influx=influx,
            probes=Probes(settings.mqtt, probe_client),
            feed=feed,
            alerts=alert_source(context),
            sensors_body=SensorsBody(),
            streets_body=StreetsBody(),
            clock=clock,
        )
        app.state.services = services
        feed.start()
        if not await anyio.to_thread.run_sync(feed.wait_first_attempt, FIRST_CONNECT_WAIT_S):
            log.warning(
                "live feed: the MQTT broker at %s is not reachable yet; retrying in the "
                "background (current state stays as loaded from InfluxDB)",
                settings.mqtt,
            )
        # Serve once the snapshot is loaded or its first attempt failed (it retries then).
        tried = asyncio.Event()
        snapshot = asyncio.create_task(_load_snapshot(influx, registry, state, tried))
        expiry = asyncio.create_task(operations.expire_maintenance(services))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tried.wait(), QUERY_TIMEOUT_S)
        try:
            yield
        finally:
            snapshot.cancel()
            expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await snapshot
            with contextlib.suppress(asyncio.CancelledError):
                await expiry
            await anyio.to_thread.run_sync(feed.stop)
            if isinstance(services.alerts, EngineAlerts):
                await anyio.to_thread.run_sync(services.alerts.close)
            influx.close()
            probe_client.close()

    # Swagger UI and ReDoc served from the package's own copies, not a CDN: an operations
    # centre's network may not reach the internet.
    app = FastAPIOffline(
        title="Floodwatch API",
        version=_version(),
        description=(
            "Flood-sensor readings and alerts for An Khanh ward, Ho Chi Minh City "
            "(CONTRACT section 4). Send `Authorization: Bearer <API key>`; /healthz, "
            "/readyz, /metrics and the IOC page at / are open. Times are ISO 8601 with an "
            "offset; depths in cm."
        ),
        lifespan=lifespan,
        dependencies=[Depends(reject_unknown_query)],
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.keys = keys
    app.state.options = options
    app.state.page_html = page.render_page(
        {
            "anonymousRead": options.anonymous_read,
            "tileUrl": options.tile_url,
            "tileAttribution": options.tile_attribution,
            "wmsUrl": options.wms_url,
            "wmsLayers": options.wms_layers,
            "heartbeatS": options.heartbeat_s,
        }
    )
    _install_error_handlers(app)
    _document_errors(app)
    for module in (health, metrics, sensors, streets, alerts, events, stream, page, operations):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=page.STATIC), name="static")
    app.add_middleware(MetricsMiddleware, metrics=metrics_)

    @app.middleware("http")
    async def refuse_oversized_bodies(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # The only body the API takes is an acknowledgement's note; refuse anything larger
        # than it could ever be before reading it. A body without a length (chunked) is
        # refused too: nobody needs to stream a note.
        if request.method in ("POST", "PUT", "PATCH"):
            length = request.headers.get("content-length")
            if length is None and request.headers.get("transfer-encoding"):
                return JSONResponse(
                    {"detail": "Send the body with a Content-Length header, not chunked."},
                    status_code=411,
                )
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
                return JSONResponse(
                    {
                        "detail": f"Request bodies are limited to {MAX_BODY_BYTES} bytes: "
                        'send {"note": "..."} with a note of at most 1,000 characters.'
                    },
                    status_code=413,
                )
        return await call_next(request)

    app.add_middleware(StreamLimit, max_streams=options.max_streams)
    # Outermost, so every answer (413s and 404s included) carries the headers. The page may
    # later draw WMS images too (`wms_url`, when that setting exists).
    app.add_middleware(
        SecurityHeaders,
        image_origins=configured_image_origins(options.tile_url, getattr(options, "wms_url", "")),
    )
    _register_gauges(app, metrics_)
    return app
