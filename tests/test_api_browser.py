"""The IOC page in headless Chromium (Debian's `chromium`, driven by Playwright): it loads
with no console errors, shows every sensor, recolours a marker when the alert engine raises
(never for one reading alone), and acknowledging a street updates the list. Saves
tests/artefacts/ioc.png and ioc-phone.png. The whole flood is tests/test_ioc_page.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.app import create_app
from api.config import ApiOptions
from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service
from floodwatch.registry import SHIPPED_REGISTRY, load_registry
from tests.conftest import ROOT, IngestProcess
from tests.test_api_support import (
    api_settings,
    bearer,
    live_server,
    publish,
    publisher,
    write_keys,
    write_readings,
)

CHROMIUM = Path("/usr/bin/chromium")
ARTEFACTS = ROOT / "tests" / "artefacts"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The page's level colours (api/static/app.css): level 3, impassable.
IMPASSABLE = "#d7263d"
QH = load_registry(SHIPPED_REGISTRY).sensors["qh-02"].street

pytestmark = [
    pytest.mark.services,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)",
    ),
]


@pytest.fixture
def page_url(
    broker: Service,
    influxd: Service,
    influx: InfluxClient,
    unique: str,
    tmp_path: Path,
    ingest_env: dict[str, str],
) -> Iterator[tuple[str, str, str]]:
    """A live API over some stored readings, with ingest (and its alert engine) running;
    yields the API's URL, an operator key and the topic root."""
    now = time.time_ns()
    depths = {"qh-01": 4.0, "qh-03": 14.0, "nvh-02": 22.0, "d12-04": 55.0, "phu-an": 146.0}
    for sensor, depth in depths.items():
        write_readings(
            influx, sensor, [(now - (6 - n) * 600 * 10**9, depth * n / 6) for n in range(7)]
        )
    keys = write_keys(tmp_path / "keys")
    app = create_app(api_settings(broker, influxd, unique), ApiOptions(api_keys=keys.path))
    ingest = IngestProcess(ingest_env, tmp_path)
    ingest.start()
    try:
        with live_server(app) as url:
            yield url, keys.operator, unique
    finally:
        ingest.stop()


def test_ioc_page_live_map_and_acknowledgement(
    page_url: tuple[str, str, str], broker: Service
) -> None:
    """No console errors; all sensors shown; one reading over 30 cm changes no colour, the
    engine's alert after the second does; an ack through the page's dialog moves the street's
    alert to acknowledged."""
    from playwright.sync_api import sync_playwright

    url, key, root = page_url
    sensors = load_registry(SHIPPED_REGISTRY).sensors
    errors: list[str] = []
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright, publisher(broker) as pub:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            # Playwright polls wait_for_function by eval, which the page's CSP forbids; the CSP
            # itself is tested in test_api_csp_browser.py and test_ioc_page.py.
            page = browser.new_page(viewport={"width": 1600, "height": 900}, bypass_csp=True)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            page.fill("#key-input", key)
            page.click("#key-form button[type=submit]")
            page.wait_for_selector("body[data-loaded=true]")
            page.wait_for_selector("#status[data-state=live]")
            markers = page.locator("path.sensor")
            assert markers.count() == len(sensors)
            shown = set(
                page.eval_on_selector_all("path.sensor", "els => els.map(e => e.dataset.sensor)")
            )
            assert shown == set(sensors)
            assert page.locator("path.street").count() == 3

            marker = "path.sensor-qh-02"
            assert page.get_attribute(marker, "fill") != IMPASSABLE
            publish(pub, f"{root}/v1/sensors/qh-02/reading", {"level_cm": 35.0, "battery_v": 3.6})
            page.wait_for_function(
                "[...document.querySelectorAll('.map-label')].some(e => "
                f"e.dataset.street === '{QH}' && e.textContent.includes(' 35 cm'))"
            )
            # One reading is no flood (one truth): the colour waits for the engine.
            assert page.get_attribute(marker, "fill") != IMPASSABLE
            # A second reading over 30 cm: the engine in ingest raises `impassable` (debounce).
            publish(pub, f"{root}/v1/sensors/qh-02/reading", {"level_cm": 36.0})
            page.wait_for_function(
                f"document.querySelector('{marker}').getAttribute('fill') === '{IMPASSABLE}'",
                timeout=5000,
            )
            assert page.get_attribute(marker, "data-level") == "3"
            item = page.locator(f'li.flood-row[data-street="{QH}"]')
            item.wait_for()
            assert item.get_attribute("data-state") == "active_unack"
            alert_id = page.evaluate(
                "fetch('/v1/streets', {headers: {Authorization: 'Bearer ' + "
                "localStorage.getItem('floodwatch.apiKey')}}).then(r => r.json()).then(c => "
                f"c.features.find(f => f.id === '{QH}').properties.alerts[0])"
            )
            page.click("#tide")  # nothing to do: only proves the page stays responsive
            item.locator("button.ack").click()
            page.fill("#ack-note", "crew dispatched")
            page.click("#ack-confirm")
            page.wait_for_selector(f'li.flood-row[data-street="{QH}"][data-state="active_ack"]')
            assert "otto" in item.inner_text() and "crew dispatched" in item.inner_text()
            # A sensor with stored readings; Leaflet handles the click on
            # the marker's path, which a neighbour may overlap.
            page.locator("path.sensor-nvh-02").dispatch_event("click")
            page.wait_for_selector("#chart svg polyline")
            page.mouse.move(5, 890)  # away from the markers, so no hover tooltip covers them
            page.screenshot(path=str(ARTEFACTS / "ioc.png"))

            phone = browser.new_page(
                viewport={"width": 390, "height": 844}, is_mobile=True, bypass_csp=True
            )
            phone.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            phone.add_init_script(f"localStorage.setItem('floodwatch.apiKey', '{key}')")
            phone.goto(url + "/")
            phone.wait_for_selector("body[data-loaded=true]")
            phone.screenshot(path=str(ARTEFACTS / "ioc-phone.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    import httpx

    acked = httpx.get(f"{url}/v1/alerts/{alert_id}", headers=bearer(key)).json()
    assert acked["state"] == "active_ack" and acked["acked_by"] == "otto"
