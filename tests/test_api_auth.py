"""API keys and roles: the auth matrix over every route of the app (no key, wrong key, viewer,
operator), anonymous reads, the keys CLI, and /metrics."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.routing import iter_route_contexts
from starlette.routing import Mount, Route

from api.__main__ import build_parser
from api.app import create_app
from api.auth import read_keys
from api.config import ApiOptions, options_from_args
from floodwatch.errors import SettingsError
from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service, free_port
from floodwatch.settings import parse_influx_url
from tests.conftest import ROOT
from tests.test_api_support import (
    DEPTH_SENSOR,
    Keys,
    api_settings,
    bearer,
    engine_alert,
    live_server,
    wait_for,
    write_keys,
)

# Who may call what: every route of the app must be listed (a new route must be classified).
ACCESS: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "open",
    ("GET", "/readyz"): "open",
    ("GET", "/metrics"): "open",
    ("GET", "/"): "open",
    ("GET", "/static"): "open",
    ("GET", "/static-offline-docs"): "open",
    ("GET", "/openapi.json"): "open",
    ("GET", "/docs"): "open",
    ("GET", "/docs/oauth2-redirect"): "open",
    ("GET", "/redoc"): "open",
    ("GET", "/v1/sensors"): "viewer",
    ("GET", "/v1/sensors/{sensor_id}"): "viewer",
    ("GET", "/v1/sensors/{sensor_id}/readings"): "viewer",
    ("GET", "/v1/streets"): "viewer",
    ("GET", "/v1/alerts"): "viewer",
    ("GET", "/v1/alerts.cap"): "viewer",
    ("GET", "/v1/alerts/{alert_id}"): "viewer",
    ("POST", "/v1/alerts/{alert_id}/ack"): "operator",
    ("POST", "/v1/streets/{street}/acknowledge"): "operator",
    ("GET", "/v1/me"): "viewer",
    ("GET", "/v1/events"): "viewer",
    ("GET", "/v1/events/{event_id}/report"): "viewer",
    ("GET", "/v1/events/{event_id}/report.csv"): "viewer",
    ("GET", "/v1/stream"): "viewer",
    # Operators' changes (routes/operations.py): the matrix checks who gets past the key check
    # ("operator-write": the operator's request then fails validation, changing nothing).
    ("GET", "/v1/alerts/{alert_id}/notifications"): "viewer",
    ("GET", "/v1/maintenance"): "viewer",
    ("GET", "/v1/changes"): "viewer",
    ("POST", "/v1/maintenance/sensors/{sensor_id}"): "operator-write",
    ("DELETE", "/v1/maintenance/sensors/{sensor_id}"): "operator-write",
    ("POST", "/v1/maintenance/streets/{street}"): "operator-write",
    ("DELETE", "/v1/maintenance/streets/{street}"): "operator-write",
    ("PATCH", "/v1/sensors/{sensor_id}/calibration"): "operator-write",
    ("POST", "/v1/registry/sensors"): "operator-write",
    ("DELETE", "/v1/registry/sensors/{sensor_id}"): "operator-write",
    ("POST", "/v1/registry/sensors/{sensor_id}/restore"): "operator-write",
}


def _routes() -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, read from app.routes."""
    port = free_port()
    app = create_app(api_settings(port, port, "routes"))
    found: list[tuple[str, str]] = []
    # FastAPI 0.16x wraps included routers; iter_route_contexts flattens app.routes.
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, Route):  # APIRoute too
            found += [(m, route.path) for m in sorted(route.methods or ()) if m != "HEAD"]
        elif isinstance(route, Mount):
            found.append(("GET", route.path))
    return found


ROUTES = _routes()
EVENT_START = 1_795_651_200 * 10**9
EVENT_ID = f"flood:{EVENT_START}"


def test_every_route_has_a_declared_access_level() -> None:
    """The matrix below covers exactly the app's routes."""
    assert sorted(ROUTES) == sorted(ACCESS)


