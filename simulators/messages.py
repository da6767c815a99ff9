"""Readings as MQTT messages: scenario time mapped onto the run's timestamps, payloads per contract.

Pure: no clock is read here; the caller passes `now` when it builds a TimeMap.

Timestamps (`--timestamps`), because ingest refuses readings stamped more than 5 minutes
after their arrival:
  original  the scenario's own dates. Shipped scenarios lie in the past, so an accelerated
            run only ever publishes past readings, in order, and the stored series line up
            with the scenario's ground truth as it is.
  recent    the scenario moved by whole days so that it ends just before the run starts:
            recent data, same hours of the day (tides keep their early-morning peaks).
  wall      each reading stamped with the wall-clock time at which it is due: the water runs
            `speed` times faster than the clock while timestamps stay live (the demo).
Every mode maps scenario time t to stamp = to_s + (t - at_s) / scale; a sensor's clock skew
is added after mapping, since it is an error of a real clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import orjson
from numpy.typing import NDArray

from simulators.physics import Floats
from simulators.scenario import MAX_ARRAY
from simulators.sensors import Reports, StatusEvent

TimestampMode = Literal["original", "recent", "wall"]
TIMESTAMP_MODES: tuple[TimestampMode, ...] = ("original", "recent", "wall")
DAY_S = 86_400.0
# Ho Chi Minh City keeps +07:00 all year.
HCMC_OFFSET_S = 7 * 3600
ONLINE, OFFLINE = b"online", b"offline"


@dataclass(frozen=True, slots=True)
class TimeMap:
    """Where scenario time lands on the published clock: stamp = to_s + (t - at_s) / scale."""

    at_s: float
    to_s: float
    scale: float = 1.0

    def stamp(self, times_s: Floats) -> Floats:
        return self.to_s + (times_s - self.at_s) / self.scale

    def stamp_one(self, time_s: float) -> float:
        return self.to_s + (time_s - self.at_s) / self.scale

    def wall(self, start_wall_s: float, speed: float, time_s: float) -> float:
        """When a message due at scenario time `time_s` goes out (speed 0: at once)."""
        return start_wall_s if speed <= 0 else start_wall_s + (time_s - self.at_s) / speed


def time_map(
    mode: TimestampMode, start_s: float, end_s: float, now_s: float, speed: float
) -> TimeMap:
    """The map for a run starting at `now_s`; ValueError when the mode cannot work."""
    if mode == "original":
        return TimeMap(start_s, start_s)
    if mode == "recent":
        days = math.floor((now_s - end_s) / DAY_S)
        return TimeMap(start_s, start_s + days * DAY_S)
    if speed <= 0:
        raise ValueError("wall-clock timestamps need a speed above 0")
    return TimeMap(start_s, now_s, speed)


def iso_times(stamps_s: Floats) -> list[str]:
    """Epoch seconds as ISO 8601 in Ho Chi Minh City time, with milliseconds and +07:00."""
    millis = np.round(stamps_s * 1000.0).astype(np.int64) + HCMC_OFFSET_S * 1000
    text = np.datetime_as_string(millis.astype("datetime64[ms]"), unit="ms")
    return [f"{t}+07:00" for t in text.tolist()]


def iso_time(stamp_s: float) -> str:
    return iso_times(np.array([stamp_s]))[0]


def reading_objects(
    reports: Reports,
    rows: NDArray[np.int64],
    timemap: TimeMap,
    seq_offset: int = 0,
) -> list[dict[str, object]]:
    """The contract's reading objects for the given rows, in that order."""
    stamps = iso_times(timemap.stamp(reports.time_s[rows]) + reports.skew_s[rows])
    objects: list[dict[str, object]] = []
    level = reports.level_cm[rows].tolist()
    distance = reports.distance_mm[rows].tolist()
    battery = reports.battery_v[rows].tolist()
    rssi = reports.rssi[rows].tolist()
    seq = (reports.seq[rows] + seq_offset).tolist()
    for k, ts in enumerate(stamps):
        doc: dict[str, object] = {"ts": ts}
        if math.isnan(level[k]):
            doc["distance_mm"] = int(distance[k])
        else:
            doc["level_cm"] = level[k]
        doc["battery_v"] = battery[k]
        doc["rssi"] = rssi[k]
        doc["seq"] = seq[k]
        objects.append(doc)
    return objects


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT message of a run, due at scenario time `at_s`."""

    at_s: float
    sensor: int  # index into Reports.sensors
    channel: Literal["reading", "status"]
    payload: bytes
    readings: int  # readings carried; 0 for a status


def build_messages(
    reports: Reports,
    events: tuple[StatusEvent, ...],
    timemap: TimeMap,
    seq_offsets: NDArray[np.int64] | None = None,
) -> list[Message]:
    """Every message of a run in publishing order: singles when taken, backfills as arrays.

    A sensor coming online goes before what it sends at that instant, and one going offline
    after; `seq_offsets` (per sensor) continue seq across repeated passes of a scenario.
    """
    keyed: list[tuple[float, int, int, Message]] = []
    for event in events:
        payload = ONLINE if event.online else OFFLINE
        rank = 0 if event.online else 2
        message = Message(event.time_s, event.sensor, "status", payload, 0)
        keyed.append((event.time_s, rank, event.sensor, message))
    for index in range(len(reports.sensors)):
        offset = 0 if seq_offsets is None else int(seq_offsets[index])
        rows = np.flatnonzero(reports.of(index) & reports.published)
        if rows.size == 0:
            continue
        objects = reading_objects(reports, rows, timemap, offset)
        sent = reports.sent_s[rows].tolist()
        backfill = reports.backfill[rows].tolist()
        k = 0
        while k < len(objects):
            if not backfill[k]:
                payload = orjson.dumps(objects[k])
                keyed.append((sent[k], 1, index, Message(sent[k], index, "reading", payload, 1)))
                k += 1
                continue
            end = k
            while end < len(objects) and backfill[end] and sent[end] == sent[k]:
                end += 1
            for first in range(k, end, MAX_ARRAY):
                chunk = objects[first : min(end, first + MAX_ARRAY)]
                message = Message(sent[k], index, "reading", orjson.dumps(chunk), len(chunk))
                keyed.append((sent[k], 1, index, message))
            k = end
    keyed.sort(key=lambda item: item[:3])
    return [item[3] for item in keyed]
