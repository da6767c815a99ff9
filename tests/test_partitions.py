"""Partitioned ingest (ingest/partitions.py): the options, which sensors a worker owns, the
engines it holds per partition, worker logins, and two static workers on the real Mosquitto
and influxd splitting a city of several wards."""

from __future__ import annotations

import argparse
import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts import sensor_payload
from alerts.commands import AckReply, AckRequest
from alerts.state import new_state
from floodwatch.cluster import partition
from floodwatch.credentials import (
    Credentials,
    bound_client_id,
    check_client_id,
    dynsec_document,
    worker_logins,
)
from floodwatch.credentials import (
    main as credentials_main,
)
from floodwatch.errors import SettingsError
from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service
from floodwatch.mqtt import Delivery, MqttConnection
from floodwatch.operations import Override, override_sensor
from floodwatch.registry import SHIPPED_REGISTRY, Registry, load_registry, sensor_as_properties
from floodwatch.settings import parse_influx_url
from floodwatch.topics import Topics
from ingest.alerting import Alerting, Restored
from ingest.metrics import ingest_metrics
from ingest.partitions import (
    PartitionedAlerting,
    PartitionRestore,
    add_partition_options,
    alert_sensor,
    owned_registry,
    parse_own,
    partition_settings,
    reading_subscriptions,
    sensor_partitions,
)
from ingest.pipeline import IngestCounters
from tests.conftest import (
    IngestProcess,
    admin_endpoint,
    admin_influx,
    mosquitto_pub,
    own_login,
    process_env,
    wait_until,
)
from tests.test_alerts_e2e import Watch, ack

# -- a city of several wards -----------------------------------------------------------------


def ward_names(partitions: int, wards: int) -> list[str]:
    """`wards` ward ids that fall into `wards` different partitions (deterministic)."""
    names: list[str] = []
    taken: set[int] = set()
    k = 0
    while len(names) < wards:
        name = f"ward-{k}"
        if partition(name, partitions) not in taken:
            taken.add(partition(name, partitions))
            names.append(name)
        k += 1
    return names


def city_registry(path: Path, partitions: int) -> tuple[Path, dict[str, str]]:
    """The shipped registry with each street in a ward of its own and the tide gauge in a
    fourth, the four wards in four partitions; returns the file and sensor -> ward."""
    doc = json.loads(SHIPPED_REGISTRY.read_text())
    streets = [f["properties"]["name"] for f in doc["features"] if "street" not in f["properties"]]
    names = ward_names(partitions, len(streets) + 1)
    ward_of_street = dict(zip(streets, names, strict=False))
    wards: dict[str, str] = {}
    for feature in doc["features"]:
        props = feature["properties"]
        if "id" not in props:
            continue
        props["ward_id"] = ward_of_street.get(props.get("street", ""), names[-1])
        wards[props["id"]] = props["ward_id"]
    path.write_text(json.dumps(doc, ensure_ascii=False))
    return path, wards


# -- pure: options ---------------------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_partition_options(parser)
    return parser.parse_args(list(argv))


def test_static_partitions_are_read_and_checked() -> None:
    """--partitions 8 --own 0,3,5 is a static worker; --own alone takes the default count."""
    parts = partition_settings(_args("--partitions", "8", "--own", "0, 3,5"))
    assert (parts.partitions, parts.own, parts.cluster) == (8, frozenset({0, 3, 5}), False)
    assert partition_settings(_args("--own", "7")).partitions == 8
    assert not partition_settings(_args()).partitioned


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--partitions", "4", "--own", "4"], "--own"),
        (["--own", "1,x"], "--own"),
        (["--partitions", "0", "--own", "0"], "--partitions"),
        (["--partitions", "4"], "--own"),
        (["--cluster"], "--nats-url"),
        (["--cluster", "--own", "1"], "--own"),
        (["--cluster", "--nats-url", "http://x"], "--nats-url"),
    ],
)
def test_a_bad_partition_option_names_itself(argv: list[str], names: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(names)):
        partition_settings(_args(*argv))


