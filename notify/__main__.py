"""`python -m notify`: tell people about alerts (webhooks, e-mail, SMS, Zalo ZNS and OA), with
escalation; `deadletters`, `replay` and `check` for operators."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from floodwatch.credentials import check_client_id
from floodwatch.errors import FloodwatchError, SettingsError
from floodwatch.metrics import serve as serve_metrics
from floodwatch.mqtt import MqttConnection
from floodwatch.registry import load_registry
from floodwatch.retained import read_retained
from floodwatch.settings import (
    COMMON_OPTIONS,
    add_options,
    configure_logging,
    option,
    real_number,
    settings_from_args,
    whole_number,
)
from floodwatch.topics import Topics
from notify.lease import Lease
from notify.routing import Routing, RoutingError, load_routing
from notify.service import Notifier, NotifierOptions
from notify.store import Store

SHARED = tuple(
    o
    for o in COMMON_OPTIONS
    if o.flag in ("--mqtt-url", "--mqtt-protocol", "--registry", "--topic-root", "--log-level")
)
STATE_OPTION = option(
    "--notify-state",
    "",
    "SQLite file with the delivery queue, dead letters, escalation state and history "
    "(empty: $XDG_STATE_HOME/floodwatch/notify-CLIENT_ID.sqlite, else ~/.local/state/...)",
)
CLIENT_ID_OPTION = option(
    "--client-id",
    "floodwatch-notify",
    "MQTT client id; the broker keeps this id's session (and queues alert events for it) "
    "while the notifier is down. The broker binds each login to one client id (the `notify` "
    "login to floodwatch-notify)",
)
NOTIFY_OPTIONS = (
    option(
        "--routing",
        "",
        "routing file (TOML): channels, recipients, rules and escalation; README 'The notifier' "
        "(empty: nobody is notified, a warning says so)",
    ),
    option(
        "--page-url",
        "http://127.0.0.1:8000/",
        "link to the IOC page put in every notification; {sensor} and {alert} are filled in",
    ),
    STATE_OPTION,
    CLIENT_ID_OPTION,
    option(
        "--session-expiry",
        "604800",
        "seconds the broker keeps the session and its queued events after the notifier stops "
        "(MQTT v5; over 3.1.1 the broker's own setting decides)",
    ),
    option("--retry-max", "300", "longest wait in seconds between retries to a destination"),
    option(
        "--give-up-after",
        "86400",
        "seconds a notification is retried before it becomes a dead letter",
    ),
    option("--stats-interval", "10", "seconds between progress lines in the log (0: none)"),
    option(
        "--metrics-port",
        "9465",
        "port of the notifier's Prometheus endpoint, http://HOST:PORT/metrics (0: none)",
    ),
    option("--metrics-host", "127.0.0.1", "address of the metrics endpoint (0.0.0.0: all)"),
    option(
        "--nats-url",
        "",
        "with --cluster: the NATS nodes, nats://user:password@host:port[,nats://...] (the "
        "`notify` user), where the notifiers' lease lives",
    ),
)

# Notifications a sender takes at a time in the clustered mode (50 on a single node).
CLUSTER_BATCH = 8

DESCRIPTION = """\
Follow the alert engine's events ({root}/v1/events/+, QoS 1, persistent session), the
sensors' retained alert states ({root}/v1/alerts/+: alerts raised before the notifier first
started) and finished flood episodes ({root}/v1/episodes: a summary), and tell the people and
systems named in the routing file: webhooks (JSON signed with HMAC-SHA256),
e-mail (SMTP), SMS, Zalo ZNS templates and Zalo Official Account text messages to users who
follow the OA (channel type zalo_oa; HTTP APIs). Streets, sensors and the ward are named as the
registry spells them (English from its name_en/street_en), and alert levels in the IOC page's
own words (api/static/i18n, level.*), so the crew reads what the operator sees. An alert nobody
acknowledges is sent to the next tier of its rule's escalation; acknowledging or clearing it
stops that and is announced to everyone told. Notifications wait in a durable queue on disk
(--notify-state) and are retried with capped exponential backoff, in order per alert; what
cannot be delivered becomes a dead letter. Each alert's notification history is published
retained on {root}/v1/notifications/{alert_id}.

A sensor under maintenance ({root}/v1/maintenance/{sensor}, put there through the API) notifies
nobody, escalations included (recorded as `suppressed`); when the maintenance ends, its alerts
still open and unacknowledged are announced once and their escalation starts again. A sensor
added to a street under maintenance (or restored on it) gets the street's maintenance too.

