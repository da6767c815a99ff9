"""Partitioned ingest (issue 14, docs/CLUSTER.md): which sensors a worker owns, and the alert
state it holds for them, one engine per owned partition.

A partition is a set of wards (`floodwatch.cluster.partition` of the ward key), so every sensor
of a ward, and its flood episode, has one owner. A worker owns partitions either statically
(`--partitions N --own 0,3,5`, single-node Mosquitto: it subscribes to those partitions'
sensors only) or dynamically (`--cluster`: NATS pins each partition to one worker and moves it
when that worker dies, ingest/cluster.py). Either way the owner thread (`ingest-alerts`) runs a
`PartitionedAlerting`: one `Alerting` per owned partition, each rebuilt from InfluxDB over its
partition's sensors when the worker gains it and dropped when it loses it. One engine per
partition, not one merged state: gaining and losing a partition is then adding and removing a
value, with no merge of engine arrays, and a partition's rules never see another's sensors
(wards do not share an episode).

Only the owner thread calls `claim`, `adopt`, `forget`, `judge`, `check_stale`, `answer` and
`reconfigure`, in the order they were queued; `rebuild` runs on any thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from alerts.commands import AckReply, AckRequest, parse_ack_request
from alerts.state import EngineState, new_state
from floodwatch.cluster import DEFAULT_PARTITIONS, mosquitto_subscriptions, sensor_partition
from floodwatch.contract import Reading
from floodwatch.errors import InfluxError, SettingsError
from floodwatch.influx import InfluxClient
from floodwatch.mqtt import Delivery, Subscription
from floodwatch.registry import Registry
from floodwatch.topics import Topics
from ingest.alerting import Alerting, Publish, Restored
from ingest.pipeline import EMPTY_BATCH, ToStore

log = logging.getLogger(__name__)

# -- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartitionSettings:
    """How this worker owns partitions: `own` fixed (static), or given by NATS (`cluster`);
    `partitions` 0 with neither: one ingest holds every sensor (the default)."""

    partitions: int
    own: frozenset[int] | None  # static ownership; None: all (unpartitioned) or NATS's choice
    cluster: bool
    nats_urls: tuple[str, ...]
    ack_wait_s: float
    pin_timeout_s: float
    late_replay_s: float = 0.0  # with cluster: alerts/reorder.py's window; 0 in other modes

    @property
    def partitioned(self) -> bool:
        return self.cluster or self.own is not None


def add_partition_options(parser: argparse.ArgumentParser) -> None:
    """The partitioned workers' options (defaults from FLOODWATCH_* variables)."""
    env = os.environ
    group = parser.add_argument_group(
        "partitioned workers (issue 14; README, Partitioned ingest)",
        "Several ingest workers, each owning the partitions of some wards (a ward's sensors and "
        "its flood episode stay on one worker).",
    )
    group.add_argument(
        "--partitions",
        default=env.get("FLOODWATCH_PARTITIONS", ""),
        help="how many partitions the wards are spread over (the same on every worker; "
        f"default {DEFAULT_PARTITIONS} with --own or --cluster) [env FLOODWATCH_PARTITIONS]",
    )
    group.add_argument(
        "--own",
        "--own-partitions",
        dest="own_partitions",
        default=env.get("FLOODWATCH_OWN_PARTITIONS", ""),
        help="single-node Mosquitto: the partitions this worker owns, e.g. 0,3,5; it subscribes "
        "to their sensors only, judges them and answers their acknowledgements "
        "[env FLOODWATCH_OWN_PARTITIONS]",
    )
    group.add_argument(
        "--cluster",
        action="store_true",
        default=env.get("FLOODWATCH_CLUSTER", "").lower() in ("1", "true", "yes"),
        help="clustered mode: readings from NATS JetStream (every partition's pull consumer; "
        "NATS gives each partition to one worker and moves it when that worker dies); "
        "--mqtt-url is the MQTT front (HAProxy) for alerts, events and commands, with "
        "--mqtt-protocol 3.1.1 [env FLOODWATCH_CLUSTER=1]",
    )
    group.add_argument(
        "--nats-url",
        default=env.get("FLOODWATCH_NATS_URL", ""),
        help="with --cluster: the NATS nodes, nats://user:password@host:port[,nats://...] "
        "(the `ingest` user) [env FLOODWATCH_NATS_URL]",
    )
    group.add_argument(
        "--ack-wait",
        default=env.get("FLOODWATCH_ACK_WAIT", "4"),
        help="with --cluster: seconds before NATS redelivers a reading a worker took and did "
        "not acknowledge; a live worker extends it while a reading is in hand, so this bounds "
        "how long a dead worker's readings wait [env FLOODWATCH_ACK_WAIT; default 4]",
    )
    group.add_argument(
        "--pin-timeout",
        default=env.get("FLOODWATCH_PIN_TIMEOUT", "5"),
        help="with --cluster: seconds a worker may stop pulling a partition before NATS gives "
        "it to another [env FLOODWATCH_PIN_TIMEOUT; default 5]",
    )
    group.add_argument(
        "--late-replay",
        default=env.get("FLOODWATCH_LATE_REPLAY", "30"),
        help="with --cluster: a reading NATS delivers behind newer ones of its sensor is judged "
        "in its place (the engine steps again from before it) if those newer ones came at most "
        "this many seconds earlier; older, or 0, the engine's rule for late readings stands "
        "(stored, not judged) [env FLOODWATCH_LATE_REPLAY; default 30]",
    )