@given(st.sets(st.integers(0, 63), min_size=1), st.integers(64, 128))
def test_own_round_trips(parts: set[int], partitions: int) -> None:
    assert parse_own(",".join(map(str, sorted(parts))), partitions) == parts


# -- pure: ownership -------------------------------------------------------------------------


def test_partitions_split_the_sensors_without_overlap(tmp_path: Path) -> None:
    """Every sensor (retired ones too) is in exactly one worker's registry and subscriptions."""
    path, wards = city_registry(tmp_path / "city.geojson", 8)
    registry = load_registry(path)
    parts = sensor_partitions(registry, 8)
    assert {parts[s] for s in wards} == {partition(w, 8) for w in set(wards.values())}
    owners = sorted(set(parts.values()))
    halves = [owners[::2], owners[1::2]]
    subs = [owned_registry(registry, 8, half).sensors for half in halves]
    assert sorted([*subs[0], *subs[1]]) == sorted(registry.sensors)
    topics = Topics("r")
    got = [
        reading_subscriptions(
            registry, topics, partition_settings(_args("--own", ",".join(map(str, h))))
        )
        for h in halves
    ]
    filters = sorted(s.topic_filter for g in got for s in g)
    assert filters == sorted(f"r/v1/sensors/{s}/{c}" for s in wards for c in ("reading", "status"))
    assert all(s.flag_retained == s.topic_filter.endswith("reading") for g in got for s in g)


def test_an_override_keeps_the_sensors_ward(tmp_path: Path) -> None:
    """A calibration keeps the sensor's ward_id, so it stays in its ward's partition."""
    path, wards = city_registry(tmp_path / "city.geojson", 8)
    registry = load_registry(path)
    changed = override_sensor(registry, Override("qh-01", {"mount_height_mm": 1700.0}))
    assert changed.ward_id == wards["qh-01"] and changed.mount_height_mm == 1700.0


def test_alert_ids_name_their_sensor() -> None:
    assert alert_sensor("qh-02:flood:1795691100000000000") == "qh-02"
    assert alert_sensor("nonsense") == "nonsense"


# -- the engines per partition (owner thread, no broker) ------------------------------------


