"""The notifier in the clustered mode: two real notifiers (`python -m notify --cluster`) on a
real 3-node NATS cluster behind HAProxy, one active and one standing by, delivering to a real
webhook receiver; the active one is killed while notifications wait, and the standby takes over
(notify/lease.py). Also the lease's pure state and the accounts' `notify` user."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import nats
import orjson
import pytest
from nats.js.errors import KeyWrongLastSequenceError

from alerts.events import AlertEvent
from floodwatch.cluster import (
    MQTT_MSGS_PREFIX,
    MQTT_MSGS_STREAM,
    LocalCluster,
    accounts_config,
    connect,
    local_cluster,
)
from floodwatch.credentials import check_client_id
from floodwatch.errors import SettingsError
from floodwatch.localservices import local_credentials
from floodwatch.mqtt import Delivery as MqttDelivery
from floodwatch.mqtt import MqttConnection
from floodwatch.registry import SHIPPED_REGISTRY, load_registry
from floodwatch.settings import MQTT_V311
from floodwatch.topics import Topics
from notify.lease import LEASE_BUCKET, Lease, LeaseState, lease_key
from notify.routing import load_routing
from notify.service import Notifier, NotifierOptions
from notify.store import Store
from tests.conftest import wait_until
from tests.notify_process import NotifierProcess, notifier_env
from tests.notify_servers import Answer, HttpReceiver, Request
from tests.test_notify_e2e import (
    T0,
    assert_in_order_per_alert,
    event,
    lifetimes,
    webhook_routing,
)

REGISTRY = load_registry(SHIPPED_REGISTRY)


def test_a_lease_is_held_until_its_ttl_minus_the_margin_from_when_it_was_asked() -> None:
    state = LeaseState()
    assert not state.held(0.0)
    state.won(revision=7, asked_at=100.0, ttl_s=6.0, margin_s=1.5)
    assert state.held(104.4)
    assert not state.held(104.5)  # the server may give it away from 106 on; we stop earlier
    state.lost()
    assert not state.held(100.0)


def test_each_topic_root_has_its_own_lease() -> None:
    assert lease_key("floodwatch") == "active_floodwatch"
    assert lease_key("city/hcm") == "active_city_hcm"


def test_cluster_notifiers_share_the_notify_login_with_their_own_client_ids() -> None:
    check_client_id("notify", "floodwatch-notify-2", broker_binds=False)
    with pytest.raises(SettingsError, match="floodwatch-notify-"):
        check_client_id("notify", "notify-2", broker_binds=False)


def test_the_notify_user_may_publish_only_its_records_and_its_lease(tmp_path: Path) -> None:
    creds = local_credentials(tmp_path)
    text = accounts_config(creds, REGISTRY, 8, "x")
    line = next(row for row in text.splitlines() if "user: notify," in row)
    publish = line.split("publish: {allow: [")[1].split("]")[0]
    assert '"*.v1.notifications.*"' in publish
    assert f'"$KV.{LEASE_BUCKET}.>"' in publish
    assert "events" not in publish and "alerts" not in publish and '">"' not in publish


ESCALATING = """
[channels.gis]
type = "webhook"
url = "http://127.0.0.1:9/gis"
secret = "s"

[channels.duty]
type = "webhook"
url = "http://127.0.0.1:9/duty"
secret = "s"

[recipients.ioc_gis]
name = "Nền tảng GIS"
channels = ["gis"]

[recipients.duty_chief]
name = "Trực ban IOC"
channels = ["duty"]

[[rules]]
kinds = ["flood"]
min_level = 1
notify = ["ioc_gis"]
escalate = [{ after_min = 5, notify = ["duty_chief"] }]
"""


def _router(tmp_path: Path, name: str, clock: list[int], active: list[bool]) -> Notifier:
    """The notifier's router and queue in this process: `handle` and `tick` driven by hand,
    with the clock passed in; its senders wait for the lease (`active`), so the test plays the
    active one's deliveries on its queue itself."""
    (tmp_path / "routing.toml").write_text(ESCALATING)
    return Notifier(
        load_routing(tmp_path / "routing.toml"),
        REGISTRY,
        Topics("fw"),
        Store(tmp_path / f"{name}.sqlite"),
        NotifierOptions(page_url="http://ioc.example.vn/"),
        clock=lambda: clock[0],
        may_send=lambda: active[0],
    )


def _message(topic: str, payload: bytes) -> MqttDelivery:
    return MqttDelivery(topic, payload, False, 0, 0, 1, 0)


