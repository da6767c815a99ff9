"""A quick reproduction of "acknowledged publishes NATS did not keep" (docs/CLUSTER.md), without
workers or influxd: the fault rows' sensors publish the flash flood over MQTT 3.1.1 QoS 1
through HAProxy while the three NATS nodes are restarted one after the other; a puller does the
workers' NATS side (every partition's consumer, acknowledged on receipt), and an audit consumer
on the run's root in `$MQTT_msgs` (created before the load, read at the end) says what the store
holds. Per run it prints the readings PUBACKed, those the audit found under their partition's
subject, under the sensor's own (unmapped) subject, and nowhere, and those in the store that
their partition's consumer never delivered. About 20 s a run.

    .venv/bin/python -m tests.rolling_restart_repro --runs 10 --retention interest
    .venv/bin/python -m tests.rolling_restart_repro --runs 10 --retention limits
    .venv/bin/python -m tests.rolling_restart_repro --runs 8 --procedure orderly

`--retention interest` turns the store back to NATS's own retention (Floodwatch makes it
limits); `--trace` starts the nodes with `-DV` (every MQTT packet in their logs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import nats
from nats.aio.client import Client as NatsClient
from nats.js.api import ClusterInfo, RetentionPolicy

from floodwatch.cluster import (
    MQTT_MSGS_STREAM,
    ClusterError,
    LocalCluster,
    PartitionPull,
    Unpinned,
    acknowledge,
    connect,
    ensure_partition_consumers,
    local_cluster,
    mqtt_front_socket,
    partition_consumer_name,
    system_password,
    wait_cluster_ready,
    wait_front_door,
)
from floodwatch.localservices import local_credentials
from floodwatch.registry import load_registry
from tests.cluster_faults import (
    LoadPublisher,
    Planned,
    audit,
    ensure_audit_consumer,
    flood_messages,
    ts_ns,
    ward_split_registry,
)

PARTITIONS = 8


class Puller:
    """What a worker does on the NATS side, without InfluxDB: pull every partition through
    floodwatch.cluster.PartitionPull and acknowledge each batch at once; records the readings
    received, so a reading in the store that no partition consumer delivered shows."""

    def __init__(self, cluster: LocalCluster, root: str) -> None:
        self.urls = cluster.nats_urls()
        self.root = root
        self.received: set[tuple[str, int]] = set()
        self.done = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        names = await ensure_partition_consumers(self.urls, self.root, PARTITIONS, ack_wait_s=4)
        nc = await connect(self.urls)
        self.ready.set()
        tasks = [asyncio.create_task(self._pull(nc, name)) for name in names]
        while not self.done.is_set():
            await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        await nc.close()

    async def _pull(self, nc: NatsClient, consumer: str) -> None:
        pull = PartitionPull(nc, consumer)
        while True:
            try:
                msgs = await pull.fetch(200)
                for msg in msgs:
                    self.received.add((msg.subject.split(".")[-2], ts_ns(msg.data)))
                await acknowledge(msgs)
            except Unpinned:
                continue
            except (nats.errors.Error, TimeoutError, ClusterError):
                await asyncio.sleep(0.2)

    async def drained(self) -> bool:
        nc = await connect(self.urls)
        try:
            js = nc.jetstream(timeout=5)
            for part in range(PARTITIONS):
                name = partition_consumer_name(self.root, part)
                info = await js.consumer_info(MQTT_MSGS_STREAM, name)
                if info.num_pending or info.num_ack_pending:
                    return False
            return True
        finally:
            await nc.close()


RATE = 600.0


# -- the orderly restart measured against plain SIGTERM (docs/CLUSTER.md, "Restarting a node") --


def haproxy_admin(socket_path: Path, command: str) -> str:
    """One command on an HAProxy admin socket; its answer (empty when it simply did it)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        conn.connect(str(socket_path))
        conn.sendall(f"{command}\n".encode())
        chunks = []
        while chunk := conn.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks).decode().strip()


