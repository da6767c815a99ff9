"""`python -m api`: serve Floodwatch's HTTP API with uvicorn; `python -m api keys ...`: keys."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from api.app import create_app
from api.auth import ROLES, add_key, read_keys
from api.config import API_OPTIONS, add_anonymous_read, options_from_args
from floodwatch.errors import FloodwatchError
from floodwatch.settings import (
    command_parser,
    configure_logging,
    env_name,
    settings_from_args,
    time_scale_notice,
    whole_number,
)

# Open event streams would hold a stopping server forever; give them this long to finish.
GRACEFUL_SHUTDOWN_S = 5

DESCRIPTION = """\
Serve Floodwatch's HTTP API (OpenAPI at /docs) and the IOC page at /: current sensor state
kept live from MQTT, time series and alert history from InfluxDB, live events on /v1/stream,
plus /healthz (the process is alive), /readyz (the MQTT broker and InfluxDB are reachable;
503 with the problems listed when not) and /metrics. Operators put sensors or streets under
maintenance, change calibration and thresholds, add and retire sensors (/v1/maintenance,
/v1/sensors/{id}/calibration, /v1/registry/sensors); every change is published on the broker,
applies everywhere without a restart, and is listed at /v1/changes.

Manage API keys with `python -m api keys add --role viewer|operator --name NAME` (prints the
new key once and appends its hash to --api-keys) and `python -m api keys list`.
"""

KEYS_DESCRIPTION = """\
Manage the API keys file (--api-keys or FLOODWATCH_API_KEYS): one key per line as
role:sha256hex:name. `add` creates a key, prints it once on stdout and stores only its
SHA-256; a running API picks it up within a second. `list` shows names and roles.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("python -m api", DESCRIPTION, API_OPTIONS)
    add_anonymous_read(parser)
    return parser


def build_keys_parser() -> argparse.ArgumentParser:
    variable = env_name("--api-keys")
    # --api-keys may come before or after the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--api-keys",
        default=argparse.SUPPRESS,
        help=f"the API keys file (created if missing) [env {variable}]",
    )
    parser = argparse.ArgumentParser(
        prog="python -m api keys", description=KEYS_DESCRIPTION, parents=[common]
    )
    parser.set_defaults(api_keys=os.environ.get(variable, ""))
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", parents=[common], help="create a key and print it once")
    add.add_argument(
        "--role", choices=ROLES, required=True, help="viewer reads; operator also acks"
    )
    add.add_argument("--name", required=True, help="who holds it (letters, digits, _ . @ -)")
    commands.add_parser(
        "list", parents=[common], help="list the keys' names and roles (never the keys)"
    )
    return parser


def keys_main(argv: Sequence[str]) -> int:
    args = build_keys_parser().parse_args(argv)
    if not args.api_keys:
        print(
            "api keys: name the keys file with --api-keys FILE or FLOODWATCH_API_KEYS.",
            file=sys.stderr,
        )
        return 2
    path = Path(args.api_keys)
    try:
        if args.command == "add":
            key = add_key(path, args.role, args.name)
            print(key)
            print(
                f"api keys: added {args.role} key {args.name!r} to {path}; the key above is "
                "shown only this once. Send it as `Authorization: Bearer <key>`.",
                file=sys.stderr,
            )
        else:
            for entry in read_keys(path):
                print(f"{entry.role}\t{entry.name}")
    except FloodwatchError as exc:
        print(f"api keys: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["keys"]:
        return keys_main(arguments[1:])
    args = build_parser().parse_args(arguments)
    try:
        settings = settings_from_args(args)
        port = whole_number(args.port, "--port", minimum=1, maximum=65535)
        options = options_from_args(args)
        configure_logging(settings.log_level, "api")
        logging.getLogger("api").log(*time_scale_notice(settings.time_scale))
        app = create_app(settings, options)
        if options.api_keys is None and not options.anonymous_read:
            logging.getLogger("api").warning(
                "no --api-keys and no --anonymous-read: every data route will answer 401; "
                "add keys with `python -m api keys add` or allow anonymous reads"
            )
    except FloodwatchError as exc:
        print(f"api: {exc}", file=sys.stderr)
        return 2
    # Start-up objects (modules, routes, the registry) live as long as the process: move them
    # out of the collector's way, so full collections stay short under load.
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app,
        host=str(args.host),
        port=port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
