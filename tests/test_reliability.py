"""Fault injection against real processes. Every case publishes a known set of readings and
ends by comparing the stored (sensor, time) set with the published set: nothing missing,
nothing twice. Each case adds a row to tests/artefacts/reliability.json, from which
RELIABILITY.md's table is written (`python -m tests.reliability_table`)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import pytest

from floodwatch.influx import InfluxClient
from floodwatch.localservices import (
    Service,
    influxd_service,
    mosquitto_service,
    wait_influx_ready,
)
from floodwatch.mqtt import MqttConnection
from floodwatch.settings import parse_influx_url
from floodwatch.topics import Topics
from tests.conftest import ROOT, IngestProcess, admin_endpoint, grant, mosquitto_pub, wait_until

pytestmark = pytest.mark.slow  # outages and kills, a minute of load: CI and `scripts/test`
ARTEFACT = ROOT / "tests" / "artefacts" / "reliability.json"
# How long influxd stays down under load: RELIABILITY.md's figure is 60 s (run by hand with
# FLOODWATCH_RELIABILITY_OUTAGE_S=60); the suite's outage is shorter for its time budget, and
# still longer than ingest's retry cap (5 s) and than the broker's default queue holds.
OUTAGE_S = float(os.environ.get("FLOODWATCH_RELIABILITY_OUTAGE_S", "15"))
# Readings queued for a stopped ingest: RELIABILITY.md's figure is 200,000
# (FLOODWATCH_RELIABILITY_FLOOD=200000); the suite's 50,000 are still 50 times Mosquitto's
# default queue and 5 times the shipped in-flight window.
FLOOD = int(os.environ.get("FLOODWATCH_RELIABILITY_FLOOD", "50000"))
T0_MS = 1_795_000_000_000
Key = tuple[str, int]


@dataclass
class Row:
    fault: str
    action: str
    published: int
    stored: int
    lost: int
    duplicated: int
    recovery_s: float
    peak_rss_mb: float


_rows: list[Row] = []


@pytest.fixture(scope="module", autouse=True)
def write_rows() -> Iterator[None]:
    yield
    if _rows:
        ARTEFACT.parent.mkdir(exist_ok=True)
        ARTEFACT.write_bytes(orjson.dumps([asdict(r) for r in _rows], option=orjson.OPT_INDENT_2))


def record(row: Row) -> None:
    _rows.append(row)
    print(row)


def peak_rss_mb(ingest: IngestProcess) -> float:
    assert ingest.proc is not None
    for line in Path(f"/proc/{ingest.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stored_keys(db: InfluxClient) -> list[Key]:
    series = db.query('SELECT "level_cm", "sensor" FROM "water_level"', epoch="ns")
    return [(row[2], row[0]) for s in series for row in s["values"]]


def readings(sensor: str, first: int, n: int) -> tuple[bytes, set[Key]]:
    """`n` single-reading lines for mosquitto_pub -l, one second apart, and their keys."""
    body = b"\n".join(
        orjson.dumps({"ts": T0_MS + k * 1000, "level_cm": 5.5, "seq": k})
        for k in range(first, first + n)
    )
    keys = {(sensor, (T0_MS + k * 1000) * 10**6) for k in range(first, first + n)}
    return body + b"\n", keys


def settle(db: InfluxClient, expected: set[Key], timeout_s: float = 60) -> list[Key]:
    """Wait until as many readings as expected are stored; return every stored key.

    Counting is cheap for influxd; listing every key on each poll would slow it down and
    make the recovery time the test's own doing.
    """

    def count() -> int:
        series = db.query('SELECT count("level_cm") FROM "water_level"')
        return int(series[0]["values"][0][1]) if series else 0

    wait_until(lambda: count() >= len(expected), timeout_s, f"{len(expected)} readings stored")
    return stored_keys(db)


def verdict(keys: list[Key], published: set[Key]) -> tuple[int, int, int]:
    """(stored, lost, duplicated): InfluxDB cannot hold a key twice, so a duplicate would show
    as a point that was never published (e.g. a receive-time copy)."""
    stored = set(keys)
    return len(stored), len(published - stored), len(keys) - len(stored) + len(stored - published)


@pytest.fixture
def db(influxd: Service, unique: str) -> Iterator[InfluxClient]:
    client = InfluxClient(parse_influx_url(influxd.url("admin")), unique)
    yield client
    client.close()


@pytest.fixture
def own_broker(tmp_path: Path, broker: Service) -> Iterator[Service]:
    """A broker of this test's own (the session's logins), to restart or kill."""
    (tmp_path / "broker").mkdir()
    svc = mosquitto_service(tmp_path / "broker", credentials=broker.credentials)
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture
def own_influxd(tmp_path: Path, influxd: Service, unique: str) -> Iterator[Service]:
    """An influxd of this test's own (the session's users, the test's database granted), to
    stop, pause or restart."""
    (tmp_path / "influx").mkdir()
    svc = influxd_service(tmp_path / "influx", credentials=influxd.credentials)
    svc.start()
    wait_influx_ready(svc.port)
    grant(svc, unique)
    yield svc
    if svc.proc is not None and svc.proc.poll() is None:
        svc.proc.send_signal(signal.SIGCONT)
    svc.stop()


@pytest.fixture
def start_ingest(
    tmp_path: Path, ingest_env: dict[str, str]
) -> Iterator[Callable[..., IngestProcess]]:
    procs: list[IngestProcess] = []

    def start(**env: str) -> IngestProcess:
        proc = IngestProcess({**ingest_env, **env}, tmp_path)
        proc.start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.running():
            proc.stop(signal.SIGKILL)


def in_background(fn: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=fn)
    thread.start()
    return thread


def test_ingest_sigkill_mid_batch(
    broker: Service, db: InfluxClient, unique: str, start_ingest: Callable[..., IngestProcess]
) -> None:
    """Ingest killed with SIGKILL during a burst and restarted: every reading stored once."""
    ingest = start_ingest()
    body, published = readings("nvh-01", 0, 30_000)
    pub = in_background(
        lambda: mosquitto_pub(broker, f"{unique}/v1/sensors/nvh-01/reading", lines=body)
    )
    wait_until(lambda: len(stored_keys(db)) > 2_000, 30, "part of the burst stored")
    killed = time.monotonic()
    ingest.stop(signal.SIGKILL)
    assert len(stored_keys(db)) < len(published), "the burst ended before the kill"
    pub.join(60)
    ingest.start()
    keys = settle(db, published)
    assert b"session present: True" in ingest.log.read_bytes()
    stored, lost, dup = verdict(keys, published)
    assert (lost, dup) == (0, 0)
    record(
        Row(
            "ingest SIGKILL mid-batch",
            "kill -9 during a 30,000-reading burst, restart",
            len(published),
            stored,
            lost,
            dup,
            time.monotonic() - killed,
            peak_rss_mb(ingest),
        )
    )


def test_influxd_down_under_load(
    broker: Service,
    own_influxd: Service,
    unique: str,
    start_ingest: Callable[..., IngestProcess],
) -> None:
    """influxd stopped for OUTAGE_S (RELIABILITY.md: 60 s) while readings keep coming (no
    outbox): all stored after."""
    ingest = start_ingest(
        FLOODWATCH_INFLUX_URL=own_influxd.url("writer"),
        FLOODWATCH_INFLUX_READ_URL=own_influxd.url("reader"),
        FLOODWATCH_OUTBOX="off",
    )
    db = InfluxClient(parse_influx_url(own_influxd.url("admin")), unique)
    published: set[Key] = set()
    stop = threading.Event()

    def publish_steadily() -> None:
        conn = MqttConnection(admin_endpoint(broker))
        conn.start()
        k = 0
        while not stop.is_set():
            for sensor in ("qh-02", "qh-04"):
                conn.publish(
                    Topics(unique).reading(sensor),
                    orjson.dumps({"ts": T0_MS + k * 1000, "level_cm": 12.5}),
                )
                published.add((sensor, (T0_MS + k * 1000) * 10**6))
            k += 1
            time.sleep(0.01)  # ~200 readings/s, a busy ward
        wait_until(lambda: conn.pending_publishes() == 0, 30, "the publisher to finish")
        conn.stop()

    pub = in_background(publish_steadily)
    time.sleep(2)
    own_influxd.stop()
    time.sleep(OUTAGE_S)  # the outage itself, not a wait for a result
    own_influxd.start()
    wait_influx_ready(own_influxd.port)
    back = time.monotonic()
    time.sleep(2)
    stop.set()
    pub.join(60)
    keys = settle(db, published, 120)
    recovery = time.monotonic() - back
    stored, lost, dup = verdict(keys, published)
    assert (lost, dup) == (0, 0)
    record(
        Row(
            f"influxd down {OUTAGE_S:.0f} s under load",
            f"stop influxd for {OUTAGE_S:.0f} s at ~200 readings/s, "
            "start it (no outbox: the broker holds everything)",
            len(published),
            stored,
            lost,
            dup,
            recovery,
            peak_rss_mb(ingest),
        )
    )
    db.close()


def test_long_influx_outage_goes_to_disk_and_survives_an_ingest_kill(
    broker: Service,
    own_influxd: Service,
    unique: str,
    tmp_path: Path,
    start_ingest: Callable[..., IngestProcess],
) -> None:
    """InfluxDB down, readings spill to the outbox and are acked; ingest is SIGKILLed; on
    restart and InfluxDB's return every published reading is stored exactly once."""
    ingest = start_ingest(
        FLOODWATCH_INFLUX_URL=own_influxd.url("writer"),
        FLOODWATCH_INFLUX_READ_URL=own_influxd.url("reader"),
        FLOODWATCH_OUTBOX=str(tmp_path / "outbox.sqlite"),
        FLOODWATCH_OUTBOX_AFTER="1",
    )
    db = InfluxClient(parse_influx_url(own_influxd.url("admin")), unique)
    body, published = readings("nvh-03", 0, 20_000)
    own_influxd.stop()
    mosquitto_pub(broker, f"{unique}/v1/sensors/nvh-03/reading", lines=body)

    def spilled() -> bool:
        lines = ingest.log.read_bytes().splitlines()
        return bool(lines) and b"outbox_spilled=20000 " in lines[-1]

    wait_until(spilled, 60, "every reading spilled to the outbox")
    rss = peak_rss_mb(ingest)
    ingest.stop(signal.SIGKILL)  # acked to the broker, only on disk now
    ingest.start()
    own_influxd.start()
    wait_influx_ready(own_influxd.port)
    back = time.monotonic()
    keys = settle(db, published)
    stored, lost, dup = verdict(keys, published)
    assert (lost, dup) == (0, 0)
    assert b"outbox" in ingest.log.read_bytes()
    record(
        Row(
            "long influxd outage, outbox on disk, ingest SIGKILL",
            "stop influxd; 20,000 "
            "readings spill to the outbox and are acked; kill -9 ingest; restart both",
            len(published),
            stored,
            lost,
            dup,
            time.monotonic() - back,
            rss,
        )
    )
    db.close()


