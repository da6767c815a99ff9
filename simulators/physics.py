"""The water of An Khanh as pure functions: river stage at Phu An, rain, and depth on each street.

Nothing here does I/O or reads the clock; times are epoch seconds passed in as numpy arrays,
and randomness comes from generators seeded by the caller, so one seed gives one world.

- Tide: harmonic constituents whose phases follow the mean longitudes of the moon and sun
  (Doodson's arguments), so highs come on the right days and hours: springs a day or two
  after new and full moon, highs in the early morning and early evening in the flood season.
  Nodal corrections (an 18.6-year modulation of a few per cent) are left out.
- Rain: storms as intensity curves in mm/h, with optional seeded gustiness.
- Streets: each street is a pond at its lowest point. Rain over its catchment runs in; the
  drains carry up to their capacity while the head between the street and the river (or the
  drain outlet, whichever is higher) allows; when the river stands above the street surface
  the drains run backwards and the river fills the street, slowed by tide gates. Depth never
  goes below zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from simulators.scenario import Scenario, Storm, StreetModel, Tide

Floats = NDArray[np.float64]

# Doodson's arguments in degrees: the mean solar hour angle at Greenwich (t), and the mean
# longitudes of the moon (s), the sun (h) and the lunar perigee (p), linear in time since
# J2000.0 (2000-01-01T12:00Z); rates per Julian century as in Meeus' Astronomical Algorithms.
J2000_S = 946_728_000.0
_CENTURY_S = 36525.0 * 86400.0
_MOON = (218.3164477, 481267.88123421)
_SUN = (280.46646, 36000.76983)
_PERIGEE = (83.3532465, 4069.0137287)

# Each constituent's argument: multiples of (t, s, h, p) plus a constant (Schureman's table).
ARGUMENTS: dict[str, tuple[int, int, int, int, float]] = {
    "M2": (2, -2, 2, 0, 0.0),
    "S2": (2, 0, 0, 0, 0.0),
    "N2": (2, -3, 2, 1, 0.0),
    "K2": (2, 0, 2, 0, 0.0),
    "K1": (1, 0, 1, 0, 90.0),
    "O1": (1, -2, 1, 0, -90.0),
    "P1": (1, 0, -1, 0, -90.0),
    "M4": (4, -4, 4, 0, 0.0),
}

# Rain gusts: the multiplier's correlation time.
GUST_TIME_S = 300.0
# Explicit steps of the pond equation stay well inside its stability limit.
MAX_STEP_FRACTION = 0.5


@dataclass(frozen=True, slots=True, eq=False)
class World:
    """The true state of river, sky and streets on the model's time grid."""

    times_s: Floats  # epoch seconds, evenly spaced by the scenario's step
    stage_cm: Floats  # river stage at the tide gauge
    rain_mm_h: Floats  # rain intensity over the ward
    depth_cm: Floats  # (time, street): water depth at each street's lowest point
    streets: tuple[str, ...]


def constituent_speed_deg_h(name: str) -> float:
    """The angular speed of a constituent in degrees per hour."""
    t, s, h, p, _ = ARGUMENTS[name]
    per_hour = 3600.0 / _CENTURY_S
    return 15.0 * t + (s * _MOON[1] + h * _SUN[1] + p * _PERIGEE[1]) * per_hour


def constituent_period_h(name: str) -> float:
    """A constituent's period in hours (M2: 12.42, S2: 12.00, K1: 23.93, O1: 25.82)."""
    return 360.0 / constituent_speed_deg_h(name)


def moon_phase_deg(times_s: Floats) -> Floats:
    """Mean elongation of the moon from the sun: 0 at new moon, 180 at full moon."""
    centuries = (times_s - J2000_S) / _CENTURY_S
    moon = _MOON[0] + _MOON[1] * centuries
    sun = _SUN[0] + _SUN[1] * centuries
    return np.asarray(np.mod(moon - sun, 360.0), dtype=np.float64)


def tide_stage_cm(tide: Tide, times_s: Floats) -> Floats:
    """The river stage at the gauge: the mean plus every constituent at its argument."""
    centuries = (times_s - J2000_S) / _CENTURY_S
    hour_angle = 15.0 * (times_s / 3600.0) + 180.0
    moon = _MOON[0] + _MOON[1] * centuries
    sun = _SUN[0] + _SUN[1] * centuries
    perigee = _PERIGEE[0] + _PERIGEE[1] * centuries
    stage = np.full(times_s.shape, tide.mean_cm, dtype=np.float64)
    for constituent in tide.constituents:
        t, s, h, p, constant = ARGUMENTS[constituent.name]
        argument = t * hour_angle + s * moon + h * sun + p * perigee + constant
        stage += constituent.amplitude_cm * np.cos(
            np.radians(np.mod(argument - constituent.phase_deg, 360.0))
        )
    return stage


