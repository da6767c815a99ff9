"""Fuzzing: 100,000 generated and mutated messages through the decoder, and through a live
ingest, with nothing crashing, nothing dropped and every counter adding up."""

from __future__ import annotations

import random
import re
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from floodwatch.decode import decode_message
from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service
from floodwatch.mqtt import Delivery, MqttConnection
from floodwatch.settings import parse_influx_url
from floodwatch.topics import Topics
from ingest.pipeline import RecentReadings
from tests.conftest import IngestProcess, admin_endpoint, wait_until
from tests.fuzzing import REGISTRY, message

FUZZ_MESSAGES = 100_000


def test_decoder_survives_a_hundred_thousand_mutated_messages() -> None:
    """Every generated or mutated message is decoded or rejected with a reason; none raises."""
    rng = random.Random(20261126)
    topics = Topics("fuzz")
    outcomes: Counter[str] = Counter()
    for k in range(FUZZ_MESSAGES):
        topic, payload = message(rng, k, "fuzz")
        decoded = decode_message(topics, REGISTRY, topic, payload, 1_795_694_400 * 10**9)
        assert decoded.readings or decoded.statuses or decoded.rejections
        for rej in decoded.rejections:
            assert rej.reason and rej.code
            outcomes[rej.code] += 1
        outcomes["reading"] += len(decoded.readings)
    # The generator reaches every kind of rejection, or this test proves less than it says.
    for code in (
        "bad_json",
        "bad_payload",
        "unknown_sensor",
        "bad_level",
        "bad_field",
        "bad_ts",
        "ts_out_of_range",
        "out_of_range",
        "bad_status",
    ):
        assert outcomes[code] > 0, f"the fuzzer never produced {code}"
    assert outcomes["reading"] > FUZZ_MESSAGES // 4


@pytest.mark.slow
def test_live_ingest_survives_a_hundred_thousand_mutated_messages(
    broker: Service, influxd: Service, unique: str, tmp_path: Path, ingest_env: dict[str, str]
) -> None:
    """Through a real broker and ingest: all messages counted, every rejection dead-lettered."""
    rng = random.Random(7)
    messages = [message(rng, k, unique) for k in range(FUZZ_MESSAGES)]
    ingest = IngestProcess(ingest_env, tmp_path)
    ingest.start()
    dead: list[Delivery] = []
    lock = threading.Lock()

    def on_dead(d: Delivery) -> None:
        with lock:
            dead.append(d)

    listener = MqttConnection(
        admin_endpoint(broker),
        subscriptions=[(Topics(unique).deadletter, 1)],
        on_delivery=on_dead,
    )
    listener.start()
    publisher = MqttConnection(admin_endpoint(broker), max_inflight=0)
    publisher.start()
    sent_at = time.time_ns()
    for topic, payload in messages:
        publisher.publish(topic, payload, qos=1)
    wait_until(lambda: publisher.pending_publishes() == 0, 60, "the broker to take every message")
    publisher.stop()
    # The expected outcome of each message, from the same pure decoder.
    topics = Topics(unique)
    expected_rejections = 0
    expected_keys: set[tuple[str, int]] = set()
    expected_receipt_times = 0
    # Mutations that repeat a (sensor, ts) with other fields are refused as conflicts.
    recent = RecentReadings()
    for topic, payload in messages:
        decoded = decode_message(topics, REGISTRY, topic, payload, sent_at)
        expected_rejections += len(decoded.rejections)
        for r in decoded.readings:
            if r.time_from_receipt:
                expected_receipt_times += 1
            elif recent.conflict(r) is not None:
                expected_rejections += 1
            else:
                expected_keys.add((r.sensor_id, r.time_ns))
    wait_until(lambda: len(dead) >= expected_rejections, 120, "every dead letter")
    ingest.stop(signal.SIGTERM)
    listener.stop()
    log = ingest.log.read_text()
    assert "Traceback" not in log
    summary = re.findall(
        r"stopped; messages=(\d+) readings_stored=(\d+) .*?deadlettered=(\d+)", log
    )
    messages_seen, readings_stored, deadlettered = map(int, summary[-1])
    assert messages_seen == FUZZ_MESSAGES
    assert deadlettered == len(dead) == expected_rejections
    letters = [orjson.loads(d.payload) for d in dead]
    assert all(letter["reason"] and letter["code"] for letter in letters)
    db = InfluxClient(parse_influx_url(influxd.url("admin")), unique)
    [stored] = db.query('SELECT count("reason") FROM "deadletter"')
    assert stored["values"][0][1] == expected_rejections
    [points] = db.query('SELECT count("level_cm") FROM "water_level"')
    assert points["values"][0][1] == len(expected_keys) + expected_receipt_times
    assert readings_stored >= len(expected_keys)
    db.close()
