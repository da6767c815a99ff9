"""`python -m ingest`: subscribe to sensor readings and store them in InfluxDB, at least once."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import queue
import signal
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from alerts.commands import AckReply, AckRequest, parse_ack_request
from alerts.errors import UnknownAlert
from alerts.events import AlertEvent
from floodwatch.credentials import bound_client_id
from floodwatch.errors import (
    FloodwatchError,
    InfluxAccessDenied,
    InfluxError,
    InfluxUnavailable,
    SettingsError,
)
from floodwatch.influx import InfluxClient
from floodwatch.metrics import serve as serve_metrics
from floodwatch.mqtt import Delivery, MqttConnection, Subscription
from floodwatch.registry import Registry, load_registry
from floodwatch.settings import (
    TIME_SCALE,
    command_parser,
    configure_logging,
    option,
    parse_influx_url,
    real_number,
    settings_from_args,
    time_scale_notice,
    whole_number,
)
from floodwatch.topics import Topics
from ingest.alerting import Alerting
from ingest.metrics import ingest_metrics
from ingest.operations import OperationsFollower, registry_in_force
from ingest.outbox import Outbox
from ingest.pipeline import Ingest

INGEST_OPTIONS = (
    option(
        "--influx-read-url",
        "",
        "InfluxDB URL (with a read-only user) for the alert restore's queries at start, so "
        "the --influx-url user needs only WRITE (empty: the same as --influx-url)",
    ),
    option(
        "--client-id",
        "floodwatch-ingest",
        "MQTT client id; the broker keeps this id's session (and queues readings for it) "
        "while ingest is down. The broker binds each login to one client id (the `ingest` "
        "login to floodwatch-ingest), so a second instance needs a login of its own, named "
        "as its client id",
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
    TIME_SCALE,
)

DESCRIPTION = """\
Subscribe to {root}/v1/sensors/+/reading and /status on the MQTT broker (QoS 1, persistent
session), decode and validate each message against the sensor registry, and write the
readings to InfluxDB. A message is acknowledged to the broker only after InfluxDB has stored
it, so nothing is lost if ingest or InfluxDB stops. Invalid messages are published on
{root}/v1/deadletter with a reason and kept in the `deadletter` measurement; so is a second
reading for a sensor and ts that contradicts the first (`conflicting_reading`). Retained
messages are never replayed to ingest; a reading published retained is counted and logged.
If the database or its retention policy is gone, ingest says once how to restore it
(scripts/restore) and holds the readings until it is back.

Stored readings go through the alert engine (CONTRACT section 3): each alert event is stored
in the `alert_event` measurement and published on {root}/v1/events/{sensor}, the sensor's
current alerts stay retained on {root}/v1/alerts/{sensor}, and finished flood episodes go to
`flood_episode` and {root}/v1/episodes. At start the alert state is rebuilt from InfluxDB.

Operators' registry changes made through the API (a new mount height or thresholds, a sensor
added or retired; retained on {root}/v1/registry/{sensor}) apply at once, without a restart:
a reading's depth is computed with the mount height in force when it arrives, a retired
sensor's readings are dead letters `retired_sensor`. Each change ({root}/v1/changes/{sensor})
is stored in the `sensor_change` measurement.

`python -m ingest ack ALERT_ID --who NAME [--note TEXT]` acknowledges an alert.
"""


def build_parser() -> argparse.ArgumentParser:
    return command_parser("python -m ingest", DESCRIPTION, INGEST_OPTIONS)


STALE_CHECK_S = 1.0


def try_restore(alerting: Alerting, log: logging.Logger) -> None:
    try:
        alerting.restore()
    except InfluxError as exc:
        log.warning("alerts wait for InfluxDB to restore their state: %s", exc)


def answer_commands(
    commands: queue.Queue[Delivery],
    alerting: Alerting,
    mqtt: MqttConnection,
    stop: threading.Event,
) -> None:
    """Apply operators' acknowledgements one at a time and answer each on its reply topic."""
    while not stop.is_set():
        try:
            delivery = commands.get(timeout=0.5)
        except queue.Empty:
            continue
        reply_to, answer = parse_and_apply_ack(delivery.payload, alerting)
        if reply_to:
            mqtt.publish(reply_to, answer.to_json(), qos=1)
        mqtt.ack_many([delivery])


def parse_and_apply_ack(payload: bytes, alerting: Alerting) -> tuple[str, AckReply]:
    """(reply topic, answer) for one acknowledgement request; never raises."""
    reply_to, request = parse_ack_request(payload)
    if isinstance(request, AckReply):
        return reply_to, request
    try:
        events = alerting.acknowledge(request.alert_id, request.who, request.note)
    except UnknownAlert as exc:
        return reply_to, AckReply.refused("unknown_alert", str(exc))
    except FloodwatchError as exc:
        return reply_to, AckReply.refused("not_ready", str(exc))
    return reply_to, AckReply(True, tuple(e for e in events if isinstance(e, AlertEvent)))


