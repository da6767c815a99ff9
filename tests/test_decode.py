"""Decoding and validation of what sensors publish (CONTRACT section 2), without servers."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from floodwatch.contract import MAX_ITEMS, MAX_PAYLOAD_BYTES, Reading, iso_time
from floodwatch.decode import Decoded, decode_message
from floodwatch.registry import SHIPPED_REGISTRY, Registry, Sensor, load_registry
from floodwatch.topics import Topics

TOPICS = Topics("floodwatch")
REGISTRY = load_registry(SHIPPED_REGISTRY)
# 2026-11-26T12:00:00Z, the receive time of every message below.
NOW_NS = 1_795_694_400 * 10**9
STREET = next(s for s in REGISTRY.sensors.values() if s.kind == "street" and s.sends == "level_cm")
DISTANCE = next(s for s in REGISTRY.sensors.values() if s.sends == "distance_mm")
TIDE = next(s for s in REGISTRY.sensors.values() if s.kind == "tide")


def decode(payload: bytes | str, sensor: Sensor = STREET, channel: str = "reading") -> Decoded:
    body = payload.encode() if isinstance(payload, str) else payload
    topic = f"floodwatch/v1/sensors/{sensor.id}/{channel}"
    return decode_message(TOPICS, REGISTRY, topic, body, NOW_NS)


def only_reading(decoded: Decoded) -> Reading:
    assert decoded.rejections == [], decoded.rejections
    assert len(decoded.readings) == 1
    return decoded.readings[0]


def test_contract_example_decodes_to_its_values() -> None:
    """The contract's example reading keeps every field, with the time in UTC nanoseconds."""
    r = only_reading(
        decode(
            '{"ts": "2026-11-26T18:05:00.000+07:00", "level_cm": 23.5, "battery_v": 3.71, '
            '"rssi": -87, "seq": 1042}'
        )
    )
    assert r == Reading(STREET.id, 1_795_691_100 * 10**9, 23.5, None, 3.71, -87, 1042, False)


@pytest.mark.parametrize(
    ("ts", "expected_ns"),
    [
        ('"2026-11-26T18:05:00+07:00"', 1_795_691_100 * 10**9),
        ('"2026-11-26T11:05:00Z"', 1_795_691_100 * 10**9),
        ('"2026-11-26T11:05:00.123456+00:00"', 1_795_691_100_123_456_000),
        ("1795691100000", 1_795_691_100 * 10**9),
        ("1795691100001", 1_795_691_100_001_000_000),
    ],
)
def test_timestamps_in_every_accepted_form(ts: str, expected_ns: int) -> None:
    """ISO 8601 with an offset (Z included) and epoch milliseconds give the same instant."""
    r = only_reading(decode(f'{{"ts": {ts}, "level_cm": 1}}'))
    assert r.time_ns == expected_ns
    assert not r.time_from_receipt


def test_missing_ts_uses_receive_time_and_says_so() -> None:
    """A reading without ts is stored at its receive time and marked as such."""
    r = only_reading(decode('{"level_cm": 4.5}'))
    assert (r.time_ns, r.time_from_receipt) == (NOW_NS, True)


def test_array_items_without_ts_stay_separate_points() -> None:
    """Items of one array without ts get the receive time a nanosecond apart, in order."""
    decoded = decode(b'[{"level_cm": 1}, {"level_cm": 2}, {"level_cm": 3}]')
    assert [r.time_ns - NOW_NS for r in decoded.readings] == [0, 1, 2]
    assert all(r.time_from_receipt for r in decoded.readings)


def test_distance_becomes_depth_from_mount_height() -> None:
    """distance_mm is turned into depth: mount height minus distance, in cm."""
    assert DISTANCE.mount_height_mm is not None
    distance = DISTANCE.mount_height_mm - 235
    r = only_reading(decode(f'{{"ts": 1795691100000, "distance_mm": {distance}}}', DISTANCE))
    assert r.level_cm == pytest.approx(23.5)
    assert r.distance_mm == distance


def test_tide_gauge_accepts_river_stage_beyond_street_range() -> None:
    """A tide gauge's level is a river stage: 160 cm and -120 cm are both plausible."""
    assert only_reading(decode('{"ts": 1795691100000, "level_cm": 160}', TIDE)).level_cm == 160
    assert only_reading(decode('{"ts": 1795691100000, "level_cm": -120}', TIDE)).level_cm == -120


def test_integer_level_is_stored_as_float() -> None:
    """An integer depth becomes a float, so InfluxDB's field type never conflicts."""
    r = only_reading(decode('{"ts": 1795691100000, "level_cm": 12}'))
    assert isinstance(r.level_cm, float)