def test_influxd_answering_slowly(
    broker: Service,
    own_influxd: Service,
    unique: str,
    start_ingest: Callable[..., IngestProcess],
) -> None:
    """influxd paused (SIGSTOP) for 5 s twice during a burst: writes wait, nothing lost."""
    ingest = start_ingest(
        FLOODWATCH_INFLUX_URL=own_influxd.url("writer"),
        FLOODWATCH_INFLUX_READ_URL=own_influxd.url("reader"),
    )
    db = InfluxClient(parse_influx_url(own_influxd.url("admin")), unique, timeout_s=30)
    body, published = readings("d12-01", 0, 30_000)
    assert own_influxd.proc is not None
    pub = in_background(
        lambda: mosquitto_pub(broker, f"{unique}/v1/sensors/d12-01/reading", lines=body)
    )
    for _ in range(2):
        time.sleep(0.5)
        own_influxd.proc.send_signal(signal.SIGSTOP)
        time.sleep(5)
        own_influxd.proc.send_signal(signal.SIGCONT)
    resumed = time.monotonic()
    pub.join(60)
    keys = settle(db, published)
    stored, lost, dup = verdict(keys, published)
    assert (lost, dup) == (0, 0)
    record(
        Row(
            "influxd answering slowly",
            "SIGSTOP influxd for 5 s, twice, during a 30,000-reading burst",
            len(published),
            stored,
            lost,
            dup,
            time.monotonic() - resumed,
            peak_rss_mb(ingest),
        )
    )
    db.close()


