"""Simulated sensor physics for demos and tests: pure, seeded, vectorised over sensors.

Nothing here does I/O or reads the clock: every function takes the time it models, in epoch
seconds. Each sensor's signal depends only on the seed, its own id and the time (noise comes
from a counter-based hash, not a shared random stream), so simulating a subset of the registry
gives each sensor exactly the readings it would have had in the full set.

The model is deliberately simple and stays for `live` (the bare `python -m simulators`); the
scenario engine (physics.py, sensors.py) models the real tide, rain and drains.

- Street sensors: a dry road (depth 0 with about 1 cm of sensor noise) and a periodic shower
  that fills the street smoothly to a peak of 15-45 cm and drains it again; Quoc Huong and
  Nguyen Van Huong flood deeper than Duong 12.
- Tide gauges: a semidiurnal sine around 0 with about 150 cm amplitude, plus a small diurnal
  term so successive high waters differ.
- Every sensor: battery drifting slowly within 3.6-4.1 V, rssi -100..-70 dBm, and `seq`
  counting its readings.

`speed` makes the modelled water run faster than the clock while timestamps stay real, so a
demo shows whole shower cycles in minutes and the pipeline still accepts every timestamp.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import orjson
from numpy.typing import NDArray

from floodwatch.registry import Sensor

Floats = NDArray[np.float64]
Words = NDArray[np.uint64]

# Ho Chi Minh City keeps +07:00 all year (no daylight saving), so a fixed offset is exact.
HCMC_TZ = timezone(timedelta(hours=7), "Asia/Ho_Chi_Minh")

# One shower per period: the street is wet for the first EVENT fraction of it, the water rises
# for the first RISE fraction of the wet spell and drains for the rest.
SHOWER_PERIOD_S = 3600.0
SHOWER_EVENT_FRACTION = 0.6
SHOWER_RISE_FRACTION = 0.3
# Peak depth of a shower by street; each sensor deviates by up to PEAK_SPREAD of it.
STREET_PEAK_CM: dict[str, float] = {"Duong 12": 18.0, "Quoc Huong": 40.0, "Nguyen Van Huong": 34.0}
OTHER_STREET_PEAK_CM = 25.0
PEAK_SPREAD = 0.15
PEAK_BOUNDS_CM = (15.0, 45.0)
# Water reaches streets (and sensors along a street) at slightly different times.
STREET_LAG_FRACTION = 0.10
SENSOR_LAG_FRACTION = 0.03
# Sensor noise on depth, cut at NOISE_CLIP_SIGMA so a dry road never reads 2 cm or more off.
DEPTH_NOISE_CM = 0.6
NOISE_CLIP_SIGMA = 3.0

# Principal lunar semidiurnal (M2) and lunisolar diurnal (K1) tide periods.
TIDE_M2_PERIOD_S = 12.42 * 3600.0
TIDE_K1_PERIOD_S = 23.93 * 3600.0
TIDE_AMPLITUDE_CM = 150.0
TIDE_DIURNAL_CM = 15.0
TIDE_NOISE_CM = 1.0

BATTERY_MID_V = 3.85
BATTERY_SWING_V = 0.2
BATTERY_NOISE_V = 0.01
BATTERY_BOUNDS_V = (3.6, 4.1)
BATTERY_PERIOD_S = (86_400.0, 3 * 86_400.0)
RSSI_BASE_DBM = (-95.0, -75.0)
RSSI_NOISE_DBM = 2.5
RSSI_BOUNDS_DBM = (-100, -70)

# Hash channels: one per independent quantity, so no two draw the same numbers.
_PEAK, _SENSOR_LAG, _STREET_LAG, _TIDE_M2, _TIDE_K1 = 1, 2, 3, 4, 5
_BATTERY_PHASE, _BATTERY_PERIOD, _RSSI_BASE = 6, 7, 8
_DEPTH_NOISE, _BATTERY_NOISE, _RSSI_NOISE = 10, 12, 14  # each uses channel and channel + 1

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_U64_MOD = 2**64


@dataclass(frozen=True, slots=True, eq=False)
class Fleet:
    """The simulated sensors and their fixed per-sensor parameters, as arrays indexed alike."""

    sensors: tuple[Sensor, ...]
    seed: int
    shower_period_s: float
    speed: float
    keys: Words
    is_tide: NDArray[np.bool_]
    sends_distance: NDArray[np.bool_]
    mount_height_mm: Floats  # NaN where the sensor sends level_cm
    peak_cm: Floats
    lag_s: Floats
    tide_phase_m2: Floats
    tide_phase_k1: Floats
    battery_phase: Floats
    battery_period_s: Floats
    rssi_base_dbm: Floats

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(sensor.id for sensor in self.sensors)


@dataclass(frozen=True, slots=True, eq=False)
class FleetState:
    """What the fleet remembers between readings: how many readings each sensor has sent."""

    seq: NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class SimulatedReading:
    """One reading as a sensor would publish it, with the modelled depth behind it."""

    sensor_id: str
    time_s: float  # epoch seconds of the reading's timestamp
    depth_cm: float  # measured depth above the road (street) or river stage (tide), unrounded
    level_cm: float | None  # what a depth sensor publishes; None for distance sensors
    distance_mm: int | None  # what a distance sensor publishes; None for depth sensors
    battery_v: float
    rssi: int
    seq: int


@dataclass(frozen=True, slots=True, eq=False)
class Measurement:
    """One instant of the whole fleet, as arrays indexed like `Fleet.sensors`."""

    depth_cm: Floats
    level_cm: Floats  # NaN where the sensor sends distance_mm
    distance_mm: Floats  # NaN where the sensor sends level_cm
    battery_v: Floats
    rssi: NDArray[np.int64]


def build_fleet(
    sensors: Iterable[Sensor],
    seed: int,
    *,
    shower_period_s: float = SHOWER_PERIOD_S,
    speed: float = 1.0,
) -> Fleet:
    """Fix every sensor's parameters from the seed and its id; raise ValueError on bad values."""
    chosen = tuple(sensors)
    if seed < 0:
        raise ValueError(f"seed {seed} must be 0 or more")
    if not (math.isfinite(shower_period_s) and shower_period_s > 0):
        raise ValueError(f"shower period {shower_period_s} s must be a finite number above 0")
    if not (math.isfinite(speed) and speed > 0):
        raise ValueError(f"speed {speed} must be a finite number above 0")
    keys = _keys(sensor.id for sensor in chosen)
    street_keys = _keys(sensor.street_en for sensor in chosen)
    base_peak = np.array(
        [STREET_PEAK_CM.get(sensor.street_en, OTHER_STREET_PEAK_CM) for sensor in chosen],
        dtype=np.float64,
    )
    spread = 1.0 + PEAK_SPREAD * (2.0 * _uniform(seed, keys, _PEAK) - 1.0)
    lag = STREET_LAG_FRACTION * _uniform(seed, street_keys, _STREET_LAG)
    lag = lag + SENSOR_LAG_FRACTION * _uniform(seed, keys, _SENSOR_LAG)
    low_period, high_period = BATTERY_PERIOD_S
    low_rssi, high_rssi = RSSI_BASE_DBM
    return Fleet(
        sensors=chosen,
        seed=seed,
        shower_period_s=float(shower_period_s),
        speed=float(speed),
        keys=keys,
        is_tide=np.array([sensor.kind == "tide" for sensor in chosen], dtype=np.bool_),
        sends_distance=np.array(
            [sensor.sends == "distance_mm" for sensor in chosen], dtype=np.bool_
        ),
        mount_height_mm=np.array(
            [
                math.nan if sensor.mount_height_mm is None else sensor.mount_height_mm
                for sensor in chosen
            ],
            dtype=np.float64,
        ),
        peak_cm=np.clip(base_peak * spread, *PEAK_BOUNDS_CM),
        lag_s=lag * shower_period_s,
        tide_phase_m2=2.0 * np.pi * _uniform(seed, keys, _TIDE_M2),
        tide_phase_k1=2.0 * np.pi * _uniform(seed, keys, _TIDE_K1),
        battery_phase=2.0 * np.pi * _uniform(seed, keys, _BATTERY_PHASE),
        battery_period_s=low_period
        + (high_period - low_period) * _uniform(seed, keys, _BATTERY_PERIOD),
        rssi_base_dbm=low_rssi + (high_rssi - low_rssi) * _uniform(seed, keys, _RSSI_BASE),
    )