BAD_READINGS = [
    ("{", "bad_json", "not valid JSON"),
    ('{"level_cm": NaN}', "bad_json", "NaN or Infinity"),
    ('{"level_cm": Infinity}', "bad_json", "NaN or Infinity"),
    (b"\xff\xfe", "bad_json", "not UTF-8"),
    ("42", "bad_payload", "JSON object or array"),
    ('"text"', "bad_payload", "JSON object or array"),
    ("[]", "empty_array", "no readings"),
    ('{"ts": 1795691100000}', "bad_level", "exactly one of level_cm or distance_mm"),
    ('{"ts": 1795691100000, "level_cm": 1, "distance_mm": 5}', "bad_level", "exactly one"),
    ('{"ts": 1795691100000, "level_cm": "12"}', "bad_field", "level_cm must be a number"),
    ('{"ts": 1795691100000, "level_cm": true}', "bad_field", "level_cm must be a number"),
    ('{"ts": 1795691100000, "level_cm": 1e999}', "bad_json", "Infinity"),
    ('{"ts": 1795691100000, "level_cm": 301}', "out_of_range", "outside the physical range"),
    ('{"ts": 1795691100000, "level_cm": -11}', "out_of_range", "outside the physical range"),
    ('{"ts": "2026-11-26T18:05:00", "level_cm": 1}', "bad_ts", "no UTC offset"),
    ('{"ts": "2026-11-26", "level_cm": 1}', "bad_ts", "no UTC offset"),
    ('{"ts": "yesterday", "level_cm": 1}', "bad_ts", "not ISO 8601"),
    ('{"ts": 1795691100.5, "level_cm": 1}', "bad_ts", "integer epoch milliseconds"),
    ('{"ts": 1795691100, "level_cm": 1}', "ts_out_of_range", "milliseconds"),
    ('{"ts": "2026-11-26T13:00:00Z", "level_cm": 1}', "ts_out_of_range", "sensor's clock"),
    ('{"ts": 1795691100000, "level_cm": 1, "battery_v": "3.7"}', "bad_field", "battery_v"),
    ('{"ts": 1795691100000, "level_cm": 1, "battery_v": 40}', "out_of_range", "battery_v"),
    ('{"ts": 1795691100000, "level_cm": 1, "rssi": -87.5}', "bad_field", "rssi must be an integer"),
    ('{"ts": 1795691100000, "level_cm": 1, "rssi": 5}', "out_of_range", "rssi"),
    ('{"ts": 1795691100000, "level_cm": 1, "seq": -1}', "out_of_range", "seq"),
    ('{"ts": 1795691100000, "level_cm": 1, "seq": 1e30}', "bad_field", "seq must be an integer"),
]


@pytest.mark.parametrize(("payload", "code", "hint"), BAD_READINGS)
def test_bad_readings_are_rejected_with_a_reason(
    payload: str | bytes, code: str, hint: str
) -> None:
    """Each kind of bad reading is rejected with its code and a reason that names the fault."""
    decoded = decode(payload)
    assert decoded.readings == []
    [rejection] = decoded.rejections
    assert rejection.code == code
    assert hint in rejection.reason
    assert rejection.received_at_ns == NOW_NS


def test_distance_from_sensor_without_mount_height_is_rejected() -> None:
    """A depth sensor that sends distance_mm cannot be converted, and the reason says why."""
    [rejection] = decode('{"ts": 1795691100000, "distance_mm": 100}').rejections
    assert rejection.code == "bad_level"
    assert "mount_height_mm" in rejection.reason


def test_unknown_sensor_and_foreign_topics_are_rejected() -> None:
    """Readings for sensors not in the registry, and unrelated topics, are dead-lettered."""
    unknown = decode_message(
        TOPICS, REGISTRY, "floodwatch/v1/sensors/ghost/reading", b'{"level_cm": 1}', NOW_NS
    )
    assert [r.code for r in unknown.rejections] == ["unknown_sensor"]
    assert "ghost" in unknown.rejections[0].reason
    foreign = decode_message(TOPICS, REGISTRY, "floodwatch/v1/other", b"x", NOW_NS)
    assert [r.code for r in foreign.rejections] == ["bad_topic"]


def test_backfill_array_keeps_good_items_and_rejects_bad_ones() -> None:
    """An array with one bad item stores the others and dead-letters that item alone."""
    items: list[dict[str, object]] = [
        {"ts": 1795691100000 + i * 60000, "level_cm": 10 + i} for i in range(5)
    ]
    items[2]["level_cm"] = "deep"
    decoded = decode(orjson.dumps(items))
    assert [r.level_cm for r in decoded.readings] == [10.0, 11.0, 13.0, 14.0]
    [rejection] = decoded.rejections
    assert rejection.reason.startswith("item 2 of 5:")
    assert orjson.loads(rejection.payload) == items[2]


