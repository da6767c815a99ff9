"""Prometheus text exposition: metrics as plain values, rendered by a pure function, and a
small HTTP endpoint for processes that have no web framework of their own (ingest)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

log = logging.getLogger(__name__)

MetricKind = Literal["counter", "gauge", "histogram"]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    help: str
    kind: MetricKind
    # (labels, value) pairs; for histograms the samples are already `_bucket`/`_sum`/`_count`
    # series, each with its suffix in the labels' special key "__suffix__".
    samples: Sequence[tuple[Mapping[str, str], float]] = field(default_factory=list)


def _labels(labels: Mapping[str, str]) -> str:
    shown = {k: v for k, v in labels.items() if k != "__suffix__"}
    if not shown:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in shown.items()) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(metrics: Sequence[Metric]) -> str:
    """The text format Prometheus scrapes (version 0.0.4)."""
    out: list[str] = []
    for m in metrics:
        out.append(f"# HELP {m.name} {m.help}")
        out.append(f"# TYPE {m.name} {m.kind}")
        for labels, value in m.samples:
            suffix = labels.get("__suffix__", "")
            out.append(f"{m.name}{suffix}{_labels(labels)} {_number(value)}")
    return "\n".join(out) + "\n"


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def histogram(
    name: str, help: str, bounds: Sequence[float], counts: Sequence[int], total: float
) -> Metric:
    """A histogram from per-bucket counts (not cumulative; the last is the +Inf bucket)."""
    samples: list[tuple[Mapping[str, str], float]] = []
    running = 0
    for bound, count in zip([*bounds, float("inf")], counts, strict=True):
        running += count
        le = "+Inf" if bound == float("inf") else repr(bound)
        samples.append(({"__suffix__": "_bucket", "le": le}, running))
    samples.append(({"__suffix__": "_sum"}, total))
    samples.append(({"__suffix__": "_count"}, running))
    return Metric(name, help, "histogram", samples)


def serve(host: str, port: int, collect: Callable[[], Sequence[Metric]]) -> ThreadingHTTPServer:
    """Serve GET /metrics from a daemon thread; the caller shuts the server down."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            body = render(collect()).encode()
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
