"""Clustered fault tests (issue 14, "Fault tests" rows 1, 2, 5 and 6), on real processes: a
3-node NATS cluster (JetStream R3, MQTT) behind HAProxy, influxd, the ingest workers, and the
shipped flash flood published by every sensor's login over MQTT 3.1.1 QoS 1 through the front
door. Each row runs the scenario once with its fault and compares it with a run of the same
scenario without one (module-scoped): zero readings the broker acknowledged may be lost, and no
alert event may be missing or decided twice. Each row is printed and written to
tests/artefacts/cluster_faults.json; RELIABILITY.md's clustered table is written from it by
`.venv/bin/python -m tests.reliability_table --cluster`.

FLOODWATCH_FAULT_OUTAGE_S sets row 6's influxd outage (the suite's default is short for its time
budget; the issue's figure is 60 s)."""

from __future__ import annotations

import asyncio
import functools
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import pytest

from floodwatch.cluster import (
    MQTT_MSGS_STREAM,
    LocalCluster,
    connect,
    local_cluster,
    partition,
    partition_consumer_name,
    wait_cluster_ready,
)
from floodwatch.credentials import grant_database
from floodwatch.influx import InfluxClient
from floodwatch.localservices import (
    Service,
    free_port,
    influxd_service,
    local_credentials,
    running,
    wait_influx_ready,
)
from floodwatch.registry import Registry, load_registry
from floodwatch.settings import parse_influx_url
from tests.cluster_faults import (
    WARD_OF_STREET,
    Audit,
    EventWatch,
    FaultRow,
    Key,
    LoadPublisher,
    Planned,
    RunResult,
    StoreWatch,
    account,
    audit,
    connect_and_publish,
    consumer_leaders,
    ensure_audit_consumer,
    flood_messages,
    partition_consumers_exist,
    resume_after,
    scrape_counter,
    stored_count,
    stored_event_ids,
    stored_keys,
    ts_ns,
    ward_split_registry,
)
from tests.conftest import ROOT, wait_until
from tests.test_cluster import _KILLED_NODE_SOCKETS, _stream_leader

ARTEFACT = ROOT / "tests" / "artefacts" / "cluster_faults.json"
PARTITIONS = 8
WORKERS = 2
RATE = 600.0  # readings per second, every sensor together
OUTAGE_S = float(os.environ.get("FLOODWATCH_FAULT_OUTAGE_S", "8"))


@dataclass
class Env:
    cluster: LocalCluster
    influxd: Service
    registry: Registry
    registry_path: Path
    messages: list[Planned]
    workdir: Path


_rows: list[FaultRow] = []


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("faults")
    credentials = local_credentials(workdir)
    registry_path = ward_split_registry(workdir / "registry.geojson")
    registry = load_registry(registry_path)
    (workdir / "influx").mkdir()
    influxd = influxd_service(workdir / "influx", credentials=credentials)
    with (
        running(influxd),
        local_cluster(workdir / "nats", credentials, registry, partitions=PARTITIONS) as cluster,
    ):
        yield Env(
            cluster,
            influxd,
            registry,
            registry_path,
            # The same stamps for every run: the flood's six hours end a minute ago.
            flood_messages(registry, float(int(time.time()) - 60)),
            workdir,
        )
    if _rows:
        # A run with another outage keeps its rows apart: the table shows both.
        path = ARTEFACT
        if "FLOODWATCH_FAULT_OUTAGE_S" in os.environ:
            path = ARTEFACT.with_name(f"{ARTEFACT.stem}-outage-{OUTAGE_S:g}s.json")
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(orjson.dumps([asdict(r) for r in _rows], option=orjson.OPT_INDENT_2))


# -- one run of the scenario --------------------------------------------------------------------


