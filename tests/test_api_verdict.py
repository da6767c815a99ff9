"""One truth (issue 10 section 1), pure: a sensor's and a street's `level` is the engine's
verdict, the latest depth sits beside it, and where they differ the reason is named."""

from __future__ import annotations

from typing import Any

import pytest

from api.geo import sensor_properties, streets_collection
from api.live import LiveState
from api.routes.streets import find_street, open_floods
from api.times import iso
from floodwatch.contract import Reading
from floodwatch.registry import SHIPPED_REGISTRY, load_registry

REGISTRY = load_registry(SHIPPED_REGISTRY)
NOW = 1_795_000_000 * 10**9
MIN = 60 * 10**9
# Street names as the registry spells them (with or without diacritics).
QH, D12, NVH = (REGISTRY.sensors[s].street for s in ("qh-02", "d12-01", "nvh-01"))


def flood(alert_id: str, level: int, state: str = "active_unack", **extra: Any) -> dict[str, Any]:
    return {"alert_id": alert_id, "kind": "flood", "level": level, "state": state, **extra}


def street(state: LiveState, name: str, now_ns: int = NOW) -> dict[str, Any]:
    features = streets_collection(state, now_ns)["features"]
    props: dict[str, Any] = next(f["properties"] for f in features if f["id"] == name)
    return props


def props(state: LiveState, sensor_id: str, now_ns: int = NOW) -> dict[str, Any]:
    now = state.get(sensor_id)
    assert now is not None
    return sensor_properties(now, now_ns)


def test_a_single_spike_paints_nothing() -> None:
    """41.8 cm on d12-02 with no alert from the engine: the street stays normal, and says the
    reading is unconfirmed."""
    state = LiveState(REGISTRY)
    state.apply_reading(Reading("d12-02", NOW, 41.8))
    assert (props(state, "d12-02")["level"], props(state, "d12-02")["reading_level"]) == (0, 3)
    d12 = street(state, D12)
    assert d12["level"] == 0 and d12["level_name"] == "normal"
    assert d12["level_cm"] == 41.8 and d12["verdict_note"] == "unconfirmed"
    assert d12["state"] is None and d12["alerts"] == []


def test_street_level_is_the_worst_active_flood_alert() -> None:
    """Two flood alerts on Quoc Huong: the street shows the worse, its depth and since when."""
    state = LiveState(REGISTRY)
    state.apply_reading(Reading("qh-01", NOW, 12.0))
    state.apply_reading(Reading("qh-03", NOW, 33.0))
    state.apply_alerts("qh-01", (flood("qh-01:flood:1", 1),), NOW)
    raised = "2026-11-18T04:00:00+00:00"
    state.apply_alerts("qh-03", (flood("qh-03:flood:1", 3, raised_at=raised),), NOW)
    qh = street(state, QH)
    assert (qh["level"], qh["level_name"], qh["level_cm"]) == (3, "impassable", 33.0)
    assert qh["worst_sensor"] == "qh-03" and qh["state"] == "active_unack"
    assert sorted(qh["alerts"]) == ["qh-01:flood:1", "qh-03:flood:1"] and qh["unacked"] == 2
    assert qh["verdict_note"] is None
    assert props(state, "qh-03")["since"] == "2026-11-18T04:00:00.000+00:00"


def test_escalation_history_and_acknowledged_state() -> None:
    """Level changes of one alert make the street's history; acknowledging changes the state."""
    state = LiveState(REGISTRY)
    state.apply_reading(Reading("nvh-02", NOW, 25.0))
    state.apply_alerts("nvh-02", (flood("n:1", 1),), NOW)
    state.apply_alerts("nvh-02", (flood("n:1", 2),), NOW + MIN)
    state.apply_alerts("nvh-02", (flood("n:1", 2, "active_ack", who="otto"),), NOW + 2 * MIN)
    nvh = street(state, NVH)
    assert [h["level_name"] for h in nvh["history"]] == ["flooded", "hazard"]
    assert nvh["since"] == nvh["history"][-1]["at"]
    assert nvh["state"] == "active_ack" and nvh["unacked"] == 0
    assert [h["level"] for h in props(state, "nvh-02")["history"]] == [1, 2]
    state.apply_alerts("nvh-02", (), NOW + 3 * MIN)
    assert street(state, NVH)["history"] == []