def partition_settings(args: argparse.Namespace) -> PartitionSettings:
    """The partition options, checked; SettingsError names the flag to fix."""
    # Imported here: settings' number checks, without a cycle at import time.
    from floodwatch.settings import real_number, whole_number

    cluster = bool(args.cluster)
    own_text = str(args.own_partitions).strip()
    count_text = str(args.partitions).strip()
    if cluster and own_text:
        raise SettingsError(
            "--own and --cluster exclude each other: in the cluster NATS decides which worker "
            "owns a partition; drop --own (FLOODWATCH_OWN_PARTITIONS) or --cluster."
        )
    partitions = 0
    if count_text:
        partitions = whole_number(count_text, "--partitions", minimum=1, maximum=4096)
    elif own_text or cluster:
        partitions = DEFAULT_PARTITIONS
    own = parse_own(own_text, partitions) if own_text else None
    urls: tuple[str, ...] = ()
    if cluster:
        urls = tuple(u.strip() for u in str(args.nats_url).split(",") if u.strip())
        if not urls or not all(u.startswith(("nats://", "tls://")) for u in urls):
            raise SettingsError(
                f"--cluster needs --nats-url nats://user:password@host:port[,...] (the NATS "
                f"nodes), got {str(args.nats_url)[:60]!r}; set --nats-url or FLOODWATCH_NATS_URL."
            )
    elif partitions and own is None:
        raise SettingsError(
            "--partitions without --own or --cluster: say which partitions this worker owns "
            "(--own 0,3,5 or FLOODWATCH_OWN_PARTITIONS), or run it with --cluster."
        )
    return PartitionSettings(
        partitions=partitions,
        own=own,
        cluster=cluster,
        nats_urls=urls,
        ack_wait_s=real_number(args.ack_wait, "--ack-wait", positive=True),
        pin_timeout_s=real_number(args.pin_timeout, "--pin-timeout", positive=True),
        late_replay_s=(
            real_number(args.late_replay, "--late-replay", positive=False) if cluster else 0.0
        ),
    )


def parse_own(text: str, partitions: int) -> frozenset[int]:
    """`0,3,5` -> {0, 3, 5}, each below `partitions`; SettingsError naming --own otherwise."""
    parts: set[int] = set()
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) >= partitions:
            raise SettingsError(
                f"--own {text!r}: {item!r} is not a partition number from 0 to {partitions - 1} "
                f"(--partitions {partitions}); write e.g. --own 0,3,5 "
                "(FLOODWATCH_OWN_PARTITIONS)."
            )
        parts.add(int(item))
    return frozenset(parts)


