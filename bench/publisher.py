"""A publisher process for the benchmarks: reads `topic<TAB>payload` lines on stdin and
publishes each as a QoS 1 message at full speed, then waits for every PUBACK. Prints the
time of its first publish (epoch ns) on stdout, so a benchmark's clock starts there rather
than at this interpreter's start-up, connection and reading of stdin.

Used for array messages, where `mosquitto_pub -l` manages only ~1,400 messages/s of 7 KB
lines. Usage: python -m bench.publisher MQTT_URL < lines
"""

from __future__ import annotations

import sys
import time

from floodwatch.mqtt import MqttConnection
from floodwatch.settings import parse_mqtt_url


def main() -> int:
    conn = MqttConnection(parse_mqtt_url(sys.argv[1]))
    conn.start()
    lines = sys.stdin.buffer.read().splitlines()
    print(time.time_ns(), flush=True)
    for line in lines:
        topic, _, payload = line.partition(b"\t")
        conn.publish(topic.decode(), payload, qos=1)
    while conn.pending_publishes():
        time.sleep(0.005)
    conn.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