def initial_state(fleet: Fleet) -> FleetState:
    """A fleet that has sent nothing yet: the first reading of every sensor gets seq 1."""
    return FleetState(seq=np.zeros(len(fleet.sensors), dtype=np.int64))


def shower_depth_cm(fleet: Fleet, time_s: float) -> Floats:
    """Noise-free water depth on each street sensor's road at `time_s` (0 for tide gauges)."""
    period = fleet.shower_period_s
    phase = np.mod(time_s * fleet.speed - fleet.lag_s, period) / period
    wet = np.minimum(phase / SHOWER_EVENT_FRACTION, 1.0)
    # sin^2(pi * x^k) rises smoothly from 0, peaks where x^k = 1/2 and drains back to 0 at x = 1.
    exponent = math.log(0.5) / math.log(SHOWER_RISE_FRACTION)
    bump = np.sin(np.pi * wet**exponent) ** 2
    return np.where(fleet.is_tide, 0.0, fleet.peak_cm * bump)


def tide_stage_cm(fleet: Fleet, time_s: float) -> Floats:
    """Noise-free river stage at each tide gauge at `time_s` (0 for street sensors)."""
    modelled = time_s * fleet.speed
    stage = TIDE_AMPLITUDE_CM * np.sin(
        2.0 * np.pi * np.mod(modelled, TIDE_M2_PERIOD_S) / TIDE_M2_PERIOD_S + fleet.tide_phase_m2
    ) + TIDE_DIURNAL_CM * np.sin(
        2.0 * np.pi * np.mod(modelled, TIDE_K1_PERIOD_S) / TIDE_K1_PERIOD_S + fleet.tide_phase_k1
    )
    return np.where(fleet.is_tide, stage, 0.0)