class Published:
    """What the engines publish (topic, payload)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []

    def __call__(self, topic: str, payload: bytes, retain: bool) -> None:
        self.items.append((topic, payload))


@pytest.fixture
def city(tmp_path: Path) -> tuple[Registry, dict[str, str]]:
    path, wards = city_registry(tmp_path / "city.geojson", 8)
    return load_registry(path), wards


def _fresh(alerting: PartitionedAlerting, part: int, now: int) -> None:
    """Adopt a fresh engine for `part` (what a rebuild over an empty database gives)."""
    sub = owned_registry(alerting.registry, alerting.partitions, [part])
    engine = alerting._alerting(sub, new_state(sub, now))
    alerting._engines[part] = engine


def _reading(sensor_id: str, t_s: int, level_cm: float) -> Delivery:
    payload = orjson.dumps({"ts": t_s * 1000, "level_cm": level_cm})
    return Delivery(Topics("r").reading(sensor_id), payload, False, t_s * 10**9, 0, 1, 0)


def test_only_owned_partitions_judge_and_answer(city: tuple[Registry, dict[str, str]]) -> None:
    """Readings of a partition not owned are not judged; an acknowledgement of its alert is
    left to its owner, one of an owned partition still rebuilding is `not_ready`."""
    from ingest.pipeline import judge

    registry, wards = city
    now = 1_800_000_000
    published = Published()
    alerting = PartitionedAlerting(
        registry,
        8,
        Topics("r"),
        # Never asked: the engines here are fresh, not rebuilt.
        InfluxClient(parse_influx_url("http://127.0.0.1:9"), "unused"),
        published,
        clock=lambda: now * 10**9,
    )
    mine, other = "qh-02", "d12-02"
    p_mine, p_other = (partition(wards[s], 8) for s in (mine, other))
    alerting.claim([p_mine])
    _fresh(alerting, p_mine, (now - 600) * 10**9)
    readings = [
        _reading(s, now - 120 + k * 60, d)
        for s in (mine, other)
        for k, d in enumerate([12.5, 14.0])
    ]
    batch = judge(Topics("r"), registry, readings)
    lines = alerting.judge(batch.readings)
    assert [ln.split(",")[0] for ln in lines] == ["alert_event"]
    assert f"sensor={mine}" in lines[0]
    raised = [orjson.loads(p) for t, p in published.items if t == Topics("r").alert_events(mine)]
    assert [(e["kind"], e["change"]) for e in raised] == [("flood", "raised")]
    assert not [t for t, _ in published.items if other in t]

    def ask(alert_id: str) -> AckReply | None:
        before = len(published.items)
        request = AckRequest(alert_id, "Lan", "", "r/v1/commands/ack/reply/x").to_json()
        alerting.answer(Delivery("r/v1/commands/ack", request, False, 0, 0, 1, 0))
        replies = [p for t, p in published.items[before:] if t.endswith("/reply/x")]
        return AckReply.from_json(replies[0]) if replies else None

    assert ask(raised[0]["alert_id"]) is not None and ask(raised[0]["alert_id"]).ok  # type: ignore[union-attr]
    assert ask(f"{other}:flood:1") is None, "a worker answered for a sensor it does not own"
    reply = ask("nobody:flood:1")
    assert reply is not None and reply.code == "unknown_alert"
    alerting.claim([p_other])  # gained, its rebuild still under way
    reply = ask(f"{other}:flood:1")
    assert reply is not None and reply.code == "not_ready"
    alerting.forget([p_mine])
    assert alerting.owned == {p_other}
    assert alerting.judge(batch.readings) == [], "a lost partition was still judged"


def test_a_gained_partition_publishes_only_the_states_nats_does_not_hold(
    city: tuple[Registry, dict[str, str]],
) -> None:
    """A takeover publishes the retained alert states that differ from those NATS holds (a
    flood it lacks, a cleared alert it still shows), not every sensor's; without them (the
    single node) it publishes every one, as before."""
    from ingest.pipeline import judge

    registry, wards = city
    now = 1_800_000_000
    topics = Topics("r")
    unused = InfluxClient(parse_influx_url("http://127.0.0.1:9"), "unused")
    mine = "qh-02"
    part = partition(wards[mine], 8)
    sub = owned_registry(registry, 8, [part])
    other = next(s for s in sub.sensors if s != mine)
    engine = Alerting(sub, topics, unused, Published(), state=new_state(sub, (now - 600) * 10**9))
    readings = [_reading(mine, now - 120, 12.5), _reading(mine, now - 60, 14.0)]
    engine.judge(judge(topics, registry, readings).readings)
    state = engine.state
    assert state is not None
    flood = sensor_payload(state, mine)
    assert flood, "the readings raised no flood"

    def gained(retained: dict[str, bytes] | None) -> dict[str, bytes]:
        published = Published()
        alerting = PartitionedAlerting(registry, 8, topics, unused, published)
        alerting.claim([part])
        restored = Restored(state, 1, 2, sub)
        alerting.adopt(
            PartitionRestore(part, alerting._alerting(sub), restored, registry, retained)
        )
        return dict(published.items)

    assert gained({mine: flood}) == {}
    assert gained({mine: flood, other: b'{"old": 1}'}) == {topics.alert(other): b""}
    assert gained({}) == {topics.alert(mine): flood}
    assert set(gained(None)) == {topics.alert(s) for s in sub.sensors}


# -- logins ----------------------------------------------------------------------------------


def test_worker_logins_are_bound_to_their_own_client_ids() -> None:
    """Workers 2..N get logins `ingest-K` bound to `floodwatch-ingest-K` with the ingest role;
    the test suite's `ingest-001` logins stay bound to their own names."""
    creds = Credentials.generate([], workers=3)
    assert worker_logins(3) == ["ingest-2", "ingest-3"] and "ingest-3" in creds.mqtt
    doc = dynsec_document(creds.mqtt, {})
    clients = {c["username"]: c for c in doc["clients"]}
    assert clients["ingest-2"]["clientid"] == "floodwatch-ingest-2"
    assert clients["ingest-3"]["roles"] == [{"rolename": "ingest"}]
    assert bound_client_id("ingest-001") == "ingest-001"
    check_client_id("ingest-2", "floodwatch-ingest-2")
    with pytest.raises(SettingsError, match="floodwatch-ingest-2"):
        check_client_id("ingest-2", "floodwatch-ingest")


