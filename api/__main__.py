"""`python -m api`: serve Floodwatch's HTTP API with uvicorn."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import uvicorn

from api.app import create_app
from floodwatch.errors import FloodwatchError
from floodwatch.settings import (
    command_parser,
    option,
    settings_from_args,
    whole_number,
)

API_OPTIONS = (
    option("--host", "127.0.0.1", "address to listen on (0.0.0.0 for every interface)"),
    option("--port", "8000", "TCP port to listen on, 1 to 65535"),
)

DESCRIPTION = """\
Serve Floodwatch's HTTP API (OpenAPI at /docs): sensor readings and alerts from InfluxDB,
plus /healthz (the process is alive) and /readyz (the MQTT broker and InfluxDB are
reachable; 503 with the problems listed when not).
"""


def build_parser() -> argparse.ArgumentParser:
    return command_parser("python -m api", DESCRIPTION, API_OPTIONS)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        port = whole_number(args.port, "--port", minimum=1, maximum=65535)
        app = create_app(settings)
    except FloodwatchError as exc:
        print(f"api: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=str(args.host), port=port, log_level=settings.log_level.lower())
    return 0


if __name__ == "__main__":
    sys.exit(main())