def set_front_server(cluster: LocalCluster, node: str, state: str) -> None:
    """`maint`: the MQTT front sends `node` no new sensor and closes its sensors' connections
    (they reconnect to the others while it still stores); `ready`: it takes it back."""
    commands = [f"set server nats_mqtt/{node} state {state}"]
    if state == "maint":
        commands.append(f"shutdown sessions server nats_mqtt/{node}")
    for command in commands:
        answer = haproxy_admin(mqtt_front_socket(cluster.front.workdir), command)
        if answer:
            raise ClusterError(f"HAProxy refused `{command}`: {answer}")


def _leads_replicated(info: ClusterInfo | None, node: str) -> bool:
    # Single-replica assets (the MQTT listener's per-node consumers of retained messages) live
    # and die with their node: nothing to hand over.
    return info is not None and info.leader == node and bool(info.replicas)


async def leaders_on(urls: Sequence[str], node: str) -> list[tuple[str, str | None]]:
    """(stream, consumer or None) of every replicated JetStream asset led by `node`."""
    nc = await connect(urls)
    led: list[tuple[str, str | None]] = []
    try:
        js = nc.jetstream(timeout=5)
        for stream in await js.streams_info():
            name = stream.config.name or ""
            if _leads_replicated(stream.cluster, node):
                led.append((name, None))
            for consumer in await js.consumers_info(name):
                if _leads_replicated(consumer.cluster, node):
                    led.append((name, consumer.name))
    finally:
        await nc.close()
    return led


async def step_down_leaders(
    urls: Sequence[str], sys_urls: Sequence[str], node: str, timeout_s: float = 20.0
) -> None:
    """Move every leadership off `node` while it still runs (the meta group's as `sys`, each
    stream's and consumer's), and wait until the others lead them all."""
    deadline = time.monotonic() + timeout_s
    nc = await connect(sys_urls)
    try:
        info = await nc.request("$JS.API.INFO", b"", timeout=5)
        if json.loads(info.data).get("meta_cluster", {}).get("leader") == node:
            await nc.request("$JS.API.META.LEADER.STEPDOWN", b"", timeout=5)
    except (nats.errors.Error, TimeoutError, ValueError) as exc:
        print(f"meta leader stepdown: {exc}", flush=True)
    finally:
        await nc.close()
    while led := await leaders_on(urls, node):
        if time.monotonic() > deadline:
            raise ClusterError(f"{node} still leads {len(led)} assets (first: {led[0]})")
        nc = await connect(urls)
        try:
            for stream, consumer in led:
                subject = (
                    f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}"
                    if consumer is None
                    else f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}"
                )
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await nc.request(subject, b"", timeout=5)
        finally:
            await nc.close()
        await asyncio.sleep(0.2)


def restart_node_orderly(cluster: LocalCluster, name: str, timeout_s: float = 60.0) -> None:
    """The front drains the node, its leaderships move off, SIGTERM, start, every node
    current, the front takes it back."""
    service, _ = cluster.node(name)
    password = quote(system_password(cluster.front.workdir), safe="")
    sys_urls = [f"nats://sys:{password}@127.0.0.1:{n.client_port}" for _, n in cluster.nodes]
    set_front_server(cluster, name, "maint")
    try:
        asyncio.run(step_down_leaders(cluster.nats_urls(), sys_urls, name))
        service.stop(signal.SIGTERM)
        service.start()
        wait_cluster_ready([n for _, n in cluster.nodes], timeout_s=timeout_s)
    finally:
        set_front_server(cluster, name, "ready")
    wait_front_door(cluster.front.workdir, len(cluster.nodes), timeout_s=timeout_s)


def roll_sigterm(cluster: LocalCluster) -> list[str]:
    """Today's fault row 5: SIGTERM, start, wait healthy, node after node."""
    notes = []
    for service, node in cluster.nodes:
        began = time.monotonic()
        service.stop(signal.SIGTERM)
        service.start()
        wait_cluster_ready([n for _, n in cluster.nodes], timeout_s=60)
        notes.append(f"{node.name} {time.monotonic() - began:.1f} s")
    return notes


def roll_orderly(cluster: LocalCluster) -> list[str]:
    """The orderly variant (restart_node_orderly), node after node."""
    notes = []
    for service, node in cluster.nodes:
        began = time.monotonic()
        restart_node_orderly(cluster, node.name)
        notes.append(f"{node.name} {time.monotonic() - began:.1f} s")
        del service
    return notes


