"""`/v1/sensors/{id}/readings` on the real influxd: raw and downsampled series, explicit
paging, CSV in the ward's zone, parameter validation, and InfluxQL injection in every query
and path parameter of the API."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from api.app import create_app
from api.config import ApiOptions
from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service
from tests.test_api_support import (
    DEPTH_SENSOR,
    Keys,
    TestClient,
    api_settings,
    bearer,
    write_keys,
    write_readings,
)

pytestmark = pytest.mark.services

# 2026-11-26T00:00:00Z, and one reading a minute for an hour from then.
T0 = 1_795_651_200 * 10**9
MINUTE = 60 * 10**9
RANGE = "start=2026-11-26T00:00:00Z&end=2026-11-26T01:00:00Z"


@pytest.fixture
def api(
    broker: Service, influxd: Service, influx: InfluxClient, unique: str, tmp_path: Path
) -> Iterator[tuple[TestClient, Keys]]:
    write_readings(influx, DEPTH_SENSOR, [(T0 + n * MINUTE, float(n)) for n in range(60)])
    write_readings(influx, "qh-01", [(T0, 99.0)])
    keys = write_keys(tmp_path / "keys")
    app = create_app(api_settings(broker, influxd, unique), ApiOptions(api_keys=keys.path))
    with TestClient(app) as client:
        yield client, keys


def _get(client: TestClient, keys: Keys, url: str, **headers: str) -> Any:
    response = client.get(url, headers={**bearer(keys.viewer), **headers})
    assert response.status_code == 200, response.text
    return response


def test_raw_series_pages_until_next_is_null(api: tuple[TestClient, Keys]) -> None:
    """Following `next` from limit-sized pages yields every reading once, oldest first."""
    client, keys = api
    url: str | None = f"/v1/sensors/{DEPTH_SENSOR}/readings?{RANGE}&limit=25"
    points: list[dict[str, Any]] = []
    pages = 0
    while url is not None:
        page = _get(client, keys, url).json()
        assert page["count"] == len(page["points"]) <= page["limit"] == 25
        assert page["max_limit"] == 20_000
        points.extend(page["points"])
        url = page["next"]
        pages += 1
    assert pages == 3
    assert [p["level_cm"] for p in points] == [float(n) for n in range(60)]
    assert points[0]["time"] == "2026-11-26T00:00:00.000+00:00"
    assert all(isinstance(p["level_cm"], float) and p["battery_v"] == 3.7 for p in points)


@pytest.mark.parametrize(
    ("agg", "expected"),
    [("max", [9.0, 19.0]), ("min", [0.0, 10.0]), ("mean", [4.5, 14.5]), ("last", [9.0, 19.0])],
)
def test_downsampled_series(api: tuple[TestClient, Keys], agg: str, expected: list[float]) -> None:
    """every=10m&agg=... gives one point per bucket start with the aggregate of its readings."""
    client, keys = api
    url = f"/v1/sensors/{DEPTH_SENSOR}/readings?{RANGE}&every=10m&agg={agg}&limit=2"
    page = _get(client, keys, url).json()
    assert [p["level_cm"] for p in page["points"]] == expected
    assert [p["time"][11:16] for p in page["points"]] == ["00:00", "00:10"]
    assert page["every"] == "10m" and page["agg"] == agg
    assert page["next"] is not None and "cursor=" in page["next"]
    rest = _get(client, keys, page["next"]).json()
    assert rest["points"][0]["time"][11:16] == "00:20"


def test_csv_in_the_wards_zone_with_a_link_to_the_next_page(api: tuple[TestClient, Keys]) -> None:
    """Accept: text/csv gives CSV; tz=Asia/Ho_Chi_Minh gives +07:00 times; Link names the next."""
    client, keys = api
    url = f"/v1/sensors/{DEPTH_SENSOR}/readings?{RANGE}&limit=10&tz=Asia/Ho_Chi_Minh"
    response = _get(client, keys, url, Accept="text/csv")
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 10
    assert rows[0]["time"] == "2026-11-26T07:00:00.000+07:00"
    assert rows[0]["level_cm"] == "0.0" and rows[0]["distance_mm"] == ""
    assert response.headers["link"].endswith('>; rel="next"')
    assert response.headers["x-page-max-limit"] == "20000"
    json_again = _get(client, keys, url + "&format=json", Accept="text/csv").json()
    assert json_again["count"] == 10


@pytest.mark.parametrize(
    "query",
    [
        "start=2026-11-26T02:00:00Z&end=2026-11-26T01:00:00Z",
        "start=2026-11-26T00:00:00",  # no offset
        "start=1850-01-01T00:00:00Z",
        "agg=max",
        "every=5x",
        "every=0m",
        "agg=median&every=5m",
        "tz=Mars/Olympus",
        "limit=0",
        "limit=20001",
        "cursor=12",
        "cursor=abc",
        "every=1s&start=2000-01-01T00:00:00Z",
    ],
)
def test_invalid_parameters_are_422(api: tuple[TestClient, Keys], query: str) -> None:
    """Each invalid parameter is refused with 422 naming it, never a 500."""
    client, keys = api
    response = client.get(
        f"/v1/sensors/{DEPTH_SENSOR}/readings?{query}", headers=bearer(keys.viewer)
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


def test_unknown_sensor_is_404(api: tuple[TestClient, Keys]) -> None:
    """A well-formed id that is not in the registry is 404 with a pointer to /v1/sensors."""
    client, keys = api
    response = client.get("/v1/sensors/zz-99/readings", headers=bearer(keys.viewer))
    assert response.status_code == 404
    assert "/v1/sensors" in response.json()["detail"]


INJECTIONS = [
    "' OR 1=1 --",
    '" OR ""="',
    "qh-02' OR \"sensor\"='qh-01",
    "qh-02; DROP MEASUREMENT water_level",
    'x"; DROP DATABASE "{db}"; --',
    "1h) fill(0); DROP DATABASE {db}; SELECT (1",
    "5m; DELETE FROM water_level",
    "$sensor",
    "/.*/",
    "qh-02\nDROP DATABASE {db}",
    "\x00",
    "2026-11-26T00:00:00Z' OR time > 0 --",
    "Asia/../../../etc/passwd",
    "mean(level_cm)) FROM water_level; --",
    "a" * 5000,
]


def _operations(client: TestClient) -> Iterator[tuple[str, str, dict[str, Any]]]:
    doc = client.get("/openapi.json").json()
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] in ("query", "path"):
                    yield path, method, parameter


def _count(influx: InfluxClient) -> int:
    [series] = influx.query('SELECT count("level_cm") FROM "water_level"')
    return int(series["values"][0][1])


def test_influxql_injection_in_every_parameter_is_harmless(
    api: tuple[TestClient, Keys], influx: InfluxClient, unique: str
) -> None:
    """Injection strings in every query and path parameter get a 4xx or a safe answer; the
    database, its measurements and its readings are intact afterwards."""
    client, keys = api
    before = _count(influx)
    operations = list(_operations(client))
    names = {(path, p["name"]) for path, _, p in operations}
    # The parameters that reach InfluxDB must all be covered.
    assert {
        ("/v1/sensors/{sensor_id}/readings", n) for n in ("sensor_id", "start", "every")
    } <= names
    assert ("/v1/alerts/{alert_id}", "alert_id") in names
    tried = 0
    for path, method, parameter in operations:
        for raw in INJECTIONS:
            value = raw.replace("{db}", unique)
            if parameter["in"] == "path":
                url = path.replace("{" + parameter["name"] + "}", quote(value, safe=""))
                params: dict[str, str] = {}
            else:
                url = path.replace("{sensor_id}", DEPTH_SENSOR).replace("{alert_id}", "none")
                params = {parameter["name"]: value}
            response = client.request(
                method.upper(),
                url,
                params=params,
                headers=bearer(keys.operator),
                json={"note": value} if method == "post" else None,
            )
            tried += 1
            assert response.status_code < 500, (path, parameter["name"], value, response.text)
            if response.status_code == 200 and "readings" in path:
                # A value that happens to be valid (tz, or a sensor) gets only its own data.
                body = response.json()
                assert body["sensor"] == DEPTH_SENSOR
    assert tried >= 15 * len(INJECTIONS)
    assert _count(influx) == before == 61
    [databases] = influx.query("SHOW DATABASES")
    assert [unique] in databases["values"]
    [measurements] = influx.query("SHOW MEASUREMENTS")
    assert ["water_level"] in measurements["values"]
