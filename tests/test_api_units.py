"""Unit tests of the API's pure parts: live state, event log, CAP ledger, query building, keys,
times. No servers."""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import orjson
import pytest

from api.alerts import AlertRecord, record_from_payload
from api.auth import KeyStore, add_key, hash_key, new_key, parse_keys, read_keys
from api.cap import CAP_NS, KEEP_CANCELLED_NS, atom_feed, cap_messages, cap_time, severity
from api.errors import BadParameter, KeyFileError
from api.eventlog import EventLog, StreamEvent
from api.feed import FeedHandler
from api.geo import BodyCache, SensorsBody, sensors_collection, streets_collection
from api.history import MAX_BUCKETS, SeriesQuery, parse_every, series_influxql
from api.live import LiveState, depth_level, level_name, parse_alert_payload, summarise_alerts
from api.metrics import Metrics
from api.schemas import SensorCollection, StreetCollection
from api.times import iso, zone
from floodwatch.contract import Reading, StatusChange
from floodwatch.registry import SHIPPED_REGISTRY, load_registry
from floodwatch.topics import Topics

REGISTRY = load_registry(SHIPPED_REGISTRY)
NOW = 1_795_000_000 * 10**9


@pytest.mark.parametrize(
    ("sensor_id", "depth", "level", "name"),
    [
        ("qh-02", 0.0, 0, "normal"),
        ("qh-02", 9.99, 0, "normal"),
        ("qh-02", 10.0, 1, "flooded"),
        ("qh-02", 20.0, 2, "hazard"),
        ("qh-02", 35.0, 3, "impassable"),
        ("qh-02", 50.0, 4, "closed"),
        ("phu-an", 139.0, 0, "normal"),
        ("phu-an", 150.0, 2, "alarm_2"),
        ("phu-an", 170.0, 3, "alarm_3"),
    ],
)
def test_depth_level_follows_the_contract_ladders(
    sensor_id: str, depth: float, level: int, name: str
) -> None:
    """The ladder rung of a depth is the number of thresholds it reaches, named per kind."""
    sensor = REGISTRY.sensors[sensor_id]
    assert depth_level(sensor, depth) == level
    assert level_name(sensor, level) == name


def test_live_readings_mark_a_sensor_online_and_old_offline_statuses_wait() -> None:
    """A live reading marks its sensor online; a retained `offline` (an earlier run's will)
    does not override readings heard within the stale window, a will sent now does."""
    state = LiveState(REGISTRY)

    def online() -> bool | None:
        now = state.get("qh-02")
        assert now is not None
        return now.online

    state.apply_status(StatusChange("qh-02", False, NOW, retained=False))
    assert online() is False
    state.apply_reading(Reading("qh-02", NOW, 1.0), NOW + 1, live=True)
    assert online() is True
    assert not state.apply_status(StatusChange("qh-02", False, NOW + 60 * 10**9, retained=True))
    assert online() is True
    # Silent for longer than 3 intervals: the retained offline stands.
    assert state.apply_status(StatusChange("qh-02", False, NOW + 600 * 10**9, retained=True))
    state.apply_reading(Reading("qh-02", NOW - 1, 1.0), NOW + 601 * 10**9)  # the snapshot
    assert online() is False


def test_live_state_keeps_only_the_newest_reading() -> None:
    """An older reading (a backfill) never replaces a newer one; a new one bumps the version."""
    state = LiveState(REGISTRY)
    assert state.apply_reading(Reading("qh-02", NOW, 12.0))
    version = state.version
    assert not state.apply_reading(Reading("qh-02", NOW - 10**9, 40.0))
    assert not state.apply_reading(Reading("qh-02", NOW, 12.0))  # an exact replay
    assert state.version == version
    assert state.apply_reading(Reading("qh-02", NOW + 10**9, 13.0))
    assert not state.apply_reading(Reading("not-registered", NOW, 1.0))
    now = state.get("qh-02")
    assert now is not None and now.reading is not None and now.reading.level_cm == 13.0


