"""Recorded readings as CSV: read them for `replay`, and write a scenario's for `truth --readings`.

Pure: text in, values out (and back). The CSV has a header row; columns, in any order:
  sensor (or sensor_id)   a registry id
  ts (or time)            ISO 8601 with an offset, or integer epoch milliseconds
  level_cm | distance_mm  exactly one per row (the other cell empty or absent)
  battery_v, rssi, seq    optional
Other columns (a scenario's `artefact`, `sent_at`, `true_cm`) are ignored by replay. Separated
by commas, or by semicolons (then with decimal commas allowed); a UTF-8 byte-order mark is
skipped. Every row is judged by ingest's own decoder (its ranges and rules) before anything is
sent.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import orjson
from numpy.typing import NDArray

from floodwatch.decode import decode_readings
from floodwatch.errors import FloodwatchError
from floodwatch.registry import Registry, Sensor
from simulators.messages import Message, TimeMap, iso_times
from simulators.physics import Floats
from simulators.scenario import MAX_ARRAY
from simulators.sensors import ARTEFACT_NAMES, Reports

EARLIEST_S = 946_684_800.0  # 2000-01-01: ingest refuses anything older


class RecordingError(FloodwatchError):
    """A recording cannot be replayed; the message names each bad line and the fix."""

    def __init__(self, message: str, problems: tuple[tuple[int, str], ...] = ()) -> None:
        super().__init__(message)
        # (line number, reason) of every row ingest would refuse.
        self.problems = problems


@dataclass(frozen=True, slots=True, eq=False)
class Recording:
    """Recorded readings sorted by time, as columns; NaN (or -1 for integers) where absent."""

    sensors: tuple[Sensor, ...]
    sensor: NDArray[np.int64]
    time_s: Floats
    level_cm: Floats
    distance_mm: Floats
    battery_v: Floats
    rssi: NDArray[np.int64]
    seq: NDArray[np.int64]
    has_rssi: NDArray[np.bool_]
    has_seq: NDArray[np.bool_]

    @property
    def start_s(self) -> float:
        return float(self.time_s[0])

    @property
    def end_s(self) -> float:
        return float(self.time_s[-1])


def parse_recording(text: str, registry: Registry, source: str = "<csv>") -> Recording:
    """Read a recording; raise RecordingError listing every row ingest would refuse (its line
    and why, judged by ingest's own decoder), so nothing is sent that would be dead-lettered.

    Excel's "CSV UTF-8" (a byte-order mark first) and semicolon-separated files (Excel where
    the decimal separator is a comma, as in Vietnamese: then "12,5" is read as 12.5) work too.
    """
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise RecordingError(
            f"{source} is empty; a recording needs a header row (e.g. sensor,ts,level_cm) "
            "and then one reading per line."
        )
    delimiter = _delimiter(text)
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    header = [name.strip() for name in reader.fieldnames or []]
    reader.fieldnames = header
    sensor_column = _column(header, ("sensor", "sensor_id"), source)
    ts_column = _column(header, ("ts", "time"), source)
    if "level_cm" not in header and "distance_mm" not in header:
        raise RecordingError(f"{source}: the header has neither level_cm nor distance_mm.")
    decimal_comma = delimiter == ";"
    ids: list[str] = []
    index: dict[str, int] = {}
    rows: list[tuple[int, float, float, float, float, int, int, bool, bool]] = []
    problems: list[tuple[int, str]] = []
    for row in reader:
        line = reader.line_num
        try:
            sensor, values = _row(row, sensor_column, ts_column, registry, decimal_comma)
        except _BadRow as bad:
            problems.append((line, bad.reason))
            continue
        refusal = _ingest_refusal(sensor, values)
        if refusal is not None:
            problems.append((line, refusal))
            continue
        if sensor.id not in index:
            index[sensor.id] = len(ids)
            ids.append(sensor.id)
        time_s, level, distance, battery, rssi, seq = values
        rows.append(
            (
                index[sensor.id],
                time_s,
                level,
                distance,
                battery,
                -1 if math.isnan(rssi) else int(rssi),
                -1 if math.isnan(seq) else int(seq),
                not math.isnan(rssi),
                not math.isnan(seq),
            )
        )
    if problems:
        raise RecordingError(_listing(source, problems), tuple(problems))
    if not rows:
        raise RecordingError(f"{source}: no readings after the header.")
    rows.sort(key=lambda r: (r[1], r[0]))
    columns = list(zip(*rows, strict=True))
    return Recording(
        sensors=tuple(registry.sensors[sensor_id] for sensor_id in ids),
        sensor=np.array(columns[0], dtype=np.int64),
        time_s=np.array(columns[1], dtype=np.float64),
        level_cm=np.array(columns[2], dtype=np.float64),
        distance_mm=np.array(columns[3], dtype=np.float64),
        battery_v=np.array(columns[4], dtype=np.float64),
        rssi=np.array(columns[5], dtype=np.int64),
        seq=np.array(columns[6], dtype=np.int64),
        has_rssi=np.array(columns[7], dtype=np.bool_),
        has_seq=np.array(columns[8], dtype=np.bool_),
    )


# time_s, level_cm, distance_mm, battery_v, rssi, seq (NaN where absent)
_Values = tuple[float, float, float, float, float, float]


class _BadRow(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _row(
    row: dict[str, str | None],
    sensor_column: str,
    ts_column: str,
    registry: Registry,
    decimal_comma: bool,
) -> tuple[Sensor, _Values]:
    """One row's sensor and values, or _BadRow saying what is wrong with it."""
    sensor_id = (row.get(sensor_column) or "").strip()
    sensor = registry.get(sensor_id)
    if sensor is None:
        raise _BadRow(
            f"sensor {sensor_id!r} is not in the registry {registry.source}; replay against "
            "the registry it was recorded with (--registry)."
        )

    def number(name: str) -> float:
        return _number(row.get(name), name, decimal_comma)

    level, distance = number("level_cm"), number("distance_mm")
    if math.isnan(level) == math.isnan(distance):
        raise _BadRow("give exactly one of level_cm and distance_mm.")
    time_s = _seconds((row.get(ts_column) or "").strip())
    return sensor, (time_s, level, distance, number("battery_v"), number("rssi"), number("seq"))


