"""The API's own settings (on top of floodwatch.settings.Settings), declared once with defaults.

| flag | variable | default | meaning |
|---|---|---|---|
| --host | FLOODWATCH_HOST | 127.0.0.1 | address to listen on |
| --port | FLOODWATCH_PORT | 8000 | TCP port |
| --api-keys | FLOODWATCH_API_KEYS | (none) | API keys file, lines `role:sha256hex:name` |
| --anonymous-read | FLOODWATCH_ANONYMOUS_READ | false | reads without a key |
| --tile-url | FLOODWATCH_TILE_URL | (none) | map tiles for the IOC page |
| --tile-attribution | FLOODWATCH_TILE_ATTRIBUTION | (none) | credit shown under the tiles |
| --wms-url | FLOODWATCH_WMS_URL | (none) | a WMS service (the IOC's GIS) drawn over the map |
| --wms-layers | FLOODWATCH_WMS_LAYERS | (none) | its layer names, comma-separated |
| --stream-buffer | FLOODWATCH_STREAM_BUFFER | 10000 | SSE events kept for resuming |
| --heartbeat | FLOODWATCH_HEARTBEAT | 15 | seconds between SSE heartbeats |
| --max-streams | FLOODWATCH_MAX_STREAMS | 50 | concurrent /v1/stream clients; 503 past it |
| --stream-send-timeout | FLOODWATCH_STREAM_SEND_TIMEOUT | 15 | drop a client that reads nothing |
| --client-id | FLOODWATCH_CLIENT_ID | (the login's) | MQTT client id; one per API replica |
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from floodwatch.errors import SettingsError
from floodwatch.settings import TIME_SCALE, env_name, option, real_number, whole_number

# At the shipped 14 sensors reporting once a minute, 10,000 events span about 12 hours; at
# 1,000 sensors, about 10 minutes: either way far more than a client's 30 s drop.
DEFAULT_STREAM_BUFFER = 10_000
# An operations centre has a few wall screens and tens of operators; every stream costs memory
# and a share of each event's fan-out (300 streams pushed /v1/sensors to 1.7 s).
DEFAULT_MAX_STREAMS = 50
DEFAULT_STREAM_SEND_TIMEOUT_S = 15.0

API_OPTIONS = (
    option("--host", "127.0.0.1", "address to listen on (0.0.0.0 for every interface)"),
    option("--port", "8000", "TCP port to listen on, 1 to 65535"),
    option(
        "--api-keys",
        "",
        "API keys file, one key per line as role:sha256hex:name (role viewer or operator); "
        "create keys with `python -m api keys add`; empty: no keys, so only anonymous reads",
    ),
    option(
        "--tile-url",
        "",
        "map tile URL template for the IOC page, e.g. https://tile.example.org/{z}/{x}/{y}.png; "
        "empty: no tiles (the page draws streets and sensors on a plain background, offline)",
    ),
    option("--tile-attribution", "", "credit shown under the map tiles (their licence asks)"),
    option(
        "--wms-url",
        "",
        "WMS endpoint of the IOC's GIS platform drawn over the IOC page's map, e.g. "
        "https://gis.example.org/geoserver/wms; empty: none (the page's own offline river, "
        "ward and street overlays still show)",
    ),
    option("--wms-layers", "", "WMS layer names for --wms-url, comma-separated"),
    option(
        "--stream-buffer",
        str(DEFAULT_STREAM_BUFFER),
        "events /v1/stream keeps for clients that reconnect with Last-Event-ID",
    ),
    option("--heartbeat", "15", "seconds between /v1/stream heartbeat comments"),
    TIME_SCALE,  # stale by arrival runs as fast as the engine's
    option(
        "--max-streams",
        str(DEFAULT_MAX_STREAMS),
        "most /v1/stream clients served at once; one more is answered 503 with Retry-After",
    ),
    option(
        "--stream-send-timeout",
        f"{DEFAULT_STREAM_SEND_TIMEOUT_S:g}",
        "seconds a /v1/stream client may take no data before it is dropped (it can resume "
        "with Last-Event-ID)",
    ),
    option(
        "--client-id",
        "",
        "MQTT client id; empty: the one the broker binds the login to (floodwatch-api for the "
        "`api` login). Several API replicas on one NATS cluster need one each "
        "(floodwatch-api-1, ...): a second connection with an id takes the first one's session",
    ),
)

ANONYMOUS_READ_FLAG = "--anonymous-read"


@dataclass(frozen=True, slots=True)
class ApiOptions:
    """What the API adds to the shared settings; the defaults suit tests and development."""

    api_keys: Path | None = None
    anonymous_read: bool = False
    tile_url: str = ""
    tile_attribution: str = ""
    wms_url: str = ""
    wms_layers: str = ""
    stream_buffer: int = DEFAULT_STREAM_BUFFER
    heartbeat_s: float = 15.0
    max_streams: int = DEFAULT_MAX_STREAMS
    stream_send_timeout_s: float = DEFAULT_STREAM_SEND_TIMEOUT_S
    client_id: str = ""  # empty: the login's bound client id


def add_anonymous_read(parser: argparse.ArgumentParser) -> None:
    """`--anonymous-read` alone means true; FLOODWATCH_ANONYMOUS_READ takes true or false."""
    variable = env_name(ANONYMOUS_READ_FLAG)
    parser.add_argument(
        ANONYMOUS_READ_FLAG,
        nargs="?",
        const="true",
        default=os.environ.get(variable, "false"),
        metavar="true|false",
        help="let requests without a key read (viewer role); writes still need an operator "
        f"key [env {variable}; default false]",
    )


def _boolean(value: object, flag: str) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{flag} {value!r} must be true or false; fix {flag} or {env_name(flag)}.")


def options_from_args(args: argparse.Namespace) -> ApiOptions:
    """Check the API's own options once; raise SettingsError with the fix in one sentence."""
    keys = str(args.api_keys).strip()
    key_path = Path(keys) if keys else None
    if key_path is not None and not key_path.is_file():
        raise SettingsError(
            f"API keys file {keys!r} does not exist; create it with "
            "`python -m api keys add --role operator --name NAME --api-keys FILE` "
            "or fix --api-keys or FLOODWATCH_API_KEYS."
        )
    tile_url = str(args.tile_url).strip()
    if tile_url and (
        not tile_url.startswith(("http://", "https://"))
        or not all(part in tile_url for part in ("{z}", "{x}", "{y}"))
    ):
        raise SettingsError(
            f"tile URL {tile_url!r} must be an http(s) URL with {{z}}, {{x}} and {{y}}; "
            "fix --tile-url or FLOODWATCH_TILE_URL (or leave it empty for no tiles)."
        )
    wms_url = str(args.wms_url).strip()
    wms_layers = str(args.wms_layers).strip()
    if wms_url and not wms_url.startswith(("http://", "https://")):
        raise SettingsError(
            f"WMS URL {wms_url!r} must be an http(s) URL; fix --wms-url or FLOODWATCH_WMS_URL "
            "(or leave it empty for no WMS layer)."
        )
    if wms_url and not wms_layers:
        raise SettingsError(
            "--wms-url needs the layers to draw; set --wms-layers or FLOODWATCH_WMS_LAYERS, "
            "e.g. flood:zones."
        )
    return ApiOptions(
        api_keys=key_path,
        anonymous_read=_boolean(args.anonymous_read, ANONYMOUS_READ_FLAG),
        tile_url=tile_url,
        tile_attribution=str(args.tile_attribution).strip(),
        wms_url=wms_url,
        wms_layers=wms_layers,
        stream_buffer=whole_number(
            args.stream_buffer, "--stream-buffer", minimum=100, maximum=10_000_000
        ),
        heartbeat_s=real_number(args.heartbeat, "--heartbeat", positive=True),
        max_streams=whole_number(args.max_streams, "--max-streams", minimum=1, maximum=100_000),
        stream_send_timeout_s=real_number(
            args.stream_send_timeout, "--stream-send-timeout", positive=True
        ),
        client_id=_client_id(str(args.client_id).strip()),
    )


def _client_id(client_id: str) -> str:
    # NATS's MQTT listener refuses a `.` in a client id (docs/CLUSTER.md).
    if len(client_id.encode()) > 256 or any(ch in client_id for ch in "./#+ "):
        raise SettingsError(
            f"--client-id {client_id[:40]!r} must be at most 256 bytes with no '.', '/', '#', "
            "'+' or space; fix --client-id or FLOODWATCH_CLIENT_ID, e.g. floodwatch-api-2."
        )
    return client_id
