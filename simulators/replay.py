"""Recorded readings as CSV: read them for `replay`, and write a scenario's for `truth --readings`.

Pure: text in, values out (and back). The CSV has a header row; columns, in any order:
  sensor (or sensor_id)   a registry id
  ts (or time)            ISO 8601 with an offset, or integer epoch milliseconds
  level_cm | distance_mm  exactly one per row (the other cell empty or absent)
  battery_v, rssi, seq    optional
Other columns (a scenario's `artefact`, `sent_at`, `true_cm`) are ignored by replay.
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

from floodwatch.errors import FloodwatchError
from floodwatch.registry import Registry, Sensor
from simulators.messages import Message, TimeMap, iso_times
from simulators.physics import Floats
from simulators.scenario import MAX_ARRAY
from simulators.sensors import ARTEFACT_NAMES, Reports

EARLIEST_S = 946_684_800.0  # 2000-01-01: ingest refuses anything older


class RecordingError(FloodwatchError):
    """A recording cannot be replayed; the message names the line and the fix."""


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
    """Read a recording; raise RecordingError naming the line for anything ingest would refuse."""
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip() for name in reader.fieldnames or []]
    reader.fieldnames = header
    sensor_column = _column(header, ("sensor", "sensor_id"), source)
    ts_column = _column(header, ("ts", "time"), source)
    if "level_cm" not in header and "distance_mm" not in header:
        raise RecordingError(f"{source}: the header has neither level_cm nor distance_mm.")
    ids: list[str] = []
    index: dict[str, int] = {}
    rows: list[tuple[int, float, float, float, float, int, int, bool, bool]] = []
    for line, row in enumerate(reader, start=2):
        where = f"{source} line {line}"
        sensor_id = (row.get(sensor_column) or "").strip()
        sensor = registry.get(sensor_id)
        if sensor is None:
            raise RecordingError(
                f"{where}: sensor {sensor_id!r} is not in the registry {registry.source}; "
                "replay against the registry it was recorded with (--registry)."
            )
        if sensor_id not in index:
            index[sensor_id] = len(ids)
            ids.append(sensor_id)
        level = _number(row.get("level_cm"), where, "level_cm")
        distance = _number(row.get("distance_mm"), where, "distance_mm")
        if math.isnan(level) == math.isnan(distance):
            raise RecordingError(f"{where}: give exactly one of level_cm and distance_mm.")
        if not math.isnan(distance) and sensor.mount_height_mm is None:
            raise RecordingError(
                f"{where}: {sensor_id!r} has no mount_height_mm in the registry, "
                "so its distance_mm cannot become a depth."
            )
        rssi = _number(row.get("rssi"), where, "rssi")
        seq = _number(row.get("seq"), where, "seq")
        rows.append(
            (
                index[sensor_id],
                _seconds((row.get(ts_column) or "").strip(), where),
                level,
                distance,
                _number(row.get("battery_v"), where, "battery_v"),
                -1 if math.isnan(rssi) else int(rssi),
                -1 if math.isnan(seq) else int(seq),
                not math.isnan(rssi),
                not math.isnan(seq),
            )
        )
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


def _number(cell: str | None, where: str, name: str) -> float:
    text = (cell or "").strip()
    if not text:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise RecordingError(f"{where}: {name} {text!r} is not a number.") from None
    if not math.isfinite(value):
        raise RecordingError(f"{where}: {name} {text!r} is not a finite number.")
    return value


def _seconds(text: str, where: str) -> float:
    if text.lstrip("-").isdigit():
        seconds = int(text) / 1000.0
    else:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise RecordingError(
                f"{where}: ts {text!r} is neither ISO 8601 nor epoch milliseconds."
            ) from None
        if moment.tzinfo is None:
            raise RecordingError(f"{where}: ts {text!r} has no UTC offset; add one, e.g. +07:00.")
        seconds = moment.timestamp()
    if seconds < EARLIEST_S:
        raise RecordingError(f"{where}: ts {text!r} is before 2000; is it in milliseconds?")
    return seconds


def _plain(value: float) -> float | int:
    return int(value) if value.is_integer() else value
