"""A scenario's ground truth: the floods that really happened under each sensor, and which
readings lie. Pure; the alert scoring in bench/ compares alerts against it.

The document (format "floodwatch-truth/1") is described in the simulators package docstring.
Episodes come from the noise-free depth under each sensor on the model's time grid, with
threshold crossings interpolated between grid points: an episode starts when the depth
reaches the sensor's first threshold and ends when it falls below it again (no debounce or
hysteresis: those are the alert engine's business, and the scoring allows for them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from floodwatch.contract import BATTERY_LOW_V, STALE_INTERVALS, level_name
from floodwatch.registry import Sensor
from simulators.messages import TimeMap, iso_time, iso_times
from simulators.physics import Floats, World
from simulators.scenario import Scenario, sensor_interval_s
from simulators.sensors import (
    ARTEFACT_NAMES,
    Reports,
    sensor_offsets_cm,
    true_depth_cm,
)

FORMAT = "floodwatch-truth/1"


@dataclass(frozen=True, slots=True)
class Episode:
    """Depth at or above a threshold from start to end (None: still there at the end)."""

    start_s: float
    end_s: float | None
    peak_cm: float
    peak_s: float
    level: int  # how many thresholds the peak reached (1 = the first)


def episodes(times_s: Floats, depth_cm: Floats, thresholds_cm: tuple[float, ...]) -> list[Episode]:
    """The spans where depth >= the first threshold, with crossings interpolated."""
    threshold = thresholds_cm[0]
    wet = depth_cm >= threshold
    found: list[Episode] = []
    k = 0
    n = times_s.size
    while k < n:
        if not wet[k]:
            k += 1
            continue
        first = k
        while k < n and wet[k]:
            k += 1
        start = _crossing(times_s, depth_cm, first, threshold) if first > 0 else times_s[0]
        end = _crossing(times_s, depth_cm, k, threshold) if k < n else None
        peak = first + int(np.argmax(depth_cm[first:k]))
        peak_cm = float(depth_cm[peak])
        level = sum(1 for t in thresholds_cm if peak_cm >= t)
        found.append(Episode(float(start), end, peak_cm, float(times_s[peak]), level))
    return found


def _crossing(times_s: Floats, depth_cm: Floats, k: int, threshold: float) -> float:
    """When depth crossed the threshold between grid points k-1 and k."""
    before, after = float(depth_cm[k - 1]), float(depth_cm[k])
    fraction = 0.5 if after == before else (threshold - before) / (after - before)
    fraction = min(max(fraction, 0.0), 1.0)
    return float(times_s[k - 1] + fraction * (times_s[k] - times_s[k - 1]))


def ground_truth(
    scenario: Scenario,
    seed: int,
    world: World,
    reports: Reports,
    timemap: TimeMap,
) -> dict[str, object]:
    """The truth document for one run of a scenario (times as the run stamps them)."""
    offsets = sensor_offsets_cm(scenario, reports.sensors, seed)
    sensors: dict[str, object] = {}
    for index, sensor in enumerate(reports.sensors):
        depth = true_depth_cm(world, sensor, float(offsets[index]), world.times_s)
        sensors[sensor.id] = _sensor_truth(
            scenario, sensor, index, float(offsets[index]), depth, world, reports, timemap
        )
    streets: dict[str, object] = {}
    for column, name in enumerate(world.streets):
        peak = int(np.argmax(world.depth_cm[:, column]))
        model = scenario.streets[name]
        streets[name] = {
            "ground_cm": model.ground_cm,
            "peak_cm": _cm(world.depth_cm[peak, column]),
            "peak_at": iso_time(timemap.stamp_one(float(world.times_s[peak]))),
        }
    stage_peak = int(np.argmax(world.stage_cm))
    return {
        "format": FORMAT,
        "scenario": scenario.name,
        "title": scenario.title,
        "seed": seed,
        "start": iso_time(timemap.stamp_one(scenario.start_s)),
        "end": iso_time(timemap.stamp_one(scenario.end_s)),
        "time_map": {
            "scenario_start": iso_time(scenario.start_s),
            "stamped_start": iso_time(timemap.stamp_one(scenario.start_s)),
            "scale": timemap.scale,
        },
        "river": {
            "peak_cm": _cm(world.stage_cm[stage_peak]),
            "peak_at": iso_time(timemap.stamp_one(float(world.times_s[stage_peak]))),
            "rain_mm": round(float(np.sum(world.rain_mm_h)) * scenario.step_s / 3600.0, 1),
            "rain_peak_mm_h": round(float(np.max(world.rain_mm_h, initial=0.0)), 1),
        },
        "streets": streets,
        "sensors": sensors,
    }


def _sensor_truth(
    scenario: Scenario,
    sensor: Sensor,
    index: int,
    offset_cm: float,
    depth: Floats,
    world: World,
    reports: Reports,
    timemap: TimeMap,
) -> dict[str, object]:
    found = episodes(world.times_s, depth, sensor.thresholds_cm)
    rows = np.flatnonzero(reports.of(index))
    published = rows[reports.published[rows]]
    interval = sensor_interval_s(scenario, sensor)

    artefacts = _artefact_groups(reports, published, timemap)
    low = published[reports.battery_v[published] < BATTERY_LOW_V]
    battery_low_from = (
        iso_time(timemap.stamp_one(float(reports.time_s[low[0]]) + float(reports.skew_s[low[0]])))
        if low.size
        else None
    )
    return {
        "street": sensor.street_en,
        "kind": sensor.kind,
        "sends": sensor.sends,
        "interval_s": interval,
        "thresholds_cm": list(sensor.thresholds_cm),
        "offset_cm": offset_cm,
        "episodes": [
            {
                "start": iso_time(timemap.stamp_one(e.start_s)),
                "end": None if e.end_s is None else iso_time(timemap.stamp_one(e.end_s)),
                "peak_cm": _cm(e.peak_cm),
                "peak_at": iso_time(timemap.stamp_one(e.peak_s)),
                "level": e.level,
                "level_name": level_name(sensor.kind == "tide", e.level),
                "minutes_to_peak": round((e.peak_s - e.start_s) / 60.0, 1),
                "minutes_to_drain": None
                if e.end_s is None
                else round((e.end_s - e.peak_s) / 60.0, 1),
            }
            for e in found
        ],
        "artefacts": artefacts,
        "faults": [
            {
                "kind": f.kind,
                "start": iso_time(timemap.stamp_one(f.start_s)),
                "end": iso_time(timemap.stamp_one(f.end_s)),
            }
            for f in scenario.faults
            if f.sensor_id == sensor.id
        ],
        "silences": _silences(scenario, interval, reports, published, timemap),
        "battery_low_from": battery_low_from,
        "readings": {
            "taken": int(rows.size),
            "published": int(published.size),
            "lost": int(rows.size - published.size),
            "backfilled": int(np.count_nonzero(reports.backfill[rows])),
            "artefacts": sum(len(group["ts"]) for group in artefacts),
        },
    }


def _artefact_groups(
    reports: Reports, published: NDArray[np.int64], timemap: TimeMap
) -> list[dict[str, Any]]:
    """Artefact readings as runs of consecutive published readings with the same kinds."""
    positions = np.flatnonzero(reports.artefact[published] != 0)
    rows = published[positions]
    stamps = iso_times(timemap.stamp(reports.time_s[rows]) + reports.skew_s[rows])
    codes = reports.artefact[rows].tolist()
    groups: list[dict[str, Any]] = []
    for k, stamp in enumerate(stamps):
        if k and codes[k] == codes[k - 1] and positions[k] == positions[k - 1] + 1:
            groups[-1]["until"] = stamp
            groups[-1]["ts"].append(stamp)
            continue
        kinds = [name for bit, name in ARTEFACT_NAMES.items() if codes[k] & bit]
        groups.append({"kinds": kinds, "from": stamp, "until": stamp, "ts": [stamp]})
    return groups


def _silences(
    scenario: Scenario,
    interval: float,
    reports: Reports,
    published: NDArray[np.int64],
    timemap: TimeMap,
) -> list[dict[str, object]]:
    """Spans in which the pipeline hears nothing from the sensor for 3 intervals or more."""
    arrivals = np.unique(reports.sent_s[published])
    edges = np.concatenate(([scenario.start_s], arrivals, [scenario.end_s]))
    silences: list[dict[str, object]] = []
    for before, after in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        if after - before <= STALE_INTERVALS * interval:
            continue
        last = after == scenario.end_s
        silences.append(
            {
                "from": iso_time(timemap.stamp_one(before)),
                "until": None if last else iso_time(timemap.stamp_one(after)),
                "missed": math.floor((after - before) / interval) - (0 if last else 1),
            }
        )
    return silences


def _cm(value: float | np.floating) -> float:
    return round(float(value), 1)