def test_the_cluster_accepts_worker_ids_under_the_shared_login_only() -> None:
    """NATS binds no client id to a login: there `ingest` may use floodwatch-ingest-K, never a
    sensor's or another service's id, and Mosquitto's binding is unchanged."""
    check_client_id("ingest", "floodwatch-ingest-2", broker_binds=False)
    check_client_id("ingest", "floodwatch-ingest", broker_binds=False)
    for bad in ("qh-01", "floodwatch-api", "floodwatch-ingest.2", "floodwatch-ingestx"):
        with pytest.raises(SettingsError, match="--client-id"):
            check_client_id("ingest", bad, broker_binds=False)
    with pytest.raises(SettingsError, match="floodwatch-ingest"):
        check_client_id("ingest", "floodwatch-ingest-2")


# -- two static workers on the real Mosquitto ----------------------------------------------


def _stats(worker: IngestProcess) -> dict[str, int]:
    """The numbers of the worker's last progress line."""
    lines = [ln for ln in worker.log.read_text().splitlines() if "readings_stored=" in ln]
    if not lines:
        return {}
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1])}


@pytest.fixture
def workers(
    broker: Service, influxd: Service, unique: str, tmp_path: Path
) -> Iterator[tuple[list[IngestProcess], list[frozenset[int]], dict[str, str]]]:
    path, wards = city_registry(tmp_path / "city.geojson", 4)
    owners = sorted({partition(w, 4) for w in wards.values()})
    halves = [frozenset(owners[::2]), frozenset(owners[1::2])]
    procs = []
    for k, half in enumerate(halves):
        env = process_env(broker, influxd, unique, unique)
        own_login(broker, env)
        env.update(
            FLOODWATCH_REGISTRY=str(path),
            FLOODWATCH_PARTITIONS="4",
            FLOODWATCH_OWN_PARTITIONS=",".join(map(str, sorted(half))),
            FLOODWATCH_OUTBOX="off",
        )
        log_dir = tmp_path / f"w{k}"
        log_dir.mkdir()
        procs.append(IngestProcess(env, log_dir))
    for proc in procs:
        proc.start()
    yield procs, halves, wards
    for proc in procs:
        if proc.running():
            proc.stop(signal.SIGKILL)


