"""The only module that touches paho-mqtt: connect, subscribe, publish and acknowledge.

The rest of Floodwatch sees `Delivery` values and plain methods, never paho's callbacks or
threads. A client speaks MQTT v5, or 3.1.1 when its endpoint says so (`--mqtt-protocol 3.1.1`,
for NATS's MQTT listener in the clustered mode, which refuses v5). What 3.1.1 cannot express:

- a session's expiry: a persistent session is `clean_session=False` and lives as long as the
  broker's own setting says (Mosquitto's `persistent_client_expiration`, NATS: until a clean
  connect), whatever `session_expiry_s` asks;
- Retain Handling: `Subscription(replay_retained=False)` is done here, on the client: in 3.1.1
  a delivery carries the retain flag only when it was replayed from the broker's store at
  subscription, so such a delivery is acknowledged and dropped, and counted
  (`retained_dropped`) and logged;
- Retain As Published: a live delivery never carries the flag in 3.1.1, so
  `flag_retained=True` cannot tell a reading published retained from any other;
- reason codes: a publish the broker's ACL denies is acknowledged (NATS) or dropped without a
  word, so `refused_publishes` stays 0 and `publish_and_wait` cannot raise PublishDenied
  (`refusals_visible` is False).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from floodwatch.errors import BrokerError, LoginRefused, PublishDenied
from floodwatch.settings import MQTT_V311, MqttEndpoint

log = logging.getLogger(__name__)

# Most QoS 1 messages this client keeps unacknowledged at once (lowered to the broker's Receive
# Maximum when it announces one). Paho's own in-flight cap is left off: with it on, paho scans
# its whole queue on every PUBACK, which stalls its network thread once thousands are queued.
MAX_PENDING = 10_000
_PUBACK = 0x40
_PUBACK_WORD = (_PUBACK << 24) | (2 << 16)
# Denied message ids remembered for publish_and_wait; older ones are forgotten past this.
_DENIED_KEPT = 1000
# CONNACK reason codes that refuse the login itself: retrying the same login cannot succeed.
# 0x85 client id not valid, 0x86 bad user name or password, 0x87 not authorized, 0x8a banned,
# 0x8c bad authentication method.
LOGIN_REFUSALS = frozenset({0x85, 0x86, 0x87, 0x8A, 0x8C})
# CONNACK "Unsupported protocol version": what paho reports when a 3.1.1-only broker (NATS's
# MQTT listener) answers a v5 CONNECT.
PROTOCOL_REFUSED = 0x84
PROTOCOL_ADVICE = (
    "the broker does not speak MQTT v5 (NATS's MQTT listener speaks only 3.1.1): pass "
    "--mqtt-protocol 3.1.1 (or FLOODWATCH_MQTT_PROTOCOL=3.1.1)"
)


class Delivery(NamedTuple):
    """One message as the broker delivered it, with what is needed to acknowledge it later.

    A NamedTuple rather than a frozen dataclass: one is built per message on the network
    thread, and a tuple is the cheapest immutable value to build.
    """

    topic: str
    payload: bytes
    retained: bool
    received_at_ns: int
    mid: int
    qos: int
    # Which connection delivered it: a message id is only meaningful on its own connection.
    connection: int


@dataclass(frozen=True, slots=True)
class Subscription:
    """A topic filter with MQTT v5 retain options (a plain (filter, qos) pair keeps the defaults).

    `replay_retained=False` (Retain Handling 2): the broker sends no retained message when the
    subscription is made, so a reconnect never replays old messages (over 3.1.1 the client
    drops them instead, see the module's docstring). `flag_retained=True` (Retain As
    Published): a message published with the retain flag arrives with it, so the subscriber
    can tell (v5 only: over 3.1.1 no live delivery carries the flag).
    """

    topic_filter: str
    qos: int = 1
    replay_retained: bool = True
    flag_retained: bool = False

    def paho(self) -> tuple[str, SubscribeOptions]:
        handling = (
            SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE
            if self.replay_retained
            else SubscribeOptions.RETAIN_DO_NOT_SEND
        )
        options = SubscribeOptions(
            qos=self.qos, retainAsPublished=self.flag_retained, retainHandling=handling
        )
        return self.topic_filter, options


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class MqttConnection:
    """A connected MQTT v5 (or 3.1.1) client with a network thread, reconnecting by itself.

    With `session_expiry_s` set the session is persistent (clean start off; over 3.1.1 clean
    session off, the expiry being the broker's): the broker keeps subscriptions and queues
    QoS 1 messages while the client is away. With `manual_ack` a QoS 1 message is
    acknowledged only when `ack()` is called, so an unacknowledged message is redelivered
    after a crash or a reconnect.
    """

    def __init__(
        self,
        endpoint: MqttEndpoint,
        client_id: str = "",
        *,
        subscriptions: Sequence[tuple[str, int] | Subscription] = (),
        on_delivery: Callable[[Delivery], None] | None = None,
        session_expiry_s: int | None = None,
        manual_ack: bool = False,
        will: Will | None = None,
        max_inflight: int = 0,
    ) -> None:
        self.endpoint = endpoint
        self._v311 = endpoint.protocol == MQTT_V311
        subs = [
            sub if isinstance(sub, Subscription) else Subscription(*sub) for sub in subscriptions
        ]
        self._subscriptions: list[tuple[str, SubscribeOptions]] | list[tuple[str, int]] = (
            [(sub.topic_filter, sub.qos) for sub in subs]
            if self._v311
            else [sub.paho() for sub in subs]
        )
        # 3.1.1: the filters whose retained replays are dropped here (none over v5, where the
        # broker does not send them), and those that asked for them.
        self._unreplayed = [s.topic_filter for s in subs if self._v311 and not s.replay_retained]
        self._replayed = [s.topic_filter for s in subs if s.replay_retained]
        self._manual_ack = manual_ack
        # Retained messages replayed at subscription and dropped (3.1.1, replay_retained=False).
        self.retained_dropped = 0
        self._dropped_logged = 0  # the connection whose first drop was logged
        self._on_delivery = on_delivery
        self._session_expiry_s = session_expiry_s
        self._client_id = client_id
        self._connected = threading.Event()
        # Held while acknowledging and while a connection is marked lost, so no
        # acknowledgement of an old connection's message id is sent on a new connection.
        self._ack_lock = threading.Lock()
        self._connection = 0
        self._last_error = "no answer yet"
        # Message id -> the broker's reason for refusing it (a PUBACK reason code >= 0x80,
        # e.g. 0x87 Not authorized when the ACL denies the topic).
        self._denied: dict[int, ReasonCode] = {}
        # Set when the broker answered a connect by refusing the login (see LOGIN_REFUSALS).
        self._login_refused: ReasonCode | None = None
        # Set when a 3.1.1-only broker refused a v5 CONNECT (PROTOCOL_REFUSED).
        self._protocol_refused = False
        # Every publish the broker refused, and the last reason (for tools that count them).
        self.refused_publishes = 0
        self.last_refusal = ""
        if self._v311 and session_expiry_s is not None and not client_id:
            raise BrokerError(
                f"a persistent MQTT 3.1.1 session on {endpoint} needs a client id of its own "
                "(the broker cannot assign one to a session it keeps); set the client id"
            )
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv311 if self._v311 else paho.MQTTv5,
            # 3.1.1 has no session expiry: a persistent session is clean_session False.
            clean_session=(session_expiry_s is None) if self._v311 else None,
            manual_ack=manual_ack,
        )
        if endpoint.username is not None:
            client.username_pw_set(endpoint.username, endpoint.password)
        if endpoint.tls:
            client.tls_set()
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        # 0: no paho-side cap (see MAX_PENDING); paho's default of 20 caps publishers at a few
        # thousand messages per second on loopback.
        client.max_inflight_messages_set(max_inflight)
        self._pending_cap = MAX_PENDING
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_publish = self._handle_publish
        if on_delivery is not None:
            client.on_message = self._handle_message
        self._client = client

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def refusals_visible(self) -> bool:
        """Whether the broker can tell this client that it refused a publish (v5 reason codes);
        over 3.1.1 a denied publish is acknowledged or dropped without a word."""
        return not self._v311

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect and start the network thread; raise BrokerError if not connected in time."""
        try:
            if self._v311:
                # 3.1.1's CONNECT has no properties; clean_session was set on the client.
                self._client.connect_async(self.endpoint.host, self.endpoint.port, keepalive=30)
            else:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                if self._session_expiry_s is not None:
                    props.SessionExpiryInterval = self._session_expiry_s
                self._client.connect_async(
                    self.endpoint.host,
                    self.endpoint.port,
                    keepalive=30,
                    clean_start=self._session_expiry_s is None,
                    properties=props,
                )
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot connect to MQTT broker {self.endpoint}: {exc}") from exc
        self._client.loop_start()
        deadline = time.monotonic() + timeout_s
        while not self._connected.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
            if self._protocol_refused:
                self._client.loop_stop()
                raise BrokerError(
                    f"MQTT broker {self.endpoint} refused the connection: {PROTOCOL_ADVICE}."
                )
            refused = self._login_refused
            if refused is not None:
                self._client.loop_stop()
                user = self.endpoint.username
                # The broker binds each login to one client id, and refuses any other.
                client_id = (
                    f"client id {self._client_id!r}"
                    if self._client_id
                    else "a broker-assigned client id"
                )
                # NATS refuses a '.' in a client id that Mosquitto accepts (docs/CLUSTER.md).
                dot = (
                    "; NATS refuses a '.' in a client id"
                    if refused.value == 0x85 and "." in self._client_id
                    else ""
                )
                raise LoginRefused(
                    f"MQTT broker {self.endpoint} did not accept the login "
                    f"{user if user is not None else '(anonymous)'!r}: {refused} "
                    f"(0x{refused.value:02x}); check the user name and password, and that the "
                    f"broker binds this login to {client_id} (README, Users and permissions)"
                    f"{dot}",
                    refused.value,
                )
            if time.monotonic() >= deadline:
                break
        if not self._connected.is_set():
            self._client.loop_stop()
            raise BrokerError(
                f"MQTT broker {self.endpoint} did not accept a connection within {timeout_s:g} s "
                f"({self._last_error}); check that it runs and that --mqtt-url is right."
            )

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    # -- messages --------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> int:
        """Queue a message; return its message id (paho sends it from its own thread).

        Blocks while too many messages await the broker's acknowledgement (MAX_PENDING, or
        the broker's Receive Maximum): message ids are 16-bit, and a broker may disconnect a
        client that exceeds what it announced.
        """
        cap = self._pending_cap
        if qos and len(self._client._out_messages) >= cap:
            while len(self._client._out_messages) >= cap // 2:
                time.sleep(0.001)
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise BrokerError(f"publish to {topic!r} failed: {paho.error_string(info.rc)}")
        return info.mid

    def publish_and_wait(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        retain: bool = False,
        timeout_s: float = 10.0,
    ) -> bool:
        """Publish and wait until the broker acknowledged it (QoS 1) or it was written (QoS 0).

        False on timeout; raises PublishDenied (with the broker's reason code, 0x87 when the
        ACL denies the topic) if the broker answered a QoS 1 publish with a failure. Over
        MQTT 3.1.1 a refusal cannot be seen: a denied publish returns True
        (`refusals_visible`).
        """
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        deadline = time.monotonic() + timeout_s
        while not info.is_published():
            if time.monotonic() > deadline:
                return False
            info.wait_for_publish(0.1)
        reason = self._denied.pop(info.mid, None)
        if reason is not None:
            raise PublishDenied(
                f"broker refused the publish to {topic!r} as {self.endpoint}: "
                f"{reason} (0x{reason.value:02x})",
                reason.value,
            )
        return True

    def subscribe(self, subscriptions: Sequence[tuple[str, int] | Subscription]) -> None:
        """Add subscriptions now (if connected) and at every reconnect from now on (any
        thread): a partitioned ingest worker follows sensors added to its wards."""
        subs = [
            sub if isinstance(sub, Subscription) else Subscription(*sub) for sub in subscriptions
        ]
        if not subs:
            return
        if self._v311:
            plain = [(sub.topic_filter, sub.qos) for sub in subs]
            self._unreplayed += [s.topic_filter for s in subs if not s.replay_retained]
            self._replayed += [s.topic_filter for s in subs if s.replay_retained]
            self._subscriptions = [*self._subscriptions, *plain]
            if self._connected.is_set():
                self._client.subscribe(plain)
        else:
            options = [sub.paho() for sub in subs]
            self._subscriptions = [*self._subscriptions, *options]
            if self._connected.is_set():
                self._client.subscribe(options)

    def pending_publishes(self) -> int:
        """Outgoing messages the broker has not yet acknowledged."""
        return len(self._client._out_messages)

    def ack(self, delivery: Delivery) -> bool:
        """Acknowledge one QoS 1 delivery; False if its connection is gone (it is redelivered)."""
        return self.ack_many([delivery]) == 1

    def ack_many(self, deliveries: Sequence[Delivery]) -> int:
        """Acknowledge QoS 1 deliveries in order, in one write; return how many were sent.

        Deliveries of an earlier connection are skipped: the broker redelivers them, and
        their message ids may now name other messages. Paho would queue one packet and wake
        its network thread once per acknowledgement; here all PUBACKs of a batch (4 bytes
        each: type, length 2, message id) go out as one buffer.
        """
        with self._ack_lock:
            if not self._connected.is_set():
                return 0
            current = self._connection
            mids = [d.mid for d in deliveries if d.qos == 1 and d.connection == current]
            if mids:
                packed = struct.pack(f"!{len(mids)}I", *[_PUBACK_WORD | mid for mid in mids])
                self._client._packet_queue(_PUBACK, packed, mids[-1], 1)
            return len(mids) + sum(1 for d in deliveries if d.qos == 0 and d.connection == current)

    # -- paho callbacks (network thread) ----------------------------------------------------

    def _handle_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._last_error = f"broker refused: {reason}"
            if reason.value in LOGIN_REFUSALS:
                self._login_refused = reason
            if reason.value == PROTOCOL_REFUSED and not self._v311:
                self._protocol_refused = True
                log.warning("MQTT connection to %s refused: %s", self.endpoint, PROTOCOL_ADVICE)
                return
            log.warning("MQTT connection to %s refused: %s", self.endpoint, reason)
            return
        self._connection += 1
        self._last_error, self._login_refused = "connected", None
        # Paho leaves Nagle's algorithm on: a small packet (a PUBACK, an alert) written while
        # another is unacknowledged then waits for the peer's delayed ACK, tens of ms.
        sock = client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        receive_maximum = getattr(properties, "ReceiveMaximum", None)
        if isinstance(receive_maximum, int) and receive_maximum > 1:
            self._pending_cap = min(MAX_PENDING, receive_maximum)
        if self._subscriptions:
            client.subscribe(self._subscriptions)
        log.info(
            "connected to MQTT broker %s (session present: %s)%s",
            self.endpoint,
            flags.session_present,
            "; over MQTT 3.1.1 a publish the broker denies is dropped without a word, so "
            "refusals cannot be seen"
            if self._v311
            else "",
        )
        self._connected.set()

    def _handle_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._ack_lock:
            self._connected.clear()
        if not self._last_error.startswith("broker refused"):
            # After a refused connect the broker closes the socket ("Protocol error"): the
            # refusal is the news, not the close.
            self._last_error = f"disconnected: {reason}"
        if reason.value != 0 and self._login_refused is None and not self._protocol_refused:
            log.warning("MQTT connection to %s lost (%s); reconnecting", self.endpoint, reason)

    def _handle_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not reason.is_failure:
            if self._denied:
                self._denied.pop(mid, None)  # an id reused after an old refusal
            return
        self.refused_publishes += 1
        self.last_refusal = f"{reason} (0x{reason.value:02x})"
        log.warning("broker refused publish (message id %d) as %s: %s", mid, self.endpoint, reason)
        if len(self._denied) >= _DENIED_KEPT:
            self._denied.pop(next(iter(self._denied)))
        self._denied[mid] = reason

    def _handle_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        # Runs once per message on paho's thread: keep it to building one value.
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = msg._topic.decode("utf-8", "replace")
        assert self._on_delivery is not None
        delivery = Delivery(
            topic,
            bytes(msg.payload),
            bool(msg.retain),
            time.time_ns(),
            msg.mid,
            msg.qos,
            self._connection,
        )
        if delivery.retained and self._unreplayed and self._unwanted_replay(topic):
            self._drop_replay(delivery)
            return
        self._on_delivery(delivery)

    def _unwanted_replay(self, topic: str) -> bool:
        """3.1.1: a retained delivery matching only subscriptions that asked for no replay."""
        return any(paho.topic_matches_sub(f, topic) for f in self._unreplayed) and not any(
            paho.topic_matches_sub(f, topic) for f in self._replayed
        )

    def _drop_replay(self, delivery: Delivery) -> None:
        """Acknowledge and drop a retained message replayed at subscription (what v5's Retain
        Handling 2 asks the broker not to send), counted, and logged once per connection."""
        if self._manual_ack:
            self.ack(delivery)  # else paho acknowledges it when this callback returns
        self.retained_dropped += 1
        if self._dropped_logged != delivery.connection:
            self._dropped_logged = delivery.connection
            log.info(
                "MQTT 3.1.1: dropping retained messages the broker replays at subscription "
                "(first: %r), as v5 would not send them; %d dropped so far",
                delivery.topic[:120],
                self.retained_dropped,
            )


def sensor_client_id(endpoint: MqttEndpoint, sensor_id: str, label: str, pid: int) -> str:
    """The client id a (simulated) sensor connects with: its own id when it logs in as itself,
    since the broker binds each sensor login to that id; else one unique to this process."""
    if endpoint.username == sensor_id:
        return sensor_id
    return f"floodwatch-{label}-{sensor_id}-{pid}"