def _ingest_refusal(sensor: Sensor, values: _Values) -> str | None:
    """Why ingest's decoder would refuse this reading (its ranges, its rules), or None."""
    time_s, level, distance, battery, rssi, seq = values
    time_ms = round(time_s * 1000)
    doc: dict[str, object] = {"ts": time_ms}
    if math.isnan(level):
        doc["distance_mm"] = distance
    else:
        doc["level_cm"] = level
    for name, value in (("battery_v", battery), ("rssi", rssi), ("seq", seq)):
        if not math.isnan(value):
            # ingest wants whole numbers for rssi and seq; a fraction is left for it to refuse.
            doc[name] = int(value) if name != "battery_v" and value.is_integer() else value
    # Judged as if received when taken: how far ahead a stamp may be depends on when it is
    # sent, which the replay checks for the whole file against --timestamps.
    decoded = decode_readings(sensor, "replay", orjson.dumps(doc), time_ms * 1_000_000)
    if decoded.rejections:
        return decoded.rejections[0].reason
    return None


def _listing(source: str, problems: list[tuple[int, str]]) -> str:
    if len(problems) == 1:
        line, reason = problems[0]
        return f"{source} line {line}: {reason}"
    lines = "\n".join(f"  {source} line {line}: {reason}" for line, reason in problems)
    return (
        f"{source}: {len(problems)} rows would be refused by ingest, so nothing was sent; "
        f"fix or remove them:\n{lines}"
    )


def _delimiter(text: str) -> str:
    """`;` when the header row is separated by semicolons (and holds no comma), else `,`."""
    header = text.lstrip().partition("\n")[0]
    return ";" if ";" in header and "," not in header else ","


