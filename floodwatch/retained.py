"""Read what the broker holds retained under some topic filters, once, before a process starts
its main subscriptions: operators' registry overrides and maintenance records must be in force
before the first reading is decoded or the first alert event is sent, and a persistent session
may deliver its queued messages before the retained ones (floodwatch.operations)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from paho.mqtt.client import topic_matches_sub

from floodwatch.mqtt import Delivery, MqttConnection
from floodwatch.operations import LiveRegistry
from floodwatch.registry import Registry
from floodwatch.settings import MqttEndpoint
from floodwatch.topics import Topics

log = logging.getLogger(__name__)

# The broker sends retained messages right after the subscription is granted; once none has
# come for this long, there is no more.
SETTLE_S = 0.5


def read_retained(
    endpoint: MqttEndpoint,
    topic_filters: Sequence[str],
    settle_s: float = SETTLE_S,
    timeout_s: float = 30.0,
    *,
    client_id: str = "",
    session_expiry_s: int | None = None,
) -> dict[str, bytes]:
    """{topic: payload} of every non-empty retained message matching the filters; raises
    BrokerError when the broker cannot be reached within `timeout_s`.

    The broker binds each service login to one client id (floodwatch/credentials.py), so a
    process with a persistent session reads through that session (`client_id`,
    `session_expiry_s`): it resumes the session, never acknowledges what else the session
    delivers (queued readings or events, redelivered to the main connection that follows),
    and a clean start never wipes it."""
    held: dict[str, bytes] = {}
    lock = threading.Lock()
    last = [time.monotonic()]

    def keep(delivery: Delivery) -> None:
        if not any(topic_matches_sub(f, delivery.topic) for f in topic_filters):
            return  # the session's own queued messages: left unacknowledged for later
        with lock:
            if delivery.payload:
                held[delivery.topic] = delivery.payload
            else:
                held.pop(delivery.topic, None)
            last[0] = time.monotonic()

    conn = MqttConnection(
        endpoint,
        client_id,
        subscriptions=[(f, 1) for f in topic_filters],
        on_delivery=keep,
        session_expiry_s=session_expiry_s,
        manual_ack=session_expiry_s is not None,
    )
    conn.start(timeout_s=timeout_s)
    try:
        deadline = time.monotonic() + timeout_s
        with lock:
            last[0] = time.monotonic()
        while time.monotonic() < deadline:
            with lock:
                quiet = time.monotonic() - last[0]
            if quiet >= settle_s:
                break
            time.sleep(min(0.05, settle_s - quiet))
    finally:
        conn.stop()
    with lock:
        return dict(held)


def registry_in_force(
    endpoint: MqttEndpoint,
    topics: Topics,
    base: Registry,
    *,
    client_id: str = "",
    session_expiry_s: int | None = None,
) -> LiveRegistry:
    """The file's registry with the overrides the broker holds now, read before the first
    reading is decoded (so a restart never decodes with a stale calibration), through ingest's
    own session (read_retained); raises BrokerError when the broker cannot be
    reached."""
    live = LiveRegistry(base)
    prefix = topics.registry_override("")
    held = read_retained(
        endpoint,
        [topics.registry_override("+")],
        client_id=client_id,
        session_expiry_s=session_expiry_s,
    )
    for topic, payload in sorted(held.items()):
        sensor_id = topics.last_level(topic, prefix)
        if sensor_id is not None:
            live.apply(sensor_id, payload)
    for problem in live.problems:
        log.error("registry override skipped: %s", problem)
    return live
