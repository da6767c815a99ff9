"""The clustered worker's reading source (`python -m ingest --cluster`, docs/CLUSTER.md): every
partition's durable pull consumer on NATS's MQTT store, pulled as a member of its pinned
priority group, so the server gives each partition to one worker and moves it when that worker
stops pulling (dies).

| thread        | owns                                   | talks to                               |
|---------------|----------------------------------------|----------------------------------------|
| `ingest-nats` | the asyncio loop: the NATS connection,  | the owner's queue (claim, adopt,       |
|               | one pull task per partition, the       | forget, deliveries), InfluxDB (a       |
|               | messages in hand until acknowledged    | gained partition's rebuild, executor)  |
| ingest-finish | (calls `ack`)                          | the loop, through call_soon_threadsafe |

Gaining a partition (the first messages after not owning it): the worker claims it and keeps
pulling: the readings the previous owner took and never acknowledged come back after the
consumer's ack wait, and they are older than the new ones, so the worker holds the partition's
messages until those are back (or the wait has passed), then rebuilds its sensors' alert state
from InfluxDB (so it sees what the previous owner stored of them: it has had the ack wait to
store them) and hands them over in stream order after the rebuilt state. So the engine judges
the partition in order, and a reading already stored (not newer than the rebuilt state's last
reading for its sensor) is ignored by the engine's rule 1: a failover raises nothing twice and
misses nothing. Losing a partition (Unpinned: another worker holds it) drops its state.

Deliveries lost in flight while owning a partition (a consumer leader died with a batch on its
way; DeliveryOrder sees the gap in the consumer's delivery numbers) come back after the ack
wait, behind readings delivered since: the worker holds the partition's readings until they
are back (collect_missed) and hands them over in stream order, so none is judged as late.

One more consumer holds the sensors' publishes no account mapping moved to a partition (a
sensor added at runtime before `python -m floodwatch.cluster reload`); whichever worker is
pinned to it moves those of sensors the registry knows to their partitions
(floodwatch.cluster.remapped_store_subject) and hands the others to the pipeline under their
sensor's topic (mqtt_topic), which dead-letters them with the decoder's reason
(`unknown_sensor`, `retired_sensor`) and acknowledges them once the dead letters are stored.

Balancing (ingest/balance.py decides, `_balance` here does the I/O): every worker announces
itself and its partitions in the JetStream key-value bucket `floodwatch_workers` (renewed every
second, lapsing 6 s after a worker stops), reads the others' every 0.5 s, and each ends up with
its share of the partitions that have readings flowing: a worker above its share gives one up
at a time in order (stops pulling it, waits until what it took is stored and acknowledged,
unpins it through the server's API) and only workers below their share ask for partitions
meanwhile, so the taker is pinned at the partition's next reading and its gain has nothing
unacknowledged to wait for. A clean stop unpins this worker's partitions in the same way.

A message in hand is acknowledged after its batch is stored (explicit acknowledgements,
floodwatch.cluster.acknowledge); while it waits (InfluxDB slow), the worker tells the server it
is in progress, so the ack wait can stay short and a dead worker's readings return soon.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from floodwatch.cluster import (
    MQTT_MSGS_PREFIX,
    MQTT_MSGS_STREAM,
    REPLICAS,
    WORKERS_BUCKET,
    ClusterError,
    PartitionPull,
    Unpinned,
    acknowledge,
    connect,
    ensure_partition_consumers,
    partition_filter,
    remapped_store_subject,
    retained_alert_states,
    retrying,
    unmapped_consumer_name,
)
from floodwatch.errors import InfluxError
from floodwatch.mqtt import Delivery
from floodwatch.topics import Topics
from ingest.balance import Activity, Member, Release, decide, view_with
from ingest.partitions import PartitionedAlerting, PartitionRestore, restore_owned

log = logging.getLogger(__name__)

# Delivery.connection of a reading that came from NATS (MQTT connections count from 1).
NATS_CONNECTION = -1
FETCH_BATCH = 1000
# Messages in hand (taken, not yet acknowledged) beyond which the worker pulls one at a time:
# it must keep pulling to keep its partitions pinned, but not flood its memory while InfluxDB
# is slow (MQTT's in-flight window does this on the Mosquitto path).
MAX_IN_HAND = 20_000
# Balancing (ingest/balance.py): each worker renews its announcement every HEARTBEAT_S (and at
# once when its partitions change); a dead worker's lapses after MEMBER_TTL_S. It looks at the
# others' every BALANCE_TICK_S.
HEARTBEAT_S = 1.0
MEMBER_TTL_S = 6.0
BALANCE_TICK_S = 0.5


def mqtt_topic(topics: Topics, subject: str) -> str:
    """The contract's MQTT topic of a message in the MQTT store: a partition's
    `$MQTT.msgs.ROOT.v1.part.P.WARD.ID.reading`, or the unmapped consumer's
    `$MQTT.msgs.ROOT.v1.sensors.ID.reading` (what the worker did not move to a partition:
    sensors the registry does not know, which the decoder dead-letters with its reason; one
    added since is stored as its reading) -> `ROOT/v1/sensors/ID/reading`. Anything else keeps
    its subject, and the decoder dead-letters it as an unknown topic."""
    tokens = subject.split(".")
    partitioned = len(tokens) >= 8 and tokens[-6] == "v1" and tokens[-5] == "part"
    if partitioned or (len(tokens) >= 7 and tokens[-4] == "v1" and tokens[-3] == "sensors"):
        sensor_id, channel = tokens[-2], tokens[-1]
        if channel == "reading":
            return topics.reading(sensor_id)
        if channel == "status":
            return topics.status(sensor_id)
    return subject


def delivery_sequences(msgs: Sequence[Msg]) -> list[int]:
    """The consumer's delivery sequence of each message (a redelivery gets a new one)."""
    return [m.metadata.sequence.consumer for m in msgs]


