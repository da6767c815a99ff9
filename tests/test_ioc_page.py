"""The IOC page through a whole flood, in headless Chromium (Debian's), over the real broker,
ingest (with its alert engine) and API (issue 10 sections 1-5).

Four pages watch at once: the wall screen (1920x1080) in Vietnamese and in English (operator
key), and the phone (390x844) in Vietnamese (viewer key) and English (operator key). A flood
is driven through MQTT, one reading per sensor per simulated minute; at every step each
page's street colours are compared with the engine's own verdict, read from its retained
`alerts/+` topics (a mismatch is allowed only within a second of the engine changing). Along
the way: one spike paints nothing, the viewer has no Acknowledge control, one action
acknowledges a street on every open page, the live feed runs behind the key dialog, and no
catalogue key is missing. Screenshots at start, peak, after acknowledging and after
draining are saved under tests/artefacts/ (ioc-<phase>-<wall|phone>-<vi|en>.png).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from api.app import create_app
from api.config import ApiOptions
from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service
from floodwatch.mqtt import Delivery, MqttConnection
from floodwatch.registry import SHIPPED_REGISTRY, load_registry
from tests.conftest import ROOT, IngestProcess, admin_endpoint, wait_until
from tests.test_api_support import (
    Keys,
    api_settings,
    bearer,
    live_server,
    publisher,
    write_keys,
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
REGISTRY = load_registry(SHIPPED_REGISTRY)
STREETS = [s.name for s in REGISTRY.streets]
# Street names as the registry spells them (with or without diacritics).
QH, D12 = REGISTRY.sensors["qh-02"].street, REGISTRY.sensors["d12-01"].street
# The page's level colours (api/static/app.css), level 0 to 4.
COLOURS = ["#2e9d4f", "#f2c230", "#f07d1a", "#d7263d", "#8e2bbf"]
PROPAGATION_S = 1.0
MINUTE_MS = 60_000

pytestmark = [
    pytest.mark.services,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)",
    ),
]

# Depth (cm) per simulated minute: Quoc Huong floods to closure, Duong 12 to hazard, Nguyen
# Van Huong to flooded; then all drain and stay low for the engine's 10-minute hold.
PEAK_STEP = 9
PROFILE: dict[str, Sequence[float]] = {
    "qh-02": [2, 3, 12, 14, 22, 26, 34, 41, 52, 56, 40, 22, 9, 4] + [3] * 13,
    "qh-04": [1, 2, 6, 11, 13, 21, 24, 31, 33, 35, 22, 11, 5, 3] + [2] * 13,
    "d12-01": [1, 2, 5, 8, 12, 14, 21, 23, 24, 22, 13, 6, 3, 2] + [2] * 13,
    "nvh-03": [0, 1, 3, 5, 8, 11, 13, 14, 12, 11, 6, 3, 2, 1] + [1] * 13,
    "nvh-01": [0, 1, 2, 3, 4, 5, 6, 6, 6, 5, 4, 3, 2, 1] + [1] * 13,
    "nvh-05": [0, 0, 1, 1, 2, 2, 3, 3, 3, 2, 2, 1, 1, 0] + [0] * 13,
}
STEPS = len(PROFILE["qh-02"])
# The spike: one 41.8 cm reading on d12-03 (a car under the sensor), back to 1 cm after.
SPIKE = ("d12-03", 1, 41.8)
ACK_STEP = PEAK_STEP + 1  # the water has stopped rising on Quoc Huong
KEY_DIALOG_STEP = 4


def water(sensor_id: str, step: int) -> float:
    if sensor_id in PROFILE:
        return PROFILE[sensor_id][step]
    if (sensor_id, step) == SPIKE[:2]:
        return SPIKE[2]
    return 1.0


def payload(sensor_id: str, step: int, ts_ms: int) -> dict[str, Any]:
    sensor = REGISTRY.sensors[sensor_id]
    doc: dict[str, Any] = {"ts": ts_ms, "battery_v": 3.2 if sensor_id == "nvh-05" else 3.8}
    if sensor.kind == "tide":
        doc["level_cm"] = [120, 128, 136, 142, 146, 149, 151, 152, 151, 148, 144, 140, 136][
            min(step, 12)
        ]
    elif sensor.sends == "distance_mm":
        assert sensor.mount_height_mm is not None
        doc["distance_mm"] = sensor.mount_height_mm - water(sensor_id, step) * 10
    else:
        doc["level_cm"] = water(sensor_id, step)
    return doc


@dataclass
class EngineWatch:
    """The engine's verdict per street, from its retained `alerts/{sensor}` topics, with
    when each street's level last changed."""

    levels: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREETS, 0))
    history: dict[str, list[tuple[float, int]]] = field(
        default_factory=lambda: {s: [(0.0, 0)] for s in STREETS}
    )
    sensor_level: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_delivery(self, delivery: Delivery) -> None:
        sensor_id = delivery.topic.rsplit("/", 1)[1]
        sensor = REGISTRY.sensors.get(sensor_id)
        if sensor is None or sensor.kind != "street":
            return
        level = 0
        if delivery.payload.strip():
            doc = orjson.loads(delivery.payload)
            for alert in doc.get("alerts", []):
                if alert.get("kind") == "flood" and alert.get("state", "").startswith("active"):
                    level = int(alert.get("level", 0))
        with self.lock:
            self.sensor_level[sensor_id] = level
            street = max(
                (
                    v
                    for k, v in self.sensor_level.items()
                    if REGISTRY.sensors[k].street == sensor.street
                ),
                default=0,
            )
            if street != self.levels[sensor.street]:
                self.levels[sensor.street] = street
                self.history[sensor.street].append((time.monotonic(), street))

    def acceptable(self, street: str, now: float) -> set[int]:
        """Levels the engine held for this street at some moment in the last second."""
        with self.lock:
            changes = self.history[street]
            ok = {level for at, level in changes if at >= now - PROPAGATION_S}
            before = [level for at, level in changes if at < now - PROPAGATION_S]
            if before:
                ok.add(before[-1])
            return ok