@dataclass
class Server:
    url: str
    keys: Keys
    alert_id: str


@pytest.fixture(scope="module")
def server(
    broker: Service, influxd: Service, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One live API (uvicorn) for the whole matrix, with an alert to acknowledge."""
    root = "authmatrix"
    with InfluxClient(parse_influx_url(influxd.url("admin")), root) as influx:
        influx.create_database()
        # A flood episode for the report routes to find.
        influx.write([f'flood_episode episode_id="{EVENT_ID}",peak_cm=12.5 {EVENT_START}'])
    keys = write_keys(tmp_path_factory.mktemp("auth") / "keys")
    app = create_app(api_settings(broker, influxd, root), ApiOptions(api_keys=keys.path))
    with (
        live_server(app) as url,
        engine_alert(broker, influxd, root, tmp_path_factory.mktemp("ingest")) as alert_id,
    ):
        wait_for(
            lambda: (
                httpx.get(f"{url}/v1/alerts/{alert_id}", headers=bearer(keys.viewer)).status_code
                == 200
            ),
            what="the alert",
        )
        yield Server(url, keys, alert_id)


def _call(server: Server, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    url = server.url + path.replace("{sensor_id}", DEPTH_SENSOR).replace(
        "{alert_id}", server.alert_id
    ).replace("{event_id}", EVENT_ID).replace("{street}", "Quoc%20Huong")
    if path == "/static":
        url += "/app.js"
    elif path == "/static-offline-docs":
        url += "/swagger-ui-bundle.js"
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            method, url, headers=headers, json={"note": "matrix"} if method == "POST" else None
        ) as response,
    ):
        # Read bodies, except an event stream's, which never ends.
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            response.read()
        return response


@pytest.mark.services
@pytest.mark.parametrize("who", ["nobody", "wrong key", "viewer", "operator"])
@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_auth_matrix(server: Server, method: str, path: str, who: str) -> None:
    """Open routes answer anyone; others need a key (401 with WWW-Authenticate: Bearer when it
    is missing or wrong) of a high enough role (403 otherwise)."""
    headers = {
        "nobody": {},
        "wrong key": bearer("fwk_" + "x" * 43),
        "viewer": bearer(server.keys.viewer),
        "operator": bearer(server.keys.operator),
    }[who]
    needs = ACCESS[(method, path)]
    response = _call(server, method, path, headers)
    if needs == "operator-write" and who == "operator":
        assert response.status_code == 422, response.text
    elif needs == "open" or (who == "operator") or (who == "viewer" and needs == "viewer"):
        # Past auth: the alert may already be acknowledged by the other acknowledge route
        # (the street's or the alert's own), which is a 409, not an auth failure.
        passed = (200, 409) if method == "POST" else (200,)
        assert response.status_code in passed, response.text
    elif who in ("nobody", "wrong key"):
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"].startswith("Bearer")
    else:
        assert response.status_code == 403, response.text
        assert "operator" in response.json()["detail"]


@pytest.mark.services
@pytest.mark.parametrize(
    ("header", "status"),
    [
        ("Basic dXNlcjpwYXNz", 401),
        ("Bearer", 401),
        ("Bearer caf\xe9", 401),
        ("Bearer a b", 401),
        ("bearer {viewer}", 200),
    ],
)
def test_authorization_header_forms(server: Server, header: str, status: int) -> None:
    """Only the Bearer scheme is accepted (case-insensitive); anything else is 401."""
    value = header.format(viewer=server.keys.viewer).encode("latin-1")
    response = httpx.get(f"{server.url}/v1/sensors", headers={b"Authorization": value})
    assert response.status_code == status


@pytest.mark.services
def test_anonymous_read_when_configured(
    broker: Service, influxd: Service, unique: str, tmp_path: Path
) -> None:
    """With anonymous reads, no key reads; acknowledging still needs a key; a wrong key is 401."""
    keys = write_keys(tmp_path / "keys")
    options = ApiOptions(api_keys=keys.path, anonymous_read=True)
    app = create_app(api_settings(broker, influxd, unique), options)
    with live_server(app) as url:
        assert httpx.get(f"{url}/v1/sensors").status_code == 200
        assert httpx.get(f"{url}/v1/alerts").status_code == 200
        ack = httpx.post(f"{url}/v1/alerts/x/ack", json={"note": ""})
        assert ack.status_code == 401 and ack.headers["www-authenticate"].startswith("Bearer")
        assert (
            httpx.post(
                f"{url}/v1/alerts/x/ack", json={"note": ""}, headers=bearer(keys.viewer)
            ).status_code
            == 403
        )
        assert httpx.get(f"{url}/v1/sensors", headers=bearer("fwk_wrong")).status_code == 401
        page = httpx.get(f"{url}/").text
        assert '"anonymousRead":true' in page


@pytest.mark.services
def test_metrics_count_requests_by_route_template(server: Server) -> None:
    """/metrics is Prometheus text with requests by route template and status, and gauges."""
    httpx.get(f"{server.url}/v1/sensors/{DEPTH_SENSOR}", headers=bearer(server.keys.viewer))
    httpx.get(f"{server.url}/v1/sensors/zz-1", headers=bearer(server.keys.viewer))
    response = httpx.get(f"{server.url}/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert 'method="GET",route="/v1/sensors/{sensor_id}",status="200"' in text
    assert 'method="GET",route="/v1/sensors/{sensor_id}",status="404"' in text
    assert "zz-1" not in text
    for gauge in (
        "floodwatch_api_sse_clients ",
        "floodwatch_api_cache_sensors ",
        "floodwatch_api_stream_buffer_events ",
        "floodwatch_api_live_feed_connected 1",
    ):
        assert gauge in text


def _run_api(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLOODWATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "api", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **(env or {})},
    )


def test_keys_cli_prints_the_key_once_and_stores_its_hash(tmp_path: Path) -> None:
    """`python -m api keys add` prints a new key, appends only its hash; `list` shows names."""
    path = tmp_path / "keys"
    added = _run_api(
        "keys", "add", "--role", "operator", "--name", "alice", "--api-keys", str(path)
    )
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert key.startswith("fwk_") and len(key) > 40
    assert key not in path.read_text()
    [entry] = read_keys(path)
    assert (entry.role, entry.name) == ("operator", "alice")
    listed = _run_api("keys", "list", env={"FLOODWATCH_API_KEYS": str(path)})
    assert listed.stdout == "operator\talice\n"
    twice = _run_api("keys", "add", "--role", "viewer", "--name", "alice", "--api-keys", str(path))
    assert twice.returncode == 2 and "already has a key named" in twice.stderr
    nowhere = _run_api("keys", "add", "--role", "viewer", "--name", "bob")
    assert nowhere.returncode == 2 and "FLOODWATCH_API_KEYS" in nowhere.stderr


def test_missing_keys_file_stops_the_api_with_one_sentence(tmp_path: Path) -> None:
    """A --api-keys file that does not exist exits 2, naming the flag, variable and fix."""
    result = _run_api("--api-keys", str(tmp_path / "none"))
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "--api-keys" in line and "FLOODWATCH_API_KEYS" in line and "keys add" in line


@pytest.mark.parametrize(
    ("argv", "anonymous"),
    [([], False), (["--anonymous-read"], True), (["--anonymous-read", "false"], False)],
)
def test_anonymous_read_flag(argv: list[str], anonymous: bool) -> None:
    """`--anonymous-read` alone turns anonymous reads on; `false` keeps them off."""
    options = options_from_args(build_parser().parse_args(argv))
    assert options.anonymous_read is anonymous


def test_anonymous_read_refuses_other_words() -> None:
    """A value other than true or false is a settings error naming the variable."""
    with pytest.raises(SettingsError, match="FLOODWATCH_ANONYMOUS_READ"):
        options_from_args(build_parser().parse_args(["--anonymous-read", "maybe"]))
