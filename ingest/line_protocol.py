"""InfluxDB line protocol, encoded as pure functions; values that cannot be written safely are
refused with LineProtocolError rather than sent (a newline in a tag would forge a second point).

Escaping follows InfluxDB 1.x: in measurements, commas and spaces; in tag keys, tag values and
field keys, commas, equals signs and spaces; in string field values, double quotes and
backslashes. A backslash that would end up in front of an escaped character, or at the end of
a key or tag value, cannot be told apart from an escape by InfluxDB 1.x, so it is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TypeAlias

from floodwatch.errors import LineProtocolError

FieldValue: TypeAlias = float | int | bool | str

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# InfluxDB refuses string field values longer than 64 KiB.
MAX_STRING_BYTES = 65535
_FORBIDDEN = ("\n", "\r", "\x00")


def _check_text(value: str, what: str) -> None:
    if not value:
        raise LineProtocolError(f"{what} is empty; InfluxDB needs at least one character")
    for ch in _FORBIDDEN:
        if ch in value:
            raise LineProtocolError(
                f"{what} {value[:40]!r} contains {ch!r}, which line protocol cannot carry"
            )
    if value.endswith("\\"):
        raise LineProtocolError(f"{what} {value[:40]!r} ends with a backslash")


def _escape(value: str, specials: str, what: str) -> str:
    _check_text(value, what)
    out = value
    if "\\" in out:
        for ch in specials:
            if "\\" + ch in out:
                raise LineProtocolError(
                    f"{what} {value[:40]!r} has a backslash before {ch!r}, which InfluxDB "
                    "would read as an escape"
                )
    for ch in specials:
        if ch in out:
            out = out.replace(ch, "\\" + ch)
    return out


def escape_measurement(name: str) -> str:
    return _escape(name, ", ", "measurement")


def escape_key(key: str) -> str:
    """A tag key or field key."""
    if key == "time":
        raise LineProtocolError("'time' cannot be a tag or field key in InfluxDB")
    return _escape(key, ",= ", "key")


def escape_tag_value(value: str) -> str:
    return _escape(value, ",= ", "tag value")


def encode_field_value(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise LineProtocolError(f"integer {value} does not fit InfluxDB's 64-bit integers")
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LineProtocolError(f"float {value} is not finite; InfluxDB cannot store it")
        return repr(value)
    if isinstance(value, str):
        for ch in _FORBIDDEN:
            if ch in value:
                raise LineProtocolError(
                    f"string field {value[:40]!r} contains {ch!r}, which line protocol cannot carry"
                )
        if len(value.encode("utf-8")) > MAX_STRING_BYTES:
            raise LineProtocolError("string field is longer than InfluxDB's 64 KiB limit")
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise LineProtocolError(f"field value of type {type(value).__name__} cannot be stored")


def series_key(measurement: str, tags: Mapping[str, str]) -> str:
    """`measurement,tag=value,...` with tags sorted by key, as InfluxDB prefers."""
    parts = [escape_measurement(measurement)]
    parts.extend(f"{escape_key(k)}={escape_tag_value(tags[k])}" for k in sorted(tags))
    return ",".join(parts)


def encode_fields(fields: Mapping[str, FieldValue]) -> str:
    if not fields:
        raise LineProtocolError("a point needs at least one field")
    return ",".join(f"{escape_key(k)}={encode_field_value(v)}" for k, v in fields.items())


def encode_point(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, FieldValue],
    time_ns: int,
) -> str:
    """One line of line protocol, with a nanosecond timestamp."""
    if not INT64_MIN <= time_ns <= INT64_MAX:
        raise LineProtocolError(f"timestamp {time_ns} is outside InfluxDB's range")
    return f"{series_key(measurement, tags)} {encode_fields(fields)} {time_ns}"