class Workers:
    """The run's `python -m ingest --cluster` workers (WORKERS of them), on the run's topic root
    and database. Not floodwatch.clusterstack.start_cluster_stack: the rows need fresh workers
    per run on one cluster and influxd, the three-ward registry, and no API."""

    def __init__(self, env: Env, root: str, db: str) -> None:
        self.env = env
        self.procs: list[tuple[subprocess.Popen[bytes], Path, int]] = []
        self.root, self.db = root, db

    def start(self) -> None:
        cluster = self.env.cluster
        for k in range(1, WORKERS + 1):
            port = free_port()
            log = self.env.workdir / f"ingest-{self.root}-{k}.log"
            environ = dict(os.environ)
            environ.update(
                FLOODWATCH_INFLUX_URL=self.env.influxd.url("writer"),
                FLOODWATCH_INFLUX_READ_URL=self.env.influxd.url("reader"),
                FLOODWATCH_INFLUX_DB=self.db,
                FLOODWATCH_TOPIC_ROOT=self.root,
                FLOODWATCH_REGISTRY=str(self.env.registry_path),
                FLOODWATCH_METRICS_PORT=str(port),
                FLOODWATCH_OUTBOX=str(self.env.workdir / f"outbox-{self.root}-{k}.sqlite"),
                FLOODWATCH_LOG_LEVEL="INFO",
                PYTHONUNBUFFERED="1",
            )
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "ingest",
                        "--cluster",
                        "--nats-url",
                        ",".join(cluster.nats_urls("ingest")),
                        "--partitions",
                        str(PARTITIONS),
                        "--mqtt-url",
                        cluster.front.url("ingest"),
                        "--mqtt-protocol",
                        "3.1.1",
                        "--client-id",
                        f"floodwatch-ingest-{k}",
                        "--stats-interval",
                        "1",
                    ],
                    env=environ,
                    cwd=ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            self.procs.append((proc, log, port))
        for _, log, _ in self.procs:
            wait_until(
                functools.partial(_says, log, b"pulling "),
                60,
                f"a worker to pull its partitions (log {log})",
            )
        # Sensors may publish only once every partition's consumer exists (interest retention).
        wait_until(
            lambda: asyncio.run(partition_consumers_exist(cluster, self.root, PARTITIONS)),
            30,
            "the workers' partition consumers",
        )

    def delivered(self) -> int | None:
        """Readings delivered to the workers (their metrics), before they stop."""
        counts = [
            scrape_counter(
                f"http://127.0.0.1:{port}/metrics", "floodwatch_ingest_messages_received_total"
            )
            for _, _, port in self.procs
        ]
        return None if None in counts else int(sum(c or 0 for c in counts))

    def reordered(self) -> str:
        """What the workers' logs say they put back in order: readings judged in their place
        (alerts/reorder.py) and deliveries lost in flight they waited for."""
        replays = placed = gaps = missed = 0
        for _, log, _ in self.procs:
            for line in log.read_text(errors="replace").splitlines():
                if "judged in their place" in line:
                    replays += 1
                    placed += int(line.split(" WARNING ", 1)[1].split()[0])
                elif "never reached this worker" in line:
                    gaps += 1
                    missed += int(line.split(": ", 1)[1].split()[0])
        return (
            f"{placed} readings judged in their place ({replays} replays); "
            f"{missed} deliveries lost in flight waited for ({gaps} times)"
        )

    def spilled(self) -> int:
        """Lines the workers put in their disk outbox (InfluxDB away past --outbox-after)."""
        return int(
            sum(
                scrape_counter(
                    f"http://127.0.0.1:{port}/metrics",
                    "floodwatch_ingest_outbox_spilled_lines_total",
                )
                or 0
                for _, _, port in self.procs
            )
        )

    def stop(self) -> None:
        for proc, _, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _, _ in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _says(log: Path, text: bytes) -> bool:
    return text in log.read_bytes()


@dataclass
class Load:
    """What a fault function may look at while the load runs."""

    env: Env
    root: str
    publisher: LoadPublisher
    events: EventWatch
    notes: list[str]

    def reached(self, fraction: float, timeout_s: float = 60.0) -> None:
        """Wait until `fraction` of the scenario has been published."""
        target = int(fraction * len(self.env.messages))
        wait_until(lambda: self.publisher.published >= target, timeout_s, f"{target} published")

    def kill_until(self, name: str, fraction: float) -> float:
        """SIGKILL node `name` now, start it again once `fraction` of the scenario is published,
        and wait until the cluster is current; returns when it was killed."""
        service = self.env.cluster.node(name)[0]
        at = time.monotonic()
        service.kill()
        self.reached(fraction)
        service.start()
        wait_cluster_ready([n for _, n in self.env.cluster.nodes], timeout_s=60)
        self.notes.append(f"{name} back and current {time.monotonic() - at:.1f} s after")
        return at