def test_stale_after_three_missed_intervals() -> None:
    """A sensor is stale with no reading at all, or when its reading is over 3 intervals old."""
    state = LiveState(REGISTRY)
    now = state.get("qh-02")
    assert now is not None and now.stale(NOW)
    state.apply_reading(Reading("qh-02", NOW, 5.0))
    assert not now.stale(NOW + 180 * 10**9)
    assert now.stale(NOW + 181 * 10**9)
    state.apply_status(StatusChange("qh-02", False, NOW, True))
    assert now.online is False


def test_a_retained_reading_replayed_by_the_broker_is_not_news_of_the_sensor() -> None:
    """The broker replays a retained reading to every new subscriber: it must not make a
    silent sensor look heard now, while a live one is heard when it arrives."""
    state = LiveState(REGISTRY)
    handler = FeedHandler(
        Topics("floodwatch"), REGISTRY, state, EventLog(10), Metrics(), clock=lambda: NOW
    )
    old_ms = (NOW - 3600 * 10**9) // 10**6
    topic = "floodwatch/v1/sensors/qh-02/reading"
    handler.handle(topic, orjson.dumps({"ts": old_ms, "level_cm": 3.0}), True, NOW)
    now = state.get("qh-02")
    assert now is not None and now.reading is not None and now.stale(NOW)
    handler.handle(topic, orjson.dumps({"ts": old_ms + 1, "level_cm": 3.0}), False, NOW)
    assert not now.stale(NOW)


def test_stale_is_judged_by_arrival_like_the_alert_engine() -> None:
    """A replay of old readings arriving now is live, not stale; any arriving reading, even an
    old one from a backfill that does not replace the newest, shows the sensor is heard."""
    state = LiveState(REGISTRY)
    now = state.get("qh-02")
    assert now is not None
    october = NOW - 40 * 24 * 3600 * 10**9
    assert state.apply_reading(Reading("qh-02", october, 5.0), heard_ns=NOW)
    assert not now.stale(NOW + 180 * 10**9)
    assert now.stale(NOW + 181 * 10**9)
    # An older reading arriving later: not the newest, but the sensor was heard.
    assert not state.apply_reading(Reading("qh-02", october - 10**9, 4.0), heard_ns=NOW + 10**11)
    assert now.reading is not None and now.reading.level_cm == 5.0
    assert not now.stale(NOW + 181 * 10**9)
    # The start-up snapshot (no arrival time) cannot make a sensor heard later than it was.
    state.apply_reading(Reading("qh-02", october + 10**9, 6.0))
    assert now.heard_ns == NOW + 10**11
    # The engine's verdict stands: stale until a fresh reading is judged, however recently
    # an old one arrived.
    doc = {"sensor": "qh-02", "stale": True, "alerts": [{"kind": "stale", "state": "active_unack"}]}
    parsed = parse_alert_payload(orjson.dumps(doc), "qh-02")
    state.apply_alerts("qh-02", parsed.alerts, NOW + 10**11, parsed.envelope)
    assert now.stale(NOW + 10**11)
    state.apply_reading(Reading("qh-02", october - 5 * 10**9, 3.0), heard_ns=NOW + 10**11 + 1)
    assert now.stale(NOW + 10**11 + 2)  # an old backfill ends no silence
    # A new newest reading arriving after the verdict ends it at once (the engine's update
    # clearing it follows), and so does the engine's update itself.
    state.apply_reading(Reading("qh-02", NOW, 7.0), heard_ns=NOW + 10**11 + 3)
    assert not now.stale(NOW + 10**11 + 4)
    state.apply_alerts("qh-02", (), NOW + 10**11 + 5)
    assert not now.stale(NOW + 10**11 + 6)


@pytest.mark.parametrize(
    ("payload", "count"),
    [
        (b"", 0),
        (b"  ", 0),
        (b'{"alert_id": "a", "level": 2, "state": "active_unack"}', 1),
        (b'[{"alert_id": "a"}, {"kind": "rising"}]', 2),
        (b'{"alerts": [{"alert_id": "a"}], "sensor": "qh-02"}', 1),
    ],
)
def test_alert_payload_shapes(payload: bytes, count: int) -> None:
    """Empty means no alerts; an object, a list, or an `alerts` list are all accepted."""
    alerts = parse_alert_payload(payload, "qh-02").alerts
    assert len(alerts) == count
    assert all(a["sensor"] == "qh-02" and isinstance(a["alert_id"], str) for a in alerts)