# -- ownership (pure) -------------------------------------------------------------------------


def sensor_partitions(registry: Registry, partitions: int) -> dict[str, int]:
    """Sensor id -> its ward's partition, retired sensors included (their readings are still
    dead-lettered by their owner, and their open alerts acknowledged there)."""
    everyone = {**registry.retired, **registry.sensors}
    return {sid: sensor_partition(sensor, partitions) for sid, sensor in everyone.items()}


def owned_registry(registry: Registry, partitions: int, parts: Iterable[int]) -> Registry:
    """The registry of the sensors in `parts` (streets kept whole: the engine looks a sensor's
    street up by name)."""
    keep = set(parts)
    return dataclasses.replace(
        registry,
        sensors={
            sid: s for sid, s in registry.sensors.items() if sensor_partition(s, partitions) in keep
        },
        retired={
            sid: s for sid, s in registry.retired.items() if sensor_partition(s, partitions) in keep
        },
    )


def owned_partitions(alerting: object, partitions: int) -> tuple[int, frozenset[int]] | None:
    """(partition count, the owned ones) for the metrics, or None when ingest is not
    partitioned."""
    if isinstance(alerting, PartitionedAlerting):
        return partitions, alerting.owned
    return None


def alert_sensor(alert_id: str) -> str:
    """The sensor an alert id belongs to (`{sensor}:{kind}:{t}`)."""
    return alert_id.split(":", 1)[0]


def describe(parts: Iterable[int]) -> str:
    """`owns partitions [0, 3, 5]`, the log line every change of ownership writes."""
    return f"owns partitions {sorted(parts)}"


# -- the owner thread's engines ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartitionRestore:
    """A partition's engine rebuilt from InfluxDB (any thread), for the owner to adopt."""

    part: int
    alerting: Alerting | None  # None: the partition has no sensor (nothing to judge yet)
    restored: Restored | None
    base: Registry  # the whole registry it was cut from
    # Its sensors' retained alert states as the broker held them after the rebuild (None:
    # not read, so every state is published again).
    retained: Mapping[str, bytes] | None = None