@dataclass
class Pipeline:
    url: str
    keys: Keys
    root: str


@pytest.fixture
def pipeline(
    broker: Service,
    influxd: Service,
    influx: InfluxClient,
    unique: str,
    tmp_path: Path,
    ingest_env: dict[str, str],
) -> Iterator[Pipeline]:
    keys = write_keys(tmp_path / "keys")
    app = create_app(
        api_settings(broker, influxd, unique), ApiOptions(api_keys=keys.path, heartbeat_s=5)
    )
    ingest = IngestProcess(ingest_env, tmp_path)
    ingest.start()
    try:
        with live_server(app) as url:
            yield Pipeline(url, keys, unique)
    finally:
        ingest.stop()


def page_levels(page: Any) -> dict[str, tuple[str, str]]:
    """Each street's (data-level, stroke colour) as the page draws it."""
    pairs = page.eval_on_selector_all(
        "path.street",
        "els => els.map(e => [e.dataset.street, e.dataset.level, e.getAttribute('stroke')])",
    )
    return {street: (level, stroke) for street, level, stroke in pairs}


def check_colours(pages: dict[str, Any], engine: EngineWatch) -> None:
    for name, page in pages.items():
        drawn = page_levels(page)
        now = time.monotonic()
        for street in STREETS:
            level_text, stroke = drawn[street]
            level = int(level_text)
            assert stroke == COLOURS[level], f"{name}: {street} drawn {stroke} for level {level}"
            allowed = engine.acceptable(street, now)
            assert level in allowed, (
                f"{name}: {street} shows level {level}, the engine says {allowed} "
                f"(history {engine.history[street]})"
            )


def shoot(pages: dict[str, Any], phase: str) -> None:
    for name, page in pages.items():
        page.mouse.move(2, 2)  # no hover tooltip over the map
        page.screenshot(path=str(ARTEFACTS / f"ioc-{phase}-{name}.png"))


def wait_streets_match(pages: dict[str, Any], engine: EngineWatch, timeout_ms: int = 5000) -> None:
    with engine.lock:
        want = {s: str(v) for s, v in engine.levels.items()}
    for page in pages.values():
        page.wait_for_function(
            "want => [...document.querySelectorAll('path.street')]"
            ".every(e => e.dataset.level === want[e.dataset.street])",
            arg=want,
            timeout=timeout_ms,
        )


def test_ioc_page_through_a_flood(pipeline: Pipeline, broker: Service) -> None:
    """One truth on four pages through a flood; spike, viewer, street acknowledgement, key
    dialog and both languages, with screenshots."""
    from playwright.sync_api import sync_playwright

    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    engine = EngineWatch()
    watcher = MqttConnection(
        admin_endpoint(broker),
        subscriptions=[(f"{pipeline.root}/v1/alerts/+", 1)],
        on_delivery=engine.on_delivery,
    )
    watcher.start()
    errors: list[str] = []
    base_ms = int(time.time() * 1000) - (STEPS + 2) * MINUTE_MS
    try:
        with sync_playwright() as playwright, publisher(broker) as pub:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
            try:
                pages = {
                    "wall-vi": open_page(browser, pipeline, "operator", "vi", (1920, 1080), errors),
                    "wall-en": open_page(browser, pipeline, "operator", "en", (1920, 1080), errors),
                    "phone-vi": open_page(browser, pipeline, "viewer", "vi", (390, 844), errors),
                    "phone-en": open_page(browser, pipeline, "operator", "en", (390, 844), errors),
                }
                for name, page in pages.items():
                    lang = name.rsplit("-", 1)[1]
                    assert page.get_attribute("html", "lang") == lang
                run_flood(pages, pipeline, pub, engine, base_ms)
                for name, page in pages.items():
                    missing = page.evaluate("[...window.floodwatchMissingKeys]")
                    assert missing == [], f"{name}: missing catalogue keys {missing}"
            finally:
                browser.close()
    finally:
        watcher.stop()
    assert errors == []