def measure(fleet: Fleet, time_s: float) -> Measurement:
    """What every sensor measures at `time_s`, noise included, rounded as it would publish."""
    tick = _tick(time_s)
    keys = fleet.keys
    noise = np.clip(
        _normal(fleet.seed, keys, _DEPTH_NOISE, tick), -NOISE_CLIP_SIGMA, NOISE_CLIP_SIGMA
    )
    depth: Floats = np.where(
        fleet.is_tide,
        tide_stage_cm(fleet, time_s) + TIDE_NOISE_CM * noise,
        shower_depth_cm(fleet, time_s) + DEPTH_NOISE_CM * noise,
    )
    # A depth sensor cannot see water below the road, so it reads 0; a distance sensor just
    # measures slightly more than its mount height. `+ 0.0` turns -0.0 into 0.0.
    rounded: Floats = np.round(depth, 1)
    published: Floats = np.where(fleet.is_tide, rounded, np.maximum(rounded, 0.0)) + 0.0
    level: Floats = np.where(fleet.sends_distance, np.nan, published)
    distance: Floats = np.where(
        fleet.sends_distance,
        np.maximum(np.round(fleet.mount_height_mm - 10.0 * depth), 0.0),
        np.nan,
    )
    drift: Floats = BATTERY_MID_V + BATTERY_SWING_V * np.sin(
        2.0 * np.pi * np.mod(time_s * fleet.speed, fleet.battery_period_s) / fleet.battery_period_s
        + fleet.battery_phase
    )
    drift = drift + BATTERY_NOISE_V * _normal(fleet.seed, keys, _BATTERY_NOISE, tick)
    clipped: Floats = np.clip(drift, *BATTERY_BOUNDS_V)
    battery: Floats = np.round(clipped, 2)
    rssi = fleet.rssi_base_dbm + RSSI_NOISE_DBM * _normal(fleet.seed, keys, _RSSI_NOISE, tick)
    rssi_int = np.clip(np.round(rssi), *RSSI_BOUNDS_DBM).astype(np.int64)
    return Measurement(
        depth_cm=depth, level_cm=level, distance_mm=distance, battery_v=battery, rssi=rssi_int
    )