def outbox_path(setting: str, client_id: str) -> Path:
    if setting:
        return Path(setting)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in client_id)
    return Path(state) / "floodwatch" / f"outbox-{safe}.sqlite"


ACK_DESCRIPTION = """\
Acknowledge an alert as an operator: the running ingest, which owns the alert state, records
who acknowledged it, when and why, stores the event in InfluxDB and republishes the sensor's
state on {root}/v1/alerts/{sensor}. Alert ids look like qh-02:flood:1795691100000000000
(see the retained alerts/{sensor} messages or the API). Exit code 0 when acknowledged, 1 when
ingest refused (for example an unknown id), 3 when ingest did not answer in time."""

ACK_OPTIONS = (
    option("--who", "", "the operator acknowledging (required)"),
    option("--note", "", "why, or what is being done about it"),
    option("--timeout", "10", "seconds to wait for ingest's answer"),
)


def ack_main(argv: Sequence[str]) -> int:
    parser = command_parser("python -m ingest ack", ACK_DESCRIPTION, ACK_OPTIONS)
    parser.add_argument("alert_id", help="the alert to acknowledge")
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
        timeout = real_number(args.timeout, "--timeout", positive=True)
        if not str(args.who).strip():
            raise SettingsError("say who acknowledges with --who NAME (or FLOODWATCH_WHO).")
    except FloodwatchError as exc:
        print(f"ingest ack: {exc}", file=sys.stderr)
        return 2
    topics = Topics(settings.topic_root)
    reply_to = f"{topics.ack_commands}/reply/{uuid.uuid4().hex}"
    answers: queue.Queue[bytes] = queue.Queue()
    conn = MqttConnection(
        settings.mqtt,
        # A login other than admin must use the one client id the broker binds it to.
        bound_client_id(settings.mqtt.username) or "",
        subscriptions=[(reply_to, 1)],
        on_delivery=lambda d: answers.put(d.payload),
    )
    try:
        conn.start()
        time.sleep(0.2)  # let the subscription settle before asking
        conn.publish(
            topics.ack_commands,
            AckRequest(args.alert_id, args.who, args.note, reply_to).to_json(),
            qos=1,
        )
        try:
            answer = AckReply.from_json(answers.get(timeout=timeout))
        except queue.Empty:
            print(
                f"ingest ack: no answer from ingest within {timeout:g} s; is it running?",
                file=sys.stderr,
            )
            return 3
    except (FloodwatchError, ValueError) as exc:  # ValueError: a reply this version can't read
        print(f"ingest ack: {exc}", file=sys.stderr)
        return 2
    finally:
        conn.stop()
    if not answer.ok:
        print(f"ingest ack: {answer.error}", file=sys.stderr)
        return 1
    for event in answer.events:
        print(f"{event.event_id}: {event.state} by {event.who}")
    if not answer.events:
        print(f"{args.alert_id}: already acknowledged")
    return 0