def test_oversized_and_overlong_messages_are_rejected_whole() -> None:
    """Payloads over the byte limit or arrays over the item limit are refused whole."""
    too_many = orjson.dumps([{"level_cm": 1}] * (MAX_ITEMS + 1))
    assert [r.code for r in decode(too_many).rejections] == ["too_many_items"]
    too_large = b'{"level_cm": 1, "pad": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}'
    assert [r.code for r in decode(too_large).rejections] == ["too_large"]


@pytest.mark.parametrize(
    ("payload", "online"), [(b"online", True), (b"offline", False), (b" Online\n", True)]
)
def test_status_messages(payload: bytes, online: bool) -> None:
    """A sensor's status topic carries online or offline."""
    decoded = decode(payload, channel="status")
    assert [s.online for s in decoded.statuses] == [online]


def test_bad_status_is_rejected() -> None:
    """Anything else on a status topic is dead-lettered."""
    assert [r.code for r in decode(b"maybe", channel="status").rejections] == ["bad_status"]


def test_deadletter_json_follows_the_contract() -> None:
    """The dead letter carries topic, payload (base64 when not UTF-8), reason and time."""
    [rej] = decode(b"\xff\x00").rejections
    doc = orjson.loads(rej.to_json())
    assert doc["topic"] == f"floodwatch/v1/sensors/{STREET.id}/reading"
    assert (doc["payload"], doc["payload_encoding"]) == ("/wA=", "base64")
    assert doc["reason"] == rej.reason
    assert doc["received_at"] == iso_time(NOW_NS) == "2026-11-26T12:00:00.000+00:00"
    [text] = decode(b"{").rejections
    assert orjson.loads(text.to_json())["payload"] == "{"


int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
json_values = st.recursive(
    st.none() | st.booleans() | int64 | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)
reading_like = st.fixed_dictionaries(
    {},
    optional={
        "ts": st.one_of(int64, st.text(), st.datetimes().map(lambda d: d.isoformat()), st.floats()),
        "level_cm": st.one_of(st.floats(), int64, st.text(), st.booleans()),
        "distance_mm": st.one_of(st.floats(), int64),
        "battery_v": st.one_of(st.floats(), int64, st.none()),
        "rssi": st.one_of(int64, st.floats()),
        "seq": st.one_of(int64, st.floats()),
    },
)


def _accounted(decoded: Decoded, payload_items: int) -> None:
    assert len(decoded.readings) + len(decoded.rejections) + len(decoded.statuses) >= 1
    for r in decoded.readings:
        assert math.isfinite(r.level_cm)
    for rej in decoded.rejections:
        assert rej.reason and rej.code
        orjson.loads(rej.to_json())


@settings(max_examples=500)
@given(st.binary(max_size=300), st.sampled_from(["reading", "status"]))
def test_no_bytes_make_the_decoder_raise(payload: bytes, channel: str) -> None:
    """Arbitrary bytes are decoded or rejected, never an exception."""
    _accounted(decode(payload, channel=channel), 1)


@settings(max_examples=500)
@given(st.text(max_size=60), st.binary(max_size=60))
def test_no_topic_makes_the_decoder_raise(topic: str, payload: bytes) -> None:
    """Arbitrary topics are decoded or rejected, never an exception."""
    _accounted(decode_message(TOPICS, REGISTRY, topic, payload, NOW_NS), 1)


@settings(max_examples=500)
@given(
    st.one_of(json_values, reading_like, st.lists(reading_like, min_size=1, max_size=5)),
    st.sampled_from([STREET, DISTANCE, TIDE]),
)
def test_no_json_makes_the_decoder_raise(doc: object, sensor: Sensor) -> None:
    """Any JSON document, however odd, is decoded or rejected item by item, never raised."""
    payload = orjson.dumps(doc)
    decoded = decode(payload, sensor)
    _accounted(decoded, 1)
    if isinstance(doc, list) and doc:
        assert len(decoded.readings) + len(decoded.rejections) == len(doc)


def test_registry_is_the_shipped_one() -> None:
    """The fixtures above come from the shipped registry (one street, distance, tide sensor)."""
    assert isinstance(REGISTRY, Registry)
    assert STREET.kind == "street" and DISTANCE.mount_height_mm and TIDE.kind == "tide"