def open_page(
    browser: Any,
    pipeline: Pipeline,
    role: str,
    lang: str,
    size: tuple[int, int],
    errors: list[str],
) -> Any:
    """A page in its own browser context; English is chosen with the toggle and must be
    remembered across a reload."""
    # bypass_csp: Playwright polls wait_for_function by eval, which the page's CSP forbids;
    # the CSP itself is checked by test_a_dropped_feed_says_how_old_the_data_is.
    context = browser.new_context(
        viewport={"width": size[0], "height": size[1]}, is_mobile=size[0] < 600, bypass_csp=True
    )
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    key = pipeline.keys.operator if role == "operator" else pipeline.keys.viewer
    page.goto(pipeline.url + "/")
    page.wait_for_selector("#key-dialog[open]")
    page.fill("#key-input", key)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("body[data-loaded=true]")
    page.wait_for_selector("#status[data-state=live]")
    assert page.get_attribute("#who", "data-role") == role
    if lang == "en":
        assert page.get_attribute("html", "lang") == "vi"  # Vietnamese first
        page.click("#lang-button")
        page.wait_for_selector("html[lang=en]")
        page.reload()
        page.wait_for_selector("body[data-loaded=true]")
        page.wait_for_selector("#status[data-state=live]")
    return page


def run_flood(
    pages: dict[str, Any],
    pipeline: Pipeline,
    pub: MqttConnection,
    engine: EngineWatch,
    base_ms: int,
) -> None:
    wall, other_wall, viewer = pages["wall-vi"], pages["wall-en"], pages["phone-vi"]
    for step in range(STEPS):
        ts = base_ms + step * MINUTE_MS
        if step == KEY_DIALOG_STEP:
            other_wall.click("#key-button")
            other_wall.wait_for_selector("#key-dialog[open]")
        for sensor_id in REGISTRY.sensors:
            body = orjson.dumps(payload(sensor_id, step, ts))
            pub.publish(f"{pipeline.root}/v1/sensors/{sensor_id}/reading", body, qos=1)
        if step == KEY_DIALOG_STEP:
            # The live feed runs behind the key dialog: the chart and labels keep moving.
            depth = round(water("qh-02", step))
            other_wall.wait_for_function(
                "d => [...document.querySelectorAll('.map-label')].some(e => "
                "e.dataset.street === d[0] && e.textContent.includes(' ' + d[1] + ' cm'))",
                arg=[QH, depth],
                timeout=5000,
            )
            assert other_wall.is_visible("#key-dialog[open]")
            other_wall.click("#key-close")
        if step == 0:
            wait_streets_match(pages, engine)
            wait_labels(pages, QH, water("qh-02", 0))
            shoot(pages, "start")
        # Pace the street (input, not a wait for a result): a simulated minute each 0.4 s,
        # sampling every page's colours meanwhile.
        for _ in range(2):
            wall.wait_for_timeout(200)
            check_colours(pages, engine)
        if step == SPIKE[1] + 1:
            # The spike came and went: Duong 12 never left normal.
            hist = engine.history[D12]
            assert [level for _, level in hist] == [0], hist
        if step == PEAK_STEP:
            wait_engine(engine, QH, 4)
            wait_streets_match(pages, engine)
            wall.wait_for_selector(f'li.flood-row[data-street="{QH}"] button.ack')
            # A viewer is shown the same rows, never an Acknowledge control.
            viewer.wait_for_selector(f'li.flood-row[data-street="{QH}"]')
            assert viewer.locator("button.ack").count() == 0
            wait_labels(pages, QH, water("qh-02", step))
            for name in ("wall-vi", "wall-en"):
                assert_wall_fits(pages[name])
            # The chart follows the worst street's sensor, its points appended from the stream.
            wall.wait_for_function(
                "Number(document.querySelector('#chart').dataset.points) >= 8", timeout=5000
            )
            assert_sensor_rows_readable(pages)
            assert_gauge_in_metres(pages)
            shoot(pages, "peak")
        if step == ACK_STEP:
            acknowledge_street(wall, other_wall, pipeline)
            assert_reading_times(wall, pipeline, base_ms)
            # The river falls (152 -> 148 cm) under its held alarm level: said as a river, in m.
            for name, falling in (("wall-vi", "mực nước đang xuống"), ("wall-en", "river falling")):
                pages[name].wait_for_function(
                    "w => document.querySelector('#tide-time').textContent.includes(w)",
                    arg=falling,
                    timeout=5000,
                )
            assert_gauge_in_metres(pages)
            shoot(pages, "acked")
    for street in STREETS:
        wait_engine(engine, street, 0, timeout_s=20)
    wait_streets_match(pages, engine)
    check_colours(pages, engine)
    for page in pages.values():
        page.wait_for_selector("#floods-empty:not([hidden])")
    shoot(pages, "drained")