def test_draining_water_says_how_long_the_alert_holds() -> None:
    """The reading fell below the threshold minus 3 cm: `draining`, and the engine's hold ends
    10 minutes after the first such reading."""
    state = LiveState(REGISTRY)
    state.apply_reading(Reading("qh-02", NOW, 35.0))
    state.apply_alerts("qh-02", (flood("q:1", 3),), NOW)
    state.apply_reading(Reading("qh-02", NOW + MIN, 4.0))
    state.apply_reading(Reading("qh-02", NOW + 2 * MIN, 3.5))
    p = props(state, "qh-02", NOW + 2 * MIN)
    assert (p["level"], p["reading_level"], p["verdict_note"]) == (3, 0, "draining")
    assert p["hold_until"] == iso(NOW + MIN + 10 * MIN)
    qh = street(state, QH, NOW + 2 * MIN)
    assert qh["level"] == 3 and qh["verdict_note"] == "draining" and qh["level_cm"] == 3.5


def test_fault_and_stale_are_named() -> None:
    """A fault alert, or silence, is the reason the reading and the verdict differ."""
    state = LiveState(REGISTRY)
    state.apply_reading(Reading("d12-01", NOW, 12.0))
    fault = {"alert_id": "f", "kind": "fault", "state": "active_unack"}
    state.apply_alerts("d12-01", (fault,), NOW)
    assert props(state, "d12-01")["verdict_note"] == "fault"
    state.apply_reading(Reading("d12-03", NOW, 2.0))
    assert props(state, "d12-03", NOW + 3600 * 10**9)["verdict_note"] == "stale"


def test_find_street_by_name_english_name_or_without_accents() -> None:
    """The acknowledge route finds a street however an operator's client spells it."""
    assert find_street(REGISTRY, QH) is not None
    found = find_street(REGISTRY, "quoc huong")
    assert found is not None and found.name == QH
    assert find_street(REGISTRY, "Quốc Hương") is found
    assert find_street(REGISTRY, "Nowhere") is None


def test_open_floods_lists_only_active_flood_alerts_of_the_street() -> None:
    state = LiveState(REGISTRY)
    state.apply_alerts("qh-01", (flood("a", 1), {"alert_id": "b", "kind": "rising"}), NOW)
    state.apply_alerts("qh-02", (flood("c", 2, "active_ack"),), NOW)
    state.apply_alerts("d12-01", (flood("d", 2),), NOW)
    assert sorted(open_floods(state, QH)) == [("a", "active_unack"), ("c", "active_ack")]


def test_map_layer_flags_reach_the_page() -> None:
    """--tile-url and --wms-url/--wms-layers are checked once and inlined into the page."""
    from api.__main__ import build_parser
    from api.app import create_app
    from api.config import options_from_args
    from floodwatch.errors import SettingsError
    from floodwatch.localservices import free_port
    from tests.test_api_support import api_settings

    parse = build_parser().parse_args
    with pytest.raises(SettingsError, match="FLOODWATCH_WMS_LAYERS"):
        options_from_args(parse(["--wms-url", "https://gis.example.org/wms"]))
    with pytest.raises(SettingsError, match="FLOODWATCH_WMS_URL"):
        options_from_args(parse(["--wms-url", "gis.example.org", "--wms-layers", "a"]))
    options = options_from_args(
        parse(["--wms-url", "https://gis.example.org/wms", "--wms-layers", "flood:zones"])
    )
    port = free_port()
    html = create_app(api_settings(port, port, "layers"), options).state.page_html
    assert '"wmsUrl":"https://gis.example.org/wms"' in html
    assert '"wmsLayers":"flood:zones"' in html


def test_streets_body_rebuilds_only_what_changed_and_matches_the_collection() -> None:
    """The cached /v1/streets bytes equal a fresh build after readings and alerts change."""
    import orjson

    from api.geo import StreetsBody

    state, body = LiveState(REGISTRY), StreetsBody()
    state.apply_reading(Reading("qh-02", NOW, 22.0))
    first = body.get(state, NOW)
    assert orjson.loads(first) == streets_collection(state, NOW)
    assert body.get(state, NOW) is first  # same version, same second: the same bytes
    state.apply_alerts("qh-02", (flood("q", 2),), NOW)
    state.apply_reading(Reading("d12-01", NOW, 3.0))
    later = NOW + 2 * 10**9
    assert orjson.loads(body.get(state, later)) == streets_collection(state, later)
    assert street(state, QH, later)["level"] == 2
