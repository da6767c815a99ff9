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
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from alerts.commands import AckReply, AckRequest
from floodwatch.credentials import bound_client_id, check_client_id
from floodwatch.errors import (
    FloodwatchError,
    InfluxAccessDenied,
    InfluxError,
    InfluxUnavailable,
    SettingsError,
)
from floodwatch.influx import InfluxClient
from floodwatch.metrics import serve as serve_metrics
from floodwatch.mqtt import Delivery, MqttConnection
from floodwatch.registry import Registry, load_registry
from floodwatch.retained import registry_in_force
from floodwatch.settings import (
    TIME_SCALE,
    InfluxEndpoint,
    Settings,
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
from ingest.alerting import Alerting, Restored
from ingest.cluster import NatsSource
from ingest.metrics import ingest_metrics
from ingest.operations import OperationsFollower
from ingest.outbox import Outbox
from ingest.partitions import (
    PartitionedAlerting,
    PartitionRestore,
    add_partition_options,
    owned_partitions,
    partition_settings,
    reading_subscriptions,
    restore_owned,
)
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
        "login to floodwatch-ingest, a partitioned worker's login ingest-K to "
        "floodwatch-ingest-K), so a second instance needs a login of its own; with --cluster "
        "(NATS binds none) every worker logs in as `ingest` with floodwatch-ingest-K",
    ),
    option(
        "--session-expiry",
        "604800",
        "seconds the broker keeps the session and its queued readings after ingest disconnects "
        "(MQTT v5; over 3.1.1 the broker's own setting decides)",
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
    option(
        "--publish-connections",
        "",
        "with --cluster: MQTT connections that publish alert states and events, each "
        "sensor's always on the same one, so its messages keep their order; NATS's MQTT "
        "listener stores a connection's QoS 1 publishes one at a time, so 4 take about twice "
        "the retained alert states a second of 1 (a storm's burst), at some CPU; "
        "docs/CLUSTER.md, Alert latency (empty: 1)",
    ),
    TIME_SCALE,
)

DESCRIPTION = """\
Subscribe to {root}/v1/sensors/+/reading and /status on the MQTT broker (QoS 1, persistent
session), decode and validate each message against the sensor registry, and write the
readings to InfluxDB. A message is acknowledged to the broker only after InfluxDB (or the disk
outbox) has stored it, so nothing is lost if ingest or InfluxDB stops. Invalid messages are
published on {root}/v1/deadletter with a reason and kept in the `deadletter` measurement; so is
a second reading for a sensor and ts that contradicts the first (`conflicting_reading`).
Retained messages are never replayed to ingest; a reading published retained is counted and
logged. If the database or its retention policy is gone, ingest says once how to restore it
(scripts/restore) and holds the readings until it is back.

Readings go through the alert engine (CONTRACT section 3) as soon as they are decoded, before
they are stored, so a slow or stopped InfluxDB delays no alert: each alert event is published
on {root}/v1/events/{sensor}, the sensor's current alerts stay retained on
{root}/v1/alerts/{sensor}, finished flood episodes go to {root}/v1/episodes, and the events
are stored (`alert_event`, `flood_episode`) in the same write as the readings they came from.
At start the alert state is rebuilt from InfluxDB. SIGTERM stores what is in hand within
--shutdown-timeout and stops, whether InfluxDB answers or not.

Operators' registry changes made through the API (a new mount height or thresholds, a sensor
added or retired; retained on {root}/v1/registry/{sensor}) apply at once, without a restart:
a reading's depth is computed with the mount height in force when it arrives, a retired
sensor's readings are dead letters `retired_sensor`. Each change ({root}/v1/changes/{sensor})
is stored in the `sensor_change` measurement.

Several workers may share the sensors by ward ("partitioned workers" below; README,
Partitioned ingest): `--partitions N --own 0,3,5` on one Mosquitto (the worker subscribes to
those partitions' sensors only, judges them and answers their acknowledgements), or
`--cluster --nats-url URL[,URL...]` on NATS, where NATS gives each partition to one worker and
moves it to another within --pin-timeout when that worker dies; the new owner rebuilds the
partition's alert state from InfluxDB before judging. Each worker logs `owns partitions [..]`.
NATS may deliver a sensor's readings behind later ones around a leader's death: a worker judges
such a reading in its place (--late-replay seconds of history) instead of ignoring it as late.
One worker at a time also takes the readings NATS stored without a partition mapping: those
of sensors the registry knows go to their partition (run `python -m floodwatch.cluster reload`
after adding sensors), the others are dead letters (`unknown_sensor`, `retired_sensor`).

`python -m ingest ack ALERT_ID --who NAME [--note TEXT]` acknowledges an alert.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("python -m ingest", DESCRIPTION, INGEST_OPTIONS)
    add_partition_options(parser)
    return parser


STALE_CHECK_S = 1.0


@dataclass(frozen=True, slots=True)
class IngestSettings:
    """Ingest's own options, checked once at start (the shared ones are in `shared`)."""

    shared: Settings
    influx_read: InfluxEndpoint  # the restore's queries
    client_id: str
    session_expiry_s: int
    max_batch: int
    outbox: Path | None  # None: --outbox off
    outbox_after_s: float
    outbox_max_bytes: int
    shutdown_timeout_s: float
    metrics_host: str
    metrics_port: int  # 0: no endpoint
    stats_interval_s: int  # 0: no progress lines
    publish_connections: int  # alert states and events (more than 1 only with --cluster)