class DeliveryOrder:
    """Gaps in one partition consumer's delivery sequence, as this worker sees it. The server
    numbers every delivery of the consumer, redeliveries included, one after another, so a
    number skipped is a delivery made to this worker that never reached it; it comes back as
    a redelivery after the ack wait. A number going back is a new consumer leader redelivering
    from an older state (duplicates, which the engine ignores): counting restarts there."""

    def __init__(self) -> None:
        self.last: int | None = None

    def missed(self, sequences: Sequence[int]) -> int:
        """How many deliveries before and among `sequences` (in arrival order) never came."""
        missed = 0
        for seq in sequences:
            if self.last is not None and seq > self.last + 1:
                missed += seq - self.last - 1
            self.last = seq
        return missed


async def collect_missed(
    pull: PartitionPull, held: list[Msg], missed: int, order: DeliveryOrder, ack_wait_s: float
) -> tuple[list[Msg], int, int]:
    """Hold a partition's readings until `missed` deliveries are back, so the engine judges
    them in stream order: readings a gained partition's previous owner took and never
    acknowledged, or deliveries of an owned partition that never reached this worker (lost in
    flight: a consumer leader died, a pull expired under them). The server offers them again
    after the ack wait, behind the readings delivered since, and the engine would take those
    as late. So keep pulling and holding until as many redeliveries came back (or the ack wait
    and a second have passed); returns what is held, in stream order, how many came back and
    how many were missed in all (gaps seen meanwhile included)."""
    started = touched = time.monotonic()
    deadline = started + ack_wait_s + 1.0
    returned = 0
    while returned < missed and time.monotonic() < deadline:
        try:
            more = await pull.fetch(FETCH_BATCH, expires_s=0.25)
        except Unpinned:
            raise  # the partition is lost: what is held comes back to its new owner
        except (nats.errors.Error, TimeoutError, ClusterError) as exc:
            log.info("pull failed while holding for missed deliveries (%s); pulling again", exc)
            await asyncio.sleep(0.2)
            continue
        missed += order.missed(delivery_sequences(more))
        returned += sum(1 for m in more if m.metadata.num_delivered > 1)
        held = held + more
        if time.monotonic() - touched >= ack_wait_s / 3:
            # Held for a third of the ack wait: keep these from coming back as well.
            touched = time.monotonic()
            for msg in held:
                with contextlib.suppress(nats.errors.Error):
                    await msg.in_progress()
    return sorted(held, key=lambda m: m.metadata.sequence.stream), returned, missed