def test_broker_restart_with_sigterm_keeps_queued_readings(
    own_broker: Service,
    db: InfluxClient,
    unique: str,
    start_ingest: Callable[..., IngestProcess],
) -> None:
    """Readings queued for a stopped ingest survive a broker SIGTERM restart (saved on exit)."""
    # A broker of its own: ingest as shipped, under the id its login is bound to.
    env = {
        "FLOODWATCH_MQTT_URL": own_broker.url("ingest"),
        "FLOODWATCH_CLIENT_ID": "floodwatch-ingest",
    }
    ingest = start_ingest(**env)
    topic = f"{unique}/v1/sensors/qh-03/reading"
    first, keys_a = readings("qh-03", 0, 5_000)
    mosquitto_pub(own_broker, topic, lines=first)
    settle(db, keys_a)
    ingest.stop(signal.SIGTERM)
    queued, keys_b = readings("qh-03", 5_000, 20_000)
    mosquitto_pub(own_broker, topic, lines=queued)  # queued in ingest's session
    own_broker.stop(signal.SIGTERM)
    own_broker.start()
    restarted = time.monotonic()
    ingest.start()
    after, keys_c = readings("qh-03", 25_000, 5_000)
    mosquitto_pub(own_broker, topic, lines=after)
    published = keys_a | keys_b | keys_c
    keys = settle(db, published)
    stored, lost, dup = verdict(keys, published)
    assert (lost, dup) == (0, 0)
    record(
        Row(
            "broker restart (SIGTERM)",
            "20,000 readings queued for a stopped ingest; "
            "SIGTERM and restart the broker; start ingest",
            len(published),
            stored,
            lost,
            dup,
            time.monotonic() - restarted,
            peak_rss_mb(ingest),
        )
    )


