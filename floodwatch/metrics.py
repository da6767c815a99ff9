"""Prometheus metrics through `prometheus-client`, from plain values read at scrape time.

The hot paths keep plain counters (ints and dicts, no locks); a scrape asks the process for
its metrics as `Metric` values, and `PlainCollector` hands them to prometheus-client, which
writes the text format (version 0.0.4). `serve` is a small `/metrics` endpoint for processes
with no web framework of their own (ingest); the API serves `render`'s text from a route.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.core import (
    Metric as Family,
)
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

MetricKind = Literal["counter", "gauge", "histogram"]
# The classic text format every Prometheus reads, which generate_latest writes for our
# metric names (newer prometheus-client versions announce a newer version by default).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric as plain values. Counters and gauges: (labels, value) samples, every sample
    with the same label names. Histograms: `buckets` (upper bound, count in that bucket, not
    cumulative; the last bound is +inf) and `sum`."""

    name: str
    help: str
    kind: MetricKind
    samples: Sequence[tuple[Mapping[str, str], float]] = field(default_factory=list)
    buckets: Sequence[tuple[float, int]] = ()
    sum: float = 0.0


def histogram(
    name: str, help: str, bounds: Sequence[float], counts: Sequence[int], total: float
) -> Metric:
    """A histogram from per-bucket counts (not cumulative; the last is the +Inf bucket)."""
    buckets = list(zip([*bounds, float("inf")], counts, strict=True))
    return Metric(name, help, "histogram", buckets=buckets, sum=total)


def _family(metric: Metric) -> Family:
    if metric.kind == "histogram":
        running = 0
        cumulative: list[tuple[str, float]] = []
        for bound, count in metric.buckets:
            running += count
            cumulative.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return HistogramMetricFamily(
            metric.name, metric.help, buckets=cumulative, sum_value=metric.sum
        )
    names = list(metric.samples[0][0]) if metric.samples else []
    family: CounterMetricFamily | GaugeMetricFamily = (
        CounterMetricFamily(metric.name, metric.help, labels=names)
        if metric.kind == "counter"
        else GaugeMetricFamily(metric.name, metric.help, labels=names)
    )
    for labels, value in metric.samples:
        family.add_metric([labels[n] for n in names], value)
    return family


class PlainCollector(Collector):
    """Reads the process's plain values at each scrape; nothing is locked or copied before."""

    def __init__(self, collect: Callable[[], Sequence[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Family]:
        for metric in self._collect():
            yield _family(metric)


def registry_of(collect: Callable[[], Sequence[Metric]]) -> CollectorRegistry:
    """A registry of its own (never the library's global one, so tests and processes do not
    share metrics) holding one PlainCollector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PlainCollector(collect))
    return registry


def render(metrics: Sequence[Metric]) -> str:
    """The text format Prometheus scrapes (version 0.0.4)."""
    return generate_latest(registry_of(lambda: metrics)).decode()


def serve(host: str, port: int, collect: Callable[[], Sequence[Metric]]) -> ThreadingHTTPServer:
    """Serve GET /metrics from a daemon thread; the caller shuts the server down."""
    registry = registry_of(collect)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("metrics: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
