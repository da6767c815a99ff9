"""Read what the broker holds retained under some topic filters, once, before a process starts
its main subscriptions: operators' registry overrides and maintenance records must be in force
before the first reading is decoded or the first alert event is sent, and a persistent session
may deliver its queued messages before the retained ones (floodwatch.operations)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from floodwatch.mqtt import Delivery, MqttConnection
from floodwatch.settings import MqttEndpoint

# The broker sends retained messages right after the subscription is granted; once none has
# come for this long, there is no more.
SETTLE_S = 0.5


def read_retained(
    endpoint: MqttEndpoint,
    topic_filters: Sequence[str],
    settle_s: float = SETTLE_S,
    timeout_s: float = 30.0,
) -> dict[str, bytes]:
    """{topic: payload} of every non-empty retained message matching the filters; raises
    BrokerError when the broker cannot be reached within `timeout_s`."""
    held: dict[str, bytes] = {}
    lock = threading.Lock()
    last = [time.monotonic()]

    def keep(delivery: Delivery) -> None:
        with lock:
            if delivery.payload:
                held[delivery.topic] = delivery.payload
            else:
                held.pop(delivery.topic, None)
            last[0] = time.monotonic()

    # A clean session with a broker-assigned client id: it takes nobody's session.
    conn = MqttConnection(endpoint, subscriptions=[(f, 1) for f in topic_filters], on_delivery=keep)
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