def step(
    fleet: Fleet, state: FleetState, time_s: float
) -> tuple[FleetState, tuple[SimulatedReading, ...]]:
    """Every sensor's next reading at `time_s`, and the state after sending them."""
    seq = state.seq + 1
    sample = measure(fleet, time_s)
    readings = tuple(
        SimulatedReading(
            sensor_id=sensor.id,
            time_s=time_s,
            depth_cm=float(sample.depth_cm[i]),
            level_cm=None if fleet.sends_distance[i] else float(sample.level_cm[i]),
            distance_mm=int(sample.distance_mm[i]) if fleet.sends_distance[i] else None,
            battery_v=float(sample.battery_v[i]),
            rssi=int(sample.rssi[i]),
            seq=int(seq[i]),
        )
        for i, sensor in enumerate(fleet.sensors)
    )
    return FleetState(seq=seq), readings


def iso_time(time_s: float) -> str:
    """Epoch seconds as ISO 8601 in Ho Chi Minh City time with milliseconds and +07:00."""
    moment = _EPOCH + timedelta(milliseconds=round(time_s * 1000.0))
    return moment.astimezone(HCMC_TZ).isoformat(timespec="milliseconds")


def reading_payload(reading: SimulatedReading) -> bytes:
    """The reading as the JSON object of CONTRACT section 2."""
    doc: dict[str, object] = {"ts": iso_time(reading.time_s)}
    if reading.distance_mm is not None:
        doc["distance_mm"] = reading.distance_mm
    else:
        doc["level_cm"] = reading.level_cm
    doc["battery_v"] = reading.battery_v
    doc["rssi"] = reading.rssi
    doc["seq"] = reading.seq
    return orjson.dumps(doc)


# -- deterministic noise ---------------------------------------------------------------------


def _keys(names: Iterable[str]) -> Words:
    return np.array([zlib.crc32(name.encode()) for name in names], dtype=np.uint64)


def _tick(time_s: float) -> int:
    # Readings a millisecond apart get independent noise; the same instant always the same.
    return round(time_s * 1000.0) % _U64_MOD


def _mix(words: Words) -> Words:
    # splitmix64's finaliser: a bijection on 64-bit words that scatters every input bit.
    # Array arithmetic on uint64 wraps around silently, which is what the hash needs.
    z = words + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _uniform(seed: int, keys: Words, channel: int, tick: int = 0) -> Floats:
    """Numbers in [0, 1), one per key, fixed by (seed, key, channel, tick)."""
    words = _mix(keys ^ np.uint64(seed % _U64_MOD))
    words = _mix(words ^ np.uint64(channel))
    words = _mix(words ^ np.uint64(tick))
    return (words >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _normal(seed: int, keys: Words, channel: int, tick: int) -> Floats:
    """Standard normal numbers, one per key, by Box-Muller from channels `channel` and +1."""
    radius = np.sqrt(-2.0 * np.log1p(-_uniform(seed, keys, channel, tick)))
    return radius * np.cos(2.0 * np.pi * _uniform(seed, keys, channel + 1, tick))
