"""What each sensor reports about the true water, with noise and the faults seen in the field.

Pure: takes the World, the scenario and the registry's sensors, returns every reading as
columns of numpy arrays. Each sensor draws its randomness from a generator seeded by the
scenario seed and its own id, so a sensor reads the same whether simulated alone or with the
whole registry.

Readings are taken on each sensor's own schedule (its registry interval, or the scenario's,
from a seeded phase). Depth sensors publish level_cm (never below 0: they cannot see water
under the road); downward-looking distance sensors publish distance_mm = mount height - depth.
`seq` counts readings taken, so a lost reading leaves a gap in it.

Faults (scenario [[fault]] entries), applied in the order listed:
  spike       one reading off by magnitude_cm (a leaf, a bird, a splash)
  vehicle     a vehicle parked under a distance sensor: readings jump to its height, flat
  stuck       readings repeat the last good value
  dropout     readings lost in transmission (each with probability `loss`)
  battery     the battery drains fast; below cutoff_v the sensor stops until `end`
  clock_skew  timestamps off by `skew`, drifting by drift_s_h seconds per hour
  outage      the link is down: readings are kept (up to `buffer`, oldest overwritten) and
              sent as arrays of at most 1000 when it comes back
The first three and clock_skew make artefacts: readings whose value or time is not the water's.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from floodwatch.registry import Sensor
from simulators.physics import Floats, World
from simulators.scenario import Scenario, sensor_interval_s

# Artefact bits of Reports.artefact.
SPIKE, VEHICLE, STUCK, CLOCK_SKEW = 1, 2, 4, 8
ARTEFACT_NAMES: dict[int, str] = {
    SPIKE: "spike",
    VEHICLE: "vehicle",
    STUCK: "stuck",
    CLOCK_SKEW: "clock_skew",
}

BATTERY_START_V = (3.95, 4.15)
BATTERY_DRAIN_V_DAY = (0.002, 0.006)
BATTERY_NOISE_V = 0.005
RSSI_BASE_DBM = (-95.0, -75.0)
RSSI_NOISE_DBM = 2.5
RSSI_BOUNDS_DBM = (-120, -40)
# A hard surface (a car roof) echoes more steadily than water.
VEHICLE_NOISE_CM = 0.2
DISTANCE_BOUNDS_MM = (0.0, 20_000.0)

_SCHEDULE, _OFFSET = 2, 3  # seed channels, so per-sensor draws never share a stream


@dataclass(frozen=True, slots=True, eq=False)
class Reports:
    """Every reading taken, one row each, sorted by sensor then time."""

    sensors: tuple[Sensor, ...]
    sensor: NDArray[np.int64]  # index into `sensors`
    time_s: Floats  # when the reading was taken (scenario time, epoch seconds)
    skew_s: Floats  # the sensor clock's error: its timestamp is time_s + skew_s
    true_cm: Floats  # true depth under the sensor, or the river stage for a gauge
    depth_cm: Floats  # what the reading says, as a depth (after noise, faults and rounding)
    level_cm: Floats  # published level_cm; NaN for distance sensors
    distance_mm: Floats  # published distance_mm; NaN for depth sensors
    battery_v: Floats
    rssi: NDArray[np.int64]
    seq: NDArray[np.int64]
    artefact: NDArray[np.uint8]  # bits SPIKE | VEHICLE | STUCK | CLOCK_SKEW
    sent_s: Floats  # when it is published (scenario time); NaN when it never is
    backfill: NDArray[np.bool_]  # sent late, in an array, after an outage

    @property
    def published(self) -> NDArray[np.bool_]:
        return np.asarray(~np.isnan(self.sent_s))

    def of(self, index: int) -> NDArray[np.bool_]:
        """Row mask of one sensor's readings."""
        return np.asarray(self.sensor == index)


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """A sensor going offline (outage, dead battery) or coming back online."""

    time_s: float
    sensor: int
    online: bool


def sensor_rng(seed: int, channel: int, sensor_id: str) -> np.random.Generator:
    """A generator of its own for one sensor and one purpose."""
    return np.random.default_rng([seed, channel, zlib.crc32(sensor_id.encode())])


