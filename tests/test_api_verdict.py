"""One truth (issue 10 section 1), pure: a sensor's and a street's `level` is the engine's
verdict, the latest depth sits beside it, and where they differ the reason is named."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from alerts.events import AlertEvent
from api.app import create_app
from api.config import ApiOptions
from api.geo import sensor_properties, streets_collection
from api.live import LiveState
from api.routes.streets import find_street, open_floods
from api.times import iso
from floodwatch.contract import STREET_LEVEL_NAMES, Reading
from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service
from floodwatch.registry import SHIPPED_REGISTRY, load_registry
from ingest.line_protocol import encode_point
from tests.test_api_support import (
    TestClient,
    api_settings,
    bearer,
    publish,
    publisher,
    wait_for,
    write_keys,
    write_readings,
)

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


def test_since_and_history_are_the_engines_reading_times_not_arrival() -> None:
    """Issue 10: the page tells the story the engine judged. An alert heard an hour after its
    readings (a replay, a slow feed) shows the raise's and the escalation's reading times, not
    when this process heard them nor the engine's `changed_at` (its wall clock)."""
    state = LiveState(REGISTRY)
    late = NOW + 60 * MIN
    state.apply_reading(Reading("qh-02", NOW + 3 * MIN, 25.0), late)
    raised, escalated = iso(NOW), iso(NOW + 3 * MIN)
    state.apply_alerts("qh-02", (flood("q:1", 1, raised_at=raised, reading_time=raised),), late)
    item = flood("q:1", 2, raised_at=raised, reading_time=escalated, changed_at=iso(late + MIN))
    state.apply_alerts("qh-02", (item,), late + MIN)
    p = props(state, "qh-02", late + MIN)
    assert [(h["level"], h["at"]) for h in p["history"]] == [(1, raised), (2, escalated)]
    assert p["since"] == escalated
    qh = street(state, QH, late + MIN)
    assert qh["since"] == escalated
    assert [(h["level"], h["at"]) for h in qh["history"]] == [(1, raised), (2, escalated)]


def test_an_older_engine_without_item_times_uses_the_sensors_reading_time() -> None:
    """Without the item's `reading_time`, the payload's `reading_time` (the sensor's last
    water reading, the one behind the change) dates an escalation; arrival never does."""
    state = LiveState(REGISTRY)
    late = NOW + 60 * MIN
    state.apply_alerts("d12-01", (flood("d:1", 1, raised_at=iso(NOW)),), late)
    envelope = {"sensor": "d12-01", "reading_time": iso(NOW + 2 * MIN)}
    state.apply_alerts("d12-01", (flood("d:1", 2, raised_at=iso(NOW)),), late + MIN, envelope)
    history = props(state, "d12-01", late + MIN)["history"]
    assert [h["at"] for h in history] == [iso(NOW), iso(NOW + 2 * MIN)]


def test_history_after_a_restart_comes_from_the_stored_events() -> None:
    """A restarted API reads the engine's `alert_event` rows at start: the whole escalation
    history, whether the retained alerts arrive before or after them."""
    rows: list[dict[str, Any]] = [
        {"alert_id": "q:1", "kind": "flood", "change": "raised", "level": 1, "time": NOW},
        {"alert_id": "q:1", "kind": "flood", "change": "escalated", "level": 2, "time": NOW + MIN},
        {"alert_id": "q:1", "kind": "flood", "change": "acknowledged", "level": 2, "time": NOW},
        {
            "alert_id": "q:1",
            "kind": "flood",
            "change": "escalated",
            "level": 3,
            "time": NOW + 4 * MIN,
        },
        {"alert_id": "r:1", "kind": "rising", "change": "raised", "time": NOW},
    ]
    item = flood("q:1", 3, raised_at=iso(NOW), reading_time=iso(NOW + 4 * MIN))
    want = [(1, iso(NOW)), (2, iso(NOW + MIN)), (3, iso(NOW + 4 * MIN))]
    for seed_first in (True, False):
        state = LiveState(REGISTRY)
        if seed_first:
            state.seed_history(rows)
        state.apply_alerts("qh-02", (item,), NOW + 60 * MIN)
        if not seed_first:
            # Retained items alone know only the current level since its last change.
            history = props(state, "qh-02")["history"]
            assert [(h["level"], h["at"]) for h in history] == want[-1:]
            assert state.seed_history(rows) == 1
        history = props(state, "qh-02")["history"]
        assert [(h["level"], h["at"]) for h in history] == want
        assert street(state, QH)["since"] == iso(NOW + 4 * MIN)


