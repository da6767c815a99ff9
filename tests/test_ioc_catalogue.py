"""The IOC page's message catalogues (issue 10 section 5), pure: Vietnamese and English hold
the same keys, every key the page's code and HTML use exists, the shared vocabulary has its
agreed words, and the page's files hold no user-facing words of their own."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import orjson
import pytest

from floodwatch.contract import KINDS, LIFECYCLES, STREET_LEVEL_NAMES, TIDE_LEVEL_NAMES
from notify.model import MESSAGE_KINDS
from notify.routing import CHANNEL_TYPES

STATIC = Path(__file__).resolve().parent.parent / "api" / "static"
LANGS = ("vi", "en")
CATALOGUES: dict[str, dict[str, str]] = {
    lang: orjson.loads((STATIC / "i18n" / f"{lang}.json").read_bytes()) for lang in LANGS
}
APP_JS = (STATIC / "app.js").read_text(encoding="utf-8")
INDEX = (STATIC / "index.html").read_text(encoding="utf-8")
# Keys the code builds from data (level names, kinds, states, verdicts, fault details).
DYNAMIC = (
    [f"level.street.{n}" for n in STREET_LEVEL_NAMES]
    + [f"level.tide.{n}" for n in TIDE_LEVEL_NAMES]
    + [f"kind.{k}" for k in (*KINDS, "unknown")]
    + [f"state.{s}" for s in LIFECYCLES]
    + [f"row.detail.{d}" for d in ("out_of_range", "obstructed", "stuck")]
    # The notifier's record: what each notification announced, its channel, its status.
    + [f"notify.message.{m}" for m in MESSAGE_KINDS]
    + [f"notify.channel.{c}" for c in CHANNEL_TYPES]
    + [f"notify.status.{s}" for s in ("delivered", "pending", "held", "dead", "suppressed")]
)
SHARED = {
    "vi": {
        "level.street.normal": "Bình thường",
        "level.street.flooded": "Ngập",
        "level.street.hazard": "Ngập nguy hiểm",
        "level.street.impassable": "Không thể đi qua",
        "level.street.closed": "Cấm lưu thông",
        "level.tide.normal": "Bình thường",
        "level.tide.alarm_1": "Báo động I",
        "level.tide.alarm_2": "Báo động II",
        "level.tide.alarm_3": "Báo động III",
    },
    "en": {
        "level.street.normal": "Normal",
        "level.street.flooded": "Flooded",
        "level.street.hazard": "Hazardous",
        "level.street.impassable": "Impassable",
        "level.street.closed": "Closed",
        "level.tide.normal": "Normal",
        "level.tide.alarm_1": "Alarm 1",
        "level.tide.alarm_2": "Alarm 2",
        "level.tide.alarm_3": "Alarm 3",
    },
}


FAMILIES = (
    "app|lang|key|status|banner|map|legend|tide|alerts|row|action|ack|error|verdict|detail|chart"
    "|notify|maint"
)


def used_keys() -> set[str]:
    """Every literal key in app.js (any string of a catalogue family, wherever it is passed:
    t(...), setNotice(...), a lookup table) and every data-i18n* key in index.html."""
    in_code = set(re.findall(rf"""["'`]((?:{FAMILIES})\.[a-z0-9_.]+)["'`]""", APP_JS))
    in_html = set(re.findall(r'data-i18n(?:-label)?="([a-z0-9_.]+)"', INDEX))
    return in_code | in_html


def test_both_catalogues_hold_the_same_keys() -> None:
    assert set(CATALOGUES["vi"]) == set(CATALOGUES["en"])
    for lang, catalogue in CATALOGUES.items():
        for key, text in catalogue.items():
            assert re.fullmatch(r"[a-z0-9_]+(\.[a-z0-9_]+)+", key), f"{lang}: flat dotted {key!r}"
            assert text.strip(), f"{lang}: {key} is empty"


def test_every_key_the_page_uses_exists() -> None:
    keys = used_keys()
    assert len(keys) > 60, "the key scan found too little; is app.js still using t()?"
    for lang, catalogue in CATALOGUES.items():
        missing = sorted((keys | set(DYNAMIC)) - set(catalogue))
        assert missing == [], f"{lang} lacks {missing}"


def test_placeholders_match_between_languages() -> None:
    """A {name} in one language is in the other: no value silently dropped in translation."""
    for key, text in CATALOGUES["vi"].items():
        ours = set(re.findall(r"\{(\w+)\}", text))
        theirs = set(re.findall(r"\{(\w+)\}", CATALOGUES["en"][key]))
        assert ours == theirs, f"{key}: vi {ours} en {theirs}"


@pytest.mark.parametrize("lang", LANGS)
def test_shared_vocabulary_has_the_agreed_words(lang: str) -> None:
    """The level names other parts (CAP, the report) share, word for word."""
    for key, text in SHARED[lang].items():
        assert CATALOGUES[lang][key] == text


def test_vietnamese_is_written_with_its_diacritics() -> None:
    vi = CATALOGUES["vi"]
    assert vi["alerts.floods"] == "Ngập theo tuyến đường"
    assert vi["kind.battery_low"] == "Pin yếu" and vi["action.ack"] == "Xác nhận"
    assert vi["app.subtitle"] == "Phường An Khánh · TP. Hồ Chí Minh"


class _Text(HTMLParser):
    """Collects text outside <script>, <style> and <title>."""

    def __init__(self) -> None:
        super().__init__()
        self.skip = 0
        self.words: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "title"):
            self.skip += 1
        for name, value in attrs:
            # No inline style (the API's Content-Security-Policy allows only its own files),
            # and no visible attribute text but the key placeholder.
            assert name != "style" and not name.startswith("on"), f"inline {name} on <{tag}>"
            if name in ("title", "alt", "aria-label"):
                raise AssertionError(f"<{tag} {name}={value!r}>: use data-i18n-label")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "title"):
            self.skip -= 1

    def handle_data(self, data: str) -> None:
        if not self.skip and data.strip():
            self.words.append(data.strip())