class NatsSource:
    """Pulls every partition; hands what this worker is pinned to to the pipeline."""

    def __init__(
        self,
        urls: Sequence[str],
        topics: Topics,
        partitions: int,
        alerting: PartitionedAlerting,
        deliver: Callable[[Delivery], None],
        call: Callable[[Callable[[], None]], None],
        *,
        ack_wait_s: float,
        pin_timeout_s: float,
    ) -> None:
        self.urls = list(urls)
        self.topics = topics
        self.partitions = partitions
        self.alerting = alerting
        self._deliver = deliver
        self._call = call
        self.ack_wait_s = ack_wait_s
        self.pin_timeout_s = pin_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nc: NatsClient | None = None
        self._pulling = threading.Event()  # cleared: stop pulling (acknowledging goes on)
        self._closed = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        # Messages in hand: delivery id -> (message, when taken or last said in progress).
        self._held: dict[int, tuple[Msg, float]] = {}
        self._held_lock = threading.Lock()
        self._next_id = 0
        self.owned: frozenset[int] = frozenset()  # partitions pinned to this worker
        # Balancing (ingest/balance.py, `_balance`): this worker's name among the members,
        # readings taken per partition, whether to ask for partitions it does not hold, the one
        # its pull task is to give up, and the last one given up.
        self.member = _member_name()
        self._taken = [0] * partitions
        self._asks = True
        self._releasing: int | None = None
        self._released: Release | None = None
        self.thread = threading.Thread(target=self._run, name="ingest-nats", daemon=True)

    # -- any thread ----------------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> None:
        """Connect, create the partitions' consumers (idempotent) and start pulling; raise
        ClusterError if NATS does not answer in time."""
        self._pulling.set()
        self.thread.start()
        if not self._ready.wait(timeout_s) or self._error is not None:
            raise ClusterError(
                f"NATS at {', '.join(_without_password(u) for u in self.urls)} did not set up "
                f"the partition consumers within {timeout_s:g} s ({self._error or 'no answer'}); "
                "check --nats-url and that the cluster runs (its /healthz)."
            )

    def stop_pulling(self) -> None:
        """Take no more messages (what is in hand is still stored and acknowledged)."""
        self._pulling.clear()

    def close(self, timeout_s: float = 5.0) -> None:
        self._pulling.clear()
        self._closed.set()
        self.thread.join(timeout_s)

    def retained_alerts(
        self, sensor_ids: Sequence[str], timeout_s: float = 10.0
    ) -> dict[str, bytes]:
        """Sensor -> its non-empty retained `alerts/{id}` payload in NATS (any thread but the
        loop's: a gained partition's rebuild, PartitionedAlerting.read_retained). Raises
        ClusterError if NATS does not answer within `timeout_s`."""
        loop, nc = self._loop, self._nc
        if loop is None or nc is None or loop.is_closed():
            raise ClusterError("not connected to NATS yet")
        future = asyncio.run_coroutine_threadsafe(
            retained_alert_states(nc, self.topics, sensor_ids), loop
        )
        try:
            return future.result(timeout_s)
        except TimeoutError as exc:
            future.cancel()
            raise ClusterError(
                f"NATS did not answer the retained alert states within {timeout_s:g} s"
            ) from exc

    def ack(self, deliveries: Sequence[Delivery]) -> int:
        """Acknowledge stored deliveries that came from NATS (ingest-finish); the others are
        the caller's. Returns how many were NATS's."""
        with self._held_lock:
            msgs = [
                held[0]
                for d in deliveries
                if d.connection == NATS_CONNECTION
                and (held := self._held.pop(d.mid, None)) is not None
            ]
        loop = self._loop
        if msgs and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown)
                asyncio.run_coroutine_threadsafe(self._acknowledge(msgs), loop)
        return len(msgs)

    # -- the loop thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start(), or logged once running
            self._error = exc
            if self._ready.is_set():
                log.exception("NATS source failed")
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        names = await ensure_partition_consumers(
            self.urls,
            self.topics.root,
            self.partitions,
            ack_wait_s=self.ack_wait_s,
            pin_timeout_s=self.pin_timeout_s,
        )
        self._nc = nc = await connect(self.urls)
        self._ready.set()
        log.info("pulling %d partitions from NATS", self.partitions)
        tasks = [
            asyncio.create_task(self._pull_partition(part, name, nc))
            for part, name in enumerate(names)
        ]
        tasks.append(asyncio.create_task(self._pull_unmapped(nc)))
        tasks.append(asyncio.create_task(self._keep_in_progress()))
        tasks.append(asyncio.create_task(self._balance(nc)))
        while not self._closed.is_set():
            await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._leave(nc, names)
        await nc.drain()

    async def _pull_partition(self, part: int, consumer: str, nc: NatsClient) -> None:
        pull = PartitionPull(nc, consumer)
        prefix = MQTT_MSGS_PREFIX + partition_filter(self.topics.root, part)[:-1]
        owned = False
        order = DeliveryOrder()
        while not self._closed.is_set():
            if not self._pulling.is_set():
                await asyncio.sleep(0.1)
                continue
            if owned and part == self._releasing:
                owned = not await self._release(part, consumer, pull, nc, prefix)
                continue
            if not owned and not self._asks:
                # At its share while another worker is below it (ingest/balance.py): what is
                # released goes to the one that asks.
                await asyncio.sleep(0.1)
                continue
            batch = FETCH_BATCH if len(self._held) < MAX_IN_HAND else 1
            try:
                msgs = await pull.fetch(batch)
                if msgs and not owned:
                    order = DeliveryOrder()
                    try:
                        msgs = await self._gain(part, consumer, pull, nc, msgs, order)
                    except BaseException:
                        # Half gained (pin lost, NATS failing): give it up; the messages in
                        # hand come back, and the next ones start the gain again.
                        self._lose(part, "its takeover did not complete")
                        raise
                    owned = True
                elif msgs and (missed := order.missed(delivery_sequences(msgs))):
                    msgs = await self._wait_for_missed(part, pull, msgs, missed, order)
            except Unpinned:
                if owned:
                    owned = False
                    self._lose(part, "another worker holds it now")
                continue
            except (nats.errors.Error, TimeoutError, ClusterError) as exc:
                log.info("partition %d: pull failed (%s); pulling again", part, exc)
                await asyncio.sleep(0.2)
                continue
            if msgs:
                self._taken[part] += len(msgs)
                self._hand_over(msgs, prefix)

    async def _pull_unmapped(self, nc: NatsClient) -> None:
        """Publishes no account mapping moved to a partition (floodwatch.cluster.unmapped_filter):
        one worker at a time holds them (a priority group, as a partition) and hands them over
        under their sensor's topic (mqtt_topic) after moving those the registry knows to their
        partitions; the pipeline dead-letters the rest with the decoder's reason and
        acknowledges each once the dead letter is stored. No alert state: nothing is judged."""
        pull = PartitionPull(nc, unmapped_consumer_name(self.topics.root))
        while not self._closed.is_set():
            if not self._pulling.is_set():
                await asyncio.sleep(0.1)
                continue
            try:
                msgs = await pull.fetch(FETCH_BATCH if len(self._held) < MAX_IN_HAND else 1)
            except Unpinned:
                continue  # another worker holds it
            except (nats.errors.Error, TimeoutError, ClusterError) as exc:
                log.info("unmapped sensors' consumer: pull failed (%s); pulling again", exc)
                await asyncio.sleep(0.2)
                continue
            if msgs:
                left = await self._remap(nc, msgs)
                if left:
                    log.warning(
                        "%d messages from sensors the registry does not know (first: %s); "
                        "dead-lettered",
                        len(left),
                        left[0].subject,
                    )
                    self._hand_over(left, "")

    async def _remap(self, nc: NatsClient, msgs: list[Msg]) -> list[Msg]:
        """Put each unmapped publish of a sensor the registry knows into its partition's
        subject of the MQTT store (floodwatch.cluster.remapped_store_subject), acknowledging the
        original once the store has the copy; returns the others (dead letters). The copy
        reaches the partition's owner after readings published later, so its engine may take
        it as late: stored, not judged (the engine's rule for late readings)."""
        registry = self.alerting.registry
        js = nc.jetstream()
        left: list[Msg] = []
        moved = 0
        for msg in msgs:
            target = remapped_store_subject(
                self.topics.root, registry, self.partitions, msg.subject
            )
            if target is None:
                left.append(msg)
                continue
            try:
                await js.publish(target, msg.data, stream=MQTT_MSGS_STREAM)
                await msg.ack()
                moved += 1
            except (nats.errors.Error, TimeoutError) as exc:
                # Left unacknowledged: the server offers it again after the ack wait.
                log.warning("could not move %s to its partition (%s); retrying", msg.subject, exc)
        if moved:
            log.warning(
                "%d publishes of known sensors arrived without their partition mapping (the "
                "accounts lag the registry: `python -m floodwatch.cluster reload`, or NATS "
                "skipped the mapping); moved to their partitions",
                moved,
            )
        return left

    async def _gain(
        self,
        part: int,
        consumer: str,
        pull: PartitionPull,
        nc: NatsClient,
        first: list[Msg],
        order: DeliveryOrder,
    ) -> list[Msg]:
        """Claim `part`, rebuild its state and collect its messages until the previous owner's
        unacknowledged ones are back (bounded); returns them all in stream order. `order`
        (fresh) learns the deliveries seen."""
        started = time.monotonic()
        self.owned = self.owned | {part}
        self._call(functools.partial(self.alerting.claim, [part]))
        info = await retrying(
            functools.partial(nc.jetstream().consumer_info, MQTT_MSGS_STREAM, consumer),
            f"partition {part}'s consumer information",
        )
        # Taken by the previous owner and never acknowledged: they come back after ack_wait
        # (those already in `first` are pending too, as is everything in it).
        outstanding = (info.num_ack_pending or 0) - len(first)
        order.missed(sorted(delivery_sequences(first)))
        held, returned, _ = await collect_missed(
            pull, list(first), outstanding, order, self.ack_wait_s
        )
        in_first = sum(1 for m in first if m.metadata.num_delivered > 1)
        # Rebuilt only now: the previous owner's unacknowledged readings are back (or the ack
        # wait has passed), so what it stored of them, and the events it judged from them, are
        # in InfluxDB, and the rebuilt state knows them as judged.
        loop = asyncio.get_running_loop()
        rebuilt = await loop.run_in_executor(None, self._rebuild, part)
        if rebuilt is not None:
            self._call(functools.partial(self.alerting.adopt, rebuilt))
        log.info(
            "partition %d gained: %d readings held until %d unacknowledged by its previous "
            "owner came back (%d expected; %.1f s)",
            part,
            len(held),
            returned + in_first,
            max(outstanding, 0) + in_first,
            time.monotonic() - started,
        )
        return held

    async def _wait_for_missed(
        self, part: int, pull: PartitionPull, held: list[Msg], missed: int, order: DeliveryOrder
    ) -> list[Msg]:
        started = time.monotonic()
        held, returned, missed_in_all = await collect_missed(
            pull, held, missed, order, self.ack_wait_s
        )
        log.warning(
            "partition %d: %d deliveries never reached this worker (lost in flight); held %d "
            "readings %.1f s until %d of %d came back, then judged them in stream order",
            part,
            missed,
            len(held),
            time.monotonic() - started,
            returned,
            missed_in_all,
        )
        return held

    def _rebuild(self, part: int) -> PartitionRestore | None:
        """The partition's state from InfluxDB (executor thread); if InfluxDB does not answer,
        its readings are stored unjudged until a retry thread has rebuilt it."""
        try:
            return self.alerting.rebuild(part)
        except InfluxError as exc:
            log.warning("partition %d: alerts wait for InfluxDB to restore: %s", part, exc)

        def queue_adopt(rebuilt: PartitionRestore) -> None:
            self._call(functools.partial(self.alerting.adopt, rebuilt))

        threading.Thread(
            target=restore_owned,
            args=(self.alerting, [part], queue_adopt, self._closed),
            daemon=True,
            name="ingest-restore",
        ).start()
        return None

    def _lose(self, part: int, why: str) -> None:
        self.owned = self.owned - {part}
        log.info("partition %d given up: %s", part, why)
        self._call(functools.partial(self.alerting.forget, [part]))

    def _hand_over(self, msgs: list[Msg], prefix: str) -> None:
        topics = self.topics
        now = time.monotonic()
        received = time.time_ns()
        with self._held_lock:
            first = self._next_id
            self._next_id += len(msgs)
            for k, msg in enumerate(msgs):
                self._held[first + k] = (msg, now)
        for k, msg in enumerate(msgs):
            subject = msg.subject
            mapped = not prefix or subject.startswith(prefix)  # "": the unmapped consumer's
            topic = mqtt_topic(topics, subject) if mapped else subject
            self._deliver(Delivery(topic, msg.data, False, received, first + k, 1, NATS_CONNECTION))

    async def _acknowledge(self, msgs: list[Msg]) -> None:
        try:
            await acknowledge(msgs)
        except (nats.errors.Error, TimeoutError) as exc:
            # Stored all the same: the server redelivers them, and they overwrite themselves.
            log.warning("acknowledging %d stored readings failed (%s)", len(msgs), exc)

    async def _keep_in_progress(self) -> None:
        """Tell the server that readings still in hand (InfluxDB slow) are being worked on, so
        it does not redeliver them after the short ack wait."""
        every = self.ack_wait_s / 3
        while not self._closed.is_set():
            await asyncio.sleep(every)
            now = time.monotonic()
            with self._held_lock:
                due = [(i, m) for i, (m, t) in self._held.items() if now - t >= every]
                for i, m in due:
                    self._held[i] = (m, now)
            for _, msg in due:
                try:
                    await msg.in_progress()
                except nats.errors.Error:
                    break

    # -- balancing (ingest/balance.py) ------------------------------------------------------------

    async def _balance(self, nc: NatsClient) -> None:
        """Announce this worker and its partitions, read the others', and decide (pure:
        ingest.balance.decide) whether to ask for partitions and which one to give up. If the
        bucket cannot be read, the worker asks for everything (as a lone worker does)."""
        key = f"{_key_safe(self.topics.root)}.{self.member}"
        kv: KeyValue | None = None
        activity = Activity()
        gained: dict[int, float] = {}
        announced: tuple[Member | None, float] = (None, 0.0)
        try:
            while not self._closed.is_set():
                now = time.monotonic()
                try:
                    if kv is None:
                        kv = await _workers_bucket(nc)
                    activity = activity.observe(now, tuple(self._taken))
                    load = activity.load()
                    owned = self.owned
                    gained = {p: gained.get(p, now) for p in owned}
                    mine = Member(owned, frozenset(p for p in owned if p in load))
                    if mine != announced[0] or now - announced[1] >= HEARTBEAT_S:
                        value = {"owned": sorted(mine.owned), "active": sorted(mine.active)}
                        await kv.put(key, json.dumps(value).encode())
                        announced = (mine, now)
                    members = await _members(nc, _key_safe(self.topics.root))
                    decision = decide(
                        self.member,
                        view_with(self.member, mine, members),
                        load,
                        gained,
                        self._released,
                        now,
                        settle_s=max(self.pin_timeout_s, 2.0),
                    )
                    self._asks = decision.ask
                    if self._releasing not in owned:
                        self._releasing = None  # lost meanwhile
                    if decision.release is not None and self._releasing is None:
                        log.info(
                            "partition %d: releasing it to a worker below its share (%d workers)",
                            decision.release,
                            len(members),
                        )
                        self._releasing = decision.release
                except (nats.errors.Error, TimeoutError, ClusterError) as exc:
                    self._asks = True
                    log.info("balancing: %s; this worker asks for every partition meanwhile", exc)
                await asyncio.sleep(BALANCE_TICK_S)
        finally:
            # Whatever stopped it, this worker must not leave partitions unasked.
            self._asks = True

    async def _release(
        self, part: int, consumer: str, pull: PartitionPull, nc: NatsClient, prefix: str
    ) -> bool:
        """Give `part` up in order (its pull task, having stopped pulling it): wait until what
        is in hand of it is stored and acknowledged, and the server has nothing of it pending,
        then unpin it, so a worker below its share, whose pull waits, is pinned and its gain
        need not wait for unacknowledged readings. Gives up releasing (and pulls on, keeping
        the pin) if that takes longer than most of the pin timeout."""
        started = time.monotonic()
        deadline = started + 0.6 * min(self.pin_timeout_s, self.ack_wait_s)
        try:
            while self._in_hand(prefix) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            while time.monotonic() < deadline:
                info = await nc.jetstream(timeout=1).consumer_info(MQTT_MSGS_STREAM, consumer)
                if not info.num_ack_pending:
                    break
                await asyncio.sleep(0.05)
            else:
                log.info("partition %d: kept (readings still unacknowledged)", part)
                return False
            await pull.unpin()
        except (nats.errors.Error, TimeoutError, ClusterError) as exc:
            log.info("partition %d: kept (could not release it: %s)", part, exc)
            return False
        finally:
            self._releasing = None
            # Kept or not, the next release waits (ingest.balance.decide's settle time).
            self._released = Release(part, time.monotonic())
        self._lose(part, f"released to balance the workers ({time.monotonic() - started:.2f} s)")
        return True

    def _in_hand(self, prefix: str) -> bool:
        with self._held_lock:
            return any(m.subject.startswith(prefix) for m, _ in self._held.values())

    async def _leave(self, nc: NatsClient, consumers: Sequence[str]) -> None:
        """A clean stop, once what was in hand is stored and acknowledged: withdraw the
        announcement and unpin the partitions with nothing pending, so the other workers take
        them at once rather than after the pin timeout."""
        with contextlib.suppress(nats.errors.Error, TimeoutError, ClusterError):
            kv = await _workers_bucket(nc)
            await kv.delete(f"{_key_safe(self.topics.root)}.{self.member}")
        for part in sorted(self.owned):
            pull = PartitionPull(nc, consumers[part])
            try:
                info = await nc.jetstream().consumer_info(MQTT_MSGS_STREAM, consumers[part])
                if not info.num_ack_pending:
                    await pull.unpin()
                    log.info("partition %d handed over (stopping)", part)
            except (nats.errors.Error, TimeoutError, ClusterError) as exc:
                log.info("partition %d: left to the pin timeout (%s)", part, exc)