@pytest.mark.parametrize("payload", [b"{", b"[1, 2]", b'"text"'])
def test_bad_alert_payload_is_refused(payload: bytes) -> None:
    """Not JSON, or items that are not objects, raise ValueError (the feed logs and ignores)."""
    with pytest.raises(ValueError, match="qh-02"):
        parse_alert_payload(payload, "qh-02")


def test_alert_summary_picks_the_most_important_alert() -> None:
    """Highest active level wins, unacknowledged first; cleared ones only when nothing is active."""
    alerts = [
        {"level": 1, "state": "active_ack"},
        {"level": 3, "state": "active_ack"},
        {"level": 3, "state": "active_unack"},
        {"level": 4, "state": "cleared_unack"},
    ]
    assert summarise_alerts(alerts) == (3, "active_unack")
    assert summarise_alerts([{"level": 2, "state": "cleared_unack"}]) == (0, "cleared_unack")
    assert summarise_alerts([{"level": 2, "state": "cleared_ack"}]) == (0, None)
    assert summarise_alerts([{"level": True, "state": "bogus"}]) == (0, None)


def test_geojson_validates_against_the_documented_schemas() -> None:
    """The bytes served for /v1/sensors and /v1/streets match their OpenAPI models."""
    state = LiveState(REGISTRY)
    state.apply_reading(Reading("qh-02", NOW, 24.0, battery_v=3.6, rssi=-80))
    state.apply_reading(Reading("qh-03", NOW - 3600 * 10**9, 31.0))
    state.apply_alerts(
        "qh-02", ({"alert_id": "a", "kind": "flood", "level": 2, "state": "active_unack"},), NOW
    )
    body = SensorsBody()
    served = orjson.loads(body.get(state, NOW))
    sensors = SensorCollection.model_validate(served)
    assert served == sensors_collection(state, NOW)
    state.apply_reading(Reading("d12-04", NOW, 51.0))
    assert orjson.loads(body.get(state, NOW)) == sensors_collection(state, NOW)
    assert sensors.numberReturned == len(REGISTRY.sensors) == len(sensors.features)
    streets = StreetCollection.model_validate(streets_collection(state, NOW))
    quoc_huong = next(f for f in streets.features if f.id == "Quốc Hương")
    # The engine's level, never the raw one: the deeper qh-03 has no alert (one truth).
    assert quoc_huong.properties.worst_sensor == "qh-02"
    assert quoc_huong.properties.level == 2 and not quoc_huong.properties.stale
    assert quoc_huong.properties.alert_level == 2 and quoc_huong.properties.alerts == ["a"]


def test_body_cache_rebuilds_on_a_new_version_or_second() -> None:
    """The cached body is reused within a second and rebuilt when the state changes."""
    builds: list[int] = []

    def build(state: LiveState, now_ns: int) -> dict[str, object]:
        builds.append(now_ns)
        return {"n": len(builds)}

    cache, state = BodyCache(build), LiveState(REGISTRY)
    first = cache.get(state, NOW)
    assert cache.get(state, NOW + 999_000_000) is first
    state.apply_reading(Reading("qh-02", NOW, 1.0))
    cache.get(state, NOW + 999_000_000)
    cache.get(state, NOW + 10**9)
    assert len(builds) == 3


def _run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


class _Ticks:
    """A monotonic clock that moves `step_ns` per reading."""

    def __init__(self, step_ns: int) -> None:
        self.now = 0
        self.step_ns = step_ns

    def __call__(self) -> int:
        self.now += self.step_ns
        return self.now


def _publish(log: EventLog, n: int, event: str = "reading") -> StreamEvent:
    return log.publish(event, f'{{"n": {n}}}', NOW + n, f"qh-02 {n}".encode())


def test_event_log_resumes_after_the_last_event_id() -> None:
    """A client resuming with an id gets exactly the events after it (events 10 s apart, so
    the 2 s overlap holds none before it)."""
    log = EventLog(10, clock=_Ticks(10 * 10**9), started_ns=0)
    sent = [_publish(log, n) for n in range(5)]
    cursor, gap = log.resume(sent[1].id)
    assert gap is None
    events, gap = log.after(cursor)
    assert [e.id for e in events] == [e.id for e in sent[2:]]
    assert gap is None
    assert log.resume(None) == (5, None)