class PartitionedAlerting:
    """The alert engines of the partitions this worker owns (the pipeline's AlertStage)."""

    def __init__(
        self,
        registry: Registry,
        partitions: int,
        topics: Topics,
        influx: InfluxClient,
        publish: Publish,
        clock: Callable[[], int] = time.time_ns,
        time_scale: float = 1.0,
        late_replay_s: float = 0.0,
    ) -> None:
        self.registry = registry
        self.partitions = partitions
        self.late_replay_s = late_replay_s
        self.topics = topics
        self.influx = influx
        self._publish = publish
        self._clock = clock
        self.time_scale = time_scale
        self._part_of = sensor_partitions(registry, partitions)
        # Claimed partitions (their acknowledgements are ours: "not ready" until adopted), and
        # the adopted ones' engines (None: a partition with no sensor).
        self.owned: frozenset[int] = frozenset()
        self._engines: dict[int, Alerting | None] = {}
        # Events of engines already dropped, for the metrics' counters.
        self._past_events: dict[tuple[str, str, str], int] = {}
        # Reads the broker's retained alert states of some sensors (sensor -> non-empty
        # payload; any thread), so a gained partition publishes only the states that differ
        # (ingest/cluster.py's, through JetStream); None: a gain publishes every state.
        self.read_retained: Callable[[Sequence[str]], dict[str, bytes]] | None = None

    # -- any thread --------------------------------------------------------------------------

    def rebuild(self, part: int) -> PartitionRestore:
        """Partition `part`'s engine rebuilt from what InfluxDB holds. Raises InfluxError if
        InfluxDB cannot answer."""
        base = self.registry  # read once: the owner may change it meanwhile
        sub = owned_registry(base, self.partitions, [part])
        if not sub.sensors:
            return PartitionRestore(part, None, None, base)
        alerting = self._alerting(sub)
        restored = alerting.rebuild_state()
        retained = None
        if self.read_retained is not None:
            try:
                retained = self.read_retained(list(sub.sensors))
            except Exception as exc:  # only a saving: whatever fails, every state is published
                log.warning(
                    "partition %d: retained alert states not read (%s); publishing all", part, exc
                )
        return PartitionRestore(part, alerting, restored, base, retained)

    @property
    def events_by_kind(self) -> dict[tuple[str, str, str], int]:
        """(kind, change, level name) -> events emitted, every engine's, for the metrics."""
        total = dict(self._past_events)
        for engine in list(self._engines.values()):
            if engine is None:
                continue
            for key, n in list(engine.events_by_kind.items()):
                total[key] = total.get(key, 0) + n
        return total

    # -- owner thread ------------------------------------------------------------------------

    def claim(self, parts: Iterable[int]) -> None:
        """These partitions are ours from now on (their engines follow with `adopt`)."""
        new = self.owned | frozenset(parts)
        if new != self.owned:
            self.owned = new
            self._changed()

    def adopt(self, rebuilt: PartitionRestore) -> None:
        """Take a rebuilt partition engine (if the partition is still ours and has none yet)
        and republish its sensors' states."""
        part = rebuilt.part
        if part not in self.owned or part in self._engines:
            return
        alerting, restored = rebuilt.alerting, rebuilt.restored
        if alerting is not None and restored is not None:
            alerting.adopt(restored, rebuilt.retained)
            log.info(
                "partition %d: alert state of its %d sensors restored",
                part,
                len(alerting.registry.sensors),
            )
        self._engines[part] = alerting
        if rebuilt.base is not self.registry:  # an operator's change came in meanwhile
            self._reconfigure_part(part)

    def forget(self, parts: Iterable[int]) -> None:
        """Another worker owns these partitions now: drop their engines (no stale checks, no
        acknowledgements)."""
        gone = self.owned & frozenset(parts)
        if not gone:
            return
        for part in gone:
            engine = self._engines.pop(part, None)
            if engine is not None:
                for key, n in engine.events_by_kind.items():
                    self._past_events[key] = self._past_events.get(key, 0) + n
        self.owned = self.owned - gone
        self._changed()

    def judge(self, readings: list[Reading]) -> list[str]:
        """Each owned partition's readings through its engine; other readings (a partition not
        adopted yet, or just lost) are stored unjudged."""
        if not readings:
            return []
        engines = self._engines
        part_of = self._part_of
        by_part: dict[int, list[Reading]] = {}
        for r in readings:
            part = part_of.get(r.sensor_id)
            if part is not None:
                by_part.setdefault(part, []).append(r)
        lines: list[str] = []
        for part, rs in sorted(by_part.items()):
            engine = engines.get(part)
            if engine is not None:
                lines += engine.judge(rs)
        return lines

    def check_stale(self) -> ToStore | None:
        lines: list[str] = []
        for engine in self._engines.values():
            item = engine.check_stale() if engine is not None else None
            if item is not None:
                lines += item.alert_lines
        return ToStore([], EMPTY_BATCH, lines) if lines else None

    def answer(self, delivery: Delivery) -> ToStore:
        """Answer an acknowledgement request if this worker owns the alert's sensor; another
        worker answers the others (logged at debug). A request no worker owns (not JSON, an
        unknown sensor) is answered by every worker, with the same refusal."""
        reply_to, request = parse_ack_request(delivery.payload)
        if isinstance(request, AckRequest):
            part = self._part_of.get(alert_sensor(request.alert_id))
            if part is not None and part not in self.owned:
                log.debug(
                    "acknowledgement of %s left to partition %d's owner", request.alert_id, part
                )
                return ToStore([delivery], EMPTY_BATCH, [])
            engine = self._engines.get(part) if part is not None else None
            if engine is not None:
                return engine.answer(delivery)
            if part is not None:
                error = "this partition's alerts are being restored (InfluxDB); retry"
                reply = AckReply.refused("not_ready", error)
            else:
                reply = AckReply.refused(
                    "unknown_alert", f"no open alert has the id {request.alert_id!r}"
                )
        else:
            reply = request
        if reply_to:
            self._publish(reply_to, reply.to_json(), False)
        return ToStore([delivery], EMPTY_BATCH, [])

    def reconfigure(self, registry: Registry) -> None:
        """An operator changed the registry: every owned engine judges with its partition's
        part of it; a sensor added to an owned partition that had none gets a fresh engine."""
        self.registry = registry
        self._part_of = sensor_partitions(registry, self.partitions)
        for part in sorted(self._engines):  # a partition still rebuilding catches up in adopt
            self._reconfigure_part(part)

    def _reconfigure_part(self, part: int) -> None:
        sub = owned_registry(self.registry, self.partitions, [part])
        engine = self._engines[part]
        if engine is not None:
            engine.reconfigure(sub)
        elif sub.sensors:
            # The partition's first sensors, just added: nothing stored to rebuild from.
            self._engines[part] = self._alerting(
                sub, new_state(sub, self._clock(), self.time_scale)
            )

    # -- helpers -----------------------------------------------------------------------------

    def _alerting(self, sub: Registry, state: EngineState | None = None) -> Alerting:
        return Alerting(
            sub,
            self.topics,
            self.influx,
            self._publish,
            clock=self._clock,
            time_scale=self.time_scale,
            state=state,
            part_of_city=True,
            late_replay_s=self.late_replay_s,
        )

    def _changed(self) -> None:
        log.info(describe(self.owned))