def settle_garbage_collector() -> None:
    """Tune the cycle collector for a stream of short-lived objects, once started.

    Every reading makes a few objects that live for one batch (thousands at a time). With
    CPython's defaults the collector walks the young objects every 700 of them, and the
    whole heap, modules and all, every so often. Freezing what start-up made takes it out of
    every later walk, and a larger young generation lets most of a batch come and go between
    walks. Measured with bench.ingest: about a tenth more readings per second.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ack"]:
        return ack_main(argv[1:])
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
        read_endpoint = (
            parse_influx_url(str(args.influx_read_url), "--influx-read-url")
            if args.influx_read_url
            else settings.influx
        )
        outbox = None
        if args.outbox != "off":
            outbox = Outbox(outbox_path(args.outbox, args.client_id), outbox_max * 2**20)
        configure_logging(settings.log_level, "ingest")
        registry = load_registry(settings.registry_path)
        if args.client_id in registry.sensors:
            # The broker lets that sensor's login connect under exactly this id.
            raise SettingsError(
                f"--client-id {args.client_id!r} is a sensor's id in the registry, so that "
                "sensor could take over ingest's session; choose another (FLOODWATCH_CLIENT_ID)"
            )
        bound = bound_client_id(settings.mqtt.username)
        if bound is not None and args.client_id != bound:
            raise SettingsError(
                f"--client-id {args.client_id!r} is not the client id the broker binds the login "
                f"{settings.mqtt.username!r} to ({bound!r}), so the broker would refuse it; use "
                f"--client-id {bound} (FLOODWATCH_CLIENT_ID), or give this instance a login of "
                "its own (README, Users and permissions)"
            )
    except FloodwatchError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 2
    log = logging.getLogger("ingest")
    topics = Topics(settings.topic_root)
    influx = InfluxClient(settings.influx, settings.influx_db)
    influx_read = (
        influx
        if read_endpoint == settings.influx
        else InfluxClient(read_endpoint, settings.influx_db)
    )
    stop = threading.Event()
    try:
        # Operators' registry overrides in force before the first reading (ingest/operations.py).
        live = registry_in_force(
            settings.mqtt,
            topics,
            registry,
            client_id=args.client_id,
            session_expiry_s=session_expiry,
        )
    except FloodwatchError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 1
    registry = live.current

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
    except InfluxAccessDenied as exc:
        if exc.status != 403:
            print(f"ingest: {exc}", file=sys.stderr)
            return 1
        # A write-only user may not create databases: an administrator made it (the stack,
        # docker-compose's INFLUXDB_DB); writes say so if it is missing.
        log.info("not creating database %s (user has no admin rights): %s", settings.influx_db, exc)
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

    def publish(topic: str, payload: bytes, retain: bool) -> None:
        assert mqtt is not None
        mqtt.publish(topic, payload, qos=1, retain=retain)

    log.log(*time_scale_notice(settings.time_scale))
    alerting = Alerting(
        registry, topics, influx_read, publish, ingest.store_lines, time_scale=settings.time_scale
    )
    ingest.on_stored = alerting.judge
    commands: queue.Queue[Delivery] = queue.Queue()

    def apply_registry(changed: Registry) -> None:
        ingest.registry = changed  # the decoder reads it per batch
        alerting.reconfigure(changed)

    operations = OperationsFollower(topics, live, apply_registry, ingest.store_lines, ack, stop)

    def route(delivery: Delivery) -> None:
        # Operators' acknowledgements go to their own thread; readings to the pipeline.
        if delivery.topic == topics.ack_commands:
            commands.put(delivery)
        elif operations.wants(delivery.topic):
            operations.deliver(delivery)
        else:
            ingest.deliver(delivery)

    mqtt = MqttConnection(
        settings.mqtt,
        args.client_id,
        # No retained message is replayed at (re)subscription: a retained reading would be
        # judged again at every reconnect, and a retained status is an old one. Readings keep
        # their retain flag, so one published retained is counted (the pipeline's
        # retained_readings); statuses are retained by design (the sensors' will).
        subscriptions=[
            Subscription(topics.all_readings, 1, replay_retained=False, flag_retained=True),
            Subscription(topics.all_statuses, 1, replay_retained=False),
            (topics.ack_commands, 1),
            # Operators' registry overrides (retained) and their audit (ingest/operations.py).
            (topics.registry_override("+"), 1),
            (topics.sensor_changes("+"), 1),
        ],
        on_delivery=route,
        session_expiry_s=session_expiry,
        manual_ack=True,
    )
    # Alerts must be restored before the first reading is judged; the broker connection is
    # made after, so no delivery can overtake the restore.
    try_restore(alerting, log)
    threading.Thread(
        target=answer_commands,
        args=(commands, alerting, mqtt, stop),
        daemon=True,
        name="ingest-commands",
    ).start()
    ingest.start()
    operations.thread.start()
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
                    ingest.counters,
                    ingest.backlog,
                    outbox.status() if outbox else None,
                    dict(alerting.events_by_kind),
                ),
            )
        except OSError as exc:
            log.warning("no metrics endpoint on port %d: %s", metrics_port, exc)
    settle_garbage_collector()
    log.info(
        "ingesting %d sensors from %s into %s/%s",
        len(registry.sensors),
        settings.mqtt,
        settings.influx,
        settings.influx_db,
    )
    next_stats = time.monotonic() + stats_interval
    while not stop.wait(STALE_CHECK_S):
        if ingest.failed.is_set():
            break  # logged where it happened; exit non-zero so a supervisor restarts ingest
        if not alerting.ready:
            try_restore(alerting, log)
        alerting.check_stale()
        if stats_interval and time.monotonic() >= next_stats:
            next_stats += stats_interval
            state = f" backlog={ingest.backlog}"
            if outbox is not None and not outbox.empty:
                st = outbox.status()
                state += f" outbox_lines={st.lines} outbox_oldest={st.oldest_age_s:.0f}s"
            log.info("%s%s", ingest.counters.summary(), state)
    log.info("stopping: storing what is in hand (at most %g s)", shutdown_timeout)
    ingest.stop(shutdown_timeout)
    mqtt.stop()
    influx.close()
    influx_read.close()
    if metrics_server is not None:
        metrics_server.shutdown()
    if outbox is not None:
        outbox.close()
    log.info("stopped; %s", ingest.counters.summary())
    return 1 if ingest.failed.is_set() else 0


if __name__ == "__main__":
    sys.exit(main())
