"""The notifier's running process: follows alert events over MQTT, decides with the pure cores,
queues on disk, delivers per destination, and publishes each alert's notification history.

| thread               | owns                            | talks to                           |
|----------------------|---------------------------------|------------------------------------|
| paho network thread  | nothing                         | puts deliveries on `inbox`         |
| router (`run`)       | tracks, maintenance, registry   | store (commit), broker (ack)       |
| sender, one per dest | its destination's backoff       | store, its channel, maintenance (r) |
| history publisher    | the last record sent per alert  | store (read), broker (retained)    |

Events are acknowledged to the broker only after the notifications they cause are committed
to the store, so a crash of the notifier loses nothing (the broker redelivers, the ids dedupe).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import orjson

from floodwatch.metrics import Metric
from floodwatch.mqtt import Delivery as MqttDelivery
from floodwatch.mqtt import MqttConnection
from floodwatch.operations import LiveRegistry, Maintenance
from floodwatch.registry import Registry
from floodwatch.topics import Topics
from notify.channels import Adapter, Outcome, adapter_for
from notify.escalation import (
    Track,
    next_due_ns,
    on_episode,
    on_event,
    on_maintenance_end,
    on_tick,
)
from notify.model import AlertFacts, Send, facts_from_episode, facts_from_event, facts_from_retained
from notify.plan import alert_doc, event_from_payload, iso, outgoing, plan
from notify.routing import Routing
from notify.store import DEAD, DELIVERED, PENDING, SUPPRESSED, Delivery, Settled, Store

log = logging.getLogger("notify")

_S = 10**9
# A send a deposed notifier did not make (notify/lease.py); the sender leaves it pending.
FENCED = Outcome("retry", "not sent: this notifier no longer holds the lease")
# A notification the active notifier's retained record shows settled (the standby copies it).
SETTLED = (DELIVERED, DEAD, SUPPRESSED)


@dataclass(frozen=True, slots=True)
class NotifierOptions:
    page_url: str
    retry_base_s: float = 1.0
    retry_max_s: float = 300.0
    give_up_s: float = 24 * 3600.0
    batch: int = 50
    keep_history_s: float = 7 * 24 * 3600.0


def _settled_from(item: dict[str, object], now_ns: int) -> Settled:
    """What a record says of one settled notification; when it was delivered as the record
    says (else now), so the history keeps the time after a takeover."""
    delivered_ns: int | None = None
    if item.get("status") == DELIVERED:
        delivered_ns = now_ns
        with contextlib.suppress(TypeError, ValueError):
            delivered_ns = int(datetime.fromisoformat(str(item["delivered_at"])).timestamp() * _S)
    attempts = item.get("attempts")
    return Settled(
        str(item["status"]),
        str(item.get("error") or ""),
        delivered_ns,
        attempts if isinstance(attempts, int) else 0,
    )


def backoff_s(failures: int, base_s: float, cap_s: float) -> float:
    """Capped exponential backoff: base, 2 base, 4 base, ... never more than the cap."""
    return float(min(cap_s, base_s * 2 ** max(0, failures - 1)))


def _json(payload: bytes) -> object:
    """The JSON in a payload, or None (malformed input is ignored, never fatal)."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None


