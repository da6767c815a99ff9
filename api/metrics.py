"""The API's own metrics in Prometheus text format (version 0.0.4), with no client library.

Counters are keyed by their label values and only ever grow; gauges are read when scraped.
Route labels are route templates (`/v1/sensors/{sensor_id}`), never raw paths, so a scanner
requesting random URLs cannot create unbounded series. The ingest side has its own metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass
class Counter:
    name: str
    help: str
    labels: tuple[str, ...]
    values: dict[tuple[str, ...], float] = field(default_factory=dict)

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self, kind: str = "counter") -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {kind}"]
        for key, value in sorted(self.values.items()):
            pairs = ",".join(f'{n}="{_label(v)}"' for n, v in zip(self.labels, key, strict=True))
            lines.append(f"{self.name}{{{pairs}}} {value:g}")
        return lines


@dataclass(frozen=True)
class Gauge:
    name: str
    help: str
    read: Callable[[], float]

    def render(self) -> list[str]:
        return [
            f"# HELP {self.name} {self.help}",
            f"# TYPE {self.name} gauge",
            f"{self.name} {self.read():g}",
        ]


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

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.gauges.append(Gauge(name, help, read))

    def render(self) -> str:
        lines = [
            *self.requests.render(),
            *self.request_seconds.render(),
            *self.mqtt_messages.render(),
        ]
        for gauge in self.gauges:
            lines.extend(gauge.render())
        return "\n".join(lines) + "\n"


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
