"""The live feed: the pipeline's MQTT topics kept in api.live and replayed to /v1/stream.

`FeedHandler` is the logic, without I/O: one message in, state updated and events logged.
Readings are decoded by ingest's own decoder (`floodwatch.decode.decode_message`), so the API
accepts exactly what ingest stores. `LiveFeed` is the shell: an MqttConnection whose network
thread only queues messages and wakes the event loop, which applies them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

import orjson
from paho.mqtt.client import topic_matches_sub

from api.alerts import alert_json, record_from_payload
from api.eventlog import EventLog
from api.geo import sensor_properties
from api.live import (
    AlertPayload,
    LiveState,
    alert_time_ns,
    parse_alert_payload,
    summarise_alerts,
)
from api.metrics import Metrics
from floodwatch.credentials import bound_client_id
from floodwatch.decode import decode_message
from floodwatch.errors import BrokerError
from floodwatch.mqtt import Delivery, MqttConnection
from floodwatch.operations import LiveRegistry, Maintenance
from floodwatch.registry import Registry
from floodwatch.settings import MqttEndpoint
from floodwatch.topics import Topics

log = logging.getLogger(__name__)

# How long an MQTT attempt waits for the broker's answer, and the cap on the wait between them.
ATTEMPT_TIMEOUT_S = 5.0
MAX_RETRY_DELAY_S = 10.0


def alert_event_key(
    sensor_id: str, parsed: AlertPayload, payload: bytes, previous: bytes, previous_key_ns: int
) -> tuple[int, bytes]:
    """(key_ns, source) of an `alert` stream event's id (api.eventlog.event_id): keyed by the
    engine's reading time; a cleared (empty) payload has none and takes the previous payload's
    key. The source holds the previous payload too, so each clearing differs. All of it is
    what every replica heard, in the broker's order for the topic, so their ids agree."""
    key_ns = alert_time_ns(parsed.envelope or {}, "reading_time") or previous_key_ns
    return key_ns, b"\0".join((sensor_id.encode(), payload, previous))