def test_event_ids_are_made_from_the_event_not_the_process() -> None:
    """Two processes give the same event the same id; different events differ."""
    one, other = EventLog(10), EventLog(10)
    assert _publish(one, 1).id == _publish(other, 1).id
    assert _publish(one, 2).id != _publish(one, 3).id
    assert _publish(one, 4, "alert").id != _publish(one, 4, "reading").id


def test_event_log_reports_a_gap_when_events_were_dropped() -> None:
    """Asking for an event older than the buffer holds yields a Gap, then what is held."""
    log = EventLog(3, clock=_Ticks(10 * 10**9), started_ns=0)
    sent = [_publish(log, n) for n in range(8)]
    cursor, gap = log.resume(sent[0].id)
    assert gap is not None and gap.oldest_event_id == sent[5].id
    events, _ = log.after(cursor)
    assert [e.id for e in events] == [e.id for e in sent[5:]]
    # A slow reader that fell behind the buffer is told too, with the count.
    events, gap = log.after(1)
    assert gap is not None and gap.missed == 4


@pytest.mark.parametrize("last_id", ["ffffffff-3", "garbage", f"{NOW - 1}-0123456789ab"])
def test_event_log_gap_for_ids_it_cannot_place(last_id: str) -> None:
    """A malformed id, or one from before this process listened, produces a Gap."""
    log = EventLog(10, started_ns=NOW)
    _publish(log, 1, "alert")
    _, gap = log.resume(last_id)
    assert gap is not None and gap.reason


def test_event_log_wakes_waiting_clients() -> None:
    """wait() returns as soon as an event is published, well before its timeout."""

    async def scenario() -> None:
        log = EventLog(10)
        waiter = asyncio.create_task(log.wait(0, timeout_s=30))
        await asyncio.sleep(0.01)
        _publish(log, 1)
        await asyncio.wait_for(waiter, 1)

    _run(scenario())


@pytest.mark.parametrize(
    ("text", "ns"),
    [("1s", 10**9), ("5m", 300 * 10**9), ("1h", 3600 * 10**9), ("2d", 172800 * 10**9)],
)
def test_every_durations(text: str, ns: int) -> None:
    """Valid durations parse to nanoseconds."""
    assert parse_every(text) == ns


@pytest.mark.parametrize(
    "text", ["0m", "5", "m", "1.5h", "5m)", "5m; DROP DATABASE x", "1y", "-1h", "1ms", "1234567m"]
)
def test_every_refuses_anything_but_the_strict_pattern(text: str) -> None:
    """Anything but digits and one unit letter is refused before it can reach InfluxQL."""
    with pytest.raises(BadParameter):
        parse_every(text)


def test_series_query_binds_every_request_value() -> None:
    """Sensor, range and limit are bound parameters; only the checked `every` is in the text."""
    text, params = series_influxql(SeriesQuery("qh-02", 1, 2 * 10**12, 10, "5m", "max"))
    assert params == {"sensor": "qh-02", "start": 1, "end": 2 * 10**12, "limit": 11}
    assert "qh-02" not in text and "$sensor" in text and "$limit" in text
    assert 'max("level_cm")' in text and "GROUP BY time(5m)" in text
    raw, _ = series_influxql(SeriesQuery("qh-02", 1, 2, 10))
    assert "GROUP BY" not in raw and "ORDER BY time ASC" in raw
    with pytest.raises(BadParameter, match="buckets"):
        series_influxql(SeriesQuery("qh-02", 0, (MAX_BUCKETS + 2) * 10**9, 10, "1s", "mean"))


def test_keys_file_round_trip(tmp_path: Path) -> None:
    """add_key stores only the hash, and the store finds the key by it (file mode 0600)."""
    path = tmp_path / "keys"
    key = add_key(path, "operator", "alice")
    assert key not in path.read_text() and hash_key(key) in path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600
    [entry] = read_keys(path)
    assert (entry.role, entry.name) == ("operator", "alice")
    store = KeyStore(path)
    found = store.lookup(key)
    assert found is not None and found.name == "alice"
    assert store.lookup(new_key()) is None
    assert store.lookup("not a token!") is None
    with pytest.raises(KeyFileError, match="already has a key named"):
        add_key(path, "viewer", "alice")


