"""The demo tells the whole story (issue 10 §6): the `demo` scenario played 180 times faster
than real time through the real pipeline (mosquitto, influxd, `python -m ingest`, the API,
`python -m simulators run demo --timestamps wall`), with ingest and the API at the same
--time-scale. Within its 80 s an operator sees alerts raised, escalated, acknowledged
through the API with an operator key, the water drain, the alerts clear, a flood episode in
/v1/events and the CAP feed's Cancel. At time scale 1 the same story takes hours (the
10-minute hold alone is 10 minutes of readings)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from api.app import create_app
from api.cap import ATOM_NS, CAP_NS
from api.config import ApiOptions
from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service
from floodwatch.registry import SHIPPED_REGISTRY, load_registry
from tests.conftest import IngestProcess, own_login, process_env
from tests.test_api_support import TestClient, api_settings, bearer, wait_for, write_keys

pytestmark = [pytest.mark.services, pytest.mark.slow]

# The demo's 4 hours in 80 s; its last street drains at 18:25 + the 10-minute hold, about
# 55 s in. Much higher would leave the 60 s sensors' readings closer together than the
# broker's and the batches' own jitter (stale after 3 intervals: 1 s here).
SPEED = 180
STORY_S = 120.0
STREET_SENSORS = {
    s.id for s in load_registry(SHIPPED_REGISTRY).sensors.values() if s.kind == "street"
}


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_the_demo_at_180x_shows_raise_escalate_ack_drain_clear_episode_and_cancel(
    broker: Service,
    influxd: Service,
    influx: InfluxClient,
    unique: str,
    tmp_path: Path,
    spawn: Any,
) -> None:
    env = process_env(broker, influxd, unique, unique)
    own_login(broker, env)
    env["FLOODWATCH_TIME_SCALE"] = str(SPEED)
    ingest = IngestProcess(env, tmp_path)
    ingest.start()
    keys = write_keys(tmp_path / "keys")
    settings = replace(api_settings(broker, influxd, unique), time_scale=float(SPEED))
    app = create_app(settings, ApiOptions(api_keys=keys.path))
    try:
        assert f"DEMO time scale {SPEED}".encode() in ingest.log.read_bytes()
        with TestClient(app) as client:

            def get(url: str) -> Any:
                response = client.get(url, headers=bearer(keys.viewer))
                assert response.status_code == 200, response.text
                return response.json()

            def floods(state: str = "active") -> list[dict[str, Any]]:
                """Street flood alerts (the Phu An gauge's tide alarms have a ladder of their
                own and no episodes)."""
                alerts = get(f"/v1/alerts?state={state}&limit=500")["alerts"]
                return [a for a in alerts if a["kind"] == "flood" and a["sensor"] in STREET_SENSORS]

            spawn(
                "simulators",
                "run",
                "demo",
                "--speed",
                str(SPEED),
                "--timestamps",
                "wall",
                env=env,
            )
            # Raised, then escalated: a street flood alert at level 2 or more whose last
            # change (changed_at) is after its raise.
            wait_for(lambda: floods(), STORY_S, "a flood alert raised")

            def escalated() -> dict[str, Any] | None:
                for alert in floods():
                    payload = alert["payload"]
                    if (
                        alert["level"] >= 2
                        and alert["state"] == "active_unack"
                        and _time(payload["changed_at"]) > _time(payload["raised_at"])
                    ):
                        return alert
                return None

            wait_for(lambda: escalated() is not None, STORY_S, "an escalated flood alert")
            target = escalated()
            assert target is not None
            assert target["level_name"] in ("hazard", "impassable", "closed")
            alert_id = target["alert_id"]

            # Acknowledged through the API by an operator (a viewer may not).
            refused = client.post(
                f"/v1/alerts/{alert_id}/ack", json={"note": "x"}, headers=bearer(keys.viewer)
            )
            assert refused.status_code == 403
            acks: list[int] = []

            def acknowledge() -> None:
                response = client.post(
                    f"/v1/alerts/{alert_id}/ack",
                    json={"note": "crew sent"},
                    headers=bearer(keys.operator),
                )
                # 409: escalated or acknowledged between the read and the ack.
                assert response.status_code in (200, 409), response.text
                if response.status_code == 200:
                    assert response.json()["acked_by"] == "otto"
                acks.append(response.status_code)

            acknowledge()

            def state_of_target() -> str:
                return str(get(f"/v1/alerts/{alert_id}")["state"])

            wait_for(
                lambda: state_of_target() in ("active_ack", "cleared_ack"),
                STORY_S,
                "the acknowledgement, from the engine",
            )

            # Drained and cleared: no active flood alert left (a worse level asks for a fresh
            # acknowledgement, which the operator gives), a flood episode in /v1/events.
            def drained() -> bool:
                active = floods()
                if any(a["alert_id"] == alert_id and a["state"] == "active_unack" for a in active):
                    acknowledge()
                return not active

            wait_for(drained, STORY_S, "every flood alert to clear")
            wait_for(lambda: get("/v1/events")["events"], STORY_S, "a flood episode")
            assert 200 in acks
            final = get(f"/v1/alerts/{alert_id}")
            assert (final["state"], final["acked_by"], final["active"]) == (
                "cleared_ack",
                "otto",
                False,
            )
            cleared = [a for a in floods("all") if a["state"] == "cleared_unack"]
            assert cleared, "no alert waits for an acknowledgement after clearing"
            [episode, *_] = get("/v1/events")["events"]
            assert episode["end"] is not None and episode["max_level"] >= 3
            assert {"Quoc Huong", "Nguyen Van Huong"} <= set(episode["streets_en"])
            assert episode["minutes_to_peak"] > 0 and episode["minutes_to_drain"] > 0

            # The CAP feed's Cancel for a cleared flood alert.
            def cancels() -> list[ET.Element]:
                response = client.get("/v1/alerts.cap", headers=bearer(keys.viewer))
                assert response.status_code == 200
                feed = ET.fromstring(response.content)
                found = feed.findall(f"{{{ATOM_NS}}}entry/{{{ATOM_NS}}}content/{{{CAP_NS}}}alert")
                return [
                    a
                    for a in found
                    if a.findtext(f"{{{CAP_NS}}}msgType") == "Cancel"
                    and ":flood:" in (a.findtext(f"{{{CAP_NS}}}identifier") or "")
                ]

            wait_for(lambda: cancels(), 20, "a CAP Cancel")
    finally:
        ingest.stop()