# A fault acts while the load runs and returns the monotonic time to measure resumption from.
Fault = Callable[[Load], float]


async def _drained(cluster: LocalCluster, root: str) -> bool:
    """Every partition consumer has nothing waiting and nothing unacknowledged."""
    nc = await connect(cluster.nats_urls())
    try:
        js = nc.jetstream(timeout=5)
        for part in range(PARTITIONS):
            info = await js.consumer_info(MQTT_MSGS_STREAM, partition_consumer_name(root, part))
            if info.num_pending or info.num_ack_pending:
                return False
        return True
    finally:
        await nc.close()


def _drained_now(cluster: LocalCluster, root: str) -> bool:
    try:
        return asyncio.run(_drained(cluster, root))
    except Exception:  # a node still electing: not drained yet
        return False


def run_scenario(env: Env, fault: Fault | None, expected: int | None = None) -> RunResult:
    """Publish the scenario with fresh workers on a topic root and database of its own,
    injecting `fault` meanwhile; wait until the pipeline has taken everything; report."""
    root = "f" + uuid.uuid4().hex[:10]
    grant_database(f"http://127.0.0.1:{env.influxd.port}", env.cluster.credentials.influx, root)
    db = InfluxClient(parse_influx_url(env.influxd.url("admin")), root, timeout_s=5)
    workers = Workers(env, root, root)
    workers.start()
    asyncio.run(ensure_audit_consumer(env.cluster, root))
    events = EventWatch(env.cluster, root, [node.name for _, node in env.cluster.nodes])
    events.start()
    store = StoreWatch(db)
    store.start()
    publisher = LoadPublisher(env.cluster, root, env.messages, RATE)
    notes: list[str] = []
    began = time.monotonic()
    publisher.start()
    try:
        fault_at = fault(Load(env, root, publisher, events, notes)) if fault else began
        publisher.wait_done(120)
        published_s = time.monotonic() - began  # after the fault, which may outlast the load
        everything = {m.key for m in env.messages}
        wait_until(lambda: publisher.acknowledged() == everything, 90, "every PUBACK")
        acked_s = time.monotonic() - began
        wait_until(lambda: _drained_now(env.cluster, root), 90, "the partitions to drain")
        print(
            f"publisher and fault done by {published_s:.1f} s, acknowledged by {acked_s:.1f} s, "
            f"drained by {time.monotonic() - began:.1f} s"
        )
        if expected is not None:
            # Drained: nothing waits or is unacknowledged, and the workers acknowledge after
            # storing, so what is missing now will not come; a moment for the last write.
            try:
                wait_until(lambda: stored_count(db) >= expected, 5, "the readings stored")
            except AssertionError:
                notes.append("drained with readings missing")
        time.sleep(0.5)  # the last events of the last batch reach the watchers
        delivered = workers.delivered()
        if spilled := workers.spilled():
            notes.append(f"{spilled:,} lines through the workers' disk outbox")
    finally:
        publisher.wait_done(120)
        publisher.close()
        workers.stop()
        notes.append(workers.reordered())
        events.stop()
        store.stop()
    first_event = events.first_after(fault_at)
    if fault is not None and first_event is not None:
        notes.append(f"first alert event {first_event - fault_at:.1f} s after the fault")
    since = min(k[1] for k in everything)
    result = RunResult(
        published=[m.key for m, _ in publisher.sent],
        acknowledged=publisher.acknowledged(),
        stored=stored_keys(db, since),
        decisions=events.decisions(),
        stored_events=stored_event_ids(db, since),
        delivered=delivered,
        resume_s=store.resumed_after(fault_at) if fault else 0.0,
        notes=notes,
        in_broker=asyncio.run(audit(env.cluster, root, len(env.messages))),
    )
    # A sensor reconnects when HAProxy shuts its node's sessions; paho resends what is unacked.
    reconnected = [(round(t - began, 1), s) for t, s in publisher.reconnects if t > began]
    if reconnected:
        notes.append(f"{len(reconnected)} sensor reconnections")
        print(f"reconnections (s after start, sensor): {reconnected}")
    stored = set(result.stored)
    lost_at = [
        (round(publisher.sent_at[n] - began, 2), m.key)
        for n, (m, _) in enumerate(publisher.sent)
        if m.key not in stored
    ]
    if lost_at:
        print(f"not stored (s after start, key): {lost_at[:12]}")
    db.close()
    return result


