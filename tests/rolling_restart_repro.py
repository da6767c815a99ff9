"""A quick reproduction of "acknowledged publishes NATS never stored" (docs/CLUSTER.md, What
remains 2), without workers or influxd: the fault rows' sensors publish the flash flood over
MQTT 3.1.1 QoS 1 through HAProxy while the three NATS nodes are restarted one after the other,
and an audit consumer on the run's root in `$MQTT_msgs` (created before the load, read at the
end) says what the store holds. Per run it prints the readings PUBACKed, those the audit found
under their partition's subject, under the sensor's own (unmapped) subject, and nowhere.

    .venv/bin/python -m tests.rolling_restart_repro --runs 5 --procedure sigterm
    .venv/bin/python -m tests.rolling_restart_repro --runs 5 --procedure orderly

`--trace` starts the nodes with `-DV` (every MQTT packet in their logs, to follow a lost one).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import nats
from nats.aio.client import Client as NatsClient
from nats.js.api import RetentionPolicy

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
    partition_consumer_name,
    wait_cluster_ready,
)
from floodwatch.clusteradmin import restart_node_orderly
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
    """The documented procedure (floodwatch.clusteradmin.restart_node_orderly)."""
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