def test_key_store_picks_up_new_keys_without_a_restart(tmp_path: Path) -> None:
    """A key added while the API runs works after the next reload check."""
    path = tmp_path / "keys"
    add_key(path, "viewer", "first")
    clock = [0.0]
    store = KeyStore(path, clock=lambda: clock[0])
    key = add_key(path, "operator", "second")
    clock[0] += 2.0
    found = store.lookup(key)
    assert found is not None and found.role == "operator"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("admin:" + "a" * 64 + ":x", "not viewer or operator"),
        ("viewer:abc:x", "64 lowercase hex"),
        ("viewer:" + "a" * 64, "role:sha256hex:name"),
        ("viewer:" + "a" * 64 + ":bad name", "name"),
    ],
)
def test_malformed_key_lines_are_named(line: str, message: str) -> None:
    """A bad keys file line raises KeyFileError naming the line and what is wrong."""
    with pytest.raises(KeyFileError, match=message) as info:
        parse_keys(f"# comment\n\n{line}\n", "keys.txt")
    assert "keys.txt line 3" in str(info.value)


@pytest.mark.parametrize("name", ["Mars/Olympus", "../../etc/passwd", "/etc/localtime", "x" * 70])
def test_unknown_zones_are_refused(name: str) -> None:
    """tz must be an IANA zone name; paths and unknown names are refused."""
    with pytest.raises(BadParameter):
        zone(name)


def test_times_carry_the_ward_offset() -> None:
    """Times are ISO 8601 with offset: +00:00 by default, +07:00 in the ward's zone."""
    assert iso(0) == "1970-01-01T00:00:00.000+00:00"
    # 2026-11-18T11:06:40Z, which is 18:06:40 in the ward.
    assert iso(NOW, zone("Asia/Ho_Chi_Minh")) == "2026-11-18T18:06:40.000+07:00"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+07:00", cap_time(NOW + 123_456_789))


def _record(alert_id: str, level: int, state: str, at: int, kind: str = "flood") -> AlertRecord:
    payload = {"alert_id": alert_id, "level": level, "state": state, "kind": kind}
    return record_from_payload("qh-02", payload, at)


def _event(
    alert_id: str,
    seq: int,
    level: int,
    state: str,
    at: int,
    kind: str = "flood",
    change: str | None = None,
) -> AlertRecord:
    """One stored alert_event row as the API reads it back (AlertSource.changes)."""
    if change is None:
        change = {"active_ack": "acknowledged", "cleared_unack": "cleared"}.get(state, "raised")
    payload = {
        "alert_id": alert_id,
        "seq": seq,
        "change": change,
        "level": level,
        "state": state,
        "kind": kind,
        "at_ns": at,
    }
    return record_from_payload("qh-02", payload, at)


S = 10**9
CHANGES = [
    _event("a", 1, 1, "active_unack", NOW),  # raised
    _event("a", 2, 1, "active_ack", NOW + 60 * S),  # acknowledged: no level change
    _event("a", 3, 3, "active_ack", NOW + 120 * S, change="escalated"),
    _event("a", 4, 0, "cleared_unack", NOW + 600 * S),  # cleared
    _event("h", 1, 0, "active_unack", NOW, kind="battery_low"),  # not a public warning
]


def test_cap_chains_alert_update_cancel_from_the_engine_events() -> None:
    """Raised: Alert; level change: Update; cleared: Cancel; each later one references all
    earlier ones; acknowledgements and sensor-health alerts add nothing."""
    sender = "floodwatch.test"
    [alert] = cap_messages(CHANGES[:1], NOW, sender)
    assert alert.msg_type == "Alert" and alert.references == ()
    assert alert.identifier == "floodwatch.a.1" and alert.sent_ns == NOW
    assert cap_messages(CHANGES[:2], NOW, sender) == [alert]
    [update] = cap_messages(CHANGES[:3], NOW, sender)
    assert update.msg_type == "Update" and update.identifier == "floodwatch.a.3"
    assert update.references == (f"{sender},floodwatch.a.1,{cap_time(NOW)}",)
    [cancel] = cap_messages(CHANGES, NOW + 700 * S, sender)
    assert cancel.msg_type == "Cancel" and cancel.identifier == "floodwatch.a.4"
    assert len(cancel.references) == 2 and cancel.references[1].startswith(
        f"{sender},floodwatch.a.3,"
    )