@pytest.fixture(scope="module")
def baseline(env: Env) -> RunResult:
    """The scenario with no fault: what the pipeline stores and which alerts it decides."""
    run = run_scenario(env, None)
    assert run.decisions, "the flood raised no alert: the comparison would prove nothing"
    assert len(run.stored) == len(set(run.stored)) > 0.9 * len(env.messages)
    print(
        f"no fault: {len(run.published)} published, {len(set(run.stored))} stored, "
        f"{len(run.decisions)} alert events"
    )
    return run


def check(row: FaultRow, *, killed: bool = False) -> None:
    """The issue's bar. With `killed` (a NATS node SIGKILLed in this row) one defect outside
    Floodwatch is an expected failure, and only it: readings NATS acknowledged but the audit
    consumer never saw in its store (NEVER_STORED: fixed for restarts by the MQTT store's limits
    retention, not yet shown for kills). A reading that was in the store and not stored by the
    workers, an alert event missing or an event decided twice always fails (readings NATS
    delivers behind newer ones are judged in their place: alerts/reorder.py)."""
    _rows.append(row)
    print(row)
    assert row.acknowledged == row.published, "the broker did not acknowledge every publish"
    assert row.alerts_doubled == 0, f"{row.alerts_doubled} alert events decided twice"
    if row.lost and killed and row.lost_never_in_store == row.lost:
        pytest.xfail(f"{row.lost} acknowledged readings lost: {NEVER_STORED}")
    assert row.lost == 0, f"{row.lost} acknowledged readings lost"
    assert row.alerts_missing == 0, f"{row.alerts_missing} alert events missing"


def restore(env: Env) -> None:
    """Every node running and current again, for the next row."""
    for service, _ in env.cluster.nodes:
        if service.proc is None or service.proc.poll() is not None:
            service.start()
    wait_cluster_ready([node for _, node in env.cluster.nodes], timeout_s=120)


# -- pure checks of the harness -----------------------------------------------------------------


def test_the_scenario_spreads_over_three_wards_in_three_partitions() -> None:
    assert len({partition(w, PARTITIONS) for w in set(WARD_OF_STREET.values())}) == 3


def test_a_readings_ts_becomes_exact_nanoseconds() -> None:
    assert ts_ns(b'{"ts": "2026-10-09T13:00:00.123+07:00"}') == 1_791_525_600_123_000_000


def _run(
    stored: list[Key],
    acknowledged: set[Key],
    decisions: dict[str, set[int]],
    stored_events: AbstractSet[str] = frozenset(),
    delivered: int | None = None,
) -> RunResult:
    return RunResult(
        sorted(acknowledged), acknowledged, stored, decisions, set(stored_events), delivered, 1.5
    )


def test_only_acknowledged_readings_the_no_fault_run_stored_can_be_lost() -> None:
    a, b, c, d = ("s", 1), ("s", 2), ("s", 3), ("s", 4)
    baseline = _run([a, b, c], {a, b, c, d}, {"s:flood:1:raised:1": {10}})
    # d: a reading the pipeline refuses (not stored without the fault either): not lost.
    run = _run([a, c], {a, b, c, d}, {"s:flood:1:raised:1": {20}}, delivered=5)
    row = account("f", "x", run, baseline)
    assert (row.published, row.acknowledged, row.stored, row.lost) == (4, 4, 2, 1)
    assert row.duplicated == 3  # 5 deliveries for 2 distinct stored points
    assert (row.alerts, row.alerts_missing, row.alerts_doubled, row.alerts_extra) == (1, 0, 0, 0)
    assert row.lost_never_in_store is None  # no audit: unknown
    # With the audit: b was in the broker's store (the workers lost it), or never was (NATS).
    run.in_broker = Audit({a: 1, b: 2, c: 3}, [], Counter(), set())
    assert account("f", "x", run, baseline).lost_never_in_store == 0
    run.in_broker = Audit({a: 1, c: 3}, [], Counter(), set())
    assert account("f", "x", run, baseline).lost_never_in_store == 1
    # Stored under the sensor's own subject (no mapping): in the store all the same.
    run.in_broker = Audit({a: 1, c: 3}, [], Counter(), {b})
    assert account("f", "x", run, baseline).lost_never_in_store == 0