class Sender:
    """Delivers one destination's queue, per alert in order, several alerts at once."""

    def __init__(
        self,
        dest: str,
        adapter: Adapter,
        concurrency: int,
        store: Store,
        options: NotifierOptions,
        on_change: Callable[[set[str]], None],
        stop: threading.Event,
        clock: Callable[[], int] = time.time_ns,
        silenced: Callable[[str], str] = lambda alert_id: "",
        may_send: Callable[[], bool] = lambda: True,
    ) -> None:
        self.dest = dest
        # The clustered mode's fence (notify/lease.py): only the lease's holder sends.
        self.may_send = may_send
        self.silenced = silenced
        self.adapter = adapter
        self.store = store
        self.options = options
        self.on_change = on_change
        self.stop = stop
        self.clock = clock
        self.wake = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="notify-send")
        self.concurrency = concurrency
        self.failures = 0
        self.thread = threading.Thread(target=self.run, name=f"notify-{dest}", daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.may_send():
                # A standby: its queue mirrors the active one's; it sends once it holds the lease.
                self.wake.wait(0.2)
                self.wake.clear()
                continue
            now = self.clock()
            ready, later = self.store.due(self.dest, now, max(self.options.batch, self.concurrency))
            # Checked again just before sending: a notification queued before its sensor went
            # under maintenance (waiting for a receiver that was down) goes to nobody either.
            held = [(item, self.silenced(item.alert_id)) for item in ready]
            quiet = [(item, why) for item, why in held if why]
            if quiet:
                for why in {w for _, w in quiet}:
                    self.store.suppress([i.id for i, w in quiet if w == why], why)
                self.on_change({i.alert_id for i, _ in quiet})
                continue
            if self.failures and ready:
                # After a failure one notification probes the destination before the rest
                # follow; a different alert's each time, so one bad notification cannot
                # keep the destination shut.
                ready = [ready[self.failures % len(ready)]]
            if not ready:
                wait = 1.0 if later is None else min(1.0, max(0.0, (later - now) / _S))
                self.wake.wait(wait)
                self.wake.clear()
                continue
            outcomes = list(self.pool.map(self._attempt, ready))
            self._record(ready, outcomes)
            if self.failures:
                pause = backoff_s(
                    self.failures, self.options.retry_base_s, self.options.retry_max_s
                )
                hinted = [o.retry_after_s for o in outcomes if o.retry_after_s is not None]
                if hinted:
                    pause = min(self.options.retry_max_s, max(pause, max(hinted)))
                log.warning(
                    "%s: delivery failed (%s); next try in %.0f s",
                    self.dest.split("|")[0],
                    next(o.detail for o in outcomes if o.status == "retry"),
                    pause,
                )
                self.stop.wait(pause)
        self.pool.shutdown(wait=True)
        self.adapter.close()

    def _attempt(self, item: Delivery) -> Outcome:
        if not self.may_send():
            return FENCED  # lost the lease while the batch waited: the new holder sends it
        try:
            return self.adapter.send(outgoing(item))
        except Exception as exc:  # a bug in one adapter must not stop the destination
            log.exception("%s: unexpected error sending %s", self.dest, item.notification_id)
            return Outcome("retry", f"{type(exc).__name__}: {exc}")

    def _record(self, items: list[Delivery], outcomes: list[Outcome]) -> None:
        now = self.clock()
        kept = [(i, o) for i, o in zip(items, outcomes, strict=True) if o is not FENCED]
        if len(kept) < len(items):
            # Not attempted: left pending as they were, neither failed nor counted.
            items, outcomes = [i for i, _ in kept], [o for _, o in kept]
            if not items:
                return
        done = [i.id for i, o in zip(items, outcomes, strict=True) if o.status == "delivered"]
        dead = [
            (i.id, o.detail) for i, o in zip(items, outcomes, strict=True) if o.status == "dead"
        ]
        retry: list[tuple[int, str]] = []
        for item, outcome in zip(items, outcomes, strict=True):
            if outcome.status != "retry":
                continue
            if now - item.created_ns > self.options.give_up_s * _S:
                dead.append(
                    (item.id, f"gave up after {self.options.give_up_s:g} s: {outcome.detail}")
                )
            else:
                retry.append((item.id, outcome.detail))
        if done:
            self.store.delivered(done, now)
        if dead:
            self.store.failed(dead, dead=True)
            for item_id, detail in dead:
                log.error("%s: notification %d is a dead letter: %s", self.dest, item_id, detail)
        if retry and not done:
            # Nothing got through: the destination is down or throttling. It waits as a whole
            # (see run), then one notification probes it.
            self.store.failed(retry, dead=False)
            self.failures += 1
        else:
            # The destination works: only these notifications wait, each with its own backoff,
            # so one that keeps failing cannot hold up other alerts.
            attempts = {i.id: i.attempts for i in items}
            for item_id, detail in retry:
                pause = backoff_s(
                    attempts[item_id] + 1, self.options.retry_base_s, self.options.retry_max_s
                )
                self.store.failed(
                    [(item_id, detail)], dead=False, retry_at_ns=now + int(pause * _S)
                )
            self.failures = 0
        self.on_change({i.alert_id for i in items})


class Notifier:
    def __init__(
        self,
        routing: Routing,
        registry: Registry,
        topics: Topics,
        store: Store,
        options: NotifierOptions,
        clock: Callable[[], int] = time.time_ns,
        may_send: Callable[[], bool] | None = None,
    ) -> None:
        self.routing = routing
        self.registry = registry
        # Operators' changes (floodwatch.operations), applied by the router as they arrive.
        self.live_registry = LiveRegistry(registry)
        self.maintenance: dict[str, Maintenance] = {}
        self._maintenance_prefix = topics.maintenance("")
        self._registry_prefix = topics.registry_override("")
        self.topics = topics
        self.store = store
        self.options = options
        self.clock = clock
        self.inbox: queue.Queue[MqttDelivery] = queue.Queue()
        self.stop = threading.Event()
        self.tracks: dict[str, Track] = store.load_tracks()
        self.senders: dict[str, Sender] = {}
        self._senders_lock = threading.Lock()
        self._dirty: set[str] = set()
        self._gone: set[str] = set()  # alerts forgotten: their retained record is removed
        self._dirty_lock = threading.Lock()
        self._pruned_ns = 0
        self._published: dict[str, bytes] = {}
        self.mqtt: MqttConnection | None = None
        self.events_seen = 0
        self.ignored = 0
        self._alerts_prefix = topics.alert("")
        # The clustered mode (notify/lease.py): None for the single node, which always sends.
        # Otherwise this notifier also follows the retained notification records, so that as
        # a standby it knows what the active one settled: alert -> notification id -> outcome.
        self.may_send = may_send
        self._records_prefix = topics.notifications("")
        self._settled: dict[str, dict[str, Settled]] = {}
        # ... and per alert (recipient, channel) -> outcome of its `raised` ones: a standby
        # that learnt the alert from its retained state queued it under another id.
        self._raised: dict[str, dict[tuple[str, str], Settled]] = {}
        self._was_active = False

    # -- wiring ---------------------------------------------------------------------------------

    def mark_dirty(self, alert_ids: set[str]) -> None:
        with self._dirty_lock:
            self._dirty |= alert_ids

    def ensure_senders(self) -> None:
        """A sender for every destination that has something queued."""
        for dest, channel_name in self.store.destinations():
            with self._senders_lock:
                sender = self.senders.get(dest)
                if sender is None:
                    channel = self.routing.channels.get(channel_name)
                    if channel is None:
                        # Queued before its channel left the routing file: nobody can send
                        # it now; a dead letter the operator can see (and replay once the
                        # channel is back).
                        count = self.store.abandon(
                            dest, f"channel {channel_name!r} is no longer in the routing file"
                        )
                        log.error(
                            "%d notifications for %s are dead letters: channel %r "
                            "is no longer in the routing file",
                            count,
                            dest,
                            channel_name,
                        )
                        continue
                    default = {"email": 1, "log": 1}.get(channel.type, 8)
                    concurrency = int(channel.number("concurrency", default))
                    sender = Sender(
                        dest,
                        adapter_for(channel),
                        max(1, concurrency),
                        self.store,
                        self.options,
                        self.mark_dirty,
                        self.stop,
                        self.clock,
                        self.silence_reason,
                        self.may_send or (lambda: True),
                    )
                    self.senders[dest] = sender
                    sender.thread.start()
            sender.wake.set()

    def subscriptions(self) -> list[tuple[str, int]]:
        """Alert events, the sensors' retained alert states, and finished flood episodes."""
        subscriptions = [
            (self.topics.all_alert_events, 1),
            (self.topics.alert("+"), 1),
            (self.topics.episodes, 1),
            (self.topics.maintenance("+"), 1),
            (self.topics.registry_override("+"), 1),
        ]
        if self.may_send is not None:
            # The active notifier's records: what it delivered (a standby copies the status).
            subscriptions.append((self.topics.notifications("+"), 1))
        return subscriptions

    def deliver(self, delivery: MqttDelivery) -> None:
        """paho's thread: hand the message to the router."""
        self.inbox.put(delivery)

    # -- the router -----------------------------------------------------------------------------

    def handle(self, batch: list[MqttDelivery]) -> None:
        """Apply a batch of alert events, commit what they cause, then acknowledge them."""
        now = self.clock()
        changed: dict[str, Track] = {}
        sends: list[Send] = []
        view = dict(self.tracks)
        for message in batch:
            if self._operation(message, now, view, changed, sends):
                continue
            if self._note_record(message, now):
                continue
            if not message.payload:
                continue  # a sensor's retained state cleared: nothing to announce
            if message.topic == self.topics.episodes:
                episode = facts_from_episode(_json(message.payload), self.registry)
                if episode is not None:
                    sends.extend(on_episode(episode, self.routing))
                continue
            facts_list: list[AlertFacts]
            if message.topic.startswith(self._alerts_prefix):
                # Retained states: alerts raised while no notifier (or an earlier state file)
                # was listening; those already known are ignored by on_event (rule 1).
                facts_list = facts_from_retained(_json(message.payload), self.registry, now)
            else:
                event = event_from_payload(message.payload)
                if event is None:
                    self.ignored += 1
                    log.warning(
                        "ignoring a message on %s that is not an alert event", message.topic
                    )
                    continue
                self.events_seen += 1
                facts_list = [facts_from_event(event, self.registry)]
            for facts in facts_list:
                updated, new_sends = on_event(view, facts, self.routing, now)
                view.update(updated)
                changed.update(updated)
                sends.extend(new_sends)
        deliveries = plan(sends, self.routing, self.options.page_url, now, self.silenced(now))
        self.store.commit(changed, [], deliveries, now)
        self._settle_known({d.alert_id for d in deliveries}, now)
        self.tracks = view
        if self.mqtt is not None:
            self.mqtt.ack_many(batch)
        if deliveries:
            self.ensure_senders()
        self.mark_dirty(set(changed))

    def _operation(
        self,
        message: MqttDelivery,
        now: int,
        view: dict[str, Track],
        changed: dict[str, Track],
        sends: list[Send],
    ) -> bool:
        """Apply a maintenance record or a registry override; False for any other message."""
        sensor_id = self.topics.last_level(message.topic, self._maintenance_prefix)
        if sensor_id is not None:
            record = Maintenance.from_json(sensor_id, message.payload)
            held = self.maintenance.pop(sensor_id, None)
            if record is not None and record.until_ns > now:
                self.maintenance[sensor_id] = record
                log.info("%s under maintenance until %s", sensor_id, record.to_dict()["until"])
            elif held is not None or record is not None:
                # Ended by an operator, or a record that expired while nobody listened.
                ended_ns = now if record is None else record.until_ns
                updated, new_sends = on_maintenance_end(view, sensor_id, self.routing, ended_ns)
                view.update(updated)
                changed.update(updated)
                sends.extend(new_sends)
                log.info("%s: maintenance over", sensor_id)
            # The history records show the sensor's maintenance: republish them.
            self.mark_dirty({a for a, t in view.items() if t.facts.sensor_id == sensor_id})
            return True
        sensor_id = self.topics.last_level(message.topic, self._registry_prefix)
        if sensor_id is not None:
            registry = self.live_registry.apply(sensor_id, message.payload)
            if registry is not None:
                self.registry = registry
            for problem in self.live_registry.problems:
                log.error("registry override skipped: %s", problem)
            return True
        return False

    def _note_record(self, message: MqttDelivery, now: int) -> bool:
        """A retained notification record (clustered mode only); False for any other message.

        A standby marks what the record shows delivered, dead or suppressed as such in its own
        queue, so that on taking over it sends only what the dead active one had not settled
        (and what it settled in its last moments, before publishing, again: at least once)."""
        alert_id = self.topics.last_level(message.topic, self._records_prefix)
        if alert_id is None or self.may_send is None:
            return False
        doc = _json(message.payload) if message.payload else None
        items = doc.get("notifications") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            self._settled.pop(alert_id, None)  # the alert was forgotten (or a bad record)
            self._raised.pop(alert_id, None)
            return True
        done = [
            item
            for item in items
            if isinstance(item, dict)
            and item.get("status") in SETTLED
            and "notification_id" in item
        ]
        self._settled[alert_id] = {str(i["notification_id"]): _settled_from(i, now) for i in done}
        self._raised[alert_id] = {
            (str(i.get("recipient")), str(i.get("channel"))): _settled_from(i, now)
            for i in done
            if i.get("message") == "raised"
        }
        self._settle_known({alert_id}, now)
        return True

    def _settle_known(self, alert_ids: set[str], now: int) -> None:
        """While a standby: copy the settled statuses known for these alerts into the queue
        (a record may arrive before the event that queues its notifications here)."""
        if self.may_send is None or self.may_send():
            return  # the holder's own queue is the truth; its records only echo it
        settled = {
            nid: outcome
            for alert_id in alert_ids
            for nid, outcome in self._settled.get(alert_id, {}).items()
        }
        for alert_id in alert_ids:
            raised = self._raised.get(alert_id)
            if not raised:
                continue
            # One `raised` per alert and recipient and channel, whatever its id: the one queued
            # here from the retained state (`...:retained`) is the one the active one sent.
            for row in self.store.history(alert_id):
                told = raised.get((row.recipient, row.channel))
                if row.status == PENDING and row.message == "raised" and told is not None:
                    settled[row.notification_id] = told
        if settled:
            self.store.settle(settled)

    def prime(self, held: dict[str, bytes]) -> None:
        """Apply the retained maintenance records and registry overrides read before the
        subscriptions start (notify/__main__.py); an expired record is left to `handle`."""
        now = self.clock()
        for topic, payload in sorted(held.items()):
            sensor_id = self.topics.last_level(topic, self._maintenance_prefix)
            if sensor_id is not None:
                record = Maintenance.from_json(sensor_id, payload)
                if record is not None and record.until_ns > now:
                    self.maintenance[sensor_id] = record
                continue
            sensor_id = self.topics.last_level(topic, self._registry_prefix)
            if sensor_id is not None:
                registry = self.live_registry.apply(sensor_id, payload)
                if registry is not None:
                    self.registry = registry

    def silence_reason(self, alert_id: str) -> str:
        """Senders' threads: why a queued notification of this alert must go to nobody now
        ("" when it may go). Reads the router's maintenance map: a dict read is atomic."""
        record = self.maintenance.get(alert_id.split(":", 1)[0])
        if record is None or not record.active_at(self.clock()):
            return ""
        return self._why(record)

    def _why(self, m: Maintenance) -> str:
        return f"under maintenance until {m.to_dict()['until']} ({m.who}: {m.reason})"

    def silenced(self, now: int) -> dict[str, str]:
        """Sensors whose notifications go to nobody now, with why (their maintenance)."""
        return {
            sensor_id: self._why(m)
            for sensor_id, m in list(self.maintenance.items())
            if m.active_at(now)
        }

    def _expire_maintenance(self, now: int) -> tuple[dict[str, Track], list[Send]]:
        changed: dict[str, Track] = {}
        sends: list[Send] = []
        for sensor_id, record in sorted(self.maintenance.items()):
            if record.until_ns > now:
                continue
            del self.maintenance[sensor_id]
            view = {**self.tracks, **changed}
            updated, new_sends = on_maintenance_end(view, sensor_id, self.routing, record.until_ns)
            changed.update(updated)
            sends.extend(new_sends)
            log.info("%s: maintenance expired", sensor_id)
        return changed, sends

    def tick(self) -> None:
        now = self.clock()
        expired, over = self._expire_maintenance(now)
        if expired or over:
            deliveries = plan(over, self.routing, self.options.page_url, now, self.silenced(now))
            self.store.commit(expired, [], deliveries, now)
            self.tracks = {**self.tracks, **expired}
            if deliveries:
                self.ensure_senders()
            self.mark_dirty(set(expired))
        if now - self._pruned_ns > 3600 * _S:
            self._pruned_ns = now
            self.store.prune(now - int(self.options.keep_history_s * _S))
        due = next_due_ns(self.tracks)
        closed = any(t.closed_ns is not None for t in self.tracks.values())
        if (due is None or due > now) and not closed:
            return
        changed, sends, forget = on_tick(self.tracks, now)
        if not changed and not forget:
            return
        deliveries = plan(sends, self.routing, self.options.page_url, now, self.silenced(now))
        self.store.commit(changed, forget, deliveries, now)
        self._settle_known({d.alert_id for d in deliveries}, now)
        self.tracks = {k: v for k, v in {**self.tracks, **changed}.items() if k not in forget}
        if deliveries:
            self.ensure_senders()
        self.mark_dirty(set(changed))
        with self._dirty_lock:
            self._gone.update(forget)  # their retained records are removed too

    def run(self) -> None:
        """The router loop, until `stop` is set."""
        self.ensure_senders()  # what was queued before a restart
        publisher = threading.Thread(
            target=self.publish_history, name="notify-history", daemon=True
        )
        publisher.start()
        next_tick = 0.0
        while not self.stop.is_set():
            try:
                first = self.inbox.get(timeout=0.2)
            except queue.Empty:
                first = None
            if first is not None:
                batch = [first]
                while len(batch) < 1000:
                    try:
                        batch.append(self.inbox.get_nowait())
                    except queue.Empty:
                        break
                self.handle(batch)
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + 1.0
                self._follow_lease()
                self.tick()
                self.ensure_senders()  # replayed dead letters, held notifications
        publisher.join(5)
        for sender in list(self.senders.values()):
            sender.wake.set()
            sender.thread.join(10)

    def _follow_lease(self) -> None:
        """Log a change of role; a new holder republishes every record from its own queue."""
        if self.may_send is None:
            return
        active = self.may_send()
        if active and not self._was_active:
            log.info("active: delivering the queue (%s)", self.summary())
            self.mark_dirty(set(self.tracks) | set(self._settled))
            with self._dirty_lock:
                self._published.clear()
        elif self._was_active and not active:
            log.warning("standby: stopped delivering (the lease is lost)")
        self._was_active = active

    # -- history --------------------------------------------------------------------------------

    def record(self, alert_id: str) -> bytes:
        """The retained notification record of one alert (no addresses: the topic is shared)."""
        track = self.tracks.get(alert_id)
        rows = self.store.history(alert_id)
        doc: dict[str, object] = {"alert_id": alert_id, "updated_at": iso(self.clock())}
        sensor_id = track.facts.sensor_id if track is not None else alert_id.split(":", 1)[0]
        under = self.maintenance.get(sensor_id)
        doc["maintenance"] = (
            under.to_dict() if under is not None and under.active_at(self.clock()) else None
        )
        if track is not None:
            doc["alert"] = alert_doc(track.facts)
            doc["escalation"] = {
                "waiting": track.unack_since_ns is not None and bool(track.pending),
                "next_tier": track.pending[0].tier if track.pending else None,
                "next_at": iso(track.pending[0].due_ns) if track.pending else None,
                "next_notify": list(track.pending[0].notify) if track.pending else [],
                "stopped_by": None
                if track.unack_since_ns is not None
                else ("cleared" if track.closed_ns is not None else "acknowledged"),
            }
        items = []
        for row in rows:
            recipient = self.routing.recipients.get(row.recipient)
            channel = self.routing.channels.get(row.channel)
            held = row.status == "pending" and row.next_ns > row.created_ns and not row.attempts
            items.append(
                {
                    "notification_id": row.notification_id,
                    "recipient": row.recipient,
                    "recipient_name": recipient.display if recipient else row.recipient,
                    "channel": row.channel,
                    "channel_type": channel.type if channel else "",
                    "message": row.message,
                    "tier": row.tier,
                    "status": "held" if held else row.status,
                    "queued_at": iso(row.created_ns),
                    "delivered_at": iso(row.delivered_ns) if row.delivered_ns else None,
                    "attempts": row.attempts,
                    "error": row.last_error or None,
                }
            )
        doc["notifications"] = items
        return orjson.dumps(doc)

    def publish_history(self) -> None:
        while not self.stop.wait(0.2):
            with self._dirty_lock:
                dirty, self._dirty = self._dirty, set()
                gone, self._gone = self._gone, set()
            if self.mqtt is None:
                continue
            if self.may_send is not None and not self.may_send():
                # Only the active notifier writes the records; a standby keeps them for later.
                with self._dirty_lock:
                    self._dirty |= dirty
                    self._gone |= gone
                continue
            for alert_id in sorted(gone):
                self.mqtt.publish(self.topics.notifications(alert_id), b"", qos=1, retain=True)
                self._published.pop(alert_id, None)
                dirty.discard(alert_id)
            for alert_id in sorted(dirty):
                payload = self.record(alert_id)
                if self._published.get(alert_id) == payload:
                    continue
                self.mqtt.publish(self.topics.notifications(alert_id), payload, qos=1, retain=True)
                self._published[alert_id] = payload

    def metrics(self) -> list[Metric]:
        """For Prometheus (--metrics-port): events, the queue by status, its oldest age."""
        counts = self.store.counts()
        oldest = self.store.oldest_pending_ns()
        age = 0.0 if oldest is None else max(0.0, (self.clock() - oldest) / _S)
        return [
            Metric(
                "floodwatch_notify_events_total",
                "Alert events applied.",
                "counter",
                [({}, self.events_seen)],
            ),
            Metric(
                "floodwatch_notify_ignored_total",
                "Messages that were not alert events (logged and skipped).",
                "counter",
                [({}, self.ignored)],
            ),
            Metric(
                "floodwatch_notify_notifications",
                "Notifications in the state file by status (dead: the dead letters; "
                "suppressed: not sent, the sensor was under maintenance).",
                "gauge",
                [
                    ({"status": st}, counts.get(st, 0))
                    for st in (PENDING, DELIVERED, DEAD, SUPPRESSED)
                ],
            ),
            Metric(
                "floodwatch_notify_oldest_pending_seconds",
                "Age of the oldest undelivered notification (0 when none waits).",
                "gauge",
                [({}, age)],
            ),
            Metric(
                "floodwatch_notify_active",
                "1 while this notifier delivers: always on a single node; in the cluster while "
                "it holds the lease (0: standing by).",
                "gauge",
                [({}, 1 if self.may_send is None or self.may_send() else 0)],
            ),
            Metric(
                "floodwatch_notify_open_alerts",
                "Alerts being followed (not cleared).",
                "gauge",
                [({}, sum(1 for t in self.tracks.values() if t.closed_ns is None))],
            ),
        ]

    def summary(self) -> str:
        counts = self.store.counts()
        open_alerts = sum(1 for t in self.tracks.values() if t.closed_ns is None)
        return (
            f"events={self.events_seen} open_alerts={open_alerts} "
            f"queued={counts.get('pending', 0)} delivered={counts.get(DELIVERED, 0)} "
            f"dead={counts.get(DEAD, 0)}"
        )