def test_a_standby_queues_what_the_active_one_queues_minus_what_its_records_settled(
    tmp_path: Path,
) -> None:
    """Both routers see the same raised event; the active one's record says the first
    notification was delivered; the standby marks it so, keeps the escalation timer, and once
    it holds the lease has exactly the escalation to send."""
    clock = [T0]
    active, standby = [False], [False]
    first = _router(tmp_path, "active", clock, active)
    second = _router(tmp_path, "standby", clock, standby)
    try:
        _standby_follows(first, second, clock, active, standby)
    finally:
        first.stop.set()
        second.stop.set()


def _standby_follows(
    first: Notifier, second: Notifier, clock: list[int], active: list[bool], standby: list[bool]
) -> None:
    raised = event("qh-01", 0, 1, "raised")
    raised = replace(raised, at_ns=T0, raised_ns=T0, reading_time_ns=T0)
    first.handle([_message("fw/v1/events/qh-01", raised.to_json())])
    (delivered,) = first.store.due("gis|", T0, 10)[0]
    first.store.delivered([delivered.id], T0)
    record = first.record(raised.alert_id)
    # The record may come before the event that queues its notification: remembered.
    second.handle([_message(f"fw/v1/notifications/{raised.alert_id}", record)])
    assert second.store.counts() == {}
    second.handle([_message("fw/v1/events/qh-01", raised.to_json())])
    assert second.store.counts() == {"delivered": 1}
    (copied,) = second.store.history(raised.alert_id)
    assert (copied.delivered_ns, copied.attempts) == (T0, 1)  # as the record says
    # Five minutes on, nobody acknowledged: both queue the escalation (the same id).
    clock[0] = T0 + 5 * 60 * 10**9 + 1
    for router in (first, second):
        router.tick()
    standby[0] = True
    pending = second.store.due("duty|", clock[0], 10)[0]
    assert [p.message for p in pending] == ["unacknowledged"]
    assert second.store.due("gis|", clock[0], 10)[0] == []
    ids = {p.notification_id for p in pending}
    assert ids == {p.notification_id for p in first.store.due("duty|", clock[0], 10)[0]}
    # The holder's own queue is the truth: an echo of an older record changes nothing there.
    active[0] = True
    first.handle([_message(f"fw/v1/notifications/{raised.alert_id}", b"")])
    assert first.store.counts() == {"delivered": 1, "pending": 1}


def test_a_standby_that_learnt_an_alert_from_its_retained_state_does_not_announce_it_again(
    tmp_path: Path,
) -> None:
    """A standby with a new state file learns an open alert from the sensor's retained state
    (its `raised` gets another id than the event's); the active one's record says the alert's
    `raised` was delivered to the same recipient and channel: the standby will not send it."""
    clock = [T0]
    active, standby = [False], [False]
    first = _router(tmp_path, "active", clock, active)
    second = _router(tmp_path, "standby", clock, standby)
    try:
        raised = replace(event("qh-01", 0, 1, "raised"), at_ns=T0, raised_ns=T0, reading_time_ns=T0)
        first.handle([_message("fw/v1/events/qh-01", raised.to_json())])
        (sent,) = first.store.due("gis|", T0, 10)[0]
        first.store.delivered([sent.id], T0)
        state = {
            "sensor": "qh-01",
            "depth_cm": 20.0,
            "alerts": [
                {"alert_id": raised.alert_id, "kind": "flood", "state": "active_unack", "level": 1}
            ],
        }
        second.handle([_message("fw/v1/alerts/qh-01", orjson.dumps(state))])
        (queued,) = second.store.due("gis|", T0, 10)[0]
        assert queued.notification_id != sent.notification_id
        record = first.record(raised.alert_id)
        second.handle([_message(f"fw/v1/notifications/{raised.alert_id}", record)])
        assert second.store.counts() == {"delivered": 1}
    finally:
        first.stop.set()
        second.stop.set()


def test_a_single_node_notifier_neither_follows_records_nor_waits_for_a_lease(
    tmp_path: Path,
) -> None:
    (tmp_path / "routing.toml").write_text(ESCALATING)
    single = Notifier(
        load_routing(tmp_path / "routing.toml"),
        REGISTRY,
        Topics("fw"),
        Store(tmp_path / "single.sqlite"),
        NotifierOptions(page_url="http://ioc.example.vn/"),
    )
    assert ("fw/v1/notifications/+", 1) not in single.subscriptions()


# -- the fault test ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    with local_cluster(workdir, local_credentials(workdir), REGISTRY) as running_cluster:
        yield running_cluster