Operators: `python -m notify deadletters` lists the dead letters, `python -m notify replay
[ID ...] | --all` queues them again, `python -m notify check --routing FILE` validates a
routing file and says who gets what.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m notify",
        description=DESCRIPTION
        + "\nEvery option can also be set with the FLOODWATCH_* variable named in its help.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, SHARED + NOTIFY_OPTIONS)
    parser.add_argument(
        "--cluster",
        action="store_true",
        default=os.environ.get("FLOODWATCH_CLUSTER", "").lower() in ("1", "true", "yes"),
        help="clustered mode (docs/CLUSTER.md): several notifiers, one active, the others "
        "standing by; the active one holds a lease in NATS JetStream (--nats-url) and only it "
        "delivers and publishes the records; a standby follows the same events and records "
        "and takes over within about 7 s when the active one dies. --mqtt-url is the MQTT "
        "front (HAProxy) with --mqtt-protocol 3.1.1, and each instance has its own --client-id "
        "(floodwatch-notify-K) and --notify-state [env FLOODWATCH_CLUSTER=1]",
    )
    # The notifier reads no database: the shared checks still want these names.
    parser.set_defaults(influx_url="http://127.0.0.1:8086", influx_db="floodwatch")
    return parser


def state_path(setting: str, client_id: str) -> Path:
    if setting:
        return Path(setting)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in client_id)
    return Path(state) / "floodwatch" / f"notify-{safe}.sqlite"


def routing_from(setting: str) -> Routing:
    if not setting:
        return Routing("(none)", "vi", "Asia/Ho_Chi_Minh", None, {}, {}, ())
    return load_routing(Path(setting))


def _tool_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_options(parser, (STATE_OPTION, CLIENT_ID_OPTION))
    return parser


def deadletters_main(argv: Sequence[str]) -> int:
    parser = _tool_parser(
        "python -m notify deadletters",
        "List the notifications that could not be delivered: id, when, destination, why.",
    )
    args = parser.parse_args(argv)
    try:
        store = Store(state_path(args.notify_state, args.client_id))
    except FloodwatchError as exc:
        print(f"notify deadletters: {exc}", file=sys.stderr)
        return 2
    rows = store.dead_letters()
    for row in rows:
        queued = datetime.fromtimestamp(row.created_ns / 1e9, UTC).isoformat(timespec="seconds")
        print(
            f"{row.id}\t{queued}\t{row.channel}\t{row.recipient}\t{row.alert_id}\t"
            f"{row.message}\t{row.attempts} attempts\t{row.last_error}"
        )
    print(f"{len(rows)} dead letters", file=sys.stderr)
    store.close()
    return 0


def replay_main(argv: Sequence[str]) -> int:
    parser = _tool_parser(
        "python -m notify replay",
        "Queue dead letters again (a running notifier picks them up within seconds).",
    )
    parser.add_argument("ids", nargs="*", type=int, help="dead letter ids (from `deadletters`)")
    parser.add_argument("--all", action="store_true", help="replay every dead letter")
    args = parser.parse_args(argv)
    if not args.ids and not args.all:
        print("notify replay: name dead letter ids, or --all.", file=sys.stderr)
        return 2
    try:
        store = Store(state_path(args.notify_state, args.client_id))
    except FloodwatchError as exc:
        print(f"notify replay: {exc}", file=sys.stderr)
        return 2
    count = store.replay(None if args.all else args.ids, time.time_ns())
    store.close()
    print(f"{count} dead letters queued again")
    return 0


