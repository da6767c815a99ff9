"""The API's own metrics, exposed through prometheus-client (floodwatch.metrics).

Counters are plain dicts keyed by their label values, updated on the event loop's thread
without locks, and only ever grow; gauges are read when scraped. Route labels are route
templates (`/v1/sensors/{sensor_id}`), never raw paths, so a scanner requesting random URLs
cannot create unbounded series. The ingest side has its own metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from floodwatch.metrics import Metric, registry_of


@dataclass
class Counter:
    name: str
    help: str
    labels: tuple[str, ...]
    values: dict[tuple[str, ...], float] = field(default_factory=dict)

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def metric(self) -> Metric:
        samples = [
            (dict(zip(self.labels, key, strict=True)), value)
            for key, value in sorted(self.values.items())
        ]
        return Metric(self.name, self.help, "counter", samples)


@dataclass(frozen=True)
class Gauge:
    name: str
    help: str
    read: Callable[[], float]

    def metric(self) -> Metric:
        return Metric(self.name, self.help, "gauge", [({}, self.read())])


class Metrics:
    """Everything /metrics shows; updated on the event loop's thread."""

    def __init__(self) -> None:
        self.requests = Counter(
            "floodwatch_api_requests_total",
            "HTTP requests answered, by route template, method and status code.",
            ("route", "method", "status"),
        )
        self.request_seconds = Counter(
            "floodwatch_api_request_seconds_total",
            "Seconds spent answering HTTP requests (streams: their whole duration), by route.",
            ("route", "method"),
        )
        self.mqtt_messages = Counter(
            "floodwatch_api_mqtt_messages_total",
            "MQTT messages the live feed received, by kind "
            "(reading, status, alert, rejected, bad_alert).",
            ("kind",),
        )
        self.sse_clients = 0
        self.gauges: list[Gauge] = [
            Gauge(
                "floodwatch_api_sse_clients",
                "Clients connected to /v1/stream now.",
                lambda: float(self.sse_clients),
            )
        ]
        self._registry = registry_of(self.collect)

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.gauges.append(Gauge(name, help, read))

    def collect(self) -> list[Metric]:
        counters = (self.requests, self.request_seconds, self.mqtt_messages)
        return [c.metric() for c in counters] + [g.metric() for g in self.gauges]

    def render(self) -> bytes:
        """The text Prometheus scrapes (CONTENT_TYPE)."""
        return generate_latest(self._registry)


class MetricsMiddleware:
    """Counts every HTTP request by route template and status (plain ASGI: streams pass)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_counting)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = str(scope.get("method", ""))
            self.metrics.requests.inc((route, method, str(status)))
            self.metrics.request_seconds.inc((route, method), time.perf_counter() - started)