def ingest_settings(args: argparse.Namespace) -> IngestSettings:
    """Every option of `python -m ingest`, checked; SettingsError names the one to fix."""
    shared = settings_from_args(args)
    client_id = str(args.client_id)
    if not client_id or len(client_id.encode()) > 65535:
        raise SettingsError(
            f"--client-id {client_id[:40]!r} must be 1 to 65535 bytes; fix --client-id or "
            "FLOODWATCH_CLIENT_ID."
        )
    return IngestSettings(
        shared=shared,
        influx_read=(
            parse_influx_url(str(args.influx_read_url), "--influx-read-url")
            if args.influx_read_url
            else shared.influx
        ),
        client_id=client_id,
        session_expiry_s=whole_number(args.session_expiry, "--session-expiry", minimum=1),
        max_batch=whole_number(args.max_batch, "--max-batch", minimum=1),
        outbox=None if args.outbox == "off" else outbox_path(str(args.outbox), client_id),
        outbox_after_s=real_number(args.outbox_after, "--outbox-after", positive=False),
        outbox_max_bytes=whole_number(args.outbox_max_mb, "--outbox-max-mb", minimum=1) * 2**20,
        shutdown_timeout_s=real_number(args.shutdown_timeout, "--shutdown-timeout", positive=True),
        metrics_host=str(args.metrics_host),
        metrics_port=whole_number(args.metrics_port, "--metrics-port", 0, 65535),
        stats_interval_s=whole_number(args.stats_interval, "--stats-interval"),
        publish_connections=(
            whole_number(args.publish_connections, "--publish-connections", 1, 64)
            if str(args.publish_connections).strip()
            else 1
        ),
    )