def replay_messages(recording: Recording, timemap: TimeMap, batch: int = 1) -> list[Message]:
    """The recording as messages: each reading when taken, or arrays of up to `batch` readings
    of one sensor, sent when the last of them was taken."""
    if not 1 <= batch <= MAX_ARRAY:
        raise ValueError(f"batch {batch} must be from 1 to {MAX_ARRAY}")
    stamps = iso_times(timemap.stamp(recording.time_s))
    objects: list[dict[str, object]] = []
    for k, ts in enumerate(stamps):
        doc: dict[str, object] = {"ts": ts}
        if math.isnan(recording.level_cm[k]):
            doc["distance_mm"] = _plain(float(recording.distance_mm[k]))
        else:
            doc["level_cm"] = float(recording.level_cm[k])
        if not math.isnan(recording.battery_v[k]):
            doc["battery_v"] = float(recording.battery_v[k])
        if recording.has_rssi[k]:
            doc["rssi"] = int(recording.rssi[k])
        if recording.has_seq[k]:
            doc["seq"] = int(recording.seq[k])
        objects.append(doc)
    messages: list[Message] = []
    if batch == 1:
        for k, doc in enumerate(objects):
            at = float(recording.time_s[k])
            sensor = int(recording.sensor[k])
            messages.append(Message(at, sensor, "reading", orjson.dumps(doc), 1))
        return messages
    for index in range(len(recording.sensors)):
        rows = np.flatnonzero(recording.sensor == index).tolist()
        for first in range(0, len(rows), batch):
            chunk = rows[first : first + batch]
            at = float(recording.time_s[chunk[-1]])
            payload = orjson.dumps([objects[k] for k in chunk])
            messages.append(Message(at, index, "reading", payload, len(chunk)))
    messages.sort(key=lambda m: (m.at_s, m.sensor))
    return messages


def recording_csv(reports: Reports, timemap: TimeMap) -> str:
    """A scenario's published readings in the replay format, with what the truth knows."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "sensor",
            "ts",
            "level_cm",
            "distance_mm",
            "battery_v",
            "rssi",
            "seq",
            "artefact",
            "backfill",
            "sent_at",
            "true_cm",
        ]
    )
    rows = np.flatnonzero(reports.published)
    rows = rows[np.lexsort((reports.sensor[rows], reports.time_s[rows]))]
    stamps = iso_times(timemap.stamp(reports.time_s[rows]) + reports.skew_s[rows])
    sent = iso_times(timemap.stamp(reports.sent_s[rows]))
    for k, row in enumerate(rows.tolist()):
        level = float(reports.level_cm[row])
        distance = float(reports.distance_mm[row])
        code = int(reports.artefact[row])
        writer.writerow(
            [
                reports.sensors[int(reports.sensor[row])].id,
                stamps[k],
                "" if math.isnan(level) else level,
                "" if math.isnan(distance) else int(distance),
                float(reports.battery_v[row]),
                int(reports.rssi[row]),
                int(reports.seq[row]),
                "+".join(name for bit, name in ARTEFACT_NAMES.items() if code & bit),
                "yes" if reports.backfill[row] else "",
                sent[k],
                round(float(reports.true_cm[row]), 2),
            ]
        )
    return out.getvalue()


def _column(header: Sequence[str], names: tuple[str, ...], source: str) -> str:
    for name in names:
        if name in header:
            return name
    raise RecordingError(
        f"{source}: the header names no {names[0]!r} column (or {names[1]!r}); "
        f"the first line must name the columns, e.g. sensor,ts,level_cm."
    )


def _number(cell: str | None, name: str, decimal_comma: bool = False) -> float:
    text = (cell or "").strip()
    if not text:
        return math.nan
    if decimal_comma and text.count(",") == 1 and "." not in text:
        text = text.replace(",", ".")
    try:
        value = float(text)
    except ValueError:
        raise _BadRow(f"{name} {text!r} is not a number.") from None
    if not math.isfinite(value):
        raise _BadRow(f"{name} {text!r} is not a finite number.")
    return value


def _seconds(text: str) -> float:
    if text.lstrip("-").isdigit():
        seconds = int(text) / 1000.0
    else:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise _BadRow(f"ts {text!r} is neither ISO 8601 nor epoch milliseconds.") from None
        if moment.tzinfo is None:
            raise _BadRow(f"ts {text!r} has no UTC offset; add one, e.g. +07:00.")
        seconds = moment.timestamp()
    if seconds < EARLIEST_S:
        raise _BadRow(f"ts {text!r} is before 2000; is it in milliseconds?")
    return seconds


def _plain(value: float) -> float | int:
    return int(value) if value.is_integer() else value