def test_alerts_missing_doubled_and_decided_otherwise_are_told_apart() -> None:
    baseline = _run([], set(), {"s:flood:1:raised:1": {10}, "s:flood:1:cleared:5": {11}})
    run = _run(
        [],
        set(),
        # raised decided twice (two decision times); cleared at another reading.
        {"s:flood:1:raised:1": {20, 30}, "s:flood:1:cleared:6": {31}},
        # a copy published twice and stored once is one decision.
        stored_events={"s:flood:1:raised:1"},
    )
    row = account("f", "x", run, baseline)
    assert (row.alerts_missing, row.alerts_doubled, row.alerts_extra) == (1, 1, 1)


def test_stale_alerts_follow_the_clock_and_are_left_out() -> None:
    baseline = _run([], set(), {"s:stale:9:raised:9": {1}})
    run = _run([], set(), {"s:stale:7:raised:7": {2, 3}})
    row = account("f", "x", run, baseline)
    assert (row.alerts, row.alerts_missing, row.alerts_doubled, row.alerts_extra) == (0, 0, 0, 0)


def test_writes_resume_at_the_end_of_the_longest_stall_after_the_fault() -> None:
    samples = [(0.0, 10), (1.0, 20), (2.0, 20), (3.0, 20), (4.0, 30), (5.0, 31), (9.0, 31)]
    assert resume_after(samples, 1.5) == 2.5  # stalled from the fault to 4.0
    assert resume_after(samples, 4.2) == pytest.approx(0.8)  # no stall: first growth at 5.0
    assert math.isnan(resume_after(samples, 5.5))  # nothing grew after it


# -- the rows -----------------------------------------------------------------------------------


# What the rows found (RELIABILITY.md, "Clustered mode"); the assertions stay as the issue sets
# them, so a fix turns these into passes (not strict: a run may miss the window).
def cluster_row(test: Callable[..., None]) -> Callable[..., None]:
    """What every row is: slow, on services (a real NATS cluster, HAProxy, influxd, workers),
    with the killed nodes' sockets that nats-py leaves unclosed."""
    marked: Callable[..., None] = pytest.mark.slow(pytest.mark.services(_KILLED_NODE_SOCKETS(test)))
    return marked


NEVER_STORED = (
    "NATS 2.15.1 acknowledged them (PUBACK) but the audit consumer never saw them in its MQTT "
    "store, so no worker could; around node restarts the cause was the store's interest "
    "retention (now limits: RELIABILITY.md, Clustered mode, finding 1); after a SIGKILL not "
    "yet shown gone"
)


@cluster_row
def test_row1_one_nats_node_killed_under_load_and_brought_back(
    env: Env, baseline: RunResult
) -> None:
    victim: list[str] = []

    def kill_a_follower(load: Load) -> float:
        load.reached(0.25)
        leader = asyncio.run(_stream_leader(env.cluster, MQTT_MSGS_STREAM))
        victim.append(next(n.name for _, n in env.cluster.nodes if n.name != leader))
        return load.kill_until(victim[0], 0.5)

    run = run_scenario(env, kill_a_follower, expected=len(set(baseline.stored)))
    restore(env)
    check(
        account(
            "NATS node SIGKILL, then back",
            f"kill -9 {victim[0]} (not the MQTT store's leader) at 25% of the flood, "
            "start it at 50%",
            run,
            baseline,
        ),
        killed=True,
    )


@cluster_row
def test_row2_the_mqtt_store_leader_killed_under_load(env: Env, baseline: RunResult) -> None:
    victim: list[str] = []

    def kill_the_leader(load: Load) -> float:
        load.reached(0.25)
        leader = asyncio.run(_stream_leader(env.cluster, MQTT_MSGS_STREAM))
        names = [partition_consumer_name(load.root, p) for p in range(PARTITIONS)]
        led = asyncio.run(consumer_leaders(env.cluster, names))
        victim.append(leader)
        on_it = sum(1 for node in led.values() if node == leader)
        load.notes.append(f"{on_it} of {len(led)} partition consumers led by {leader} too")
        return load.kill_until(leader, 0.6)

    run = run_scenario(env, kill_the_leader, expected=len(set(baseline.stored)))
    restore(env)
    check(
        account(
            "`$MQTT_msgs` leader SIGKILL",
            f"kill -9 the MQTT store's leader ({victim[0]}) at 25% of the flood, start it at 60%",
            run,
            baseline,
        ),
        killed=True,
    )


