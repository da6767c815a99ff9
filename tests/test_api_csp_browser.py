"""The Content-Security-Policy in headless Chromium: the IOC page, Swagger UI (/docs) and
ReDoc (/redoc) render under it with no violation reported."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from api.app import create_app
from api.config import ApiOptions
from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service
from tests.test_api_browser import CHROMIUM, LAUNCH_ARGS
from tests.test_api_support import (
    DEPTH_SENSOR,
    api_settings,
    live_server,
    write_keys,
    write_readings,
)

pytestmark = [
    pytest.mark.services,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
]

# Every violation is reported to the page as an event, whatever the console says.
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener('securitypolicyviolation', e =>
  window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


def test_page_and_api_docs_render_under_the_csp(
    broker: Service, influxd: Service, influx: InfluxClient, unique: str, tmp_path: Path
) -> None:

    from playwright.sync_api import sync_playwright

    write_readings(influx, DEPTH_SENSOR, [(time.time_ns() - 60 * 10**9, 12.0)])
    keys = write_keys(tmp_path / "keys")
    app = create_app(api_settings(broker, influxd, unique), ApiOptions(api_keys=keys.path))
    problems: list[str] = []
    with live_server(app) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            context = browser.new_context()
            context.add_init_script(RECORD_VIOLATIONS)
            context.add_init_script(f"localStorage.setItem('floodwatch.apiKey', '{keys.viewer}')")
            page = context.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))

            page.goto(url + "/")
            page.wait_for_selector("body[data-loaded=true]")
            page.wait_for_selector("path.sensor")
            problems += page.evaluate("window.__violations")

            page.goto(url + "/docs")
            page.wait_for_selector(".swagger-ui .info .title")
            assert "Floodwatch API" in page.inner_text(".swagger-ui .info .title")
            page.wait_for_selector(".opblock-summary-path")
            problems += page.evaluate("window.__violations")

            page.goto(url + "/redoc")
            page.wait_for_selector("redoc h1")
            assert "Floodwatch API" in page.inner_text("redoc h1")
            page.wait_for_selector("redoc [role=search] input, redoc input")
            problems += page.evaluate("window.__violations")
        finally:
            browser.close()
    # ReDoc's "powered by" badge is a hard-coded image on its CDN: blocking it is the policy
    # working (the docs are served offline); nothing else may be refused.
    badge = "https://cdn.redoc.ly/redoc/logo-mini.svg"
    assert [p for p in problems if badge not in p] == [], problems