class FeedHandler:
    """Applies one MQTT message to the live state and logs the resulting stream events."""

    def __init__(
        self,
        topics: Topics,
        registry: Registry,
        state: LiveState,
        events: EventLog,
        metrics: Metrics,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.topics = topics
        self.state = state
        # The base registry plus operators' overrides (floodwatch.operations).
        self.live_registry = LiveRegistry(registry)
        self.events = events
        self.metrics = metrics
        self._clock = clock
        self._alerts_prefix = f"{topics.base}/alerts/"
        self._maintenance_prefix = topics.maintenance("")
        self._registry_prefix = topics.registry_override("")
        self._notifications_prefix = topics.notifications("")
        # The sensor's last alerts payload: the next one's event id is made with it, so that
        # a cleared (empty) payload too gets the same id on every API replica.
        self._alert_payloads: dict[str, tuple[bytes, int]] = {}

    @property
    def registry(self) -> Registry:
        return self.state.registry

    def handle(self, topic: str, payload: bytes, retained: bool, received_at_ns: int) -> None:
        if topic.startswith(self._alerts_prefix):
            self.alerts(topic[len(self._alerts_prefix) :], payload, received_at_ns)
            return
        if self.operation(topic, payload):
            return
        # On a NATS cluster a sensor's publish arrives on its partition topic (Topics).
        topic = self.topics.unpartitioned(topic)
        decoded = decode_message(
            self.topics, self.registry, topic, payload, received_at_ns, retained
        )
        # A backfill array can hold many readings: only a sensor's new newest one is live news.
        newest: set[str] = set()
        for reading in decoded.readings:
            # A retained reading is an old one the broker replays to a new subscriber: it says
            # nothing about when the sensor was last heard, beyond its own time.
            heard = min(reading.time_ns, received_at_ns) if retained else received_at_ns
            if self.state.apply_reading(reading, heard, live=not retained):
                newest.add(reading.sensor_id)
        for status in decoded.statuses:
            self.state.apply_status(status)
        self.metrics.mqtt_messages.inc(("reading" if decoded.readings else "status",))
        if decoded.rejections:
            # Ingest dead-letters these with reasons; the API only counts them.
            self.metrics.mqtt_messages.inc(("rejected",))
        now_ns = self._clock()
        for sensor_id in sorted(newest):
            now = self.state.get(sensor_id)
            assert now is not None and now.reading is not None
            data = orjson.dumps(sensor_properties(now, now_ns)).decode()
            # Its id from the reading itself, so every API replica gives it the same one.
            held = now.reading
            source = f"{sensor_id} {held.time_ns} {held.level_cm!r}".encode()
            self.events.publish("reading", data, held.time_ns, source)

    def operation(self, topic: str, payload: bytes) -> bool:
        """Maintenance, registry overrides and the notifier's records; False for others."""
        topics = self.topics
        sensor_id = topics.last_level(topic, self._maintenance_prefix)
        if sensor_id is not None:
            record = Maintenance.from_json(sensor_id, payload)
            if self.state.apply_maintenance(sensor_id, record):
                self.sensor_changed(sensor_id, payload)
            self.metrics.mqtt_messages.inc(("maintenance",))
            return True
        sensor_id = topics.last_level(topic, self._registry_prefix)
        if sensor_id is not None:
            registry = self.live_registry.apply(sensor_id, payload)
            for problem in self.live_registry.problems:
                log.error("registry override skipped: %s", problem)
            if registry is not None:
                self.state.apply_registry(registry)
                self.sensor_changed(sensor_id, payload)
            self.metrics.mqtt_messages.inc(("registry",))
            return True
        if topic.startswith(self._notifications_prefix):
            alert_id = topic[len(self._notifications_prefix) :]
            if payload:
                changed = self.state.notifications.get(alert_id) != payload
                self.state.notifications[alert_id] = payload
            else:
                changed = self.state.notifications.pop(alert_id, None) is not None
            self.metrics.mqtt_messages.inc(("notifications",))
            if changed:
                self.notification_changed(alert_id, payload)
            return True
        return False

    def sensor_changed(self, sensor_id: str, payload: bytes) -> None:
        """A `sensor` stream event: the sensor as /v1/sensors shows it now (maintenance,
        calibration, an added sensor), or `{"id", "retired": true}` when it left. `payload`
        is the operator's message behind it (the event's id)."""
        now_ns = self._clock()
        now = self.state.get(sensor_id)
        data: dict[str, object] = (
            {"id": sensor_id, "retired": True} if now is None else sensor_properties(now, now_ns)
        )
        source = sensor_id.encode() + b"\0" + payload
        self.events.publish("sensor", orjson.dumps(data).decode(), now_ns, source)

    def notification_changed(self, alert_id: str, payload: bytes) -> None:
        """A `notification` stream event: the alert's notification record as
        /v1/alerts/{id}/notifications serves it, or `{"alert_id", "notifications": null}`
        when the notifier dropped it (a replayed, unchanged record sends nothing)."""
        try:
            doc = orjson.loads(payload) if payload else None
        except orjson.JSONDecodeError:
            log.warning("notification record for %r is not JSON; not streamed", alert_id[:80])
            return
        if not isinstance(doc, dict):
            doc = {"alert_id": alert_id, "notifications": None}
        # The record's own bytes make the id, so every replica names this change alike.
        source = alert_id.encode() + b"\0" + payload
        self.events.publish("notification", orjson.dumps(doc).decode(), self._clock(), source)

    def alerts(self, sensor_id: str, payload: bytes, received_at_ns: int) -> None:
        """A retained `alerts/{id}` payload replaces that sensor's alerts."""
        now = self.state.get(sensor_id)
        if now is None:
            self.metrics.mqtt_messages.inc(("bad_alert",))
            log.warning("alert for unknown sensor %r ignored", sensor_id[:80])
            return
        try:
            parsed = parse_alert_payload(payload, sensor_id)
        except ValueError as exc:
            self.metrics.mqtt_messages.inc(("bad_alert",))
            log.warning("alert payload ignored: %s", exc)
            return
        self.metrics.mqtt_messages.inc(("alert",))
        previous, previous_key = self._alert_payloads.get(sensor_id, (b"", 0))
        key_ns, source = alert_event_key(sensor_id, parsed, payload, previous, previous_key)
        self._alert_payloads[sensor_id] = (payload, key_ns)
        alerts = parsed.alerts
        if not self.state.apply_alerts(sensor_id, alerts, received_at_ns, parsed.envelope):
            return
        level, state = summarise_alerts(alerts)
        data = {
            "sensor": sensor_id,
            "alert_level": level,
            "alert_state": state,
            "alerts": [
                alert_json(record_from_payload(sensor_id, a, received_at_ns), now.sensor)
                for a in alerts
            ],
            # The sensor as /v1/sensors shows it now: the engine's verdict can change its
            # stale flag as well as its alert level.
            "properties": sensor_properties(now, self._clock()),
        }
        self.events.publish("alert", orjson.dumps(data).decode(), key_ns, source)


class LiveFeed:
    """Subscribes to readings, statuses and alerts; reconnects by itself.

    Until the first connection, a background thread checks that the broker accepts TCP
    connections before each MQTT attempt, with capped backoff; once connected, paho
    reconnects by itself. It is the API's only MQTT connection: the broker binds the `api`
    login to the one client id `floodwatch-api` (README, Users and permissions), so the
    acknowledgement requests go out on it too (`route`, `publish`).
    """

    def __init__(
        self,
        endpoint: MqttEndpoint,
        topics: Topics,
        handler: FeedHandler,
        loop: asyncio.AbstractEventLoop,
        client_id: str = "",
    ) -> None:
        self.endpoint = endpoint
        self.topics = topics
        self.handler = handler
        self._subscriptions = [
            (topics.all_readings, 1),
            (topics.all_statuses, 1),
            # The clustered mode's NATS delivers the sensors' messages here (Topics).
            *((partitioned, 1) for partitioned in topics.all_partitioned),
            (f"{topics.base}/alerts/+", 1),
            # Operators' changes and the notifier's records (floodwatch.operations).
            (topics.maintenance("+"), 1),
            (topics.registry_override("+"), 1),
            (topics.notifications("+"), 1),
        ]
        self._handler = handler
        self._loop = loop
        # The one id the broker lets this login use; admin is unbound and gets an assigned one.
        # API replicas on a NATS cluster (which binds no ids) need one each (--client-id).
        self._client_id = client_id or bound_client_id(endpoint.username) or ""
        self._routes: list[tuple[str, Callable[[Delivery], None]]] = []
        self._inbox: deque[Delivery] = deque()
        self._drain_scheduled = False
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._tried = threading.Event()
        self._conn: MqttConnection | None = None
        self._thread: threading.Thread | None = None

    def route(self, topic_filter: str, on_delivery: Callable[[Delivery], None]) -> None:
        """Subscribe to `topic_filter` too, and hand its messages to `on_delivery` on the
        network thread instead of the live state. Call before `start`."""
        self._subscriptions.append((topic_filter, 1))
        self._routes.append((topic_filter, on_delivery))

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.connected

    def start(self) -> None:
        """Connect in a background thread, retrying with capped backoff until stopped."""
        self._thread = threading.Thread(target=self._connect, name="api-mqtt-feed", daemon=True)
        self._thread.start()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._ready.wait(timeout_s)

    def wait_first_attempt(self, timeout_s: float) -> bool:
        """Wait until the first connection attempt succeeded or failed; True if connected."""
        self._tried.wait(timeout_s)
        return self._ready.is_set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(ATTEMPT_TIMEOUT_S + 1)
        if self._conn is not None:
            self._conn.stop()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish at QoS 1 on the API's one connection and wait for the broker's
        acknowledgement (acknowledgement requests, operators' changes); raises BrokerError
        when the feed is not connected or the broker refuses (over MQTT 3.1.1 a refusal
        cannot be seen: the broker acknowledges or drops a denied publish silently)."""
        conn = self._conn
        if conn is None or not conn.connected:
            raise BrokerError(f"the MQTT broker at {self.endpoint} is not connected; try again")
        if not conn.publish_and_wait(topic, payload, qos=1, retain=retain, timeout_s=5.0):
            raise BrokerError(f"the MQTT broker at {self.endpoint} did not acknowledge {topic!r}")

    def _broker_accepts(self) -> bool:
        try:
            with socket.create_connection((self.endpoint.host, self.endpoint.port), 1.0):
                return True
        except OSError:
            return False

    def _connect(self) -> None:
        delay = 0.25
        while not self._stop.is_set():
            if self._broker_accepts():
                # A fresh client per attempt: a failed paho client is dropped whole.
                conn = MqttConnection(
                    self.endpoint,
                    self._client_id,
                    subscriptions=self._subscriptions,
                    on_delivery=self._deliver,
                )
                try:
                    conn.start(timeout_s=ATTEMPT_TIMEOUT_S)
                except BrokerError as exc:
                    log.warning("live feed: %s", exc)
                else:
                    # Subscribed only once the broker says so (NATS takes a moment).
                    conn.wait_subscribed(ATTEMPT_TIMEOUT_S)
                    self._conn = conn
                    self._ready.set()
                    self._tried.set()
                    log.info("live feed subscribed on %s", self.endpoint)
                    return
            self._tried.set()
            self._stop.wait(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY_S)

    def _deliver(self, delivery: Delivery) -> None:
        # Partition topics are converted once, in FeedHandler.handle: no route takes them.
        for topic_filter, on_delivery in self._routes:
            if topic_matches_sub(topic_filter, delivery.topic):
                on_delivery(delivery)
                return
        # paho's network thread: queue, and wake the event loop unless a wake-up is pending.
        self._inbox.append(delivery)
        if not self._drain_scheduled:
            self._drain_scheduled = True
            with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        inbox = self._inbox
        while inbox:
            d = inbox.popleft()
            try:
                self._handler.handle(d.topic, d.payload, d.retained, d.received_at_ns)
            except Exception:  # one bad message must never stop the feed
                log.exception("live feed: message on %r could not be applied", d.topic[:120])