def test_broker_sigkill_loses_at_most_what_came_after_the_last_autosave(
    own_broker: Service,
    db: InfluxClient,
    unique: str,
    start_ingest: Callable[..., IngestProcess],
) -> None:
    """The shipped config saves every 30 s (here every 3 s, the same mechanism sooner): a broker
    SIGKILL keeps what was queued before the last save and may lose what was queued after it,
    and nothing else."""
    topic = f"{unique}/v1/sensors/qh-04/reading"
    own_broker.stop()
    conf = own_broker.workdir / "mosquitto.conf"
    shipped = conf.read_text()
    assert "\nautosave_interval 30\n" in shipped
    conf.write_text(shipped.replace("\nautosave_interval 30\n", "\nautosave_interval 3\n"))
    own_broker.start()
    # A broker of its own: ingest as shipped, under the id its login is bound to.
    env = {
        "FLOODWATCH_MQTT_URL": own_broker.url("ingest"),
        "FLOODWATCH_CLIENT_ID": "floodwatch-ingest",
    }
    ingest = start_ingest(**env)
    ingest.stop(signal.SIGTERM)  # ingest's session now exists and queues for it
    saved, keys_saved = readings("qh-04", 0, 10_000)
    mosquitto_pub(own_broker, topic, lines=saved)
    # The broker's log is block-buffered; its database file's time says when it saved.
    db_file = own_broker.workdir / "mosquitto-data" / "mosquitto.db"
    queued_at = time.time()
    wait_until(
        lambda: db_file.exists() and db_file.stat().st_mtime > queued_at,
        15,
        "the broker's autosave",
    )
    unsaved, keys_unsaved = readings("qh-04", 10_000, 10_000)
    mosquitto_pub(own_broker, topic, lines=unsaved)
    own_broker.kill()
    own_broker.start()
    restarted = time.monotonic()
    ingest.start()
    keys = settle(db, keys_saved)
    time.sleep(2)  # anything of the unsaved set that survived has arrived by now
    keys = stored_keys(db)
    published = keys_saved | keys_unsaved
    stored, lost, dup = verdict(keys, published)
    assert keys_saved <= set(keys) and dup == 0
    record(
        Row(
            "broker SIGKILL",
            "10,000 readings queued and autosaved, 10,000 more queued, "
            "kill -9 the broker (guarantee: the autosaved ones survive)",
            len(published),
            stored,
            lost,
            dup,
            time.monotonic() - restarted,
            peak_rss_mb(ingest),
        )
    )