# -- the single-node (Mosquitto) path ---------------------------------------------------------


def reading_subscriptions(
    registry: Registry, topics: Topics, parts: PartitionSettings
) -> list[Subscription]:
    """What ingest subscribes to for readings and statuses: every sensor's (one ingest), the
    owned partitions' sensors' (--own; retired ones too, so their readings are still
    dead-lettered by their owner), or nothing (--cluster: readings come from NATS).

    No retained message is replayed at (re)subscription: a retained reading would be judged
    again at every reconnect, and a retained status is an old one. Readings keep their retain
    flag, so one published retained is counted (the pipeline's retained_readings); statuses
    are retained by design (the sensors' will)."""
    if parts.cluster:
        return []
    if parts.own is None:
        return [
            Subscription(topics.all_readings, 1, replay_retained=False, flag_retained=True),
            Subscription(topics.all_statuses, 1, replay_retained=False),
        ]
    everyone = dataclasses.replace(registry, sensors={**registry.retired, **registry.sensors})
    return [
        Subscription(topic, 1, replay_retained=False, flag_retained=topic.endswith("/reading"))
        for topic in mosquitto_subscriptions(everyone, topics, parts.own, parts.partitions)
    ]


def restore_owned(
    alerting: PartitionedAlerting,
    parts: Iterable[int],
    queue_adopt: Callable[[PartitionRestore], None],
    stop: threading.Event,
    *,
    ready: Callable[[], bool] = lambda: True,
    once: bool = False,
) -> list[int]:
    """Rebuild each of `parts` from InfluxDB, once `ready()` (the outbox drained, so the
    rebuild sees what it held), and hand each to `queue_adopt` (for the owner thread); returns
    the partitions not rebuilt. Retries while InfluxDB does not answer unless `once`. Readings
    of a partition not adopted yet are stored unjudged, and its rebuild replays what was
    stored (the ingest-restore thread)."""
    pending = sorted(parts)
    while pending and not stop.is_set():
        if not ready():
            if once:
                break
            stop.wait(0.5)
            continue
        try:
            rebuilt = alerting.rebuild(pending[0])
        except InfluxError as exc:
            log.warning(
                "partition %d's alerts wait for InfluxDB to restore their state: %s",
                pending[0],
                exc,
            )
            if once:
                break
            stop.wait(2.0)
            continue
        queue_adopt(rebuilt)
        pending.pop(0)
    return pending
