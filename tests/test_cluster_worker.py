"""Clustered ingest workers (`python -m ingest --cluster`, ingest/cluster.py) on a real 3-node
NATS cluster behind HAProxy, with the real influxd: fault test 3 of issue 14, a worker
SIGKILLed in the middle of a flood."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from alerts import AlertEvent, step
from alerts.state import ReadingArrays, new_state
from floodwatch.cluster import (
    LocalCluster,
    connect,
    ensure_partition_consumers,
    local_cluster,
    partition,
    retained_alert_states,
)
from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service, local_credentials
from floodwatch.mqtt import MqttConnection
from floodwatch.registry import Registry, load_registry
from floodwatch.settings import MQTT_V311, parse_mqtt_url
from floodwatch.topics import Topics
from ingest.cluster import mqtt_topic
from ingest.partitions import owned_registry
from tests.cluster_faults import EventWatch
from tests.conftest import IngestProcess, admin_influx, grant, wait_until
from tests.test_alerts_e2e import ack
from tests.test_cluster import MqttSensor
from tests.test_partitions import city_registry

PARTITIONS = 4
FLOOD = ("d12-01", "d12-02", "d12-03", "d12-04")  # Đường 12: the flooding ward's sensors
PER_SENSOR = 500  # readings each, one second apart in reading time
RATE = 400  # readings per second published, all sensors together


def test_store_subjects_become_the_contracts_topics() -> None:
    """A message's subject in NATS's MQTT store maps back to the topic the sensor used."""
    topics = Topics("a/b")
    assert mqtt_topic(topics, "$MQTT.msgs.a.b.v1.part.3.an-khanh.qh-01.reading") == (
        "a/b/v1/sensors/qh-01/reading"
    )
    assert mqtt_topic(topics, "$MQTT.msgs.a.b.v1.part.3.w.qh-01.status") == (
        "a/b/v1/sensors/qh-01/status"
    )
    assert mqtt_topic(topics, "$MQTT.msgs.a.b.v1.part.3.w.qh-01.other") == (
        "$MQTT.msgs.a.b.v1.part.3.w.qh-01.other"
    )


@pytest.mark.services  # a real NATS cluster
def test_workers_with_other_timeouts_share_the_consumers(cluster: LocalCluster) -> None:
    """A worker started with another --ack-wait or --pin-timeout updates the partitions'
    consumers rather than failing (a rolling change of the settings)."""
    root = "t" + uuid.uuid4().hex[:10]
    urls = cluster.nats_urls("ingest")
    first = asyncio.run(ensure_partition_consumers(urls, root, PARTITIONS, ack_wait_s=4))
    again = asyncio.run(
        ensure_partition_consumers(urls, root, PARTITIONS, ack_wait_s=9, pin_timeout_s=3)
    )
    assert first == again


@pytest.mark.services  # a real NATS cluster
def test_the_retained_alert_states_are_read_from_nats(cluster: LocalCluster) -> None:
    """What a gained partition compares its states with: NATS's retained `alerts/{id}`
    payloads, read from its retained store, a cleared one (empty payload) left out."""
    topics = Topics("t" + uuid.uuid4().hex[:10])
    admin = MqttConnection(parse_mqtt_url(cluster.front.url("admin"), MQTT_V311))
    admin.start()
    try:
        for sensor_id, payload in (
            ("qh-02", b'{"a": 1}'),
            ("d12-01", b'{"b": 2}'),
            ("d12-01", b""),
        ):
            assert admin.publish_and_wait(topics.alert(sensor_id), payload, retain=True)
    finally:
        admin.stop()

    async def read() -> dict[str, bytes]:
        nc = await connect(cluster.nats_urls("ingest"))
        try:
            return await retained_alert_states(nc, topics, ["qh-02", "d12-01", "d12-02"])
        finally:
            await nc.close()

    assert asyncio.run(read()) == {"qh-02": b'{"a": 1}'}


# -- fault test 3 ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    return city_registry(tmp_path_factory.mktemp("city") / "city.geojson", PARTITIONS)


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, city: tuple[Path, dict[str, str]]
) -> Iterator[LocalCluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    registry = load_registry(city[0])
    with local_cluster(
        workdir, local_credentials(workdir), registry, partitions=PARTITIONS
    ) as running_cluster:
        yield running_cluster


def worker(
    cluster: LocalCluster, influxd: Service, db: str, registry: Path, k: int, log_dir: Path
) -> IngestProcess:
    """`python -m ingest --cluster` as worker k, through the front door for MQTT."""
    grant(influxd, db)
    env = {
        **os.environ,
        "FLOODWATCH_CLUSTER": "1",
        "FLOODWATCH_NATS_URL": ",".join(cluster.nats_urls("ingest")),
        "FLOODWATCH_PARTITIONS": str(PARTITIONS),
        "FLOODWATCH_MQTT_URL": cluster.front.url("ingest"),
        "FLOODWATCH_MQTT_PROTOCOL": "3.1.1",
        # A session of its own per test (the convention allows any suffix without a dot).
        "FLOODWATCH_CLIENT_ID": f"floodwatch-ingest-{k}-{db}",
        "FLOODWATCH_INFLUX_URL": influxd.url("writer"),
        "FLOODWATCH_INFLUX_READ_URL": influxd.url("reader"),
        "FLOODWATCH_INFLUX_DB": db,
        "FLOODWATCH_TOPIC_ROOT": db,
        "FLOODWATCH_REGISTRY": str(registry),
        "FLOODWATCH_OUTBOX": "off",
        "FLOODWATCH_METRICS_PORT": "0",
        "PYTHONUNBUFFERED": "1",
    }
    log_dir.mkdir(exist_ok=True)
    return IngestProcess(env, log_dir)


def owned(proc: IngestProcess) -> set[int]:
    """The partitions the worker's log says it owns now."""
    found = re.findall(r"owns partitions \[([0-9, ]*)\]", proc.log.read_text())
    return {int(p) for p in found[-1].split(",") if p.strip()} if found else set()