def assert_wall_fits(page: Any) -> None:
    """At 1920x1080 the map, the alert list, the legend and the chart are all on screen, and
    the page itself does not scroll."""
    assert page.evaluate("document.documentElement.scrollHeight <= window.innerHeight")
    for selector in ("#map", ".alerts-card", "#legend", "#chart", "li.flood-row"):
        box = page.locator(selector).first.bounding_box()
        assert box is not None and box["height"] > 20, selector
        assert box["y"] >= 0 and box["y"] + box["height"] <= 1080, (selector, box)
        assert box["x"] >= 0 and box["x"] + box["width"] <= 1920, (selector, box)


def assert_sensor_rows_readable(pages: dict[str, Any]) -> None:
    """Every sensor alert row names its place in full: no "…", nothing cut off or wider than
    its row, on the wall and on the phone."""
    for name, page in pages.items():
        rows = page.eval_on_selector_all(
            ".other-row",
            "els => els.map(e => { const p = e.querySelector('.place'); return [e.dataset.alertId,"
            " p.textContent, p.scrollWidth <= p.clientWidth + 1,"
            " p.getBoundingClientRect().right <= e.getBoundingClientRect().right + 1,"
            " e.getBoundingClientRect().right <= window.innerWidth] })",
        )
        assert rows, f"{name}: no sensor alert rows at the peak"
        for alert_id, text, fits, inside, on_screen in rows:
            sensor = REGISTRY.sensors[alert_id.split(":", 1)[0]]
            assert text in (sensor.name, sensor.name_en), (name, alert_id, text)
            assert "…" not in text and fits and inside and on_screen, (name, alert_id, text)


def assert_gauge_in_metres(pages: dict[str, Any]) -> None:
    """The river gauge's card and map label give its stage in metres, never centimetres."""
    for name, page in pages.items():
        card = page.inner_text("#tide")
        label = page.eval_on_selector_all(
            ".gauge-label, .gauge-hint", "els => els.map(e => e.textContent).join(' | ')"
        )
        for text in (card, label):
            assert " m" in text and "cm" not in text, (name, text)
            assert "rút" not in text and "draining" not in text, (name, text)