def check_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m notify check", description="Validate a routing file and summarise it."
    )
    add_options(parser, (NOTIFY_OPTIONS[0],))
    args = parser.parse_args(argv)
    try:
        routing = routing_from(args.routing)
    except RoutingError as exc:
        print(f"notify check: {exc}", file=sys.stderr)
        return 2
    print(
        f"{routing.source}: {len(routing.channels)} channels, {len(routing.recipients)} "
        f"recipients, {len(routing.rules)} rules"
    )
    for rule in routing.rules:
        tiers = "; ".join(
            f"after {t.after_min:g} min: {', '.join(t.notify)}" for t in rule.escalate
        )
        print(
            f"  line {rule.line}: {', '.join(sorted(rule.kinds))} from level {rule.min_level} -> "
            f"{', '.join(rule.notify)}" + (f"; escalate {tiers}" if tiers else "")
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    tools = {"deadletters": deadletters_main, "replay": replay_main, "check": check_main}
    if arguments[:1] and arguments[0] in tools:
        return tools[arguments[0]](arguments[1:])
    args = build_parser().parse_args(arguments)
    try:
        settings = settings_from_args(args)
        session_expiry = whole_number(args.session_expiry, "--session-expiry", minimum=1)
        stats_interval = whole_number(args.stats_interval, "--stats-interval")
        metrics_port = whole_number(args.metrics_port, "--metrics-port", 0, 65535)
        options = NotifierOptions(
            page_url=str(args.page_url),
            retry_max_s=real_number(args.retry_max, "--retry-max", positive=True),
            give_up_s=real_number(args.give_up_after, "--give-up-after", positive=True),
        )
        if args.cluster:
            # A sender records its deliveries a batch at a time, and a standby learns of them
            # from the records that follow: a smaller batch means fewer resends after a
            # takeover (at most about a batch per destination, plus 0.2 s of records).
            options = replace(options, batch=CLUSTER_BATCH)
        configure_logging(settings.log_level, "notify")
        routing = routing_from(args.routing)
        registry = load_registry(settings.registry_path)
        # NATS cannot bind a client id to a login: the cluster's notifiers share `notify`.
        check_client_id(settings.mqtt.username, args.client_id, broker_binds=not args.cluster)
        nats_urls = [u.strip() for u in str(args.nats_url).split(",") if u.strip()]
        if args.cluster and not all(u.startswith(("nats://", "tls://")) for u in nats_urls or [""]):
            raise SettingsError(
                "--cluster needs --nats-url nats://user:password@host:port[,...] (the NATS "
                f"nodes), got {str(args.nats_url)[:60]!r}; set --nats-url or FLOODWATCH_NATS_URL."
            )
        store = Store(state_path(args.notify_state, args.client_id))
    except FloodwatchError as exc:
        print(f"notify: {exc}", file=sys.stderr)
        return 2
    log = logging.getLogger("notify")
    if routing.empty:
        log.warning(
            "the routing file %s has no rules: nobody is notified; see README 'The notifier'",
            routing.source,
        )
    topics = Topics(settings.topic_root)
    lease = Lease(nats_urls, settings.topic_root, args.client_id) if args.cluster else None
    notifier = Notifier(
        routing, registry, topics, store, options, may_send=None if lease is None else lease.held
    )

    def request_stop(signum: int, frame: FrameType | None) -> None:
        notifier.stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    mqtt = MqttConnection(
        settings.mqtt,
        args.client_id,
        subscriptions=notifier.subscriptions(),
        on_delivery=notifier.deliver,
        session_expiry_s=session_expiry,
        manual_ack=True,
    )
    notifier.mqtt = mqtt
    try:
        # Maintenance and registry overrides in force before the first event is judged: a
        # persistent session may deliver queued events before the retained records.
        notifier.prime(
            read_retained(
                settings.mqtt,
                [topics.maintenance("+"), topics.registry_override("+")],
                # In the cluster a clean connection of its own: NATS does not bind the id, and
                # the persistent session, opened twice in a row, lost events now and then.
                client_id=f"{args.client_id}-prime" if args.cluster else args.client_id,
                session_expiry_s=None if args.cluster else session_expiry,
            )
        )
        mqtt.start(timeout_s=30)
        if lease is not None:
            # After the subscriptions: a notifier takes over only once it follows the events.
            lease.start()
    except FloodwatchError as exc:
        print(f"notify: {exc}", file=sys.stderr)
        return 1
    log.info(
        "notifying from %s%s: %d rules, %d recipients, %d channels; state in %s",
        settings.mqtt,
        "" if lease is None else f" (clustered: {args.client_id}, standing by for the lease)",
        len(routing.rules),
        len(routing.recipients),
        len(routing.channels),
        store.path,
    )

    def stats() -> None:
        while not notifier.stop.wait(stats_interval):
            log.info("%s", notifier.summary())

    if stats_interval:
        threading.Thread(target=stats, daemon=True, name="notify-stats").start()
    if metrics_port:
        try:
            serve_metrics(str(args.metrics_host), metrics_port, notifier.metrics)
        except OSError as exc:
            log.warning("no metrics endpoint on port %d: %s", metrics_port, exc)
    try:
        notifier.run()
    except FloodwatchError as exc:
        log.error("stopping: %s", exc)
        mqtt.stop()
        return 1
    if lease is not None:
        # The senders have stopped: nothing more goes out from here.
        lease.release()
    mqtt.stop()
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