def count(db: InfluxClient, after_ns: int = 0) -> int:
    """Readings stored with a time after `after_ns`."""
    series = db.query(
        'SELECT count("level_cm") FROM "water_level" WHERE time > $after', {"after": after_ns}
    )
    return int(series[0]["values"][0][1]) if series else 0


def stored_keys(db: InfluxClient) -> set[tuple[str, int]]:
    series = db.query('SELECT "level_cm" FROM "water_level" GROUP BY "sensor"', epoch="ns")
    return {(s["tags"]["sensor"], int(row[0])) for s in series for row in s["values"]}


def stored_alerts(db: InfluxClient) -> set[str]:
    """Event ids of the flood and rising alerts stored (stale ones depend on the clock)."""
    series = db.query('SELECT "event_id", "kind" FROM "alert_event"')
    return {str(row[1]) for s in series for row in s["values"] if row[2] in ("flood", "rising")}


def close_all(
    sensors: dict[str, MqttSensor], workers: list[IngestProcess], db: InfluxClient
) -> None:
    """A test's end, whatever happened: sensors disconnected, workers still running killed."""
    for sensor in sensors.values():
        sensor.close()
    for proc in workers:
        if proc.running():
            proc.stop(signal.SIGKILL)
    db.close()


def flood_levels(k: int, j: int) -> float:
    """Sensor j's k-th reading: the water rises 7.2 cm a minute, each sensor a little higher."""
    return round(2.0 + 0.12 * k + 0.5 * j, 2)


def reference_alerts(registry: Registry, readings: list[tuple[str, int, float]]) -> set[str]:
    """The same readings through the engine alone, with no fault: the alerts a run without
    the kill raises (rule 3 of alerts/engine.py: batching changes no verdict)."""
    start = min(t for _, t, _ in readings) - 60 * 10**9
    state = new_state(registry, start)
    index = state.sensor_index
    arrays = ReadingArrays(
        np.array([index[s] for s, _, _ in readings], dtype=np.int32),
        np.array([t for _, t, _ in readings], dtype=np.int64),
        np.array([v for _, _, v in readings], dtype=np.float64),
        np.full(len(readings), np.nan),
    )
    _, events = step(state, arrays, time.time_ns())
    return {
        e.event_id for e in events if isinstance(e, AlertEvent) and e.kind in ("flood", "rising")
    }


