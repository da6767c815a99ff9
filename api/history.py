"""What the API reads from InfluxDB: the start-up snapshot, time series, alert history.

Every value from a request is a bound parameter (`$name`, sent in `params`), never pasted
into InfluxQL. The exceptions: the `every` of GROUP BY time(): InfluxDB's parser wants a
duration literal there and refuses a parameter ("time dimension must have duration
argument"), so `every` is checked against a strict pattern (`parse_every`) and only then
formatted into the query; likewise the zone of `tz()`, which must be a string literal: only a
name found in the tz database (api.times.influx_zone) and matching a strict pattern.
Measurement and field names are constants of this module.
Functions here block (InfluxClient is synchronous): call them from a worker thread.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from api.errors import BadParameter
from floodwatch.contract import ALERT_MEASUREMENT, EPISODE_MEASUREMENT, Reading
from floodwatch.influx import InfluxClient, QueryError
from floodwatch.registry import Registry

Agg = Literal["mean", "max", "min", "last"]
# Fixed function names: the request picks one of these keys, never supplies the text.
AGG_FUNCTIONS: Mapping[str, str] = {"mean": "mean", "max": "max", "min": "min", "last": "last"}
RAW_FIELDS = ("level_cm", "distance_mm", "battery_v", "rssi", "seq", "ts_from_receipt")
# InfluxDB's JSON writes integral floats without a decimal point (23.0 as 23).
FLOAT_FIELDS = frozenset({"level_cm", "distance_mm", "battery_v"})
INT_FIELDS = frozenset({"rssi", "seq"})

_ZONE = re.compile(r"[A-Za-z][A-Za-z0-9_+-]{0,30}(/[A-Za-z0-9_+-]{1,30}){0,2}")
_EVERY = re.compile(r"([1-9][0-9]{0,5})(s|m|h|d|w)")
_UNIT_NS = {"s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9}
_UNIT_NS["w"] = 7 * _UNIT_NS["d"]
# A GROUP BY time() over more buckets than this is refused before InfluxDB sees it.
MAX_BUCKETS = 1_000_000
# InfluxDB holds a duration as int64 nanoseconds and refuses a longer one ("overflowed
# duration", found against influxd 1.6): 15250w is the longest whole number of weeks.
MAX_EVERY_NS = 2**63 - 1
# History lists (alert_event, flood_event) read at most this many rows per request.
MAX_HISTORY_ROWS = 10_000


def parse_every(text: str) -> int:
    """`every` as nanoseconds: 1-6 digits and one of s, m, h, d, w (e.g. 5m), or BadParameter."""
    match = _EVERY.fullmatch(text)
    if match is None:
        raise BadParameter(
            "every",
            f"every {text[:40]!r} is not a bucket width: send a whole number and a unit s, m, "
            "h, d or w, e.g. 5m or 1d",
        )
    every_ns = int(match.group(1)) * _UNIT_NS[match.group(2)]
    if every_ns > MAX_EVERY_NS:
        raise BadParameter(
            "every",
            f"every={text} is longer than InfluxDB can group by (at most about 292 years, "
            "15250w); use a shorter every",
        )
    return every_ns


@dataclass(frozen=True, slots=True)
class SeriesQuery:
    sensor_id: str
    start_ns: int  # inclusive
    end_ns: int  # exclusive
    limit: int
    every: str | None = None  # validated by parse_every
    agg: Agg | None = None
    # Buckets of `every` start at this zone's midnight (InfluxQL tz()); None: UTC. A name
    # checked by api.times.influx_zone.
    tz: str | None = None


@dataclass(frozen=True, slots=True)
class SeriesPage:
    """One page, by column: a week of minutes is 10,080 rows, and columns convert faster."""

    columns: tuple[str, ...]
    times: list[int]  # epoch ns, ascending
    values: list[list[Any]]  # one list per column, aligned with `times`
    next_cursor: int | None  # epoch ns where the next page starts, if there is one


def series_influxql(q: SeriesQuery) -> tuple[str, dict[str, str | int]]:
    """The InfluxQL and its bound parameters for one page (one row more than the limit)."""
    params: dict[str, str | int] = {
        "sensor": q.sensor_id,
        "start": q.start_ns,
        "end": q.end_ns,
        "limit": q.limit + 1,
    }
    where = 'WHERE "sensor" = $sensor AND time >= $start AND time < $end'
    if q.every is None:
        fields = ", ".join(f'"{f}"' for f in RAW_FIELDS)
        return f'SELECT {fields} FROM "water_level" {where} ORDER BY time ASC LIMIT $limit', params
    every_ns = parse_every(q.every)
    if (q.end_ns - q.start_ns) // every_ns > MAX_BUCKETS:
        raise BadParameter(
            "every",
            f"every={q.every} splits the range into more than {MAX_BUCKETS:,} buckets; "
            "narrow start..end or use a longer every",
        )
    function = AGG_FUNCTIONS[q.agg or "mean"]
    zone_clause = ""
    if q.tz is not None:
        if _ZONE.fullmatch(q.tz) is None:  # a second check before it enters the query text
            raise BadParameter("tz", f"tz {q.tz[:60]!r} is not an IANA time zone: send UTC")
        zone_clause = f" tz('{q.tz}')"
    return (
        f'SELECT {function}("level_cm") AS "level_cm" FROM "water_level" {where} '
        f"GROUP BY time({q.every}) fill(none) LIMIT $limit{zone_clause}",
        params,
    )


def _typed_column(column: str, values: Sequence[Any]) -> list[Any]:
    if column in FLOAT_FIELDS:
        return [None if v is None else float(v) for v in values]
    if column in INT_FIELDS:
        return [None if v is None else int(v) for v in values]
    if column == "ts_from_receipt":
        return [None if v is None else bool(v) for v in values]
    return list(values)


def _typed(column: str, value: Any) -> Any:
    if value is None:
        return None
    if column in FLOAT_FIELDS:
        return float(value)
    if column in INT_FIELDS:
        return int(value)
    if column == "ts_from_receipt":
        return bool(value)
    return value


def _query(
    influx: InfluxClient, text: str, params: Mapping[str, str | int] | None = None
) -> list[dict[str, Any]]:
    """Run a query; a database that does not exist yet (ingest creates it) holds nothing."""
    try:
        return influx.query(text, dict(params) if params else None, epoch="ns")
    except QueryError as exc:
        if "database not found" in str(exc):
            return []
        raise


def series(influx: InfluxClient, q: SeriesQuery) -> SeriesPage:
    """One page of a sensor's readings, raw or downsampled, oldest first."""
    text, params = series_influxql(q)
    found = _query(influx, text, params)
    columns = tuple(RAW_FIELDS) if q.every is None else ("level_cm",)
    rows = found[0]["values"] if found else []
    next_cursor = None
    if len(rows) > q.limit:
        next_cursor = int(rows[q.limit][0])
        rows = rows[: q.limit]
    if not rows:
        return SeriesPage(columns, [], [[] for _ in columns], next_cursor)
    names = found[0]["columns"]
    by_name = dict(zip(names, zip(*rows, strict=True), strict=True))
    empty = [None] * len(rows)
    return SeriesPage(
        columns,
        [int(t) for t in by_name["time"]],
        [_typed_column(c, by_name.get(c, empty)) for c in columns],
        next_cursor,
    )