def assert_reading_times(page: Any, pipeline: Pipeline, base_ms: int) -> None:
    """A street's "since" and escalation history are the engine's reading times (the flood
    was played from `base_ms`, half an hour ago), not when the API heard of them; the row
    shows the same minutes."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    streets = httpx.get(f"{pipeline.url}/v1/streets", headers=bearer(pipeline.keys.viewer))
    qh = next(f["properties"] for f in streets.json()["features"] if f["id"] == QH)
    played_until_ms = base_ms + STEPS * MINUTE_MS
    times = [qh["since"], *(h["at"] for h in qh["history"])]
    assert [h["level"] for h in qh["history"]] == [1, 2, 3, 4], qh["history"]
    for text in times:
        at_ms = datetime.fromisoformat(text).timestamp() * 1000
        assert base_ms <= at_ms <= base_ms + (PEAK_STEP + 1) * MINUTE_MS < played_until_ms, qh
    assert qh["since"] == qh["history"][-1]["at"]
    zone = ZoneInfo("Asia/Ho_Chi_Minh")
    row = page.inner_text(f'li.flood-row[data-street="{QH}"]')
    for text in times:
        hhmm = datetime.fromisoformat(text).astimezone(zone).strftime("%H:%M")
        assert hhmm in row, (hhmm, row)


def wait_engine(engine: EngineWatch, street: str, level: int, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with engine.lock:
            if engine.levels[street] == level:
                return
        time.sleep(0.05)
    raise AssertionError(f"the engine never put {street} at level {level}: {engine.history}")


def wait_labels(pages: dict[str, Any], street: str, depth: float) -> None:
    for page in pages.values():
        page.wait_for_function(
            "([s, d]) => [...document.querySelectorAll('.map-label')].some(e => "
            "e.dataset.street === s && e.textContent.includes(' ' + d + ' cm'))",
            arg=[street, round(depth)],
            timeout=5000,
        )


def acknowledge_street(wall: Any, other_wall: Any, pipeline: Pipeline) -> None:
    """One action on one page acknowledges every open flood alert of the street, and every
    open page shows it."""
    row = f'li.flood-row[data-street="{QH}"]'
    before = httpx.get(f"{pipeline.url}/v1/streets", headers=bearer(pipeline.keys.viewer)).json()
    qh = next(f["properties"] for f in before["features"] if f["id"] == QH)
    assert qh["unacked"] >= 2, qh  # qh-02 and qh-04 both flood
    wall.click(f"{row} button.ack")
    wall.wait_for_selector("#ack-dialog[open]")
    wall.fill("#ack-note", "đã cử đội ứng cứu")
    wall.click("#ack-confirm")
    wall.wait_for_selector("#ack-dialog:not([open])", state="attached", timeout=15000)
    for page in (wall, other_wall):
        page.wait_for_selector(f'{row}[data-state="active_ack"]', timeout=5000)
        assert "đã cử đội ứng cứu" in page.inner_text(row)
        assert page.locator(f"{row} button.ack").count() == 0
    after = httpx.get(f"{pipeline.url}/v1/streets", headers=bearer(pipeline.keys.viewer)).json()
    qh = next(f["properties"] for f in after["features"] if f["id"] == QH)
    assert qh["state"] == "active_ack" and qh["unacked"] == 0, qh


CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; frame-ancestors 'none'"
)


def with_csp(route: Any, request: Any) -> None:
    """Serve the page with a self-only Content-Security-Policy, as a hardened API would."""
    response = route.fetch()
    route.fulfill(response=response, headers={**response.headers, "content-security-policy": CSP})


def test_a_dropped_feed_says_how_old_the_data_is(
    broker: Service, influxd: Service, unique: str, tmp_path: Path
) -> None:
    """When the API goes away, the wall screen says plainly that its data is N s old. The page
    is served here under a self-only Content-Security-Policy, and breaks none of it."""
    from playwright.sync_api import sync_playwright

    keys = write_keys(tmp_path / "keys")
    app = create_app(api_settings(broker, influxd, unique), ApiOptions(api_keys=keys.path))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.add_init_script(f"localStorage.setItem('floodwatch.apiKey', '{keys.viewer}')")
            with live_server(app) as url:
                page.route(url + "/", with_csp)
                page.goto(url + "/")
                page.wait_for_selector("#status[data-state=live]")
                page.wait_for_selector("body[data-loaded=true]")
                assert page.is_hidden("#feed-banner")
                assert errors == [], errors  # a CSP violation is a console error
            # The server is gone: the stream ends and every reconnection fails.
            page.wait_for_selector("#feed-banner:not([hidden])", timeout=10000)
            page.wait_for_function(
                "/dữ liệu đã cũ [0-9]+ giây/.test(document.querySelector('#feed-banner')"
                ".textContent)"
            )
            assert page.get_attribute("#status", "data-state") == "retrying"
            page.screenshot(path=str(ARTEFACTS / "ioc-feed-lost-wall-vi.png"))
        finally:
            browser.close()


def answering(status: int) -> Any:
    """A route handler answering every request with this status and a JSON detail."""

    def handler(route: Any, request: Any) -> None:
        body = orjson.dumps({"detail": "refused"}).decode()
        route.fulfill(status=status, body=body, content_type="application/json")

    return handler


def test_a_failed_acknowledgement_says_exactly_why(
    broker: Service, influxd: Service, unique: str, tmp_path: Path
) -> None:
    """The acknowledge dialog names the cause: network, already acknowledged, viewer key, and
    a key revoked meanwhile (wrong key); the note stays for the next try."""
    from playwright.sync_api import sync_playwright

    keys = write_keys(tmp_path / "keys")
    app = create_app(api_settings(broker, influxd, unique), ApiOptions(api_keys=keys.path))
    alert = {
        "sensor": "qh-02",
        "level": 2,
        "alerts": [
            {"alert_id": "qh-02:flood:1", "kind": "flood", "level": 2, "state": "active_unack"}
        ],
    }
    with sync_playwright() as playwright, publisher(broker) as pub, live_server(app) as url:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1920, "height": 1080}, bypass_csp=True)
            page.add_init_script(f"localStorage.setItem('floodwatch.apiKey', '{keys.operator}')")
            page.goto(url + "/")
            page.wait_for_selector("#status[data-state=live]")
            topic = f"{unique}/v1/alerts/qh-02"
            pub.publish_and_wait(topic, orjson.dumps(alert), qos=1, retain=True)
            button = f'li.flood-row[data-street="{QH}"] button.ack'
            page.click(button)
            page.fill("#ack-note", "nước lên nhanh")
            expected: dict[str | int, str] = {
                "abort": "Lỗi mạng",
                409: "Đã được xác nhận trước đó",
                403: "Khóa này chỉ để xem",
            }
            for answer, words in expected.items():
                page.unroute("**/acknowledge")
                if answer == "abort":
                    page.route("**/acknowledge", lambda route: route.abort())
                else:
                    assert isinstance(answer, int)
                    page.route("**/acknowledge", answering(answer))
                page.click("#ack-confirm")
                page.wait_for_function(
                    "w => document.querySelector('#ack-error').textContent.includes(w)",
                    arg=words,
                )
            page.unroute("**/acknowledge")
            # The operator key is revoked meanwhile: the real API refuses it.
            (tmp_path / "keys").write_text(
                "\n".join(
                    line
                    for line in (tmp_path / "keys").read_text().splitlines()
                    if not line.startswith("operator:")
                )
                + "\n"
            )
            # The API re-reads its keys file within a second; then the page's next try fails.
            wait_until(
                lambda: httpx.get(f"{url}/v1/me", headers=bearer(keys.operator)).status_code == 401,
                10,
                "the API to drop the revoked key",
            )
            page.click("#ack-confirm")
            page.wait_for_function(
                "document.querySelector('#ack-error').textContent.includes('Khóa API không đúng')"
            )
            assert page.input_value("#ack-note") == "nước lên nhanh"
            page.screenshot(path=str(ARTEFACTS / "ioc-ack-refused-wall-vi.png"))
            pub.publish_and_wait(topic, b"", qos=1, retain=True)
        finally:
            browser.close()


# ---- issue 13: notification history and maintenance on the page ------------------------------

# A phone number in a recipient's name: the page shows it in part only.
OFFICER = "Anh Tuấn, trực phường (0903 123 456)"
MASKED_OFFICER = "Anh Tuấn, trực phường (090•••••56)"
HISTORY_ROUTING = """
[channels.gis]
type = "webhook"
url = "{url}"
secret = "webhook-secret-for-tests"

