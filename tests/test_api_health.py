"""Tests for the API's health endpoints and its command line, on the real broker and influxd."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.exceptions import StarletteDeprecationWarning

from api.app import create_app
from floodwatch.localservices import Service, free_port
from floodwatch.settings import Settings
from tests.conftest import ROOT, process_env, wait_until
from tests.test_api_support import TestClient, api_settings

with warnings.catch_warnings():
    # Starlette 1.x would rather its test client ran on httpx2 and warns, once at import, when
    # it falls back to httpx (the project's HTTP client); the client behaves the same.
    warnings.filterwarnings(
        "ignore",
        message="Using `httpx` with `starlette.testclient` is deprecated",
        category=StarletteDeprecationWarning,
    )
    from fastapi.testclient import TestClient


def _settings(broker: Service | int, influxd: Service | int, db: str) -> Settings:
    return api_settings(broker, influxd, db)


@contextlib.contextmanager
def _client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def _run_api(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=_env_without_floodwatch_variables(),
    )


def _env_without_floodwatch_variables() -> dict[str, str]:
    """The caller's environment minus FLOODWATCH_* variables, so the defaults apply."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FLOODWATCH_")}


def test_healthz_answers_ok_without_any_dependency(unique: str) -> None:
    """/healthz says the process is alive even when neither the broker nor influxd exists."""
    with _client(_settings(free_port(), free_port(), unique)) as client:
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.services
def test_readyz_is_ready_on_the_real_broker_and_database(
    broker: Service, influxd: Service, unique: str
) -> None:
    """/readyz answers 200 and ready when Mosquitto accepts connections and influxd answers."""
    with _client(_settings(broker, influxd, unique)) as client:
        response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["broker"] is True
    assert body["database"] is True
    assert body["problems"] == []


@pytest.mark.services
def test_readyz_names_the_database_when_influx_is_unreachable(broker: Service, unique: str) -> None:
    """/readyz answers 503 with a sentence naming InfluxDB when nothing listens on its port."""
    port = free_port()
    with _client(_settings(broker, port, unique)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready"
    assert body["broker"] is True
    assert body["database"] is False
    [problem] = body["problems"]
    assert "InfluxDB" in problem
    assert f"127.0.0.1:{port}" in problem


@pytest.mark.services
def test_readyz_names_the_broker_when_mqtt_is_unreachable(influxd: Service, unique: str) -> None:
    """/readyz answers 503 with a sentence naming the MQTT broker when nothing listens there."""
    port = free_port()
    with _client(_settings(port, influxd, unique)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready"
    assert body["broker"] is False
    assert body["database"] is True
    [problem] = body["problems"]
    assert "MQTT broker" in problem
    assert f"127.0.0.1:{port}" in problem


def test_openapi_documents_both_readiness_answers(unique: str) -> None:
    """The OpenAPI document lists /readyz with its 200 and 503 answers and field descriptions."""
    with _client(_settings(free_port(), free_port(), unique)) as client:
        doc = client.get("/openapi.json").json()
    assert doc["info"]["title"] == "Floodwatch API"
    assert set(doc["paths"]["/readyz"]["get"]["responses"]) >= {"200", "503"}
    fields = doc["components"]["schemas"]["Readiness"]["properties"]
    assert all(field.get("description") for field in fields.values())


def test_help_exits_zero_and_names_the_variables() -> None:
    """`python -m api --help` exits 0 and names the FLOODWATCH_* variable of each option."""
    result = _run_api("--help")
    assert result.returncode == 0, result.stderr
    for name in ("FLOODWATCH_INFLUX_URL", "FLOODWATCH_MQTT_URL", "FLOODWATCH_PORT"):
        assert name in result.stdout


@pytest.mark.parametrize("port", ["0", "65536", "http"])
def test_bad_port_exits_two_with_one_sentence(port: str) -> None:
    """An out-of-range or non-numeric --port exits 2 with one line naming flag and variable."""
    result = _run_api("--port", port)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("api: ")
    assert "--port" in lines[0]
    assert "FLOODWATCH_PORT" in lines[0]


@contextlib.contextmanager
def _api_process(log: Path, *args: str, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m api ARGS` with its output in `log`, killed at the end if still running."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.services
def test_process_serves_healthz_and_stops_on_sigterm(
    broker: Service, influxd: Service, unique: str, tmp_path: Path
) -> None:
    """`python -m api --port N` serves /healthz on that port and stops cleanly on SIGTERM."""
    port = free_port()
    log = tmp_path / "api.log"
    env = process_env(broker, influxd, unique, unique, role="api")
    with _api_process(log, "--port", str(port), env=env) as proc:

        def healthy() -> bool:
            assert proc.poll() is None, f"python -m api exited early:\n{log.read_text()}"
            with contextlib.suppress(httpx.HTTPError):
                url = f"http://127.0.0.1:{port}/healthz"
                return httpx.get(url, timeout=1).status_code == 200
            return False

        wait_until(healthy, timeout_s=30, what=f"GET /healthz on port {port}")
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert ready.status_code == 200, ready.text
        proc.terminate()
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit reflects the signal.
        assert proc.wait(15) in (0, -signal.SIGTERM), log.read_text()
    assert "Application shutdown complete" in log.read_text()


def test_the_api_docs_need_no_internet() -> None:
    """/docs and /redoc load Swagger UI and ReDoc from the API itself (an operations centre's
    network may not reach a CDN), and those files are served."""
    port = free_port()
    app = create_app(api_settings(port, port, "docs"))
    with TestClient(app) as client:
        for page in ("/docs", "/redoc"):
            html = client.get(page).text
            scripts = re.findall(r'<script src="([^"]+)"', html)
            assert scripts and all(src.startswith("/") for src in scripts), (page, scripts)
            assert "cdn" not in html.lower(), page
            for src in scripts:
                response = client.get(src)
                assert response.status_code == 200 and len(response.content) > 100_000, src
