"""Line-protocol encoding: exact output for known values, refusals for unsafe ones."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from floodwatch.contract import Reading, Rejection
from floodwatch.errors import LineProtocolError
from ingest.line_protocol import encode_field_value, encode_point
from ingest.store import deadletter_line, reading_line

T = 1_795_691_100_000_000_000


@pytest.mark.parametrize(
    ("measurement", "tags", "fields", "expected"),
    [
        (
            "water_level",
            {"sensor": "qh-01"},
            {"level_cm": 23.5},
            f"water_level,sensor=qh-01 level_cm=23.5 {T}",
        ),
        ("m m,x", {"a b": "c,d=e"}, {"f=g": 1}, f"m\\ m\\,x,a\\ b=c\\,d\\=e f\\=g=1i {T}"),
        (
            "m",
            {"b": "2", "a": "1"},
            {"s": 'say "hi" \\ bye'},
            f'm,a=1,b=2 s="say \\"hi\\" \\\\ bye" {T}',
        ),
        (
            "m",
            {},
            {"ok": True, "no": False, "big": 2**63 - 1, "neg": -1.5e-7},
            f"m ok=true,no=false,big=9223372036854775807i,neg=-1.5e-07 {T}",
        ),
        ("m", {"t": "Nguyễn Văn Hưởng"}, {"v": 0.0}, f"m,t=Nguyễn\\ Văn\\ Hưởng v=0.0 {T}"),
    ],
)
def test_known_points_encode_exactly(
    measurement: str, tags: dict[str, str], fields: dict[str, object], expected: str
) -> None:
    """Escaping, tag order, and each field type's notation match InfluxDB's line protocol."""
    assert encode_point(measurement, tags, fields, T) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("measurement", "tags", "fields", "hint"),
    [
        ("m", {"sensor": "a\nb"}, {"v": 1.0}, "'\\n'"),
        ("m", {"sensor": "a\rb"}, {"v": 1.0}, "'\\r'"),
        ("m\n", {}, {"v": 1.0}, "'\\n'"),
        ("m", {"k": ""}, {"v": 1.0}, "empty"),
        ("m", {"k": "x\\"}, {"v": 1.0}, "backslash"),
        ("m", {"k": "x\\,y"}, {"v": 1.0}, "backslash before"),
        ("m", {}, {}, "at least one field"),
        ("m", {}, {"v": float("nan")}, "not finite"),
        ("m", {}, {"v": float("inf")}, "not finite"),
        ("m", {}, {"v": 2**63}, "64-bit"),
        ("m", {}, {"s": "line\nbreak"}, "'\\n'"),
        ("m", {}, {"time": 1.0}, "'time'"),
        ("m", {}, {"s": "x" * 70_000}, "64 KiB"),
    ],
)
def test_unsafe_values_are_refused(
    measurement: str, tags: dict[str, str], fields: dict[str, object], hint: str
) -> None:
    """Values that InfluxDB would misread (or split into a forged point) are refused."""
    with pytest.raises(LineProtocolError, match=None) as info:
        encode_point(measurement, tags, fields, T)  # type: ignore[arg-type]
    assert hint in str(info.value)


def test_unsupported_field_type_is_refused() -> None:
    """Only floats, integers, booleans and strings can be fields."""
    with pytest.raises(LineProtocolError):
        encode_field_value([1])  # type: ignore[arg-type]


_finite = st.floats(allow_nan=False, allow_infinity=False)


@given(
    sensor_id=st.sampled_from(["nvh-02", "d12-01", "phu-an"]),
    time_ns=st.integers(0, 2**62),
    level_cm=_finite,
    distance_mm=st.none() | _finite,
    battery_v=st.none() | _finite,
    rssi=st.none() | st.integers(-200, 0),
    seq=st.none() | st.integers(0, 2**63 - 1),
    from_receipt=st.booleans(),
)
def test_reading_line_matches_the_generic_encoder(
    sensor_id: str,
    time_ns: int,
    level_cm: float,
    distance_mm: float | None,
    battery_v: float | None,
    rssi: int | None,
    seq: int | None,
    from_receipt: bool,
) -> None:
    """The hot-path reading encoder (its usual-shape shortcut and its field-by-field path)
    writes exactly what the generic one would, for every combination of optional fields."""
    r = Reading(sensor_id, time_ns, level_cm, distance_mm, battery_v, rssi, seq, from_receipt)
    optional = {
        "distance_mm": distance_mm,
        "battery_v": battery_v,
        "rssi": rssi,
        "seq": seq,
        "ts_from_receipt": True if from_receipt else None,
    }
    fields = {"level_cm": level_cm, **{k: v for k, v in optional.items() if v is not None}}
    assert reading_line(r) == encode_point("water_level", {"sensor": sensor_id}, fields, time_ns)


def test_reading_line_examples() -> None:
    usual = Reading("nvh-02", T, 23.5, None, 3.71, -87, 1042)
    assert reading_line(usual) == (
        f"water_level,sensor=nvh-02 level_cm=23.5,battery_v=3.71,rssi=-87i,seq=1042i {T}"
    )
    bare = Reading("nvh-02", T, 1.0)
    assert reading_line(bare) == f"water_level,sensor=nvh-02 level_cm=1.0 {T}"
    # Remembered float texts must not confuse 0.0 with -0.0 (equal, but written differently).
    for level in (0.0, -0.0, 0.0, -0.0):
        assert reading_line(Reading("nvh-02", T, level)).endswith(f"level_cm={level!r} {T}")
    # Nor an int with the float it equals: after an int, the float is still written as one.
    reading_line(Reading("nvh-02", T, 12345))
    assert reading_line(Reading("nvh-02", T, 12345.0)).endswith(f"level_cm=12345.0 {T}")


@given(st.binary(max_size=200), st.text(max_size=80), st.text(min_size=1, max_size=80))
def test_any_dead_letter_can_be_stored(payload: bytes, topic: str, reason: str) -> None:
    """Whatever a bad message holds, its dead letter encodes to exactly one line."""
    line = deadletter_line(Rejection(topic, payload, "bad_json", reason, T))
    assert "\n" not in line and "\r" not in line
    assert line.startswith("deadletter,code=bad_json ")


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_finite_floats_round_trip_through_their_notation(value: float) -> None:
    """A float's line-protocol notation parses back to the same float."""
    assert float(encode_field_value(value)) == value