PROCEDURES: dict[str, Callable[[LocalCluster], list[str]]] = {
    "sigterm": roll_sigterm,
    "orderly": roll_orderly,
}


def one_run(cluster: LocalCluster, messages: list[Planned], procedure: str) -> dict[str, object]:
    root = "r" + uuid.uuid4().hex[:10]
    asyncio.run(ensure_audit_consumer(cluster, root))
    puller = Puller(cluster, root)
    puller.thread.start()
    # The partition consumers exist before the first publish (interest retention).
    assert puller.ready.wait(60), "the partition consumers were not created"
    publisher = LoadPublisher(cluster, root, messages, RATE)
    began = time.monotonic()
    publisher.start()
    target = int(0.05 * len(messages))
    while publisher.published < target:
        time.sleep(0.01)
    roll_began = time.monotonic()
    notes = PROCEDURES[procedure](cluster)
    roll_s = time.monotonic() - roll_began
    publisher.wait_done(120)
    everything = {m.key for m in messages}
    deadline = time.monotonic() + 120
    while publisher.acknowledged() != everything and time.monotonic() < deadline:
        time.sleep(0.2)
    acked = publisher.acknowledged()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if asyncio.run(puller.drained()):
                break
        except Exception:  # a node still electing
            pass
        time.sleep(0.5)
    puller.done.set()
    puller.thread.join(10)
    found = asyncio.run(audit(cluster, root, len(messages)))
    publisher.close()
    mapped = found.keys
    unmapped_only = (acked & found.unmapped) - mapped
    never = acked - mapped - found.unmapped
    # In the store under their partition's subject, never delivered by its consumer (which
    # says it has nothing pending nor unacknowledged).
    undelivered = (acked & mapped) - puller.received
    sent_at = {m.key: t for (m, _), t in zip(publisher.sent, publisher.sent_at, strict=True)}
    reconnects = [(round(t - began, 2), s) for t, s in publisher.reconnects if t > began]
    return {
        "procedure": procedure,
        "published": publisher.published,
        "acked": len(acked),
        "mapped": len(acked & mapped),
        "unmapped_only": len(unmapped_only),
        "never_stored": len(never),
        "undelivered": len(undelivered),
        "undelivered_at": sorted((round(sent_at[k] - began, 2), k[0]) for k in undelivered)[:20],
        "never_at": sorted((round(sent_at[k] - began, 2), k[0]) for k in never)[:20],
        "unmapped_at": sorted((round(sent_at[k] - began, 2), k[0]) for k in unmapped_only)[:20],
        "roll_s": round(roll_s, 1),
        "roll_from_s": round(roll_began - began, 2),
        "nodes": notes,
        "reconnections": len(reconnects),
        "reconnects": reconnects[:40],
    }


async def interest_retention(cluster: LocalCluster) -> None:
    """The MQTT store as NATS's MQTT listener makes it: interest retention, no age."""
    nc = await connect(cluster.nats_urls())
    try:
        js = nc.jetstream(timeout=10)
        info = await js.stream_info(MQTT_MSGS_STREAM)
        config = replace(info.config, retention=RetentionPolicy.INTEREST, max_age=0)
        await js.update_stream(config)
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--procedure", choices=sorted(PROCEDURES), default="sigterm")
    parser.add_argument(
        "--retention",
        choices=("limits", "interest"),
        default="limits",
        help="the MQTT store's retention: Floodwatch's (limits) or NATS's own (interest)",
    )
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="natsloss-"))
    credentials = local_credentials(workdir)
    registry = load_registry(ward_split_registry(workdir / "registry.geojson"))
    messages = flood_messages(registry, float(int(time.time()) - 60))
    with local_cluster(workdir / "nats", credentials, registry, partitions=8) as cluster:
        if args.trace:
            for service, _ in cluster.nodes:
                service.stop()
                service.argv = [*service.argv, "-DV"]
                service.start()
            wait_cluster_ready([n for _, n in cluster.nodes], timeout_s=60)
        if args.retention == "interest":
            asyncio.run(interest_retention(cluster))
        print(f"workdir {workdir}, MQTT store retention {args.retention}", flush=True)
        for n in range(args.runs):
            result = one_run(cluster, messages, args.procedure)
            print(f"run {n + 1}: {result}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