def test_cap_chains_are_the_same_from_any_process_and_order() -> None:
    """Chains come from stored events alone: an API restarted mid-chain, reading the same
    events in another order, issues the same identifiers, times and references."""
    first = cap_messages(CHANGES[:3], NOW + 130 * S, "s")
    again = cap_messages(list(reversed(CHANGES[:3])), NOW + 900 * S, "s")
    assert first == again and first[0].msg_type == "Update"


def test_cap_chains_forget_old_cancels_and_start_where_the_events_do() -> None:
    """A Cancel stays in the feed for 24 h; an alert raised before the events reach back
    starts its chain with Alert at its first known change."""
    assert cap_messages(CHANGES, NOW + 600 * S + KEEP_CANCELLED_NS + 1, "s") == []
    [alert] = cap_messages(CHANGES[2:3], NOW, "s")
    assert alert.msg_type == "Alert" and alert.identifier == "floodwatch.a.3"
    # Two changes in one second still get increasing CAP times (whole seconds).
    quick = [
        _event("q", 1, 1, "active_unack", NOW),
        _event("q", 2, 2, "active_unack", NOW, change="escalated"),
    ]
    [update] = cap_messages(quick, NOW, "s")
    assert update.sent_ns == NOW + S


def test_cap_severity_maps_the_ladder() -> None:
    """Levels 1-4 map to Minor, Moderate, Severe, Extreme; rising is Moderate."""
    sensor = REGISTRY.sensors["qh-02"]
    assert [severity(_record("a", n, "active_unack", NOW), sensor) for n in range(5)] == [
        "Unknown",
        "Minor",
        "Moderate",
        "Severe",
        "Extreme",
    ]
    assert severity(_record("r", 0, "active_unack", NOW, kind="rising"), sensor) == "Moderate"


def test_a_rising_alert_has_no_updates_and_an_acknowledgement_makes_none() -> None:
    """Alerts other than flood carry the sensor's flood level, which moves under them: only
    raise and clear are news. An acknowledgement is never a CAP message."""
    rising = [
        _event("r", 1, 0, "active_unack", NOW, kind="rising"),
        _event("r", 2, 2, "active_ack", NOW + 60 * S, kind="rising"),  # acked at level 2
        _event("r", 3, 2, "cleared_unack", NOW + 600 * S, kind="rising"),
    ]
    [alert] = cap_messages(rising[:2], NOW + 60 * S, "s")
    assert alert.msg_type == "Alert" and alert.identifier == "floodwatch.r.1"
    [cancel] = cap_messages(rising, NOW + 600 * S, "s")
    assert cancel.msg_type == "Cancel" and len(cancel.references) == 1


def test_atom_feed_holds_one_cap_alert_per_chain() -> None:
    """The feed is well-formed Atom with a CAP <alert> inside each entry's content."""
    changes = [_event("a", 1, 2, "active_unack", NOW), _event("b", 1, 1, "active_unack", NOW)]
    root = ET.fromstring(atom_feed(cap_messages(changes, NOW, "s"), "s", REGISTRY, NOW))
    assert len(root.findall(f".//{{{CAP_NS}}}alert")) == 2


def test_a_reading_on_a_nats_partition_topic_is_the_sensor_s_reading() -> None:
    """On a NATS cluster subscribers see a sensor's publish on ROOT/v1/part/P/WARD/ID/reading
    (docs/CLUSTER.md): the live feed takes it as the contract's topic, and every replica gives
    its event the same id."""
    ids = []
    for _ in range(2):  # two replicas
        state = LiveState(REGISTRY)
        events = EventLog(10)
        handler = FeedHandler(
            Topics("floodwatch"), REGISTRY, state, events, Metrics(), clock=lambda: NOW
        )
        topic = "floodwatch/v1/part/3/an-khanh/qh-02/reading"
        handler.handle(topic, orjson.dumps({"ts": NOW // 10**6, "level_cm": 12.5}), False, NOW)
        now = state.get("qh-02")
        assert now is not None and now.reading is not None and now.reading.level_cm == 12.5
        [event] = events.after(0)[0]
        ids.append(event.id)
    assert ids[0] == ids[1]