def _member_name() -> str:
    """This worker's key among the members: host, process and a random part (unique)."""
    return _key_safe(f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}")


def _key_safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)


async def _workers_bucket(nc: NatsClient) -> KeyValue:
    js = nc.jetstream(timeout=3)
    try:
        return await js.key_value(WORKERS_BUCKET)
    except BucketNotFoundError:
        # Every worker may create it at once: the same configuration is accepted twice.
        return await js.create_key_value(
            KeyValueConfig(
                bucket=WORKERS_BUCKET,
                history=1,
                ttl=MEMBER_TTL_S,
                replicas=REPLICAS,
                storage=StorageType.MEMORY,
                direct=True,
            )
        )


async def _members(nc: NatsClient, root_key: str, timeout_s: float = 3.0) -> dict[str, Member]:
    """The announcements of the live workers of this topic root (a key lapses with the
    bucket's TTL), in one direct get of each key's last value: any replica answers it, and it
    creates no consumer (a watcher would, through the meta leader, twice a second per worker).
    An announcement that does not parse is left out."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    prefix = f"$KV.{WORKERS_BUCKET}.{root_key}."
    request = {"multi_last": [prefix + "*"], "batch": 1024}
    members: dict[str, Member] = {}
    try:
        await nc.publish(
            f"$JS.API.DIRECT.GET.KV_{WORKERS_BUCKET}", json.dumps(request).encode(), reply=inbox
        )
        deadline = time.monotonic() + timeout_s
        while True:
            msg = await sub.next_msg(timeout=max(deadline - time.monotonic(), 0.01))
            headers = msg.headers or {}
            if "Status" in headers:  # 204: the end of the batch; 404: nobody announced
                if headers["Status"] in ("204", "404"):
                    break
                raise ClusterError(f"the workers' bucket answered {headers['Status']}")
            name = headers.get("Nats-Subject", "")[len(prefix) :]
            if headers.get("KV-Operation") in ("DEL", "PURGE") or not name:
                continue
            try:
                doc = json.loads(msg.data)
                owned = frozenset(int(p) for p in doc["owned"])
                members[name] = Member(owned, owned & frozenset(int(p) for p in doc["active"]))
            except (ValueError, KeyError, TypeError):
                log.warning("balancing: %s's announcement is not one; left out", name)
    finally:
        await sub.unsubscribe()
    return members


def _without_password(url: str) -> str:
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1) if "://" in url else ("", url)
    return f"{scheme}://{rest.split('@', 1)[1]}"
