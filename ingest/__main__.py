"""`python -m ingest`: subscribe to sensor readings and store them in InfluxDB, at least once."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from floodwatch.errors import FloodwatchError
from floodwatch.influx import InfluxClient
from floodwatch.mqtt import Delivery, MqttConnection
from floodwatch.registry import load_registry
from floodwatch.settings import (
    command_parser,
    configure_logging,
    option,
    settings_from_args,
    whole_number,
)
from floodwatch.topics import Topics
from ingest.pipeline import Ingest

INGEST_OPTIONS = (
    option(
        "--client-id",
        "floodwatch-ingest",
        "MQTT client id; the broker keeps this id's session (and queues readings for it) "
        "while ingest is down, so give each ingest instance its own",
    ),
    option(
        "--session-expiry",
        "604800",
        "seconds the broker keeps the session and its queued readings after ingest disconnects",
    ),
    option("--max-batch", "5000", "most messages written to InfluxDB in one request"),
    option("--stats-interval", "10", "seconds between progress lines in the log (0: none)"),
)

DESCRIPTION = """\
Subscribe to {root}/v1/sensors/+/reading and /status on the MQTT broker (QoS 1, persistent
session), decode and validate each message against the sensor registry, and write the
readings to InfluxDB. A message is acknowledged to the broker only after InfluxDB has stored
it, so nothing is lost if ingest or InfluxDB stops. Invalid messages are published on
{root}/v1/deadletter with a reason and kept in the `deadletter` measurement.
"""


def build_parser() -> argparse.ArgumentParser:
    return command_parser("python -m ingest", DESCRIPTION, INGEST_OPTIONS)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        session_expiry = whole_number(args.session_expiry, "--session-expiry", minimum=1)
        max_batch = whole_number(args.max_batch, "--max-batch", minimum=1)
        stats_interval = whole_number(args.stats_interval, "--stats-interval")
        configure_logging(settings.log_level, "ingest")
        registry = load_registry(settings.registry_path)
    except FloodwatchError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 2
    log = logging.getLogger("ingest")
    topics = Topics(settings.topic_root)
    influx = InfluxClient(settings.influx, settings.influx_db)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    try:
        # InfluxDB may still be starting (compose, the local stack): wait for it, then make
        # sure the database exists.
        while not influx.ping():
            log.warning("waiting for InfluxDB at %s", settings.influx)
            if stop.wait(1.0):
                return 0
        influx.create_database()
    except FloodwatchError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 1

    mqtt: MqttConnection | None = None

    def publish_deadletter(payload: bytes) -> None:
        assert mqtt is not None
        mqtt.publish(topics.deadletter, payload, qos=1)

    def ack(deliveries: list[Delivery]) -> int:
        assert mqtt is not None
        return mqtt.ack_many(deliveries)

    ingest = Ingest(topics, registry, influx, ack, publish_deadletter, max_batch=max_batch)
    mqtt = MqttConnection(
        settings.mqtt,
        args.client_id,
        subscriptions=[(topics.all_readings, 1), (topics.all_statuses, 1)],
        on_delivery=ingest.deliver,
        session_expiry_s=session_expiry,
        manual_ack=True,
    )
    ingest.start()
    try:
        mqtt.start(timeout_s=30)
    except FloodwatchError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        ingest.stop()
        return 1
    log.info(
        "ingesting %d sensors from %s into %s/%s",
        len(registry.sensors),
        settings.mqtt,
        settings.influx,
        settings.influx_db,
    )
    while not stop.wait(stats_interval or None):
        log.info("%s backlog=%d", ingest.counters.summary(), ingest.backlog)
    log.info("stopping: finishing the batch in hand")
    ingest.stop()
    mqtt.stop()
    influx.close()
    log.info("stopped; %s", ingest.counters.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