def restore_until_ready(
    alerting: Alerting,
    ingest: Ingest,
    outbox: Outbox | None,
    stop: threading.Event,
    log: logging.Logger,
) -> None:
    """Rebuild the alert state as soon as InfluxDB answers and holds what the outbox held
    (ingest-restore thread), and queue it for the owner; readings decoded meanwhile are
    stored unjudged, and the rebuild replays what was stored."""
    while not alerting.ready and not stop.is_set():
        if outbox is not None and not outbox.empty:
            stop.wait(0.5)
            continue
        try:
            restored = alerting.rebuild_state()
        except InfluxError as exc:
            log.warning("alerts wait for InfluxDB to restore their state: %s", exc)
            stop.wait(2.0)
            continue

        def adopt(restored: Restored = restored) -> None:
            alerting.adopt(restored)

        ingest.call(adopt)
        return


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
        conn.wait_subscribed(5.0)  # the reply must not come before the subscription is made
        conn.publish(
            topics.ack_commands,
            AckRequest(args.alert_id, args.who, args.note, reply_to).to_json(),
            qos=1,
        )
        try:
            answer = AckReply.from_json(answers.get(timeout=timeout))
        except queue.Empty:
            # Over MQTT 3.1.1 a request the broker denies is dropped without a word.
            denied = "" if conn.refusals_visible else ", and may this login publish ack commands"
            print(
                f"ingest ack: no answer from ingest within {timeout:g} s; is it running{denied}?",
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
    walks. Measured with bench.ingest: about a tenth more readings per second. Not too large
    a one, though: each young walk stops every thread, and at 20,000 objects a walk took
    5-10 ms (seen with gc.callbacks during bench.alerts_latency), the size of the alerts'
    p99; at 5,000 a walk is a quarter of that, with the same throughput within noise.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(5_000, 20, 20)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ack"]:
        return ack_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        config = ingest_settings(args)
        parts = partition_settings(args)
        settings = config.shared
        outbox = None
        if config.outbox is not None:
            outbox = Outbox(config.outbox, config.outbox_max_bytes)
        configure_logging(settings.log_level, "ingest")
        registry = load_registry(settings.registry_path)
        if config.client_id in registry.sensors:
            # The broker lets that sensor's login connect under exactly this id.
            raise SettingsError(
                f"--client-id {config.client_id!r} is a sensor's id in the registry, so that "
                "sensor could take over ingest's session; choose another (FLOODWATCH_CLIENT_ID)"
            )
        if config.publish_connections > 1 and not parts.cluster:
            # Mosquitto binds the login to one client id, and takes a connection's publishes
            # as fast as they come.
            raise SettingsError(
                "--publish-connections above 1 needs --cluster; drop it (or "
                "FLOODWATCH_PUBLISH_CONNECTIONS) on a single node."
            )
        # NATS cannot bind a client id to a login: the cluster's workers share `ingest`.
        check_client_id(settings.mqtt.username, config.client_id, broker_binds=not parts.cluster)
    except FloodwatchError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 2
    log = logging.getLogger("ingest")
    topics = Topics(settings.topic_root)
    influx = InfluxClient(settings.influx, settings.influx_db)
    influx_read = (
        influx
        if config.influx_read == settings.influx
        else InfluxClient(config.influx_read, settings.influx_db)
    )
    stop = threading.Event()
    try:
        # Operators' registry overrides in force before the first reading (ingest/operations.py).
        live = registry_in_force(
            settings.mqtt,
            topics,
            registry,
            client_id=config.client_id,
            session_expiry_s=config.session_expiry_s,
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

    source: NatsSource | None = None  # --cluster: readings from NATS (ingest/cluster.py)

    def ack(deliveries: list[Delivery]) -> int:
        assert mqtt is not None
        if source is not None:  # NATS's readings to NATS, commands and overrides to MQTT
            return source.ack(deliveries) + mqtt.ack_many(deliveries)
        return mqtt.ack_many(deliveries)

    # --publish-connections: alert states and events through several connections, a sensor's
    # always through the same one (its messages keep their order): NATS's MQTT listener stores
    # a connection's QoS 1 publishes one after another (R3, fsync; a retained one twice)
    # (docs/CLUSTER.md, "Alert latency"). On Mosquitto one is plenty.
    publishers: list[MqttConnection] = []
    per_sensor = (topics.alert(""), topics.alert_events(""))
    connections = config.publish_connections

    def publish(topic: str, payload: bytes, retain: bool) -> None:
        assert mqtt is not None
        conn = mqtt
        if publishers and topic.startswith(per_sensor):
            k = zlib.crc32(topic.rsplit("/", 1)[1].encode()) % (len(publishers) + 1)
            conn = publishers[k - 1] if k else mqtt
        conn.publish(topic, payload, qos=1, retain=retain)

    ingest = Ingest(
        topics,
        registry,
        influx,
        ack,
        publish_deadletter,
        max_batch=config.max_batch,
        outbox=outbox,
        outbox_after_s=config.outbox_after_s,
    )
    log.log(*time_scale_notice(settings.time_scale))
    alerting: Alerting | PartitionedAlerting
    if parts.partitioned:
        # One engine per owned partition (ingest/partitions.py).
        alerting = PartitionedAlerting(
            registry,
            parts.partitions,
            topics,
            influx_read,
            publish,
            time_scale=settings.time_scale,
            late_replay_s=parts.late_replay_s,
        )
    else:
        alerting = Alerting(registry, topics, influx_read, publish, time_scale=settings.time_scale)
    ingest.alerts = alerting
    if outbox is not None and not outbox.empty:
        log.info(
            "outbox %s holds %d readings from before; draining", outbox.path, outbox.status().lines
        )

    def apply_registry(changed: Registry) -> None:
        """ingest-operations: the change is applied on the owner thread, in order with the
        deliveries (the decoder reads ingest.registry per batch; the engine reconfigures)."""

        def apply() -> None:
            ingest.registry = changed
            alerting.reconfigure(changed)

        ingest.call(apply)
        if parts.own is not None:
            # A sensor added to an owned ward: follow its topics too.
            known = set(following)
            added = [s for s in reading_subscriptions(changed, topics, parts) if s not in known]
            following.extend(added)
            if mqtt is not None and added:
                mqtt.subscribe(added)

    # Readings and statuses followed: every sensor's, or the owned partitions' sensors'.
    following = reading_subscriptions(registry, topics, parts)
    operations = OperationsFollower(topics, live, apply_registry, ingest.store_lines, ack, stop)

    def route(delivery: Delivery) -> None:
        # Operators' acknowledgements go to the alert owner; readings to the pipeline.
        if delivery.topic == topics.ack_commands:
            ingest.call(lambda: alerting.answer(delivery))
        elif operations.wants(delivery.topic):
            operations.deliver(delivery)
        else:
            ingest.deliver(delivery)

    mqtt = MqttConnection(
        settings.mqtt,
        config.client_id,
        subscriptions=[
            *following,
            (topics.ack_commands, 1),
            # Operators' registry overrides (retained) and their audit (ingest/operations.py).
            (topics.registry_override("+"), 1),
            (topics.sensor_changes("+"), 1),
        ],
        on_delivery=route,
        session_expiry_s=config.session_expiry_s,
        manual_ack=True,
    )
    try:
        # Connected before anything is published, so a sensor's messages never change
        # connection. Publishes only, so no session to keep: paho sends a QoS 1 publish again
        # after a reconnect until the broker acknowledges it.
        extras = [
            MqttConnection(settings.mqtt, f"{config.client_id}-pub{k}")
            for k in range(1, connections)
        ]
        for extra in extras:
            extra.start(timeout_s=30)
    except FloodwatchError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 1
    publishers.extend(extras)
    # Alerts are restored before the first reading is judged when InfluxDB answers at start:
    # the broker connection is made after, so no delivery can overtake the restore. Events
    # and readings spilled to the outbox by the last run go to InfluxDB first, so the restore
    # sees them. Otherwise a thread restores as soon as InfluxDB answers.
    restored = False
    drained = outbox is None or ingest.drain_outbox_now()
    unrestored: list[int] = []
    if isinstance(alerting, PartitionedAlerting):
        if parts.own is not None:
            # Each owned partition rebuilt now if InfluxDB answers, else by ingest-restore.
            alerting.claim(parts.own)
            unrestored = restore_owned(
                alerting, parts.own, alerting.adopt, stop, ready=lambda: drained, once=True
            )
    elif drained:
        try:
            alerting.adopt(alerting.rebuild_state())
            restored = True
        except InfluxError as exc:
            log.warning("alerts wait for InfluxDB to restore their state: %s", exc)
    ingest.start()
    operations.thread.start()
    if isinstance(alerting, Alerting) and not restored:
        threading.Thread(
            target=restore_until_ready,
            args=(alerting, ingest, outbox, stop, log),
            daemon=True,
            name="ingest-restore",
        ).start()
    elif isinstance(alerting, PartitionedAlerting) and unrestored:
        partitioned = alerting

        def queue_adopt(rebuilt: PartitionRestore) -> None:
            ingest.call(lambda: partitioned.adopt(rebuilt))

        threading.Thread(
            target=restore_owned,
            args=(alerting, unrestored, queue_adopt, stop),
            kwargs={"ready": lambda: outbox is None or outbox.empty},
            daemon=True,
            name="ingest-restore",
        ).start()
    try:
        mqtt.start(timeout_s=30)
        if isinstance(alerting, PartitionedAlerting) and parts.cluster:
            source = NatsSource(
                parts.nats_urls,
                topics,
                parts.partitions,
                alerting,
                ingest.deliver,
                ingest.call,
                ack_wait_s=parts.ack_wait_s,
                pin_timeout_s=parts.pin_timeout_s,
            )
            # A gained partition publishes only the alert states that differ from NATS's.
            alerting.read_retained = source.retained_alerts
            source.start()
    except FloodwatchError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        ingest.stop(min(config.shutdown_timeout_s, 2.0))
        return 1
    metrics_server = None
    if config.metrics_port:
        try:
            metrics_server = serve_metrics(
                config.metrics_host,
                config.metrics_port,
                lambda: ingest_metrics(
                    ingest.counters,
                    ingest.backlog,
                    outbox.status() if outbox else None,
                    dict(alerting.events_by_kind),
                    owned_partitions(alerting, parts.partitions),
                ),
            )
        except OSError as exc:
            log.warning("no metrics endpoint on port %d: %s", config.metrics_port, exc)
    settle_garbage_collector()
    log.info(
        "ingesting %d sensors from %s into %s/%s",
        len(registry.sensors),
        settings.mqtt,
        settings.influx,
        settings.influx_db,
    )
    stats_interval = config.stats_interval_s
    next_stats = time.monotonic() + stats_interval
    # The main loop never waits on InfluxDB or the broker: it only queues ticks, so a signal
    # is always seen within STALE_CHECK_S.
    while not stop.wait(STALE_CHECK_S):
        if ingest.failed.is_set():
            break  # logged where it happened; exit non-zero so a supervisor restarts ingest
        ingest.call(alerting.check_stale)
        if stats_interval and time.monotonic() >= next_stats:
            next_stats += stats_interval
            state = f" backlog={ingest.backlog}"
            if outbox is not None and not outbox.empty:
                st = outbox.status()
                state += f" outbox_lines={st.lines} outbox_oldest={st.oldest_age_s:.0f}s"
            log.info("%s%s", ingest.counters.summary(), state)
    log.info("stopping: storing what is in hand (at most %g s)", config.shutdown_timeout_s)
    stop.set()
    if source is not None:
        source.stop_pulling()  # what is in hand is stored and acknowledged below
    ingest.stop(config.shutdown_timeout_s)
    if source is not None:
        source.close()
    mqtt.stop()
    for extra in publishers:
        extra.stop()
    if metrics_server is not None:
        metrics_server.shutdown()
    log.info("stopped; %s", ingest.counters.summary())
    failed = ingest.failed.is_set()
    if ingest.busy():
        # A write still waits on InfluxDB (paused or unreachable): its batch stays with the
        # broker. Exit now rather than wait for the HTTP timeout.
        logging.shutdown()
        os._exit(1 if failed else 0)
    influx.close()
    influx_read.close()
    if outbox is not None:
        outbox.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