def latest_readings(influx: InfluxClient, registry: Registry) -> list[Reading]:
    """Each registered sensor's newest stored reading (the API's start-up snapshot)."""
    found = _query(
        influx, 'SELECT * FROM "water_level" GROUP BY "sensor" ORDER BY time DESC LIMIT 1'
    )
    readings: list[Reading] = []
    for s in found:
        sensor_id = s.get("tags", {}).get("sensor")
        if sensor_id not in registry.sensors or not s.get("values"):
            continue
        row = dict(zip(s["columns"], s["values"][0], strict=True))
        if row.get("level_cm") is None:
            continue
        readings.append(
            Reading(
                sensor_id=sensor_id,
                time_ns=int(row["time"]),
                level_cm=float(row["level_cm"]),
                distance_mm=_typed("distance_mm", row.get("distance_mm")),
                battery_v=_typed("battery_v", row.get("battery_v")),
                rssi=_typed("rssi", row.get("rssi")),
                seq=_typed("seq", row.get("seq")),
                time_from_receipt=bool(row.get("ts_from_receipt")),
            )
        )
    return readings


def recent_levels(influx: InfluxClient, since_ns: int) -> list[tuple[str, int, float]]:
    """Every sensor's stored (sensor, time, level_cm) since `since_ns`, oldest first per
    sensor: the runs below each threshold behind the engine's hold, at start."""
    found = _query(
        influx,
        'SELECT "level_cm" FROM "water_level" WHERE time >= $since GROUP BY "sensor"',
        {"since": since_ns},
    )
    out: list[tuple[str, int, float]] = []
    for s in found:
        sensor_id = s.get("tags", {}).get("sensor")
        if not isinstance(sensor_id, str):
            continue
        out.extend(
            (sensor_id, int(t), float(level))
            for t, level in s.get("values", [])
            if level is not None
        )
    return out


def _rows(found: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Flatten series (one per tag set) into dicts of tags and columns, time in epoch ns."""
    rows: list[dict[str, Any]] = []
    for s in found:
        tags = s.get("tags") or {}
        for values in s.get("values", []):
            row = dict(tags)
            row.update((c, v) for c, v in zip(s["columns"], values, strict=True) if v is not None)
            rows.append(row)
    rows.sort(key=lambda r: int(r["time"]))
    return rows


def alert_events(
    influx: InfluxClient,
    since_ns: int | None,
    alert_id: str | None = None,
    kinds: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Rows of the alert engine's `alert_event` measurement (empty while it has none); with
    `kinds`, only alerts of those kinds (a tag, so InfluxDB reads no other series)."""
    where = ["time >= $since"]
    params: dict[str, str | int] = {"since": since_ns or 0}
    if alert_id is not None:
        where.append('"alert_id" = $alert_id')
        params["alert_id"] = alert_id
    if kinds:
        where.append("(" + " OR ".join(f'"kind" = $kind{i}' for i in range(len(kinds))) + ")")
        params.update((f"kind{i}", kind) for i, kind in enumerate(kinds))
    return _history(influx, ALERT_MEASUREMENT, where, params)


def flood_events(
    influx: InfluxClient, since_ns: int | None, until_ns: int | None
) -> list[dict[str, Any]]:
    """Rows of the alert engine's `flood_episode` measurement, one per episode at its start."""
    where: list[str] = ["time >= $since"]
    params: dict[str, str | int] = {"since": since_ns or 0}
    if until_ns is not None:
        where.append("time < $until")
        params["until"] = until_ns
    return _history(influx, EPISODE_MEASUREMENT, where, params)


def _history(
    influx: InfluxClient, measurement: str, where: list[str], params: Mapping[str, str | int]
) -> list[dict[str, Any]]:
    text = (
        f'SELECT * FROM "{measurement}" WHERE {" AND ".join(where)} GROUP BY * '
        f"ORDER BY time ASC LIMIT {MAX_HISTORY_ROWS}"
    )
    return _rows(_query(influx, text, params))
