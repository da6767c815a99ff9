"""The flood episode report (`/v1/events/{id}/report`, HTML and CSV) on the real influxd: its
figures, timeline and charts in Vietnamese and English, and (slow) printed to PDF by headless
Chromium, read back with pdftotext; page 1 saved as tests/artefacts/report-{vi,en}.png."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from api.alerts import FloodEpisode
from api.app import create_app
from api.config import ApiOptions
from api.report import EpisodeReport, TimelineRow, report_csv
from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service
from floodwatch.registry import SHIPPED_REGISTRY, load_registry
from tests.conftest import ROOT
from tests.test_api_support import (
    Keys,
    TestClient,
    api_settings,
    bearer,
    live_server,
    write_keys,
    write_readings,
)

pytestmark = pytest.mark.services

MINUTE = 60 * 10**9
# 2026-11-26T11:00:00Z, 18:00 in the ward: the episode starts; peak at 19:00, ends 20:00.
START = 1_795_651_200 * 10**9 + 11 * 60 * MINUTE
EVENT = f"flood:{START}"
CHROMIUM = Path("/usr/bin/chromium")
ARTEFACTS = ROOT / "tests" / "artefacts"


def _depth(minute: int) -> float:
    """A triangle: 0 cm at -30 min, 31.5 cm at +60 min, 0 cm at +150 min."""
    if minute <= 60:
        return max(0.0, 31.5 * (minute + 30) / 90)
    return max(0.0, 31.5 * (150 - minute) / 90)


def _alert(change: str, minute: int, level: int, name: str, state: str, extra: str = "") -> str:
    at = START + minute * MINUTE
    return (
        f"alert_event,sensor=qh-02,kind=flood,change={change} "
        f'alert_id="qh-02:flood:{START}",seq={minute + 100}i,level={level}i,'
        f'level_name="{name}",state="{state}",at_ns={at}i,reading_time_ns={at}i,'
        f'depth_cm={_depth(minute)},episode_id="{EVENT}"{extra} {at}'
    )


@dataclass
class Report:
    client: TestClient
    keys: Keys

    def get(self, url: str) -> str:
        response = self.client.get(url, headers=bearer(self.keys.viewer))
        assert response.status_code == 200, response.text
        text: str = response.text
        return text


@pytest.fixture
def stored(influx: InfluxClient) -> None:
    """One episode on Quốc Hương: readings, its flood_episode row and the alert's changes."""
    for sensor, scale in (("qh-02", 1.0), ("qh-03", 0.6)):
        write_readings(
            influx,
            sensor,
            [(START + m * MINUTE, round(_depth(m) * scale, 1)) for m in range(-30, 151, 2)],
        )
    influx.write(
        [
            f'flood_episode episode_id="{EVENT}",end_ns={START + 120 * MINUTE}i,peak_cm=31.5,'
            f'peak_ns={START + 60 * MINUTE}i,peak_sensor="qh-02",max_level=3i,'
            'max_level_name="impassable",minutes_to_peak=60,minutes_to_drain=60,'
            'streets="[\\"Quốc Hương\\"]",sensors="[\\"qh-02\\",\\"qh-03\\"]" '
            f"{START}",
            _alert("raised", 0, 1, "flooded", "active_unack"),
            _alert("acknowledged", 10, 1, "flooded", "active_ack", ',who="otto",note="đã cử đội"'),
            _alert("escalated", 40, 3, "impassable", "active_unack"),
            _alert("cleared", 120, 0, "normal", "cleared_unack"),
        ]
    )


@pytest.fixture
def api(
    broker: Service, influxd: Service, stored: None, unique: str, tmp_path: Path
) -> Iterator[Report]:
    keys = write_keys(tmp_path / "keys")
    app = create_app(api_settings(broker, influxd, unique), ApiOptions(api_keys=keys.path))
    with TestClient(app) as client:
        yield Report(client, keys)


def test_report_in_vietnamese_by_default(api: Report) -> None:
    """Streets, peak depth and time, minutes to peak and drain, the timeline with the
    acknowledgement, and one SVG chart per sensor; no script, one stylesheet."""
    html = api.get(f"/v1/events/{EVENT}/report")
    assert '<html lang="vi">' in html and "Báo cáo đợt ngập" in html
    assert "Quốc Hương" in html and "31,5 cm" in html
    assert "26/11/2026 19:00" in html  # the peak, in the ward's time
    assert html.count("60 phút") == 2  # to peak and to drain
    assert "Không thể đi qua" in html  # the highest level, in words
    for change in ("Phát cảnh báo", "Đã xác nhận", "Tăng mức", "Hết cảnh báo"):
        assert change in html
    assert "otto" in html and "đã cử đội" in html
    assert html.count("<svg") == 2 and "<polyline" in html
    assert "<script" not in html and "style=" not in html
    assert '<link rel="stylesheet" href="/static/report.css">' in html
    css = api.client.get("/static/report.css")
    assert css.status_code == 200 and "@media print" in css.text


