"""A street under maintenance covers the sensors that join it during the works (added through
the API, or a retired one restored): the pure rule in floodwatch.operations, then the API, the
broker and the notifier together: the new sensor is listed under the street's maintenance and
its alert reaches nobody, while another street's alert goes out."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from api.app import create_app
from api.config import ApiOptions
from floodwatch.localservices import Service
from floodwatch.operations import Maintenance, street_maintenance_for
from floodwatch.registry import Sensor
from tests.conftest import wait_until
from tests.notify_servers import HttpReceiver
from tests.test_api_support import TestClient, api_settings, bearer, publish, publisher, write_keys
from tests.test_notify_e2e import Notifier
from tests.test_operations_e2e import ROUTING, _event

S = 10**9
T0 = 1_796_000_000 * S


def _sensor(sensor_id: str, street: str, street_en: str = "") -> Sensor:
    return Sensor(
        id=sensor_id,
        name=sensor_id,
        street=street,
        ward="An Khánh",
        kind="street",
        lon=106.73,
        lat=10.805,
        thresholds_cm=(10.0, 25.0, 40.0, 60.0),
        street_en=street_en,
    )


def _street(sensor_id: str, since: int, until: int, street: str = "Quốc Hương") -> Maintenance:
    return Maintenance(sensor_id, "lan", "nạo vét cống", since, until, "street", street)


NEW = _sensor("qh-09", "Quốc Hương")
# (name, records held, the sensor joining, now, the maintenance it takes on or None)
ROWS: list[tuple[str, list[Maintenance], Sensor, int, Maintenance | None]] = [
    (
        "joins a street under maintenance: the street's who, why and expiry, from now",
        [_street("qh-01", T0, T0 + 3600 * S), _street("qh-02", T0, T0 + 3600 * S)],
        NEW,
        T0 + 60 * S,
        Maintenance(
            "qh-09", "lan", "nạo vét cống", T0 + 60 * S, T0 + 3600 * S, "street", "Quốc Hương"
        ),
    ),
    (
        "the street's name in any spelling the registry knows",
        [_street("qh-01", T0, T0 + 3600 * S, street="Quoc Huong")],
        _sensor("qh-09", "Quốc Hương", "Quoc Huong"),
        T0,
        Maintenance("qh-09", "lan", "nạo vét cống", T0, T0 + 3600 * S, "street", "Quoc Huong"),
    ),
    (
        "the longest of the street's records covers it",
        [_street("qh-01", T0, T0 + 600 * S), _street("qh-02", T0, T0 + 3600 * S)],
        NEW,
        T0,
        Maintenance("qh-09", "lan", "nạo vét cống", T0, T0 + 3600 * S, "street", "Quốc Hương"),
    ),
    (
        "no maintenance on its street",
        [_street("d12-01", T0, T0 + 3600 * S, "Đường 12")],
        NEW,
        T0,
        None,
    ),
    (
        "a single sensor's maintenance is not the street's",
        [Maintenance("qh-01", "lan", "thay pin", T0, T0 + 3600 * S)],
        NEW,
        T0,
        None,
    ),
    (
        "the street's maintenance has expired",
        [_street("qh-01", T0, T0 + 60 * S)],
        NEW,
        T0 + 60 * S,
        None,
    ),
    (
        "its own maintenance stands",
        [
            _street("qh-01", T0, T0 + 3600 * S),
            Maintenance("qh-09", "an", "lắp đặt", T0, T0 + 60 * S),
        ],
        NEW,
        T0,
        None,
    ),
]


@pytest.mark.parametrize(
    ("name", "records", "sensor", "now", "wanted"), ROWS, ids=[r[0] for r in ROWS]
)
def test_a_sensor_joining_a_street_takes_on_its_maintenance(
    name: str, records: list[Maintenance], sensor: Sensor, now: int, wanted: Maintenance | None
) -> None:
    """Records held and a joining sensor in, the maintenance it takes on (or None) out."""
    assert street_maintenance_for(records, sensor, now) == wanted


@pytest.mark.services
def test_a_sensor_added_to_a_street_under_maintenance_notifies_nobody(
    broker: Service,
    influxd: Service,
    unique: str,
    tmp_path: Path,
) -> None:
    """Quốc Hương under maintenance, then qh-09 added on it and the retired qh-04 restored: both
    are listed under the street's maintenance (same who, why and expiry), qh-09's raise is
    recorded as suppressed and reaches no one, Đường 12's raise goes out; ending the street's
    maintenance ends theirs too."""
    receiver = HttpReceiver().start()
    notifier = Notifier(broker, unique, ROUTING.replace("{url}", receiver.url), tmp_path)
    try:
        notifier.start()
        keys = write_keys(tmp_path / "keys")
        app = create_app(api_settings(broker, influxd, unique), ApiOptions(api_keys=keys.path))
        op, viewer = bearer(keys.operator), bearer(keys.viewer)
        until = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
        with TestClient(app) as client, publisher(broker) as pub:
            retired = client.delete(
                "/v1/registry/sensors/qh-04", params={"reason": "stolen"}, headers=op
            )
            assert retired.status_code == 200, retired.text
            street = "/v1/maintenance/streets/Quốc Hương"
            response = client.post(
                street, json={"reason": "nạo vét cống", "until": until}, headers=op
            )
            assert response.status_code == 200, response.text
            street_until = response.json()["maintenance"][0]["until"]
            qh09 = {
                "id": "qh-09",
                "name": "Quốc Hương, cuối đường",
                "street": "Quốc Hương",
                "ward": "An Khánh",
                "kind": "street",
                "lon": 106.7365,
                "lat": 10.8055,
                "reason": "new sensor at the market",
            }
            response = client.post("/v1/registry/sensors", json=qh09, headers=op)
            assert response.status_code == 201, response.text

            def listed() -> dict[str, Any]:
                items = client.get("/v1/maintenance", headers=viewer).json()["maintenance"]
                return {m["sensor"]: m for m in items}

            restored = client.post(
                "/v1/registry/sensors/qh-04/restore", params={"reason": "found"}, headers=op
            )
            assert restored.status_code == 200, restored.text
            assert listed()["qh-04"]["scope"] == "street"
            joined = listed()["qh-09"]
            assert (joined["scope"], joined["street"]) == ("street", "Quốc Hương")
            assert (joined["reason"], joined["until"]) == ("nạo vét cống", street_until)
            shown = client.get("/v1/sensors/qh-09", headers=viewer).json()["properties"]
            assert shown["maintenance"]["reason"] == "nạo vét cống"
            wait_until(
                lambda: b"qh-09 under maintenance" in notifier.log.read_bytes(),
                10,
                "the notifier to read qh-09's maintenance",
            )

            now = datetime.now(UTC).timestamp()
            raised = int(now * S)
            for sensor in ("qh-09", "d12-01"):
                e = _event(sensor, "raised", 1, raised, raised)
                publish(pub, f"{unique}/v1/events/{sensor}", e.to_json())
            receiver.wait_for(
                lambda got: any(b'"d12-01"' in r.body for r in got), 20, "Đường 12's raise"
            )

            def record() -> list[dict[str, Any]]:
                response = client.get(
                    f"/v1/alerts/qh-09:flood:{raised}/notifications", headers=viewer
                )
                assert response.status_code == 200, response.text
                doc: dict[str, Any] = response.json()
                return list(doc["notifications"])

            wait_until(
                lambda: (
                    [(n["recipient"], n["status"]) for n in record()] == [("ioc_gis", "suppressed")]
                ),
                10,
                "qh-09's raise recorded as suppressed",
            )
            assert not any(
                orjson.loads(r.body)["alert"]["sensor"] == "qh-09" for r in receiver.requests
            )

            response = client.delete(street, params={"reason": "xong"}, headers=op)
            assert response.status_code == 200, response.text
            assert {"qh-04", "qh-09"} <= set(response.json()["ended"])
            assert listed() == {}
    finally:
        if notifier.proc is not None and notifier.proc.poll() is None:
            notifier.kill(signal.SIGTERM)
        receiver.stop()