@pytest.mark.slow
@pytest.mark.services  # a real NATS cluster, HAProxy and influxd
@pytest.mark.parametrize("fault", ["none", "kill", "pause"])
def test_a_worker_lost_mid_flood_hands_its_partitions_over(
    cluster: LocalCluster,
    influxd: Service,
    city: tuple[Path, dict[str, str]],
    tmp_path: Path,
    fault: str,
) -> None:
    """Fault test 3: two workers own the city's partitions; the one owning the flooding ward
    is SIGKILLed (or SIGSTOPped until the other took over, then let go on: it must give its
    partitions up) mid-flood. Its partitions resume on the other within 10 s, no acknowledged
    reading is lost, and the flood's alerts are those of the run without the fault (`none`),
    which are those of the engine fed the same readings."""
    path, wards = city
    registry = load_registry(path)
    db_name = "t" + uuid.uuid4().hex[:10]
    topics = Topics(db_name)
    flood_part = partition(wards[FLOOD[0]], PARTITIONS)
    workers = [worker(cluster, influxd, db_name, path, k, tmp_path / f"w{k}") for k in (1, 2)]
    db = admin_influx(influxd, db_name)
    sensors: dict[str, MqttSensor] = {}
    try:
        # Worker 1 takes the flooding ward (alone at first), worker 2 the others it is given.
        workers[0].start()
        base_s = int(time.time()) - 2 * 3600
        warm = [(FLOOD[0], base_s - 600)]
        warm += [
            (next(s for s, w in wards.items() if w == ward), base_s - 600)
            for ward in sorted(set(wards.values()))
            if ward != wards[FLOOD[0]]
        ]
        for sensor_id in {s for s, _ in warm} | set(FLOOD):
            sensors[sensor_id] = MqttSensor(cluster, sensor_id)
        sensors[FLOOD[0]].publish(
            topics.reading(FLOOD[0]), orjson.dumps({"ts": warm[0][1] * 1000, "level_cm": 1.0})
        )
        wait_until(lambda: count(db) == 1, 30, "worker 1 to store the first warm-up reading")
        workers[1].start()
        wait_until(lambda: b"pulling" in workers[1].log.read_bytes(), 10, "worker 2 to pull")
        for n, (sensor_id, t) in enumerate(warm[1:], start=2):
            payload = orjson.dumps({"ts": t * 1000, "level_cm": 1.0})
            sensors[sensor_id].publish(topics.reading(sensor_id), payload)
            wait_until(lambda n=n: count(db) == n, 30, "the warm-up readings")  # type: ignore[misc]
        ownership = [owned(w) for w in workers]
        assert flood_part in ownership[0], ownership
        print(
            f"ownership before the kill: worker 1 {sorted(ownership[0])}, 2 {sorted(ownership[1])}"
        )

        # The flood: PER_SENSOR readings per sensor, unique times, RATE readings/s in all.
        published: list[tuple[str, int, float]] = []
        infos: dict[str, list[tuple[int, int]]] = {s: [] for s in FLOOD}
        killed_at: list[float] = []
        halfway = threading.Event()

        def publish(j: int, sensor_id: str) -> None:
            sensor = sensors[sensor_id]
            interval = len(FLOOD) / RATE
            next_at = time.monotonic()
            for k in range(PER_SENSOR):
                t_ms = (base_s + k) * 1000 + j * 100
                level = flood_levels(k, j)
                payload = orjson.dumps({"ts": t_ms, "level_cm": level})
                info = sensor.client.publish(topics.reading(sensor_id), payload, qos=1)
                infos[sensor_id].append((info.mid, t_ms))
                published.append((sensor_id, t_ms * 10**6, level))
                if j == 0 and k == PER_SENSOR * 2 // 5:
                    halfway.set()
                next_at += interval
                pause = next_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)  # pacing the publisher, not waiting for a result

        threads = [
            threading.Thread(target=publish, args=(j, s), daemon=True) for j, s in enumerate(FLOOD)
        ]
        for thread in threads:
            thread.start()
        assert halfway.wait(60)
        # Readings published after this instant never reached the lost worker: the first of
        # them stored marks the survivor's resumption (a write the lost worker had in flight
        # may still land after the kill, so a plain count would not do).
        cutoff_ns = max(t for _, t, _ in list(published))
        killed_at.append(time.monotonic())
        first = workers[0].proc
        assert first is not None
        if fault == "kill":
            workers[0].stop(signal.SIGKILL)
        elif fault == "pause":
            first.send_signal(signal.SIGSTOP)
        survivor = workers[0] if fault == "none" else workers[1]
        wait_until(lambda: count(db, cutoff_ns) > 0, 30, "the survivor to store a new reading")
        resume_s = time.monotonic() - killed_at[0]
        if fault == "pause":
            # Back from the pause, worker 1 stores what it had in hand, is refused its next
            # pull (fenced) and gives the partition up.
            first.send_signal(signal.SIGCONT)
            wait_until(
                lambda: b"given up: another worker" in workers[0].log.read_bytes(),
                20,
                "the paused worker to give its partition up",
            )
        for thread in threads:
            thread.join(60)
        wait_until(
            lambda: all({mid for mid, _ in infos[s]} <= sensors[s].acknowledged for s in FLOOD),
            60,
            "every flood reading to be acknowledged by the broker",
        )
        acknowledged = {(s, t_ms * 10**6) for s in FLOOD for _, t_ms in infos[s]}
        wait_until(lambda: acknowledged <= stored_keys(db), 40, "every acknowledged reading stored")
        stored = stored_keys(db)
        lost = acknowledged - stored
        survivor_log = survivor.log.read_text()
        returned = [int(n) for n in re.findall(r"held until (\d+) unacknowledged", survivor_log)]
        # The run without the fault: the same readings, the warm-up of the ward included.
        warmed = [(s, t * 10**9, 1.0) for s, t in warm if s in FLOOD]
        expected = reference_alerts(
            owned_registry(registry, PARTITIONS, [flood_part]), warmed + published
        )
        deadline = time.monotonic() + 10
        while not expected <= stored_alerts(db) and time.monotonic() < deadline:
            time.sleep(0.1)  # the last batch's alerts are stored with it
        got = stored_alerts(db)
        missing, extra = expected - got, got - expected
        flood_stored = acknowledged & stored
        # Alerts the flood raised after the kill (by reading time): the survivor's to make.
        kill_ns = (base_s + PER_SENSOR * 2 // 5) * 10**9
        what = {
            "none": "no fault",
            "kill": "worker SIGKILL",
            "pause": f"worker SIGSTOP for {resume_s:.0f} s",
        }
        after_kill = sum(1 for e in expected if int(e.rsplit(":", 1)[1]) > kill_ns)
        print(
            f"fault test 3 ({what[fault]} mid-flood): published {len(published)}, "
            f"acknowledged "
            f"{len(acknowledged)}, stored {len(flood_stored)}, lost {len(lost)}, duplicated "
            f"{sum(returned)} (redelivered to the survivor, written idempotently), alerts "
            f"{len(got)} of {len(expected)} ({after_kill} after the fault point): missing "
            f"{len(missing)}, doubled {len(extra)}, "
            f"resumed {resume_s:.1f} s after the fault; ownership after: "
            f"{sorted(owned(survivor))}"
        )
        # The survivor answers acknowledgements of the flooding ward's alerts now.
        raised = sorted(e for e in got if ":flood:" in e and ":raised:" in e)
        alert_id = ":".join(raised[0].split(":")[:3])
        done = ack(survivor.env, alert_id, "--who", "Lan (IOC)", broker=cluster.front)
        assert done.returncode == 0, done.stderr
        assert not lost, f"{len(lost)} acknowledged readings lost"
        assert resume_s < 10, f"the flooding ward resumed {resume_s:.1f} s after the kill"
        assert flood_part in owned(survivor)
        assert not missing and not extra, (sorted(missing)[:5], sorted(extra)[:5])
        if fault == "pause":
            assert flood_part not in owned(workers[0]), "the paused worker kept the partition"
        for proc in workers:
            if proc.running():
                assert proc.stop(signal.SIGTERM) == 0, "a worker did not stop cleanly"
    finally:
        close_all(sensors, workers, db)


# -- balancing ---------------------------------------------------------------------------------


def shares(workers: list[IngestProcess]) -> list[set[int]]:
    return [owned(w) for w in workers]


def fair(split: list[set[int]]) -> bool:
    """Every partition held by exactly one worker, each worker at floor or ceil of its share."""
    floor, extra = divmod(PARTITIONS, len(split))
    held = sorted(len(s) for s in split)
    every = set().union(*split) == set(range(PARTITIONS)) and sum(held) == PARTITIONS
    return every and held[0] >= floor and held[-1] <= floor + (1 if extra else 0)


def readings_stored(proc: IngestProcess) -> int:
    """What a stopped worker says it stored (its last summary)."""
    found = re.findall(r"stopped; .*readings_stored=(\d+)", proc.log.read_text())
    assert found, f"{proc.log} has no summary"
    return int(found[-1])


@pytest.mark.slow
@pytest.mark.services  # a real NATS cluster, HAProxy and influxd
def test_live_workers_share_the_partitions_and_a_joining_one_gets_its_share(
    cluster: LocalCluster,
    influxd: Service,
    city: tuple[Path, dict[str, str]],
    tmp_path: Path,
) -> None:
    """Balancing (ingest/balance.py): readings rising in every ward are published before and
    while two workers start together; they end up holding two partitions each, and a third that
    joins gets its one, by orderly releases; every reading is stored once (no redelivery),
    every alert event is decided once, and the alerts are those of the engine alone."""
    path, wards = city
    registry = load_registry(path)
    db_name = "t" + uuid.uuid4().hex[:10]
    topics = Topics(db_name)
    # One sensor per ward, the flooding ward's four: every partition has traffic.
    chosen = list(FLOOD) + [
        next(s for s, w in sorted(wards.items()) if w == ward)
        for ward in sorted(set(wards.values()))
        if ward != wards[FLOOD[0]]
    ]
    assert {partition(wards[s], PARTITIONS) for s in chosen} == set(range(PARTITIONS))
    # The store keeps a reading only while a consumer covers it: create them before publishing.
    asyncio.run(ensure_partition_consumers(cluster.nats_urls("ingest"), db_name, PARTITIONS, 4))
    workers = [worker(cluster, influxd, db_name, path, k, tmp_path / f"w{k}") for k in (1, 2, 3)]
    db = admin_influx(influxd, db_name)
    sensors = {s: MqttSensor(cluster, s) for s in chosen}
    watch = EventWatch(cluster, db_name, ["nats-1"])
    watch.start()
    published: list[tuple[str, int, float]] = []
    mids: dict[str, set[int]] = {s: set() for s in chosen}
    done = threading.Event()
    base_s = int(time.time()) - 3 * 3600

    def publish() -> None:
        """Every chosen sensor a reading at a time, 1 s apart in reading time, ~120 a second."""
        k = 0
        while not done.is_set():
            for j, sensor_id in enumerate(chosen):
                t_ms = (base_s + k) * 1000 + j * 10
                level = flood_levels(k, j)
                payload = orjson.dumps({"ts": t_ms, "level_cm": level})
                info = sensors[sensor_id].client.publish(topics.reading(sensor_id), payload, qos=1)
                mids[sensor_id].add(info.mid)
                published.append((sensor_id, t_ms * 10**6, level))
            k += 1
            time.sleep(len(chosen) / 120)  # pacing the publisher, not waiting for a result

    publisher = threading.Thread(target=publish, daemon=True)
    try:
        publisher.start()
        starting = [threading.Thread(target=w.start) for w in workers[:2]]
        for thread in starting:
            thread.start()
        for thread in starting:
            thread.join(60)
        wait_until(lambda: fair(shares(workers[:2])), 30, "two workers to share the partitions")
        print(f"two workers: {[sorted(s) for s in shares(workers[:2])]}")
        joined_at = time.monotonic()
        workers[2].start()
        wait_until(lambda: fair(shares(workers)), 30, "the third worker to get its share")
        balanced_s = time.monotonic() - joined_at
        split = shares(workers)
        print(f"three workers: {[sorted(s) for s in split]} ({balanced_s:.1f} s after the start)")
        # Readings for the partitions' new owners to judge after their handovers.
        more = len(published) + 50 * len(chosen)
        wait_until(lambda: len(published) >= more, 30, "more readings published")
        done.set()
        publisher.join(10)
        wait_until(
            lambda: all(mids[s] <= sensors[s].acknowledged for s in chosen),
            30,
            "every reading to be acknowledged by the broker",
        )
        keys = {(s, t) for s, t, _ in published}
        wait_until(lambda: keys <= stored_keys(db), 30, "every reading stored")
        expected = reference_alerts(registry, published)
        wait_until(lambda: expected <= stored_alerts(db), 10, "the last alerts stored")
        for proc in workers:
            assert proc.stop(signal.SIGTERM) == 0, "a worker did not stop cleanly"
        logs = "".join(w.log.read_text() for w in workers)
        released = len(re.findall(r"released to balance the workers", logs))
        waited = [float(x) for x in re.findall(r"expected; ([0-9.]+) s\)", logs)]
        stored_total = sum(readings_stored(w) for w in workers)
        decisions = watch.decisions()
        twice = {e for e, at in decisions.items() if len(at) > 1}
        judged_events = {
            e for e in decisions if e.split(":")[1] in ("flood", "rising")
        } | stored_alerts(db)
        print(
            f"balancing: published {len(published)}, stored {stored_total} by the workers "
            f"({len(stored_keys(db))} points), {released} releases, gains "
            f"{len(waited)} (longest {max(waited, default=0):.1f} s), alert events "
            f"{len(judged_events)} of {len(expected)}, decided twice {len(twice)}"
        )
        # The third worker's share can only come from a release: every partition was pinned.
        assert released >= 1, "no partition was released"
        assert "gained" in workers[2].log.read_text()
        assert stored_total == len(published), "a reading was stored twice or not at all"
        assert not twice, sorted(twice)[:5]
        assert judged_events == expected, (
            sorted(expected - judged_events)[:5],
            sorted(judged_events - expected)[:5],
        )
    finally:
        done.set()
        watch.stop()
        close_all(sensors, workers, db)