def sensor_offsets_cm(scenario: Scenario, sensors: tuple[Sensor, ...], seed: int) -> Floats:
    """How far above its street's lowest point each sensor sits (0 for gauges)."""
    offsets = np.zeros(len(sensors), dtype=np.float64)
    for i, sensor in enumerate(sensors):
        if sensor.kind != "street":
            continue
        if sensor.id in scenario.sensor_offsets_cm:
            offsets[i] = scenario.sensor_offsets_cm[sensor.id]
        else:
            spread = scenario.streets[sensor.street_en].sensor_spread_cm
            offsets[i] = round(sensor_rng(seed, _OFFSET, sensor.id).uniform(0.0, spread), 1)
    return offsets


def true_depth_cm(world: World, sensor: Sensor, offset_cm: float, times_s: Floats) -> Floats:
    """The noise-free depth under a street sensor (or the stage at a gauge) at given times."""
    if sensor.kind == "tide":
        return np.interp(times_s, world.times_s, world.stage_cm)
    column = world.streets.index(sensor.street_en)
    street = np.interp(times_s, world.times_s, world.depth_cm[:, column])
    return np.maximum(street - offset_cm, 0.0)


def report(
    scenario: Scenario, world: World, sensors: tuple[Sensor, ...], seed: int
) -> tuple[Reports, tuple[StatusEvent, ...]]:
    """Every reading each sensor takes during the scenario, and its status changes."""
    offsets = sensor_offsets_cm(scenario, sensors, seed)
    parts: list[dict[str, np.ndarray]] = []
    events: list[StatusEvent] = []
    for index, sensor in enumerate(sensors):
        columns, sensor_events = _one_sensor(scenario, world, sensor, index, offsets[index], seed)
        parts.append(columns)
        events.extend(sensor_events)

    def joined(name: str) -> np.ndarray:
        return np.concatenate([part[name] for part in parts])

    reports = Reports(
        sensors=sensors,
        sensor=joined("sensor").astype(np.int64),
        time_s=joined("time_s"),
        skew_s=joined("skew_s"),
        true_cm=joined("true_cm"),
        depth_cm=joined("depth_cm"),
        level_cm=joined("level_cm"),
        distance_mm=joined("distance_mm"),
        battery_v=joined("battery_v"),
        rssi=joined("rssi").astype(np.int64),
        seq=joined("seq").astype(np.int64),
        artefact=joined("artefact").astype(np.uint8),
        sent_s=joined("sent_s"),
        backfill=joined("backfill").astype(np.bool_),
    )
    events.sort(key=lambda e: (e.time_s, e.sensor))
    return reports, tuple(events)


