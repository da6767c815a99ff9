"""`python -m ingest`: subscribe to sensor readings and store them in InfluxDB, at least once."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from floodwatch.errors import FloodwatchError, InfluxUnavailable
from floodwatch.influx import InfluxClient
from floodwatch.metrics import serve as serve_metrics
from floodwatch.mqtt import Delivery, MqttConnection
from floodwatch.registry import load_registry
from floodwatch.settings import (
    command_parser,
    configure_logging,
    option,
    real_number,
    settings_from_args,
    whole_number,
)
from floodwatch.topics import Topics
from ingest.metrics import ingest_metrics
from ingest.outbox import Outbox
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
    option(
        "--outbox",
        "",
        "SQLite file that holds readings on disk during long InfluxDB outages ('off' to "
        "disable; empty: $XDG_STATE_HOME/floodwatch/outbox-CLIENT_ID.sqlite, else "
        "~/.local/state/...)",
    ),
    option(
        "--outbox-after",
        "10",
        "seconds InfluxDB may be unreachable before batches go to the outbox (and are "
        "acknowledged to the broker once on disk)",
    ),
    option("--outbox-max-mb", "1024", "largest outbox size; beyond it ingest stops acknowledging"),
    option(
        "--shutdown-timeout",
        "10",
        "seconds SIGTERM may spend storing and acknowledging what is already received; "
        "the rest stays with the broker",
    ),
    option(
        "--metrics-port",
        "9464",
        "port of ingest's Prometheus endpoint, http://HOST:PORT/metrics (0: none)",
    ),
    option("--metrics-host", "127.0.0.1", "address of the metrics endpoint (0.0.0.0: all)"),
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


def outbox_path(setting: str, client_id: str) -> Path:
    if setting:
        return Path(setting)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in client_id)
    return Path(state) / "floodwatch" / f"outbox-{safe}.sqlite"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        session_expiry = whole_number(args.session_expiry, "--session-expiry", minimum=1)
        max_batch = whole_number(args.max_batch, "--max-batch", minimum=1)
        stats_interval = whole_number(args.stats_interval, "--stats-interval")
        metrics_port = whole_number(args.metrics_port, "--metrics-port", 0, 65535)
        shutdown_timeout = real_number(args.shutdown_timeout, "--shutdown-timeout", positive=True)
        outbox_after = real_number(args.outbox_after, "--outbox-after", positive=False)
        outbox_max = whole_number(args.outbox_max_mb, "--outbox-max-mb", minimum=1)
        outbox = None
        if args.outbox != "off":
            outbox = Outbox(outbox_path(args.outbox, args.client_id), outbox_max * 2**20)
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

    # InfluxDB may be starting (compose, the local stack) or down: ingest starts anyway, since
    # the broker (and the outbox) hold readings until it answers; the database is created as
    # soon as it does.
    try:
        influx.create_database()
    except InfluxUnavailable as exc:
        log.warning("InfluxDB not reachable at start (%s); readings wait until it is", exc)
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

    ingest = Ingest(
        topics,
        registry,
        influx,
        ack,
        publish_deadletter,
        max_batch=max_batch,
        outbox=outbox,
        outbox_after_s=outbox_after,
    )
    if outbox is not None and not outbox.empty:
        log.info(
            "outbox %s holds %d readings from before; draining", outbox.path, outbox.status().lines
        )
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
    metrics_server = None
    if metrics_port:
        try:
            metrics_server = serve_metrics(
                args.metrics_host,
                metrics_port,
                lambda: ingest_metrics(
                    ingest.counters, ingest.backlog, outbox.status() if outbox else None
                ),
            )
        except OSError as exc:
            log.warning("no metrics endpoint on port %d: %s", metrics_port, exc)
    log.info(
        "ingesting %d sensors from %s into %s/%s",
        len(registry.sensors),
        settings.mqtt,
        settings.influx,
        settings.influx_db,
    )
    while not stop.wait(stats_interval or None):
        state = f" backlog={ingest.backlog}"
        if outbox is not None and not outbox.empty:
            st = outbox.status()
            state += f" outbox_lines={st.lines} outbox_oldest={st.oldest_age_s:.0f}s"
        log.info("%s%s", ingest.counters.summary(), state)
    log.info("stopping: storing what is in hand (at most %g s)", shutdown_timeout)
    ingest.stop(shutdown_timeout)
    mqtt.stop()
    influx.close()
    if metrics_server is not None:
        metrics_server.shutdown()
    if outbox is not None:
        outbox.close()
    log.info("stopped; %s", ingest.counters.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