def test_street_history_is_the_worst_level_over_its_sensors() -> None:
    """Two sensors of one street escalate in turn: the street's history is the running worst,
    each step at the reading time it began."""
    state = LiveState(REGISTRY)
    state.apply_alerts("qh-01", (flood("a", 1, raised_at=iso(NOW)),), NOW + 9 * MIN)
    state.apply_alerts("qh-03", (flood("b", 2, raised_at=iso(NOW + 2 * MIN)),), NOW + 9 * MIN)
    item = flood("a", 3, raised_at=iso(NOW), reading_time=iso(NOW + 5 * MIN))
    state.apply_alerts("qh-01", (item,), NOW + 9 * MIN)
    history = street(state, QH)["history"]
    assert [(h["level"], h["at"]) for h in history] == [
        (1, iso(NOW)),
        (2, iso(NOW + 2 * MIN)),
        (3, iso(NOW + 5 * MIN)),
    ]


def test_the_hold_runs_at_the_engines_time_scale() -> None:
    """--time-scale 60: the engine's 10-minute hold is 10 s of reading time, as on the page."""
    state = LiveState(REGISTRY, time_scale=60.0)
    state.apply_reading(Reading("qh-02", NOW, 35.0))
    state.apply_alerts("qh-02", (flood("q:1", 3, raised_at=iso(NOW)),), NOW)
    state.apply_reading(Reading("qh-02", NOW + 10**9, 4.0))
    p = props(state, "qh-02", NOW + 2 * 10**9)
    assert p["verdict_note"] == "draining"
    assert p["hold_until"] == iso(NOW + 10**9 + 10 * 10**9)


@pytest.mark.services
def test_a_restarted_api_shows_the_engines_history_and_hold(
    broker: Service, influxd: Service, influx: InfluxClient, unique: str, tmp_path: Path
) -> None:
    """An API started in the middle of a flood reads the engine's stored flood events and the
    last readings once: the whole escalation history at its reading times, and the hold
    counted from the first reading below the threshold, not from its own first reading."""
    t0 = time.time_ns() - 5 * MIN - 30 * 10**9  # its last reading 30 s ago: not stale
    alert_id = f"qh-02:flood:{t0}"
    steps = [("raised", 1, t0), ("escalated", 2, t0 + MIN), ("escalated", 3, t0 + 3 * MIN)]
    influx.write(
        [
            encode_point(
                *AlertEvent(
                    event_id=f"{alert_id}:{change}:{t}",
                    alert_id=alert_id,
                    seq=n + 1,
                    sensor_id="qh-02",
                    street=QH,
                    kind="flood",
                    change=change,  # type: ignore[arg-type]
                    state="active_unack",
                    level=level,
                    level_name=STREET_LEVEL_NAMES[level],
                    at_ns=t + 10**9,
                    reading_time_ns=t,
                    raised_ns=t0,
                ).influx_point()
            )
            for n, (change, level, t) in enumerate(steps)
        ]
    )
    # 35 cm at the escalation, then below 30 - 3 cm from t0 + 4 min: the hold ends 10 min on.
    write_readings(
        influx, "qh-02", [(t0 + 3 * MIN, 35.0), (t0 + 4 * MIN, 4.0), (t0 + 5 * MIN, 3.0)]
    )
    item = flood(alert_id, 3, raised_at=iso(t0), reading_time=iso(t0 + 3 * MIN))
    payload = {"sensor": "qh-02", "level": 3, "alerts": [item]}
    keys = write_keys(tmp_path / "keys")
    with publisher(broker) as pub:
        publish(pub, f"{unique}/v1/alerts/qh-02", payload, retain=True)
        app = create_app(api_settings(broker, influxd, unique), ApiOptions(api_keys=keys.path))
        with TestClient(app) as client:

            def qh02() -> dict[str, Any]:
                got = client.get("/v1/sensors/qh-02", headers=bearer(keys.viewer)).json()
                found: dict[str, Any] = got["properties"]
                return found

            wait_for(lambda: len(qh02()["history"]) == 3, 10, "the stored history")
            p = qh02()
        publish(pub, f"{unique}/v1/alerts/qh-02", b"", retain=True)
    assert [(h["level"], h["at"]) for h in p["history"]] == [
        (level, iso(t)) for _, level, t in steps
    ]
    assert p["since"] == iso(t0 + 3 * MIN)
    assert p["verdict_note"] == "draining"
    assert p["hold_until"] == iso(t0 + 4 * MIN + 10 * MIN)