def _one_sensor(
    scenario: Scenario,
    world: World,
    sensor: Sensor,
    index: int,
    offset_cm: float,
    seed: int,
) -> tuple[dict[str, np.ndarray], list[StatusEvent]]:
    rng = sensor_rng(seed, _SCHEDULE, sensor.id)
    interval = sensor_interval_s(scenario, sensor)
    phase = round(float(rng.uniform(0.0, interval)), 3)
    count = max(0, math.ceil((scenario.duration_s - phase) / interval))
    times = scenario.start_s + phase + interval * np.arange(count, dtype=np.float64)
    times = np.round(times, 3)  # whole milliseconds, as published
    true = true_depth_cm(world, sensor, offset_cm, times)
    measured = true + rng.normal(0.0, scenario.noise_cm, count)
    drain_v_s = rng.uniform(*BATTERY_DRAIN_V_DAY) / 86_400.0
    battery = (
        rng.uniform(*BATTERY_START_V)
        - drain_v_s * (times - scenario.start_s)
        + rng.normal(0.0, BATTERY_NOISE_V, count)
    )
    rssi = rng.uniform(*RSSI_BASE_DBM) + rng.normal(0.0, RSSI_NOISE_DBM, count)
    randomly_lost = rng.random(count) < scenario.loss
    skew = np.zeros(count, dtype=np.float64)
    artefact = np.zeros(count, dtype=np.uint8)
    dropped = np.zeros(count, dtype=np.bool_)
    sent = times.copy()
    backfill = np.zeros(count, dtype=np.bool_)
    events: list[StatusEvent] = []
    faults = [f for f in scenario.faults if f.sensor_id == sensor.id]

    # Faults that change what the sensor says.
    for fault in faults:
        window = (times >= fault.start_s) & (times < fault.end_s)
        if fault.kind == "spike":
            hit = np.flatnonzero(times >= fault.start_s)[:1]
            measured[hit] += fault.magnitude_cm
            artefact[hit] |= SPIKE
        elif fault.kind == "vehicle":
            under = int(window.sum())
            roof = fault.magnitude_cm + rng.normal(0.0, VEHICLE_NOISE_CM, under)
            measured[window] = np.maximum(roof, true[window])
            artefact[window] |= VEHICLE
        elif fault.kind == "stuck":
            first = np.flatnonzero(window)[:1]
            if first.size:
                before = int(first[0]) - 1 if first[0] > 0 else int(first[0])
                measured[window] = measured[before]
                artefact[window] |= STUCK
        elif fault.kind == "clock_skew":
            elapsed_h = (times[window] - fault.start_s) / 3600.0
            skew[window] += fault.skew_s + fault.drift_s_h * elapsed_h
            artefact[window] |= CLOCK_SKEW
        elif fault.kind == "battery":
            after = times >= fault.start_s
            drained = np.minimum(times, fault.end_s) - fault.start_s
            battery[after] -= fault.rate_v_h * drained[after] / 3600.0
            dead = window & (battery < fault.cutoff_v)
            if dead.any():
                first_dead = int(np.flatnonzero(dead)[0])
                dead = window & (np.arange(count) >= first_dead)
                dropped |= dead
                events.append(StatusEvent(float(times[first_dead]), index, online=False))
                if fault.end_s < scenario.end_s:
                    # A fresh battery: the sensor is back at full charge.
                    events.append(StatusEvent(fault.end_s, index, online=True))
                    back = times >= fault.end_s
                    battery[back] = BATTERY_START_V[1] - drain_v_s * (times[back] - fault.end_s)
        elif fault.kind == "dropout":
            dropped |= window & (rng.random(count) < fault.loss)

    # The link: readings lost, or kept during an outage and sent together afterwards.
    lost = dropped | randomly_lost
    for fault in faults:
        if fault.kind != "outage":
            continue
        kept = np.flatnonzero((times >= fault.start_s) & (times < fault.end_s) & ~dropped)
        overwritten = kept[: max(0, kept.size - fault.buffer)]
        kept = kept[kept.size - min(kept.size, fault.buffer) :]
        lost[overwritten] = True
        lost[kept] = False
        sent[kept] = fault.end_s
        backfill[kept] = True
        events.append(StatusEvent(fault.start_s, index, online=False))
        if fault.end_s < scenario.end_s:
            events.append(StatusEvent(fault.end_s, index, online=True))
    sent[lost] = math.nan
    backfill[lost] = False

    level, distance, depth = _published(sensor, measured)
    return (
        {
            "sensor": np.full(count, index, dtype=np.int64),
            "time_s": times,
            "skew_s": np.round(skew, 3),
            "true_cm": true,
            "depth_cm": depth,
            "level_cm": level,
            "distance_mm": distance,
            "battery_v": np.round(np.clip(battery, 0.0, 4.2), 2),
            "rssi": np.clip(np.round(rssi), *RSSI_BOUNDS_DBM).astype(np.int64),
            "seq": np.arange(1, count + 1, dtype=np.int64),
            "artefact": artefact,
            "sent_s": sent,
            "backfill": backfill,
        },
        events,
    )


def _published(sensor: Sensor, measured: Floats) -> tuple[Floats, Floats, Floats]:
    """(level_cm, distance_mm, depth they stand for), rounded as the sensor sends them."""
    nan: Floats = np.full(measured.shape, math.nan)
    if sensor.sends == "distance_mm":
        assert sensor.mount_height_mm is not None
        distance: Floats = np.clip(
            np.round(sensor.mount_height_mm - 10.0 * measured), *DISTANCE_BOUNDS_MM
        )
        return nan, distance, (sensor.mount_height_mm - distance) / 10.0
    # A depth sensor cannot see water below the road; `+ 0.0` turns -0.0 into 0.0.
    seen: Floats = measured if sensor.kind == "tide" else np.maximum(measured, 0.0)
    level: Floats = np.round(seen, 1) + 0.0
    return level, nan, level