def test_report_in_english(api: Report) -> None:
    """lang=en: the same figures with English words and names."""
    html = api.get(f"/v1/events/{EVENT}/report?lang=en")
    assert '<html lang="en">' in html and "Flood episode report" in html
    assert "Quoc Huong" in html and "31.5 cm" in html and "2026-11-26 19:00" in html
    assert "Impassable" in html and "Acknowledged" in html and "60 min" in html


def test_report_csv_has_the_same_figures(api: Report) -> None:
    """report.csv (and format=csv): summary, timeline and series blocks."""
    text = api.get(f"/v1/events/{EVENT}/report.csv")
    assert api.get(f"/v1/events/{EVENT}/report?format=csv") == text
    summary, timeline, series = (list(csv.reader(io.StringIO(b))) for b in text.split("\n\n"))
    figures = dict(summary[1:])
    assert figures["peak_cm"] == "31.5" and figures["minutes_to_peak"] == "60"
    assert figures["peak_time"] == "2026-11-26T19:00:00.000+07:00"
    assert figures["end"] == "2026-11-26T20:00:00.000+07:00"
    assert figures["streets"] == "Quốc Hương"
    rows = [dict(zip(timeline[0], row, strict=True)) for row in timeline[1:]]
    assert [r["change"] for r in rows] == ["raised", "acknowledged", "escalated", "cleared"]
    assert rows[1]["who"] == "otto" and rows[1]["note"] == "đã cử đội"
    assert series[0] == ["time", "sensor", "level_cm"]
    peaks = {s: max(float(r[2]) for r in series[1:] if r[1] == s) for s in ("qh-02", "qh-03")}
    assert peaks == {"qh-02": 31.5, "qh-03": 18.9}
    english = api.get(f"/v1/events/{EVENT}/report.csv?lang=en")
    assert "Quoc Huong" in english


def test_unknown_event_is_a_404_sentence(api: Report) -> None:
    """An id that names no episode is 404 with a pointer to /v1/events."""
    response = api.client.get("/v1/events/flood:1/report", headers=bearer(api.keys.viewer))
    assert response.status_code == 404 and "GET /v1/events" in response.json()["detail"]


def test_report_csv_defuses_formulas_in_notes() -> None:
    """An operator's note that starts like a spreadsheet formula is kept as text."""
    episode = FloodEpisode(EVENT, START, None, 12.0, START, "qh-02", 1, "flooded", 0, None)
    row = TimelineRow(START, "qh-02", "flood", "acknowledged", 1, "flooded", 12.0, "otto", "=1+1")
    sensor = load_registry(SHIPPED_REGISTRY).sensors["qh-02"]
    built = EpisodeReport(episode, [sensor], [row], {}, START)
    assert ",'=1+1\n" in report_csv(built, "vi")


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="needs poppler-utils' pdftotext")
def test_report_prints_to_pdf_with_its_figures(
    broker: Service, influxd: Service, stored: None, unique: str, tmp_path: Path
) -> None:
    """Chromium prints the report (print stylesheet, no JavaScript) to a PDF whose text holds
    the episode's figures, in both languages, without console errors (CSP included)."""
    from playwright.sync_api import sync_playwright

    keys = write_keys(tmp_path / "keys")
    app = create_app(api_settings(broker, influxd, unique), ApiOptions(api_keys=keys.path))
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    expected = {
        "vi": ["Báo cáo đợt ngập", "Quốc Hương", "31,5 cm", "26/11/2026 19:00", "60 phút", "otto"],
        "en": ["Flood episode report", "Quoc Huong", "31.5 cm", "2026-11-26 19:00", "60 min"],
    }
    with live_server(app) as url, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            context = browser.new_context(
                extra_http_headers={"Authorization": f"Bearer {keys.viewer}"}
            )
            page = context.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            for lang, words in expected.items():
                response = page.goto(f"{url}/v1/events/{EVENT}/report?lang={lang}")
                assert response is not None and response.status == 200
                page.emulate_media(media="print")
                pdf = tmp_path / f"report-{lang}.pdf"
                page.pdf(path=str(pdf), format="A4", print_background=True)
                text = subprocess.run(
                    ["pdftotext", "-layout", str(pdf), "-"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                for word in words:
                    assert word in text, (lang, word)
                assert "CSV" not in text  # the screen-only links are not printed
                subprocess.run(
                    [
                        "pdftoppm",
                        "-png",
                        "-r",
                        "70",
                        "-f",
                        "1",
                        "-l",
                        "1",
                        "-singlefile",
                        str(pdf),
                        str(ARTEFACTS / f"report-{lang}"),
                    ],
                    check=True,
                )
            assert errors == []
        finally:
            browser.close()