[channels.duty]
type = "webhook"
url = "{url}"
secret = "webhook-secret-for-tests"

[recipients.ioc_gis]
name = "Nền tảng GIS"
channels = ["gis"]

[recipients.ward_officer]
name = "{officer}"
channels = ["duty"]

[recipients.ioc_chief]
name = "Trưởng ca IOC"
channels = ["duty"]

[[rules]]
kinds = ["flood"]
min_level = 1
notify = ["ioc_gis", "ward_officer"]
escalate = [{{ after_min = 30, notify = ["ioc_chief"] }}]

[[rules]]
kinds = ["battery_low"]
notify = ["ward_officer"]
"""
MAINT_GREY = "#6f7c88"  # --maint in api/static/app.css


def test_notification_history_and_maintenance_from_the_page(
    pipeline: Pipeline, broker: Service, tmp_path: Path
) -> None:
    """With a real notifier delivering to a real webhook receiver: each alert row says who was
    told and when, the history panel lists each notification and updates live (the
    acknowledgement's announcement appears while it is open); an operator puts a street and a
    sensor under maintenance from the page, every page (a second one too) draws them grey with
    why, who and until when and marks their alerts as notifying nobody; a refusal says why;
    ending it from the page brings the colours back; a viewer has no controls."""
    from playwright.sync_api import sync_playwright

    from tests.notify_servers import HttpReceiver
    from tests.test_notify_e2e import Notifier

    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    receiver = HttpReceiver().start()
    routing = HISTORY_ROUTING.format(url=receiver.url, officer=OFFICER)
    (tmp_path / "notify").mkdir()
    notifier = Notifier(broker, pipeline.root, routing, tmp_path / "notify")
    errors: list[str] = []
    try:
        notifier.start()
        with sync_playwright() as playwright, publisher(broker) as pub:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
            try:
                pages = {
                    "wall-vi": open_page(browser, pipeline, "operator", "vi", (1920, 1080), errors),
                    "wall-en": open_page(browser, pipeline, "operator", "en", (1920, 1080), errors),
                    "phone-vi": open_page(browser, pipeline, "viewer", "vi", (390, 844), errors),
                    "phone-en": open_page(browser, pipeline, "operator", "en", (390, 844), errors),
                }
                flood_quoc_huong(pub, pipeline)
                check_notification_history(pages, pipeline)
                check_maintenance(pages, pub, pipeline)
                for name, page in pages.items():
                    missing = page.evaluate("[...window.floodwatchMissingKeys]")
                    assert missing == [], f"{name}: missing catalogue keys {missing}"
            finally:
                browser.close()
    finally:
        if notifier.proc is not None and notifier.proc.poll() is None:
            notifier.kill(15)
        receiver.stop()
    # The one refusal asked for (ending a maintenance already ended) is the browser's only
    # complaint: a 404, which the page words as "not under maintenance any more".
    refused = [e for e in errors if "404 (Not Found)" in e]
    assert len(refused) == 1 and len(errors) == 1, errors


def flood_quoc_huong(pub: MqttConnection, pipeline: Pipeline) -> None:
    """qh-02 at 25 cm for three minutes (a confirmed hazard), nvh-05's battery low."""
    now_ms = int(time.time() * 1000)
    for step in range(3):
        ts = now_ms - (3 - step) * MINUTE_MS
        for sensor_id, doc in (
            ("qh-02", {"ts": ts, "level_cm": 25 + step, "battery_v": 3.8}),
            ("nvh-05", {"ts": ts, "level_cm": 0.0, "battery_v": 3.2}),
        ):
            pub.publish(f"{pipeline.root}/v1/sensors/{sensor_id}/reading", orjson.dumps(doc), qos=1)


def check_notification_history(pages: dict[str, Any], pipeline: Pipeline) -> None:
    row = f'li.flood-row[data-street="{QH}"]'
    told = {"vi": "Đã báo 2 người", "en": "Notified 2 people"}
    for name, page in pages.items():
        page.wait_for_function(
            "([row, w]) => (document.querySelector(row + ' .notify-text') || {}).textContent"
            "?.includes(w)",
            arg=[row, told[name.rsplit("-", 1)[1]]],
            timeout=20000,
        )
        # The sensor alert row (battery) has its own line: one officer told.
        page.wait_for_selector('li.other-row[data-kind="battery_low"] .notify-text', timeout=10000)
    wall = pages["wall-vi"]
    wall.click(f"{row} button.history")
    wall.wait_for_selector("#history-dialog[open] li.history-item")
    panel = wall.inner_text("#history-dialog")
    assert "Nền tảng GIS" in panel and MASKED_OFFICER in panel and OFFICER not in panel, panel
    assert "Webhook" in panel and "Đã gửi" in panel and "Phát cảnh báo" in panel, panel
    assert "nâng cấp 1 lúc" in panel and "ioc_chief" in panel, panel  # the next tier
    wall.screenshot(path=str(ARTEFACTS / "ioc-notify-history-waiting-wall-vi.png"))
    # Acknowledged on another screen: its announcement appears in the open panel, live.
    answer = httpx.post(
        f"{pipeline.url}/v1/streets/{QH}/acknowledge",
        headers=bearer(pipeline.keys.operator),
        json={"note": "đã cử đội ứng cứu"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    wall.wait_for_selector(
        '#history-dialog[open] li.history-item[data-message="acknowledged"]'
        '[data-status="delivered"]',
        timeout=15000,
    )
    assert "Đã xác nhận: dừng nâng cấp." in wall.inner_text("#history-dialog")
    for page in pages.values():  # the rows behind the panel follow the acknowledgement too
        page.wait_for_selector(f'{row}[data-state="active_ack"]', timeout=5000)
    for name, page in pages.items():
        if name != "wall-vi":
            page.click(f"{row} button.history")
            page.wait_for_selector(
                '#history-dialog[open] li.history-item[data-message="acknowledged"]'
            )
        page.mouse.move(2, 2)
        page.screenshot(path=str(ARTEFACTS / f"ioc-notify-history-{name}.png"))
        page.click("#history-close")


def maintain(page: Any, opener: str, button: str, reason: str, preset: str = "8") -> None:
    """Select a row's sensor, press a maintenance button in its detail card, fill the dialog."""
    page.click(opener)
    page.click(f"#detail-maint button.{button}")
    page.wait_for_selector("#maint-dialog[open]")
    page.fill("#maint-reason", reason)
    if preset:
        page.check(f'input[name="maint-preset"][value="{preset}"]')


def check_maintenance(pages: dict[str, Any], pub: MqttConnection, pipeline: Pipeline) -> None:
    wall, other, viewer, phone = (pages[n] for n in ("wall-vi", "wall-en", "phone-vi", "phone-en"))
    street_row = f'li.flood-row[data-street="{QH}"]'
    street_path = f'path.street[data-street="{QH}"]'
    battery_row = 'li.other-row[data-kind="battery_low"]'
    # A viewer sees the detail card, never a maintenance control.
    viewer.click(f"{street_row} .what")
    viewer.wait_for_selector("#detail-title")
    assert viewer.locator("#detail-maint button").count() == 0
    # The reason is required: said, and nothing sent.
    maintain(wall, f"{street_row} .what", "maint-start-street", "")
    wall.click("#maint-confirm")
    assert wall.inner_text("#maint-error") == "Hãy ghi lý do."
    wall.fill("#maint-reason", "thay cảm biến sau ngập")
    wall.screenshot(path=str(ARTEFACTS / "ioc-maintenance-dialog-wall-vi.png"))
    wall.click("#maint-confirm")
    wall.wait_for_selector("#maint-dialog:not([open])", state="attached", timeout=10000)
    # From the phone (operator, English): one sensor, with a custom end time.
    maintain(phone, f"{battery_row} .what", "maint-start-sensor", "battery swap", "custom")
    phone.wait_for_selector("#maint-custom:not([hidden])")
    phone.screenshot(path=str(ARTEFACTS / "ioc-maintenance-dialog-phone-en.png"))
    phone.click("#maint-confirm")
    phone.wait_for_selector("#maint-dialog:not([open])", state="attached", timeout=10000)
    # The water rises on the street under maintenance: judged (impassable), told to nobody.
    now_ms = int(time.time() * 1000)
    for ago_ms in (20_000, 10_000):
        doc = {"ts": now_ms - ago_ms, "level_cm": 36.0, "battery_v": 3.8}
        pub.publish(f"{pipeline.root}/v1/sensors/qh-02/reading", orjson.dumps(doc), qos=1)
    unsent = {"vi": "2 không gửi (bảo trì)", "en": "2 not sent (maintenance)"}
    for name, page in pages.items():
        page.wait_for_function(
            "([row, w]) => (document.querySelector(row + ' .notify-text') || {}).textContent"
            "?.includes(w)",
            arg=[street_row, unsent[name.rsplit("-", 1)[1]]],
            timeout=15000,
        )
    flags = {
        "vi": "Đang bảo trì — không gửi thông báo",
        "en": "Under maintenance — no notifications",
    }
    for name, page in pages.items():
        lang = name.rsplit("-", 1)[1]
        page.wait_for_selector(f'{street_path}[data-maintenance="true"]', timeout=5000)
        assert page.get_attribute(street_path, "stroke") == MAINT_GREY
        page.wait_for_selector(f'{street_row}[data-maintenance="true"]')
        text = page.inner_text(street_row)
        assert flags[lang].lower() in text.lower() and "thay cảm biến sau ngập" in text, text
        assert "otto" in text, text  # who: the operator key's name
        page.wait_for_selector('path.sensor-qh-02[data-maintenance="true"]')
        page.wait_for_selector(f'{battery_row}[data-maintenance="true"]', timeout=5000)
        assert "battery swap" in page.inner_text(battery_row)
        page.mouse.move(2, 2)
        page.screenshot(path=str(ARTEFACTS / f"ioc-maintenance-{name}.png"))
    assert viewer.locator("#detail-maint button").count() == 0
    assert viewer.locator("button.maint-end").count() == 0
    # The second wall opens "end" too late: the first ends it, the second is told exactly why.
    other.click(f"{street_row} .what")
    other.click("#detail-maint button.maint-end")
    other.wait_for_selector("#maint-dialog[open]")
    other.fill("#maint-reason", "done")
    maintain(wall, f"{street_row} .what", "maint-end", "đã thay xong", preset="")
    wall.click("#maint-confirm")
    wall.wait_for_selector("#maint-dialog:not([open])", state="attached", timeout=10000)
    other.click("#maint-confirm")
    other.wait_for_function(
        "document.querySelector('#maint-error').textContent.includes('Not under maintenance')"
    )
    other.click("#maint-cancel")
    maintain(phone, f"{battery_row} .what", "maint-end", "battery swapped", preset="")
    phone.click("#maint-confirm")
    phone.wait_for_selector("#maint-dialog:not([open])", state="attached", timeout=10000)
    for page in pages.values():
        page.wait_for_selector(f'{street_path}[data-maintenance="false"]', timeout=5000)
        page.wait_for_selector(f"{battery_row}:not([data-maintenance])", timeout=5000)
        level = int(page.get_attribute(street_path, "data-level") or "0")
        assert page.get_attribute(street_path, "stroke") == COLOURS[level]
        assert page.locator(f"{street_row} .maint-line").count() == 0