def storm_mm_h(storm: Storm, times_s: Floats) -> Floats:
    """One storm's intensity: zero outside it; a bell, a block or a burst that peaks early."""
    x = (times_s - storm.start_s) / storm.duration_s
    inside = (x >= 0.0) & (x < 1.0)
    if storm.shape == "block":
        shape = np.ones_like(x)
    elif storm.shape == "bell":
        shape = np.sin(np.pi * x) ** 2
    else:  # burst: a fast rise to the peak at a fifth of the way, then a long tail
        shape = np.where(x < 0.2, x / 0.2, (1.0 - x) / 0.8)
    return np.where(inside, storm.peak_mm_h * shape, 0.0)


def rain_mm_h(
    storms: Sequence[Storm],
    times_s: Floats,
    variability: float,
    rng: np.random.Generator,
) -> Floats:
    """Rain over the ward: the storms' sum, times a mean-one gust factor when variability > 0."""
    total = np.zeros(times_s.shape, dtype=np.float64)
    for storm in storms:
        total += storm_mm_h(storm, times_s)
    if variability <= 0.0 or times_s.size < 2:
        return total
    step = float(times_s[1] - times_s[0])
    keep = math.exp(-step / GUST_TIME_S)
    shocks = rng.standard_normal(times_s.size) * math.sqrt(1.0 - keep * keep)
    gust = np.empty(times_s.size, dtype=np.float64)
    gust[0] = rng.standard_normal()
    for k in range(1, times_s.size):
        gust[k] = keep * gust[k - 1] + shocks[k]
    factor = np.exp(variability * gust - 0.5 * variability * variability)
    return total * factor


def pond_depths_cm(
    streets: Sequence[StreetModel], rain: Floats, stage: Floats, step_s: float
) -> Floats:
    """Water depth at each street's lowest point over time, shape (time, street), never < 0.

    Rates are in cm of water on the street per second: rain over the catchment concentrates
    in the low street (catchment = contributing area / ponding area), and the drains' capacity
    is stated in mm/h over the same catchment.
    """
    ground = np.array([s.ground_cm for s in streets], dtype=np.float64)
    outlet = np.array([s.outlet_cm for s in streets], dtype=np.float64)
    head = np.array([s.head_cm for s in streets], dtype=np.float64)
    backflow = np.array([s.backflow for s in streets], dtype=np.float64)
    per_mm_h = 1.0 / 36_000.0  # mm/h -> cm/s
    rain_gain = np.array(
        [s.runoff * s.catchment * s.rain_factor * per_mm_h for s in streets], dtype=np.float64
    )
    capacity = np.array([s.catchment * s.drain_mm_h * per_mm_h for s in streets])
    # The outflow's slope (capacity / head) bounds a stable explicit step.
    fastest = float(np.max(capacity / head)) if streets else 0.0
    substeps = max(1, math.ceil(fastest * step_s / MAX_STEP_FRACTION))
    dt = step_s / substeps

    depths = np.zeros((rain.size, len(streets)), dtype=np.float64)
    depth = np.zeros(len(streets), dtype=np.float64)
    for k in range(1, rain.size):
        inflow = rain_gain * rain[k - 1]
        tail = np.maximum(stage[k - 1], outlet)
        for _ in range(substeps):
            drive = (ground + depth - tail) / head
            flow = capacity * np.where(
                drive >= 0.0, np.minimum(drive, 1.0), backflow * np.maximum(drive, -1.0)
            )
            depth = np.maximum(depth + dt * (inflow - flow), 0.0)
        depths[k] = depth
    return depths


def simulate_world(scenario: Scenario, seed: int) -> World:
    """The true river stage, rain and street depths of a scenario, on its time grid."""
    steps = math.floor(scenario.duration_s / scenario.step_s) + 1
    times = scenario.start_s + scenario.step_s * np.arange(steps, dtype=np.float64)
    stage = tide_stage_cm(scenario.tide, times)
    rng = np.random.default_rng([seed, 1])
    rain = rain_mm_h(scenario.storms, times, scenario.rain_variability, rng)
    streets = tuple(scenario.streets.values())
    depth = pond_depths_cm(streets, rain, stage, scenario.step_s)
    return World(
        times_s=times,
        stage_cm=stage,
        rain_mm_h=rain,
        depth_cm=depth,
        streets=tuple(s.name for s in streets),
    )