def test_duplicates_and_overlapping_backfill_store_each_reading_once(
    broker: Service, db: InfluxClient, unique: str, start_ingest: Callable[..., IngestProcess]
) -> None:
    """The same readings twice, and a backfill overlapping live data: each reading once."""
    ingest = start_ingest()
    topic = f"{unique}/v1/sensors/nvh-04/reading"
    live, keys_live = readings("nvh-04", 0, 2_000)
    mosquitto_pub(broker, topic, lines=live)
    mosquitto_pub(broker, topic, lines=live)
    backfill = [
        orjson.dumps(
            [
                {"ts": T0_MS + k * 1000, "distance_mm": 1500.0, "seq": k}
                for k in range(first, first + 500)
            ]
        )
        for first in range(1_000, 3_000, 500)
    ]
    mosquitto_pub(broker, topic, lines=b"\n".join(backfill) + b"\n")
    keys_backfill = {("nvh-04", (T0_MS + k * 1000) * 10**6) for k in range(1_000, 3_000)}
    published = keys_live | keys_backfill
    started = time.monotonic()
    keys = settle(db, published)
    stored, lost, dup = verdict(keys, published)
    assert (lost, dup) == (0, 0) and stored == 3_000
    record(
        Row(
            "duplicates and overlapping backfill",
            "2,000 readings published twice, then 4 backfill arrays overlapping half of them",
            2 * 2_000 + 2_000,
            stored,
            lost,
            dup,
            time.monotonic() - started,
            peak_rss_mb(ingest),
        )
    )


def test_subscriber_flood_beyond_default_queue_limits(
    broker: Service, db: InfluxClient, unique: str, start_ingest: Callable[..., IngestProcess]
) -> None:
    """FLOOD readings (RELIABILITY.md: 200,000) queued for an absent ingest (Mosquitto's
    default keeps 1,000): all stored."""
    ingest = start_ingest()
    ingest.stop(signal.SIGTERM)
    published: set[Key] = set()
    for sensor in ("d12-01", "d12-03", "qh-02", "nvh-01", "nvh-02"):
        body, sent = readings(sensor, 0, FLOOD // 5)
        mosquitto_pub(broker, f"{unique}/v1/sensors/{sensor}/reading", lines=body)
        published |= sent
    started = time.monotonic()
    ingest.start()
    keys = settle(db, published, 120)
    stored, lost, dup = verdict(keys, published)
    assert (lost, dup) == (0, 0)
    record(
        Row(
            "subscriber flood beyond default queue",
            f"{FLOOD:,} readings queued for a stopped ingest, then start it",
            len(published),
            stored,
            lost,
            dup,
            time.monotonic() - started,
            peak_rss_mb(ingest),
        )
    )


def test_sigterm_mid_burst_exits_in_bound_and_loses_nothing(
    broker: Service, db: InfluxClient, unique: str, start_ingest: Callable[..., IngestProcess]
) -> None:
    """SIGTERM during a burst: ingest flushes and exits within its bound; nothing is lost."""
    ingest = start_ingest(FLOODWATCH_SHUTDOWN_TIMEOUT="5")
    body, published = readings("nvh-02", 0, 30_000)
    pub = in_background(
        lambda: mosquitto_pub(broker, f"{unique}/v1/sensors/nvh-02/reading", lines=body)
    )
    wait_until(lambda: len(stored_keys(db)) > 2_000, 30, "part of the burst stored")
    asked = time.monotonic()
    assert ingest.stop(signal.SIGTERM) == 0
    took = time.monotonic() - asked
    assert took < 5 + 3, f"SIGTERM took {took:.1f} s against a 5 s bound"
    assert b"stopped; messages=" in ingest.log.read_bytes()
    pub.join(60)
    ingest.start()
    keys = settle(db, published)
    stored, lost, dup = verdict(keys, published)
    assert (lost, dup) == (0, 0)
    record(
        Row(
            "ingest SIGTERM mid-burst",
            f"SIGTERM during a 30,000-reading burst (exited in {took:.1f} s, bound 5 s), restart",
            len(published),
            stored,
            lost,
            dup,
            time.monotonic() - asked,
            peak_rss_mb(ingest),
        )
    )
