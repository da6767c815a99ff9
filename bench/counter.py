"""The ceiling for ingest: a bare paho-mqtt QoS 1 subscriber that only counts messages.

Usage: python -m bench.counter MQTT_URL TOPIC_FILTER EXPECTED
Prints "ready" once subscribed, then one JSON line when EXPECTED messages arrived (or after
60 s without one): {"count": n, "last_ns": t}.
"""

from __future__ import annotations

import sys
import threading
import time

import orjson

from floodwatch.mqtt import Delivery, MqttConnection
from floodwatch.settings import parse_mqtt_url


def main() -> int:
    url, topic_filter, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
    count = 0
    last_ns = 0
    done = threading.Event()

    def on_delivery(d: Delivery) -> None:
        nonlocal count, last_ns
        count += 1
        if count >= expected:
            last_ns = time.time_ns()
            done.set()

    conn = MqttConnection(
        parse_mqtt_url(url),
        subscriptions=[(topic_filter, 1)],
        on_delivery=on_delivery,
    )
    conn.start()
    time.sleep(0.3)  # let the SUBACK arrive before the publisher starts
    print("ready", flush=True)
    seen = -1
    while not done.wait(60) and count != seen:
        seen = count
    conn.stop()
    print(orjson.dumps({"count": count, "last_ns": last_ns or time.time_ns()}).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