def test_index_html_holds_no_words_and_no_inline_style() -> None:
    parser = _Text()
    parser.feed(INDEX)
    assert parser.words == []
    # The only inline script is the JSON settings block, which a CSP does not execute.
    inline = re.findall(r"<script(?![^>]*\bsrc=)([^>]*)>", INDEX)
    assert inline == [' id="config" type="application/json"']


def test_app_js_shows_no_literal_words() -> None:
    """Strings set as text in app.js come from t(): no textContent = "words" anywhere."""
    assert not re.search(r"""textContent\s*=\s*["'`][^"'`]*[A-Za-z]{3}""", APP_JS)
    assert "prompt(" not in APP_JS and "alert(" not in APP_JS.replace("Alert(", "")


@pytest.mark.parametrize(
    ("lang", "falling"), [("vi", "mực nước đang xuống"), ("en", "river falling")]
)
def test_the_river_gauge_speaks_in_metres_of_a_river(lang: str, falling: str) -> None:
    """A river stage is shown in metres, and it falls: a street's "draining" and centimetres
    never appear in what the gauge's card, label or chart say."""
    catalogue = CATALOGUES[lang]
    tide_keys = [k for k in catalogue if k.startswith("verdict.tide_")]
    assert len(tide_keys) == 5
    tide_keys += ["tide.stage", "map.gauge", "map.offscreen", "detail.facts_stage"]
    for key in tide_keys:
        text = catalogue[key]
        assert "cm" not in text and "{depth}" not in text, (key, text)
        assert "rút" not in text and "drain" not in text, (key, text)
    # The card shows the stage just before: a falling river is said without repeating it.
    for key in ("verdict.tide_falling", "verdict.tide_falling_open"):
        assert catalogue[key].startswith(falling) and "{stage}" not in catalogue[key]
    for key in ("verdict.tide_unconfirmed", "verdict.tide_stale", "verdict.tide_fault"):
        assert "{stage} m" in catalogue[key]
    assert catalogue["chart.unit_m"] == "m"
    # The page words a gauge's verdict with these keys, never the street ones.
    body = APP_JS[APP_JS.index("function tideVerdictText") :]
    body = body[: body.index("\n  }\n")]
    assert "verdict.draining" not in body and "depth" not in body