async def _event_sessions(cluster: LocalCluster, root: str) -> int:
    """How many MQTT sessions' consumers follow the alert events of `root`: NATS's MQTT store
    keeps a QoS 1 publish only for the consumers that exist when it arrives."""
    nc = await connect(cluster.nats_urls())
    try:
        infos = await nc.jetstream(timeout=10).consumers_info(MQTT_MSGS_STREAM)
        wanted = f"{MQTT_MSGS_PREFIX}{root}.v1.events.*"
        return sum(1 for info in infos if info.config.filter_subject == wanted)
    finally:
        await nc.close()


class ClusterNotifier(NotifierProcess):
    """`python -m notify --cluster` as instance K, through the MQTT front as `notify`."""

    def __init__(self, cluster: LocalCluster, root: str, routing: Path, k: int, workdir: Path):
        self.state = workdir / f"notify-{k}.sqlite"
        env = notifier_env(
            root,
            routing,
            self.state,
            CLUSTER="1",
            NATS_URL=",".join(cluster.nats_urls("notify")),
            MQTT_URL=cluster.credentials.mqtt_url("notify", "127.0.0.1", cluster.front.port),
            MQTT_PROTOCOL=MQTT_V311,
            CLIENT_ID=f"floodwatch-notify-{k}",
        )
        super().__init__(env, workdir, f"notify-{k}")
        self.launch()


@pytest.mark.services  # a real NATS cluster and HAProxy
def test_the_notify_user_may_use_its_lease_and_nothing_else_of_jetstream(
    cluster: LocalCluster,
) -> None:
    """On the real cluster, as `notify` over the NATS protocol: the lease bucket works (create
    refused while the key exists, update fenced by the revision); another stream cannot be
    made, and alert events cannot be published."""
    root = "t" + uuid.uuid4().hex[:10]

    async def check() -> list[str]:
        errors: list[str] = []
        refused = asyncio.Event()  # the server refused the event's publish

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc).lower())
            if f"{root}.v1.events.qh-01" in errors[-1]:
                refused.set()

        nc = await nats.connect(servers=cluster.nats_urls("notify"), error_cb=on_error)
        try:
            lease = Lease(cluster.nats_urls("notify"), root, "floodwatch-notify-9")
            kv = await lease._bucket(nc.jetstream(timeout=5))
            revision = await kv.create(lease_key(root), b"floodwatch-notify-9")
            with pytest.raises(KeyWrongLastSequenceError):
                await kv.create(lease_key(root), b"floodwatch-notify-8")
            await kv.update(lease_key(root), b"floodwatch-notify-9", last=revision)
            with pytest.raises(KeyWrongLastSequenceError):
                await kv.update(lease_key(root), b"floodwatch-notify-8", last=revision)
            await kv.delete(lease_key(root))
            with pytest.raises(nats.errors.Error):
                await nc.jetstream(timeout=2).add_stream(name=f"X{root}", subjects=[f"{root}.x"])
            await nc.publish(f"{root}.v1.events.qh-01", b"{}")
            await asyncio.wait_for(refused.wait(), 10)
        finally:
            await nc.close()
        return errors

    errors = asyncio.run(check())
    assert any("permissions violation for publish" in e for e in errors), errors


def _unique(requests: list[Request]) -> int:
    return len({r.headers["X-Floodwatch-Delivery"] for r in requests})


def _took_over(notifier: ClusterNotifier, times: int = 1) -> bool:
    return notifier.log.read_text().count("took the lease") >= times


