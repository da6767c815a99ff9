"""API fixes of issue 10 §5 and §8 on the real broker and influxd: accent-insensitive search,
Vietnamese names beside English ones, daily buckets from local midnight, `tz` on alerts and
events, unknown parameters refused, one-sentence errors, and readings marking sensors online."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from api.app import create_app
from api.config import ApiOptions
from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service
from floodwatch.mqtt import MqttConnection
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
    write_readings,
)

pytestmark = pytest.mark.services

HOUR = 3600 * 10**9
# 2026-11-25T17:00:00Z = 2026-11-26T00:00:00+07:00, local midnight in the ward.
LOCAL_MIDNIGHT = 1_795_651_200 * 10**9 - 7 * HOUR


@dataclass
class Api:
    client: TestClient
    keys: Keys
    pub: MqttConnection
    root: str

    def get(self, url: str) -> Any:
        response = self.client.get(url, headers=bearer(self.keys.viewer))
        assert response.status_code == 200, response.text
        return response.json()

    def error(self, url: str, status: int) -> str:
        response = self.client.get(url, headers=bearer(self.keys.viewer))
        assert response.status_code == status, response.text
        detail = response.json()["detail"]
        assert isinstance(detail, str), detail
        return detail


@pytest.fixture
def api(
    broker: Service, influxd: Service, influx: InfluxClient, unique: str, tmp_path: Path
) -> Iterator[Api]:
    # Two local days: 00:00-23:00 local on the 26th at depth = hour, then 27th at 100 + hour.
    write_readings(
        influx,
        DEPTH_SENSOR,
        [(LOCAL_MIDNIGHT + h * HOUR, float(h if h < 24 else 100 + h - 24)) for h in range(48)],
    )
    influx.write(
        [
            f'flood_episode episode_id="flood:{LOCAL_MIDNIGHT}",'
            f"end_ns={LOCAL_MIDNIGHT + 2 * HOUR}i,peak_cm=31.5,peak_ns={LOCAL_MIDNIGHT + HOUR}i,"
            'peak_sensor="qh-02",max_level=3i,max_level_name="impassable",minutes_to_peak=60,'
            f'minutes_to_drain=60,streets="[\\"Quốc Hương\\"]",sensors="[\\"qh-02\\"]" '
            f"{LOCAL_MIDNIGHT}",
            f'alert_event,sensor=qh-02,kind=flood,change=raised alert_id="qh-02:flood:1",'
            f'level=3i,level_name="impassable",state="active_unack",at_ns={LOCAL_MIDNIGHT}i '
            f"{LOCAL_MIDNIGHT}",
        ]
    )
    keys = write_keys(tmp_path / "keys")
    app = create_app(api_settings(broker, influxd, unique), ApiOptions(api_keys=keys.path))
    with TestClient(app) as client, publisher(broker) as pub:
        yield Api(client, keys, pub, unique)


def test_search_finds_names_without_accents(api: Api) -> None:
    """q=quoc huong finds the four Quốc Hương sensors; features carry both names."""
    found = api.get("/v1/sensors?q=quoc%20huong")
    assert [f["id"] for f in found["features"]] == ["qh-01", "qh-02", "qh-03", "qh-04"]
    assert found["numberReturned"] == 4
    props = found["features"][2]["properties"]
    assert (props["name"], props["name_en"]) == ("Quốc Hương, đoạn giữa", "Quoc Huong middle")
    assert (props["street"], props["street_en"]) == ("Quốc Hương", "Quoc Huong")
    assert [f["id"] for f in api.get("/v1/sensors?q=Ph%C3%BA%20An")["features"]] == ["phu-an"]
    streets = api.get("/v1/streets?q=DUONG")["features"]
    assert [(s["properties"]["name"], s["properties"]["name_en"]) for s in streets] == [
        ("Đường 12", "Duong 12")
    ]
    assert len(api.get("/v1/sensors")["features"]) == 14  # no q: every sensor, as before
    assert api.get("/v1/streets?q=nowhere")["features"] == []


def test_daily_buckets_start_at_local_midnight(api: Api) -> None:
    """every=1d&tz=Asia/Ho_Chi_Minh: buckets from 00:00 to 00:00 in the ward, not UTC days."""
    url = (
        f"/v1/sensors/{DEPTH_SENSOR}/readings?start=2026-11-26T00:00:00%2B07:00"
        "&end=2026-11-28T00:00:00%2B07:00&every=1d&agg=max&tz=Asia/Ho_Chi_Minh"
    )
    points = api.get(url)["points"]
    assert [p["time"] for p in points] == [
        "2026-11-26T00:00:00.000+07:00",
        "2026-11-27T00:00:00.000+07:00",
    ]
    assert [p["level_cm"] for p in points] == [23.0, 123.0]
    utc = api.get(url.replace("tz=Asia/Ho_Chi_Minh", "tz=UTC"))["points"]
    assert [p["time"][11:] for p in utc] == ["00:00:00.000+00:00"] * len(utc)
    assert len(utc) == 3  # UTC days cut the two local days into three


def test_tz_is_checked_against_the_tz_database(api: Api) -> None:
    """A tz that is not in the tz database is a 422 sentence, never part of a query."""
    base = f"/v1/sensors/{DEPTH_SENSOR}/readings?every=1d&tz="
    for bad in ("Asia/Nowhere", "Asia/Ho_Chi_Minh')%20--", "../../etc/passwd"):
        detail = api.error(base + bad, 422)
        assert detail.startswith("tz ") and "Asia/Ho_Chi_Minh" in detail


def test_tz_applies_to_alerts_and_events(api: Api) -> None:
    """tz shows alert and event times in the ward's zone; the default stays UTC."""
    event = api.get("/v1/events?tz=Asia/Ho_Chi_Minh")["events"][0]
    assert event["start"] == "2026-11-26T00:00:00.000+07:00"
    assert event["peak_time"] == "2026-11-26T01:00:00.000+07:00"
    assert api.get("/v1/events")["events"][0]["start"] == "2026-11-25T17:00:00.000+00:00"
    assert (event["streets"], event["streets_en"]) == (["Quốc Hương"], ["Quoc Huong"])
    assert event["peak_street_en"] == "Quoc Huong"
    assert event["report"] == f"/v1/events/flood:{LOCAL_MIDNIGHT}/report"
    alerts = api.get("/v1/alerts?state=all&tz=Asia/Ho_Chi_Minh")["alerts"]
    assert alerts[0]["changed_at"] == "2026-11-26T00:00:00.000+07:00"
    one = api.get("/v1/alerts/qh-02:flood:1?tz=Asia/Ho_Chi_Minh")
    assert one["changed_at"].endswith("+07:00")
    assert (one["street"], one["street_en"]) == ("Quốc Hương", "Quoc Huong")


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("/v1/sensors?color=red", "color"),
        ("/v1/streets?q=x&qq=y", "qq"),
        (f"/v1/sensors/{DEPTH_SENSOR}?tz=UTC", "tz"),
        (f"/v1/sensors/{DEPTH_SENSOR}/readings?evry=5m", "evry"),
        ("/v1/alerts?sinse=2026-11-26T00:00:00Z", "sinse"),
        ("/v1/events?sensors=qh-02", "sensors"),
        ("/v1/alerts.cap?lang=en", "lang"),
        ("/healthz?verbose=1", "verbose"),
    ],
)
def test_an_unknown_query_parameter_is_a_400_naming_it(api: Api, url: str, name: str) -> None:
    """A parameter the route does not take is refused, named, with the ones it does take."""
    detail = api.error(url, 400)
    assert f"'{name}'" in detail and detail.endswith(".")


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("start=2026-11-26T00:00:00+07:00", ["%2B", "space", "Z"]),
        ("start=2026-11-26T00:00:00", ["UTC offset", "%2B07:00"]),
        ("start=yesterday", ["not a time", "2026-11-26T18:05:00%2B07:00"]),
        ("limit=0", ["limit", "at least 1"]),
        ("limit=many", ["limit", "whole number"]),
        ("every=5x", ["every", "5m"]),
        ("agg=median&every=5m", ["agg", "mean, max, min or last"]),
        ("agg=max", ["agg", "every=5m"]),
        ("start=2026-11-26T02:00:00Z&end=2026-11-26T01:00:00Z", ["start", "earlier"]),
        ("cursor=abc", ["cursor", "next"]),
    ],
)
def test_every_422_is_one_sentence_saying_what_to_send(
    api: Api, query: str, words: list[str]
) -> None:
    """422 answers are a sentence, not a pydantic list or a raw regex; an unencoded + (which
    arrives as a space) is explained."""
    detail = api.error(f"/v1/sensors/{DEPTH_SENSOR}/readings?{query}", 422)
    assert detail.endswith(".") and re.search(r"\. [A-Z]", detail) is None  # one sentence
    assert "pattern" not in detail and "^" not in detail
    for word in words:
        assert word in detail, (word, detail)