@cluster_row
def test_row5_rolling_restart_of_all_three_nodes_under_load(env: Env, baseline: RunResult) -> None:
    def roll(load: Load) -> float:
        load.reached(0.05)
        at = time.monotonic()
        for service, node in env.cluster.nodes:
            began = time.monotonic()
            service.stop(signal.SIGTERM)
            service.start()
            wait_cluster_ready([n for _, n in env.cluster.nodes], timeout_s=60)
            load.notes.append(f"{node.name} {time.monotonic() - began:.1f} s")
        load.notes.append(f"all three done at {load.publisher.published} published")
        return at

    run = run_scenario(env, roll, expected=len(set(baseline.stored)))
    restore(env)
    check(
        account(
            "rolling restart of the 3 NATS nodes",
            "SIGTERM, start, wait until /healthz is ok on all three, node after node, "
            "from 5% of the flood",
            run,
            baseline,
        ),
    )


@pytest.mark.slow
@pytest.mark.services  # the module's NATS cluster and HAProxy
def test_nats_skips_the_mapping_of_publishes_that_come_with_the_connect(env: Env) -> None:
    """NATS 2.15.1 (docs/CLUSTER.md, "Acknowledged publishes NATS never stored"): a PUBLISH
    read from the socket together with its connection's CONNECT is stored without the
    account's mapping, under the sensor's own subject; after the CONNACK it is mapped. paho
    writes PUBLISHes before the CONNACK when a sensor publishes while reconnecting, so every
    reconnection under load stores some unmapped; the workers move them to their partitions
    (floodwatch.cluster.remapped_store_subject). If this fails, NATS maps them now."""
    root = "m" + uuid.uuid4().hex[:10]
    asyncio.run(ensure_audit_consumer(env.cluster, root))
    readings = [
        f'{{"ts": "2026-10-09T13:00:{n:02d}.000+07:00", "level_cm": {n}}}'.encode()
        for n in range(10)
    ]
    topic, password = f"{root}/v1/sensors/d12-01/reading", env.cluster.credentials.sensors["d12-01"]
    port = env.cluster.front.port
    assert connect_and_publish(port, "d12-01", password, topic, readings[:5], together=False) == 5
    assert connect_and_publish(port, "d12-01", password, topic, readings[5:], together=True) == 5
    found = asyncio.run(audit(env.cluster, root, 10))
    after_connack = {("d12-01", ts_ns(r)) for r in readings[:5]}
    with_connect = {("d12-01", ts_ns(r)) for r in readings[5:]}
    assert after_connack <= found.keys and not after_connack & found.unmapped
    assert found.unmapped & with_connect, "every publish sent with the CONNECT was mapped"
    assert (found.keys | found.unmapped) >= with_connect, "a PUBACKed publish is not in the store"


@cluster_row
def test_row6_influxd_down_in_cluster_mode(env: Env, baseline: RunResult) -> None:
    during: list[int] = []

    def influxd_down(load: Load) -> float:
        load.reached(0.1)
        down = time.monotonic()
        env.influxd.stop()
        time.sleep(OUTAGE_S)  # the outage itself
        during.append(sum(1 for c in load.events.copies[0] if c.received_s > down))
        env.influxd.start()
        wait_influx_ready(env.influxd.port)
        return time.monotonic()

    run = run_scenario(env, influxd_down, expected=len(set(baseline.stored)))
    run.notes.append(f"{during[0]} alert events published while influxd was down")
    row = account(
        f"influxd down {OUTAGE_S:g} s (cluster)",
        f"stop influxd at 10% of the flood for {OUTAGE_S:g} s, start it; resume counted "
        "from its return",
        run,
        baseline,
    )
    check(row)
    assert during[0] > 0, "no alert event was published while influxd was down"
