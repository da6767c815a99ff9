"""Times as the API shows them: ISO 8601 with an offset, in UTC or a chosen IANA zone."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import numpy as np

from api.errors import BadParameter

# The ward's zone: Vietnam has kept UTC+07:00 without daylight saving since 1975.
WARD_ZONE = "Asia/Ho_Chi_Minh"
# Outside these, nanosecond epochs overflow InfluxDB's int64 or mean a typo.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# IANA names only (Area/Location, or UTC): never a path, so ZoneInfo cannot be led to a file.
_ZONE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+-]{0,30}(/[A-Za-z0-9_+-]{1,30}){0,2}")


def zone(name: str) -> tzinfo:
    """The IANA zone `name` (e.g. Asia/Ho_Chi_Minh, UTC), or BadParameter."""
    if name.upper() == "UTC":
        return UTC
    if _ZONE_NAME.fullmatch(name) is not None:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    raise BadParameter(
        "tz",
        f"tz {name[:60]!r} is not an IANA time zone: send UTC or e.g. {WARD_ZONE}",
    )


@cache
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def influx_zone(name: str) -> str | None:
    """The zone for InfluxQL's tz() clause: None for UTC (InfluxDB's default), else the IANA
    name as the tz database spells it; BadParameter for anything else. tz() takes a string
    literal, not a bound parameter, so only a name from the tz database's own list (letters,
    digits, `/`, `_`, `-`, `+`) ever reaches a query."""
    zone(name)
    if name.upper() == "UTC":
        return None
    if name not in _known_zones() or _ZONE_NAME.fullmatch(name) is None:
        raise BadParameter(
            "tz", f"tz {name[:60]!r} is not an IANA time zone: send UTC or e.g. {WARD_ZONE}"
        )
    return name


def iso(time_ns: int, tz: tzinfo = UTC) -> str:
    """ISO 8601 with milliseconds and the zone's offset, e.g. 2026-11-26T18:05:00.000+07:00."""
    dt = _EPOCH + timedelta(microseconds=time_ns // 1000)
    if tz is not UTC:
        dt = dt.astimezone(tz)
    return dt.isoformat(timespec="milliseconds")


_WEEK_NS = 7 * 86400 * 10**9


def _fixed_offset_s(tz: tzinfo, first_ns: int, last_ns: int) -> int | None:
    """The zone's UTC offset in seconds if it is the same over the whole range, else None.

    Sampled weekly: daylight-saving periods last months, so a weekly sample cannot miss one.
    """
    if tz is UTC:
        return 0
    step = max(_WEEK_NS, (last_ns - first_ns) // 1000)
    offsets = set()
    for t in [*range(first_ns, last_ns, step), last_ns]:
        offset = (_EPOCH + timedelta(microseconds=t // 1000)).astimezone(tz).utcoffset()
        offsets.add(int(offset.total_seconds()) if offset is not None else 0)
        if len(offsets) > 1:
            return None
    return offsets.pop()


def iso_many(times_ns: Sequence[int], tz: tzinfo = UTC) -> list[str]:
    """`iso` of many ascending times at once: a week of minutes in a few milliseconds."""
    if not times_ns:
        return []
    offset = _fixed_offset_s(tz, times_ns[0], times_ns[-1])
    if offset is None:
        return [iso(t, tz) for t in times_ns]
    local_ms = np.asarray(times_ns, dtype=np.int64) // 1_000_000 + offset * 1000
    text = np.datetime_as_string(local_ms.astype("datetime64[ms]"), unit="ms")
    sign, magnitude = ("+" if offset >= 0 else "-"), abs(offset)
    suffix = f"{sign}{magnitude // 3600:02d}:{magnitude % 3600 // 60:02d}"
    return [t + suffix for t in text.tolist()]


def to_ns(dt: datetime) -> int:
    """Epoch nanoseconds of an aware datetime."""
    return ((dt - _EPOCH) // timedelta(microseconds=1)) * 1000


def checked(dt: datetime, name: str) -> datetime:
    """An aware datetime within 2000..2200, or BadParameter naming the parameter."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise BadParameter(
            name, f"{name} needs a UTC offset: send e.g. 2026-11-26T18:05:00%2B07:00 or ...Z"
        )
    if not EARLIEST <= dt < LATEST:
        raise BadParameter(
            name, f"{name} is out of range: send a time between 2000-01-01 and 2200-01-01"
        )
    return dt