def test_bodies_and_paths_get_sentences_too(api: Api) -> None:
    """Bad ack bodies, bad ids and unknown paths are sentences as well."""
    operator = bearer(api.keys.operator)
    broken = api.client.post(
        "/v1/alerts/x/ack",
        content=b"{bad",
        headers={**operator, "Content-Type": "application/json"},
    )
    assert broken.status_code == 422 and "not valid JSON" in broken.json()["detail"]
    extra = api.client.post("/v1/alerts/x/ack", json={"nope": 1}, headers=operator)
    assert extra.status_code == 422 and "'nope'" in extra.json()["detail"]
    assert "qh-02" in api.error("/v1/sensors/QH%2002", 422)
    assert "/docs" in api.error("/v1/nothing", 404)


def test_a_reading_marks_its_sensor_online(
    api: Api, broker: Service, influxd: Service, unique: str, tmp_path: Path
) -> None:
    """A sensor whose retained status an earlier run left `offline` shows online as soon as
    it reports again; an `offline` will followed by a reading is online again too."""
    status = f"{api.root}/v1/sensors/qh-04/status"
    reading = f"{api.root}/v1/sensors/qh-04/reading"
    publish(api.pub, status, b"offline", retain=True)
    keys = write_keys(tmp_path / "keys-2")
    app = create_app(api_settings(broker, influxd, unique), ApiOptions(api_keys=keys.path))
    try:
        with TestClient(app) as client:
            fresh = Api(client, keys, api.pub, unique)

            def online() -> object:
                return fresh.get("/v1/sensors/qh-04")["properties"]["online"]

            wait_for(lambda: online() is False, what="the retained offline status")
            publish(api.pub, reading, {"level_cm": 1.0})
            wait_for(lambda: online() is True, what="the reading to mark it online")
            publish(api.pub, status, b"offline")  # its will, now
            wait_for(lambda: online() is False, what="the will")
            publish(api.pub, reading, {"level_cm": 2.0})
            wait_for(lambda: online() is True, what="the next reading")
    finally:
        publish(api.pub, status, b"", retain=True)  # leave no retained status behind