@pytest.mark.slow
@pytest.mark.services  # a real NATS cluster and HAProxy
def test_the_standby_notifier_takes_over_from_a_paused_then_a_killed_active_one(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """Two notifiers; a slow receiver leaves most notifications waiting. The active one is
    paused (SIGSTOP): the standby takes over; let go on (SIGCONT), the deposed one sends
    nothing more than what it had in flight and stands by. Then the new active one is
    SIGKILLed with more events waiting: the first takes over again. Every notification arrives,
    in order per alert; resends are duplicates with the same X-Floodwatch-Delivery (counted).
    Each notifier posts to its own path (the same channel, destination and ids), so the
    receiver knows who sent what: one at a time."""
    root = "t" + uuid.uuid4().hex[:10]

    def slow(request: Request) -> Answer:
        time.sleep(0.03)
        return 200, {}, b"{}"

    receiver = HttpReceiver(slow).start()
    notifiers = []
    for k in (1, 2):
        routing = tmp_path / f"routing-{k}.toml"
        routing.write_text(webhook_routing(f"{receiver.url}/notify-{k}", concurrency=2))
        notifiers.append(ClusterNotifier(cluster, root, routing, k, tmp_path))
    publisher = MqttConnection(
        replace(cluster.front.endpoint("admin"), protocol=MQTT_V311), f"events-{root}"
    )
    publisher.start()

    def publish(events: list[AlertEvent]) -> None:
        for e in events:
            publisher.publish(f"{root}/v1/events/{e.sensor_id}", e.to_json(), qos=1)
        wait_until(lambda: publisher.pending_publishes() == 0, 30, "the broker to take them")

    def sent_by(n: ClusterNotifier, after_ns: int = 0) -> list[Request]:
        return [
            r for r in receiver.accepted if r.path.endswith(n.name) and r.received_ns > after_ns
        ]

    try:
        wait_until(lambda: all(n.said("notifying from") for n in notifiers), 30, "both")
        wait_until(lambda: any(_took_over(n) for n in notifiers), 20, "one to take the lease")
        wait_until(
            lambda: asyncio.run(_event_sessions(cluster, root)) >= 2, 20, "both event sessions"
        )
        first = next(n for n in notifiers if _took_over(n))
        second = next(n for n in notifiers if n is not first)
        events = lifetimes(["qh-01", "qh-02", "qh-03", "qh-04"], alerts_per_sensor=4)  # 64
        publish(events)
        receiver.wait_for(lambda got: len(got) >= 20, 30, "the first deliveries")

        # 1. Pause the active one: the standby takes over; the paused one, let go on, is fenced.
        first.send(signal.SIGSTOP)
        paused_ns = time.time_ns()
        wait_until(lambda: _took_over(second), 15, "the standby to take the lease")
        first.send(signal.SIGCONT)
        resumed_ns = time.time_ns()
        wait_until(lambda: first.said("lost the lease"), 10, "the paused one to learn it lost")
        receiver.wait_for(lambda got: _unique(got) >= len(events), 30, "phase 1's notifications")
        pause_takeover_s = (min(r.received_ns for r in sent_by(second)) - paused_ns) / 1e9
        late = sent_by(first, resumed_ns)
        assert len(late) <= 2, f"the deposed notifier sent {len(late)} after it was let go on"

        # 2. Kill the new active one with events waiting: the first takes over again.
        more = lifetimes(["nvh-01", "nvh-02", "nvh-03", "nvh-04"], alerts_per_sensor=4)
        publish(more)
        events += more
        before_kill = len(receiver.accepted)
        receiver.wait_for(
            lambda got: len(got) >= before_kill + 20, 30, "the second one's deliveries"
        )
        second.send(signal.SIGKILL)
        killed_ns = time.time_ns()
        second.wait(10)
        assert _unique(receiver.accepted) < len(events), "all delivered before the kill"
        later = lifetimes(["d12-01", "d12-02"], alerts_per_sensor=2)  # while none is active
        publish(later)
        events += later
        receiver.wait_for(lambda got: _unique(got) >= len(events), 30, "every notification")
        kill_takeover_s = (min(r.received_ns for r in sent_by(first, killed_ns)) - killed_ns) / 1e9
        assert _took_over(first, 2)

        # One at a time: the second sent nothing before it held the lease, nothing after its
        # death; the first nothing between its fencing and its second lease.
        assert all(paused_ns < r.received_ns < killed_ns for r in sent_by(second))
        fenced = [r for r in sent_by(first, resumed_ns) if r.received_ns < killed_ns]
        assert len(fenced) <= 2, f"the deposed notifier sent {len(fenced)} (2 were in flight)"
        assert_in_order_per_alert(receiver.accepted, events)
        counts = Counter(r.headers["X-Floodwatch-Delivery"] for r in receiver.accepted)
        duplicates = sum(n - 1 for n in counts.values())

        def pending() -> int:
            with sqlite3.connect(first.state) as db:
                (count,) = db.execute(
                    "SELECT count(*) FROM deliveries WHERE status = 'pending'"
                ).fetchone()
            return int(count)

        wait_until(lambda: pending() == 0, 10, "the survivor's queue to empty")
        print(
            f"\nnotifier failover: {len(events)} notifications, {len(counts)} delivered, 0 "
            f"missing, {duplicates} duplicates; SIGSTOP: standby delivering "
            f"{pause_takeover_s:.1f} s after the pause, the deposed one sent {len(late)} after "
            f"SIGCONT; SIGKILL: standby delivering {kill_takeover_s:.1f} s after the kill"
        )
        assert pause_takeover_s < 12.0 and kill_takeover_s < 12.0
        # A clean stop gives the lease up (a standby would not wait for the TTL).
        first.stop()
        assert first.said("gave the lease up")
    finally:
        publisher.stop()
        for n in notifiers:
            if n.running:
                n.send(signal.SIGCONT)
            n.stop()
        receiver.stop()