def test_two_static_workers_store_and_judge_each_ward_once(
    broker: Service,
    influxd: Service,
    unique: str,
    workers: tuple[list[IngestProcess], list[frozenset[int]], dict[str, str]],
) -> None:
    """Two workers owning half the partitions each: every reading is stored by its ward's
    owner only, each flood is raised once, by the owner, and an acknowledgement is answered by
    the owner alone."""
    procs, halves, wards = workers
    topics = Topics(unique)
    events = Watch(broker, f"{unique}/v1/events/+")
    try:
        for proc, half in zip(procs, halves, strict=True):
            assert f"owns partitions {sorted(half)}" in proc.log.read_text()
        flooded: dict[str, str] = {}  # one street sensor per ward: its flood
        for sensor_id, ward in sorted(wards.items()):
            if ward not in flooded.values() and sensor_id != "phu-an":
                flooded[sensor_id] = ward
        now_ms = int(time.time() * 1000)
        for sensor_id in flooded:
            items = [
                {"ts": now_ms - (3 - k) * 60_000, "level_cm": d}
                for k, d in enumerate([4.0, 12.5, 14.0])
            ]
            mosquitto_pub(broker, topics.reading(sensor_id), message=orjson.dumps(items).decode())
        expected = [sum(3 for s in flooded if partition(wards[s], 4) in half) for half in halves]
        assert all(expected), "each worker should own a flooded ward"
        wait_until(
            lambda: [_stats(p).get("readings_stored") for p in procs] == expected,
            20,
            f"each worker to store its own wards' readings {expected}",
        )

        def floods() -> list[dict[str, str]]:
            every = [orjson.loads(d.payload) for d in list(events.messages)]
            return [e for e in every if e["kind"] == "flood"]

        wait_until(lambda: len(floods()) >= len(flooded), 10, "the floods' events")
        raised = floods()
        assert sorted((e["sensor_id"], e["change"]) for e in raised) == sorted(
            (s, "raised") for s in flooded
        ), [(e["sensor_id"], e["kind"], e["change"]) for e in raised]
        db = admin_influx(influxd, unique)
        stored = db.query('SELECT count("level_cm") FROM "water_level"')
        db.close()
        assert stored[0]["values"][0][1] == sum(expected)
        # Acknowledged by the owner alone: one answer, and the one worker's event.
        alert_id = next(e["alert_id"] for e in raised)
        done = ack(procs[0].env, alert_id, "--who", "Lan", broker=broker)
        assert done.returncode == 0, done.stderr
        wait_until(lambda: len(floods()) == len(flooded) + 1, 10, "the acknowledged event")
        assert floods()[-1]["change"] == "acknowledged"

        # An operator adds a sensor to one of worker 2's wards: worker 2 follows its topics.
        registry = load_registry(Path(procs[1].env["FLOODWATCH_REGISTRY"]))
        twin = next(s for s in flooded if partition(wards[s], 4) in halves[1])
        props = {**sensor_as_properties(registry.sensors[twin]), "name": "Chợ mới"}
        added = Override("qh-09", props, (106.73, 10.80))
        admin = MqttConnection(admin_endpoint(broker))
        admin.start()
        try:
            admin.publish_and_wait(topics.registry_override("qh-09"), added.to_json(), retain=True)
        finally:
            admin.stop()
        wait_until(
            lambda: all(b"registry changed (qh-09)" in p.log.read_bytes() for p in procs),
            10,
            "both workers to apply the new sensor",
        )
        reading = orjson.dumps({"ts": now_ms, "level_cm": 3.0}).decode()
        mosquitto_pub(broker, topics.reading("qh-09"), message=reading)
        wait_until(
            lambda: (
                [_stats(p).get("readings_stored") for p in procs] == [expected[0], expected[1] + 1]
            ),
            20,
            "worker 2 alone to store the new sensor's reading",
        )
    finally:
        events.conn.stop()
    for proc in procs:
        assert proc.stop() == 0


def test_the_metrics_say_which_partitions_the_worker_owns() -> None:
    """floodwatch_ingest_partition_owned is 1 for each owned partition, 0 for the others."""
    metrics = ingest_metrics(IngestCounters(), 0, None, None, (4, frozenset({1, 3})))
    [owned] = [m for m in metrics if m.name == "floodwatch_ingest_partition_owned"]
    assert [(labels["partition"], value) for labels, value in owned.samples] == [
        ("0", 0),
        ("1", 1),
        ("2", 0),
        ("3", 1),
    ]
    assert not [m for m in ingest_metrics(IngestCounters(), 0, None) if "partition" in m.name]


def test_compose_credentials_make_the_worker_logins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m floodwatch.credentials --ingest-workers 3` writes ingest-2 and ingest-3, bound
    to their client ids, and asks for their passwords by name when they are missing."""
    for user in ("ADMIN", "INGEST", "API", "NOTIFY", "INGEST_2"):
        monkeypatch.setenv(f"MQTT_{user}_PASSWORD", f"pw-{user.lower()}")
    assert credentials_main(["--out", str(tmp_path), "--ingest-workers", "3"]) == 2
    monkeypatch.setenv("MQTT_INGEST_3_PASSWORD", "pw-3")
    assert credentials_main(["--out", str(tmp_path), "--ingest-workers", "3"]) == 0
    doc = json.loads(Credentials.dynsec_file(tmp_path).read_text())
    bound = {c["username"]: c.get("clientid") for c in doc["clients"]}
    assert bound["ingest-2"] == "floodwatch-ingest-2"
    assert bound["ingest-3"] == "floodwatch-ingest-3"
