"""The notifier's records on /v1/stream (the IOC page's live notification history): a changed
record is a `notification` event with the record as served by /v1/alerts/{id}/notifications,
a replayed unchanged one sends nothing, a dropped one says so with `notifications: null`."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from floodwatch.localservices import Service
from tests.test_api_live import _live, stream
from tests.test_api_support import DEPTH_SENSOR, bearer, publish

pytestmark = pytest.mark.services


def test_notification_records_are_streamed_once_per_change(
    broker: Service, influxd: Service, unique: str, tmp_path: Path
) -> None:
    alert_id = f"{DEPTH_SENSOR}:flood:1796000000000000000"
    topic = f"{unique}/v1/notifications/{alert_id}"
    record = {
        "alert_id": alert_id,
        "maintenance": None,
        "notifications": [{"recipient": "ioc_gis", "status": "delivered", "tier": 0}],
    }
    with _live(broker, influxd, unique, tmp_path, heartbeat_s=0.3) as live, stream(live) as events:
        publish(live.pub, topic, record, retain=True)
        event = events.next()
        assert event.event == "notification" and event.id
        assert event.data == record
        served = live.http.get(
            f"{live.url}/v1/alerts/{alert_id}/notifications", headers=bearer(live.keys.viewer)
        )
        assert served.json() == event.data
        # The same record again (a reconnection's retained replay): no event; the reading
        # published after it is the next thing on the stream.
        publish(live.pub, topic, orjson.dumps(record), retain=True)
        live.reading(DEPTH_SENSOR, {"level_cm": 3.0})
        assert events.next().event == "reading"
        publish(live.pub, topic, b"", retain=True)
        gone = events.next()
        assert gone.event == "notification"
        assert gone.data == {"alert_id": alert_id, "notifications": None}
