"""The clustered mode's two ways for a worker to consume its partitions (docs/CLUSTER.md):

  mqtt  one persistent MQTT 3.1.1 session (paho, QoS 1, clean_session false) per partition,
        subscribed to its wards; acknowledged by paho after the message is stored in memory
  js    a durable JetStream pull consumer (nats-py) on the MQTT listener's QoS 1 store
        ($MQTT_msgs), its partition's subjects, as a member of the partition's priority group
        (floodwatch.cluster.PartitionPull), batches of --batch, each reading acknowledged
        after the batch is stored in memory (floodwatch.cluster.acknowledge)

Usage: python -m bench.cluster_consume [--readings 20000] [--runs 3] [--rate 500]
                                       [--batch 1000] [--sync-interval always|2m]

Starts its own 3-node NATS cluster and HAProxy. Per run: sensors' readings are published with
MQTT QoS 1 through HAProxy while both consumers are away (the session and the pull consumer
both keep them), then each consumer drains the backlog alone (readings/s, the order
alternating between runs); then each, alone and live, receives readings published
at --rate from another process (publish -> consume latency). Prints medians and js/mqtt
ratios. One worker here is one Python process: the rates are per worker (per core).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from floodwatch.cluster import (
    LocalCluster,
    PartitionPull,
    Unpinned,
    acknowledge,
    connect,
    ensure_partition_consumers,
    local_cluster,
)
from floodwatch.localservices import local_credentials
from floodwatch.registry import SHIPPED_REGISTRY, load_registry

WARDS = [f"ward-{k}" for k in range(16)]
SENSORS_PER_WARD = 64


def _client(client_id: str, user: str, password: str, clean: bool) -> paho.Client:
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv311,  # NATS's MQTT listener refuses v5
        clean_session=clean,
    )
    client.username_pw_set(user, password)
    client.max_inflight_messages_set(0)  # no paho-side cap, as floodwatch/mqtt.py
    client.max_queued_messages_set(0)
    return client


def _connect(client: paho.Client, port: int) -> None:
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    if not connected.wait(20):
        raise TimeoutError("no CONNACK from the MQTT front door")


def _payload(n: int) -> bytes:
    ward = WARDS[n % len(WARDS)]
    sensor = f"{ward}-s{n % SENSORS_PER_WARD}"
    return orjson.dumps(
        {"sensor_id": sensor, "seq": n, "level_cm": n % 60, "sent_ns": time.time_ns()}
    )


def _topic(root: str, n: int) -> str:
    ward = WARDS[n % len(WARDS)]
    # As a registered sensor's publish lands after the account's mapping (partition 0 holds
    # every ward here: one worker owning all partitions).
    return f"{root}/v1/part/0/{ward}/{ward}-s{n % SENSORS_PER_WARD}/reading"


def publish(port: int, password: str, root: str, count: int, rate: float = 0.0) -> float:
    """Publish `count` readings QoS 1 as admin; at `rate`/s if given. Returns the rate the broker
    acknowledged."""
    client = _client(f"pub{uuid.uuid4().hex[:8]}", "admin", password, clean=True)
    _connect(client, port)
    started = time.monotonic()
    infos = []
    for n in range(count):
        if rate:
            ahead = started + n / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        infos.append(client.publish(_topic(root, n), _payload(n), qos=1))
    for info in infos:
        info.wait_for_publish(60)
    elapsed = time.monotonic() - started
    client.disconnect()
    client.loop_stop()
    return count / elapsed


def _publish_process(port: int, password: str, root: str, count: int, rate: float) -> None:
    publish(port, password, root, count, rate)


class MqttConsumer:
    """One persistent session for all wards (one worker holding every partition)."""

    def __init__(self, cluster: LocalCluster, root: str) -> None:
        self.port = cluster.front.port
        self.password = cluster.credentials.mqtt["admin"]
        self.client_id = f"worker{uuid.uuid4().hex[:8]}"
        self.topic = f"{root}/v1/part/0/+/+/reading"
        self.latencies_ns: list[int] = []
        self.count = 0
        self.target = 0
        self.done = threading.Event()

    def subscribe_once(self) -> None:
        client = _client(self.client_id, "admin", self.password, clean=False)
        _connect(client, self.port)
        subscribed = threading.Event()
        client.on_subscribe = lambda *_: subscribed.set()
        client.subscribe(self.topic, qos=1)
        if not subscribed.wait(20):
            raise TimeoutError("no SUBACK")
        client.disconnect()
        client.loop_stop()

    def receive(self, target: int, live: bool) -> float:
        """Connect, take `target` messages; the seconds from CONNACK to the last one."""
        self.count, self.target = 0, target
        self.latencies_ns = []
        self.done.clear()

        def on_message(_c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
            reading = orjson.loads(msg.payload)  # "stored": decoded and kept
            if live:
                self.latencies_ns.append(time.time_ns() - reading["sent_ns"])
            self.count += 1
            if self.count >= self.target:
                self.done.set()

        client = _client(self.client_id, "admin", self.password, clean=False)
        client.on_message = on_message
        _connect(client, self.port)
        started = time.monotonic()
        if not self.done.wait(300):
            raise TimeoutError(f"mqtt consumer got {self.count} of {target}")
        elapsed = time.monotonic() - started
        client.disconnect()
        client.loop_stop()
        return elapsed


class JetStreamConsumer:
    """A partition's durable pull consumer on the MQTT listener's QoS 1 store
    (floodwatch.cluster.ensure_partition_consumers), the one partition holding every ward."""

    def __init__(self, cluster: LocalCluster, root: str, batch: int) -> None:
        self.urls = cluster.nats_urls("ingest")
        self.root = root
        self.durable = ""
        self.pin: str | None = None
        self.batch = batch
        self.latencies_ns: list[int] = []

    async def create(self) -> None:
        names = await ensure_partition_consumers(self.urls, self.root, 1, ack_wait_s=60.0)
        self.durable = names[0]

    async def receive(self, target: int, live: bool) -> float:
        self.latencies_ns = []
        nc = await connect(self.urls)
        pull = PartitionPull(nc, self.durable)
        # The same worker again (a new connection, since each phase runs its own event loop):
        # with its pin id the server need not wait for the old pin to time out.
        pull.pin = self.pin
        count = 0
        started = time.monotonic()
        while count < target:
            try:
                msgs = await pull.fetch(min(self.batch, target - count))
            except Unpinned:
                # Idle past the pin timeout while the other design ran: pull again, unpinned,
                # and the server pins this worker anew (no other pulls this partition).
                continue
            now = time.time_ns()
            for msg in msgs:
                reading = orjson.loads(msg.data)
                if live:
                    self.latencies_ns.append(now - reading["sent_ns"])
            count += len(msgs)
            await acknowledge(msgs)  # after the batch is "stored"
        elapsed = time.monotonic() - started
        self.pin = pull.pin
        await nc.close()
        return elapsed


def _pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_consume")
    parser.add_argument("--readings", type=int, default=20_000, help="backlog drained per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=500.0, help="live readings/s for latency")
    parser.add_argument("--seconds", type=float, default=6.0, help="live phase length")
    parser.add_argument("--batch", type=int, default=1000, help="JetStream fetch batch")
    parser.add_argument(
        "--sync-interval",
        default="always",
        help="JetStream fsync: always (the cluster's setting) or a duration such as 2m (NATS's "
        "default), to see what fsync on every write costs the sensors' publishes",
    )
    args = parser.parse_args()
    drain: dict[str, list[float]] = {"mqtt": [], "js": []}
    p50: dict[str, list[float]] = {"mqtt": [], "js": []}
    p99: dict[str, list[float]] = {"mqtt": [], "js": []}
    published_rates: list[float] = []
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        registry = load_registry(SHIPPED_REGISTRY)
        creds = local_credentials(workdir)
        with local_cluster(workdir, creds, registry, sync_interval=args.sync_interval) as cluster:
            port, password = cluster.front.port, cluster.credentials.mqtt["admin"]
            for run in range(args.runs):
                root = f"b{uuid.uuid4().hex[:8]}"
                mqtt_consumer = MqttConsumer(cluster, root)
                js_consumer = JetStreamConsumer(cluster, root, args.batch)
                mqtt_consumer.subscribe_once()
                asyncio.run(js_consumer.create())
                published = publish(port, password, root, args.readings)
                published_rates.append(published)
                order = ["mqtt", "js"] if run % 2 == 0 else ["js", "mqtt"]
                for design in order:
                    if design == "mqtt":
                        elapsed = mqtt_consumer.receive(args.readings, live=False)
                    else:
                        elapsed = asyncio.run(js_consumer.receive(args.readings, live=False))
                    drain[design].append(args.readings / elapsed)
                live = int(args.rate * args.seconds)
                for design in order:
                    sender = spawn.Process(
                        target=_publish_process, args=(port, password, root, live, args.rate)
                    )
                    sender.start()
                    if design == "mqtt":
                        # The other consumer's backlog grows meanwhile; it drains it below.
                        mqtt_consumer.receive(live, live=True)
                        latencies = mqtt_consumer.latencies_ns
                    else:
                        asyncio.run(js_consumer.receive(live, live=True))
                        latencies = js_consumer.latencies_ns
                    sender.join()
                    p50[design].append(_pct(latencies, 0.5))
                    p99[design].append(_pct(latencies, 0.99))
                    # Catch the other design up on what this phase published.
                    if design == order[0]:
                        if order[1] == "mqtt":
                            mqtt_consumer.receive(live, live=False)
                        else:
                            asyncio.run(js_consumer.receive(live, live=False))
                print(
                    f"run {run + 1}: published {published:,.0f}/s (MQTT QoS 1 via HAProxy); "
                    f"drain mqtt {drain['mqtt'][-1]:,.0f}/s, js {drain['js'][-1]:,.0f}/s; "
                    f"latency p50/p99 mqtt {p50['mqtt'][-1]:.1f}/{p99['mqtt'][-1]:.1f} ms, "
                    f"js {p50['js'][-1]:.1f}/{p99['js'][-1]:.1f} ms",
                    flush=True,
                )
    med = {k: statistics.median(v) for k, v in drain.items()}
    # The ratio within each run (the two designs measured back to back) is steadier on a shared
    # machine than the ratio of medians.
    paired = statistics.median(j / m for j, m in zip(drain["js"], drain["mqtt"], strict=True))
    print(
        f"median of {args.runs}: published {statistics.median(published_rates):,.0f}/s; drain "
        f"mqtt {med['mqtt']:,.0f}/s, js {med['js']:,.0f}/s (js/mqtt {med['js'] / med['mqtt']:.2f},"
        f" median of the runs' ratios {paired:.2f}); latency at {args.rate:g}/s p50 "
        f"mqtt {statistics.median(p50['mqtt']):.1f} ms, js {statistics.median(p50['js']):.1f} ms;"
        f" p99 mqtt {statistics.median(p99['mqtt']):.1f} ms, js {statistics.median(p99['js']):.1f}"
        " ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
