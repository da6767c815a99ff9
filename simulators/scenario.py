"""Scenario files: what the river, the sky, the streets and the sensors do, read from TOML.

A scenario is a frozen value built once from a file and checked there; every mistake raises
ScenarioError with the file, the entry and the fix in one sentence. Times inside a scenario
are epoch seconds; in the file they are TOML date-times with an offset, or offsets from the
scenario's start such as "90m" or "1d2h30m". The file format is documented in
scenarios/README.md.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Literal

from floodwatch.contract import MAX_ITEMS
from floodwatch.errors import FloodwatchError
from floodwatch.registry import Registry, Sensor

# Shipped scenarios live in scenarios/ at the project root; FLOODWATCH_SCENARIOS points
# elsewhere (an installed package, or a container, has no project root).
SHIPPED_SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
SCENARIOS_ENV = "FLOODWATCH_SCENARIOS"

StormShape = Literal["bell", "block", "burst"]
FaultKind = Literal["spike", "vehicle", "stuck", "dropout", "outage", "battery", "clock_skew"]
FAULT_KINDS: tuple[FaultKind, ...] = (
    "spike",
    "vehicle",
    "stuck",
    "dropout",
    "outage",
    "battery",
    "clock_skew",
)
STORM_SHAPES: tuple[StormShape, ...] = ("bell", "block", "burst")

# Backfill arrays hold at most this many readings (CONTRACT section 2).
MAX_ARRAY = MAX_ITEMS


class ScenarioError(FloodwatchError):
    """A scenario file is missing or wrong; the message names the entry and the fix."""


@dataclass(frozen=True, slots=True)
class Constituent:
    """One harmonic constituent of the tide at the gauge: amplitude and local phase lag."""

    name: str
    amplitude_cm: float
    phase_deg: float


@dataclass(frozen=True, slots=True)
class Tide:
    """The river stage: a mean level plus harmonic constituents."""

    mean_cm: float
    constituents: tuple[Constituent, ...]


@dataclass(frozen=True, slots=True)
class Storm:
    """One burst of rain over the ward."""

    start_s: float  # epoch seconds
    duration_s: float
    peak_mm_h: float
    shape: StormShape


@dataclass(frozen=True, slots=True)
class StreetModel:
    """One street as a pond at its lowest point, filled by rain and the river, emptied by drains.

    Elevations are in cm above the datum of the tide gauge (the river stage's zero).
    """

    name: str
    ground_cm: float  # road surface at the street's lowest point
    outlet_cm: float  # where its drains discharge into the river
    drain_mm_h: float  # rain over the catchment that free-flowing drains carry away
    catchment: float  # contributing area / ponding area: rain concentrates in low streets
    runoff: float  # fraction of rain that runs off into the street
    backflow: float  # 0: tide gates hold the river out; 1: drains run freely backwards
    head_cm: float  # head across the drains at which they carry their full capacity
    sensor_spread_cm: float  # sensors sit up to this much above the lowest point
    rain_factor: float  # local rain relative to the ward's


@dataclass(frozen=True, slots=True)
class Fault:
    """A sensor artefact or failure over a time span (one reading for a spike)."""

    sensor_id: str
    kind: FaultKind
    start_s: float
    end_s: float
    magnitude_cm: float = 0.0  # spike: added depth; vehicle: height of the vehicle's top
    loss: float = 1.0  # dropout: probability that each reading is lost
    buffer: int = 1440  # outage: readings the sensor keeps; older ones are overwritten
    rate_v_h: float = 0.0  # battery: extra drain in volts per hour
    cutoff_v: float = 3.0  # battery: the sensor stops below this voltage
    skew_s: float = 0.0  # clock_skew: offset of the sensor's clock at the start
    drift_s_h: float = 0.0  # clock_skew: seconds gained per hour after the start


@dataclass(frozen=True, slots=True)
class Scenario:
    """Everything a run needs besides the sensor registry and the seed."""

    name: str
    source: str
    title: str
    description: str
    start_s: float
    duration_s: float
    seed: int
    step_s: float
    tide: Tide
    storms: tuple[Storm, ...]
    rain_variability: float
    streets: Mapping[str, StreetModel]
    noise_cm: float
    loss: float
    interval_s: float | None  # None: each sensor's registry interval
    sensor_offsets_cm: Mapping[str, float]
    faults: tuple[Fault, ...]

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


# Phu An on the Saigon river: a mixed, mainly semidiurnal tide. Amplitudes in cm and local
# phase lags in degrees, chosen so that spring highs fall in the early morning and early
# evening in the flood season and reach 1.4-1.7 m with the season's raised mean level.
DEFAULT_CONSTITUENTS: tuple[Constituent, ...] = (
    Constituent("M2", 82.0, 300.0),
    Constituent("S2", 34.0, 335.0),
    Constituent("N2", 16.0, 275.0),
    Constituent("K2", 9.0, 335.0),
    Constituent("K1", 50.0, 240.0),
    Constituent("O1", 37.0, 190.0),
    Constituent("P1", 16.0, 240.0),
    Constituent("M4", 6.0, 300.0),
)

_OFFSET = re.compile(
    r"(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?"
)
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


def scenario_dir() -> Path:
    """Where shipped scenarios are looked up by name."""
    configured = os.environ.get(SCENARIOS_ENV)
    return Path(configured) if configured else SHIPPED_SCENARIOS


def shipped_scenarios(directory: Path | None = None) -> list[Path]:
    """The scenario files of the scenario directory, sorted by name."""
    folder = scenario_dir() if directory is None else directory
    return sorted(folder.glob("*.toml"))


def find_scenario(name_or_path: str, directory: Path | None = None) -> Path:
    """A scenario's file from its name (`october-storm`) or a path to a .toml file."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or os.sep in name_or_path:
        if candidate.is_file():
            return candidate
        raise ScenarioError(f"scenario file {name_or_path} does not exist; check the path.")
    folder = scenario_dir() if directory is None else directory
    path = folder / f"{name_or_path}.toml"
    if path.is_file():
        return path
    known = ", ".join(p.stem for p in shipped_scenarios(folder)) or "none"
    raise ScenarioError(
        f"no scenario named {name_or_path!r} in {folder} (known: {known}); "
        "give a shipped name, a path to a .toml file, or set "
        f"{SCENARIOS_ENV} to the scenario folder."
    )


def load_scenario(path: Path) -> Scenario:
    """Read and check a scenario file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read the scenario ({exc.strerror or exc}).") from exc
    return parse_scenario(text, name=path.stem, source=str(path))


def parse_scenario(text: str, *, name: str, source: str = "<scenario>") -> Scenario:
    """Build a Scenario from TOML text; raise ScenarioError naming the entry and the fix."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML ({exc}); fix the syntax.") from exc
    return _Reader(source).scenario(doc, name)


def check_against_registry(scenario: Scenario, registry: Registry) -> None:
    """Every street sensor's street has a model, and every named sensor exists."""
    for sensor in registry.sensors.values():
        if sensor.kind == "street" and sensor.street_en not in scenario.streets:
            raise ScenarioError(
                f"{scenario.source}: sensor {sensor.id!r} is on street {sensor.street_en!r}, "
                f'which the scenario does not model; add a [streets."{sensor.street_en}"] table.'
            )
    named = [f.sensor_id for f in scenario.faults] + list(scenario.sensor_offsets_cm)
    for sensor_id in named:
        if sensor_id not in registry.sensors:
            raise ScenarioError(
                f"{scenario.source}: sensor {sensor_id!r} is not in the registry "
                f"{registry.source}; use an id from it."
            )
    for fault in scenario.faults:
        sensor = registry.sensors[fault.sensor_id]
        if fault.kind == "vehicle" and sensor.sends != "distance_mm":
            raise ScenarioError(
                f"{scenario.source}: a vehicle fault needs a downward-looking distance sensor, "
                f"and {sensor.id!r} sends level_cm; pick a sensor that sends distance_mm."
            )
        if fault.kind == "vehicle" and sensor.kind != "street":
            raise ScenarioError(
                f"{scenario.source}: a vehicle cannot park under the river gauge {sensor.id!r}."
            )


def parse_offset(value: str) -> float:
    """Seconds in an offset such as "90m", "1d2h" or "45s"; ValueError if it is not one."""
    match = _OFFSET.fullmatch(value.strip())
    if not value.strip() or match is None or not any(match.groups()):
        raise ValueError(value)
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return ((days * 24.0 + hours) * 60.0 + minutes) * 60.0 + seconds


def sensor_interval_s(scenario: Scenario, sensor: Sensor) -> float:
    """How often the sensor reports in this scenario."""
    return scenario.interval_s if scenario.interval_s is not None else sensor.interval_s


class _Reader:
    """Turns the TOML document into values, one table at a time, naming what is wrong."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.start_s = 0.0

    def fail(self, where: str, problem: str) -> ScenarioError:
        return ScenarioError(f"{self.source}: {where}: {problem}")

    def scenario(self, doc: dict[str, object], name: str) -> Scenario:
        self.keys(
            "the top level",
            doc,
            {
                "title",
                "description",
                "start",
                "duration",
                "seed",
                "step",
                "tide",
                "storm",
                "rain",
                "streets",
                "sensors",
                "fault",
            },
        )
        if _NAME.fullmatch(name) is None:
            raise self.fail(
                "file name",
                f"{name!r} is not a scenario name; name the file with lowercase letters, "
                "digits, '-' and '_' (e.g. october-storm.toml).",
            )
        title = self.text("title", doc.get("title"))
        description = str(doc.get("description", "")).strip()
        start = doc.get("start")
        if not isinstance(start, datetime) or start.tzinfo is None:
            raise self.fail(
                "start",
                f"{start!r} is not a date-time with an offset; write e.g. "
                "start = 2026-10-09T12:00:00+07:00",
            )
        self.start_s = start.timestamp()
        duration_s = self.duration("duration", doc.get("duration"))
        seed = doc.get("seed", 1)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise self.fail("seed", f"{seed!r} must be a whole number of 0 or more.")
        step_s = self.duration("step", doc.get("step", "30s"))
        if step_s > 300.0:
            raise self.fail("step", 'the model step must be 5 minutes or less, e.g. "30s".')
        tide = self.tide(self.table("[tide]", doc.get("tide", {})))
        storms = tuple(
            self.storm(f"[[storm]] {i + 1}", self.table(f"[[storm]] {i + 1}", raw))
            for i, raw in enumerate(self.array("[[storm]]", doc.get("storm", [])))
        )
        rain = self.table("[rain]", doc.get("rain", {}))
        self.keys("[rain]", rain, {"variability"})
        variability = self.number("[rain] variability", rain.get("variability", 0.0), 0.0, 2.0)
        streets_doc = self.table("[streets]", doc.get("streets", {}))
        streets = {
            street: self.street(street, self.table(f'[streets."{street}"]', raw))
            for street, raw in streets_doc.items()
        }
        sensors = self.table("[sensors]", doc.get("sensors", {}))
        self.keys("[sensors]", sensors, {"noise_cm", "loss", "interval", "offsets_cm"})
        interval = sensors.get("interval")
        offsets = self.table("[sensors] offsets_cm", sensors.get("offsets_cm", {}))
        faults = tuple(
            self.fault(f"[[fault]] {i + 1}", self.table(f"[[fault]] {i + 1}", raw), duration_s)
            for i, raw in enumerate(self.array("[[fault]]", doc.get("fault", [])))
        )
        return Scenario(
            name=name,
            source=self.source,
            title=title,
            description=description,
            start_s=self.start_s,
            duration_s=duration_s,
            seed=seed,
            step_s=step_s,
            tide=tide,
            storms=storms,
            rain_variability=variability,
            streets=streets,
            noise_cm=self.number("[sensors] noise_cm", sensors.get("noise_cm", 1.0), 0.0, 20.0),
            loss=self.number("[sensors] loss", sensors.get("loss", 0.0), 0.0, 0.5),
            interval_s=None if interval is None else self.duration("[sensors] interval", interval),
            sensor_offsets_cm={
                str(k): self.number(f"[sensors] offsets_cm.{k}", v, 0.0, 100.0)
                for k, v in offsets.items()
            },
            faults=faults,
        )

    def tide(self, doc: dict[str, object]) -> Tide:
        self.keys("[tide]", doc, {"mean_cm", "constituents"})
        mean = self.number("[tide] mean_cm", doc.get("mean_cm", 0.0), -300.0, 300.0)
        overrides = self.table("[tide] constituents", doc.get("constituents", {}))
        known = {c.name: c for c in DEFAULT_CONSTITUENTS}
        for key, value in overrides.items():
            where = f"[tide] constituents.{key}"
            if key not in known:
                raise self.fail(where, f"unknown constituent; use one of {', '.join(known)}.")
            if (
                not isinstance(value, list)
                or len(value) != 2
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            ):
                raise self.fail(where, "write [amplitude_cm, phase_deg], e.g. [82, 300].")
            amplitude = self.number(where, value[0], 0.0, 500.0)
            known[key] = Constituent(key, amplitude, float(value[1]) % 360.0)
        return Tide(mean_cm=mean, constituents=tuple(known.values()))

    def storm(self, where: str, doc: dict[str, object]) -> Storm:
        self.keys(where, doc, {"start", "duration", "peak_mm_h", "shape"})
        shape = doc.get("shape", "bell")
        if shape not in STORM_SHAPES:
            raise self.fail(where, f"shape {shape!r} is not one of {', '.join(STORM_SHAPES)}.")
        return Storm(
            start_s=self.moment(f"{where} start", doc.get("start")),
            duration_s=self.duration(f"{where} duration", doc.get("duration")),
            peak_mm_h=self.number(f"{where} peak_mm_h", doc.get("peak_mm_h"), 0.0, 400.0),
            shape="bell" if shape == "bell" else "block" if shape == "block" else "burst",
        )

    def street(self, name: str, doc: dict[str, object]) -> StreetModel:
        where = f'[streets."{name}"]'
        self.keys(
            where,
            doc,
            {
                "ground_cm",
                "outlet_cm",
                "drain_mm_h",
                "catchment",
                "runoff",
                "backflow",
                "head_cm",
                "sensor_spread_cm",
                "rain_factor",
            },
        )
        ground = self.number(f"{where} ground_cm", doc.get("ground_cm"), -200.0, 500.0)
        outlet = self.number(f"{where} outlet_cm", doc.get("outlet_cm"), -500.0, 500.0)
        if outlet > ground:
            raise self.fail(
                where, "outlet_cm is above ground_cm; drains run downhill to the river."
            )
        return StreetModel(
            name=name,
            ground_cm=ground,
            outlet_cm=outlet,
            drain_mm_h=self.number(f"{where} drain_mm_h", doc.get("drain_mm_h"), 0.0, 500.0),
            catchment=self.number(f"{where} catchment", doc.get("catchment", 1.0), 1.0, 100.0),
            runoff=self.number(f"{where} runoff", doc.get("runoff", 0.85), 0.0, 1.0),
            backflow=self.number(f"{where} backflow", doc.get("backflow", 0.5), 0.0, 1.0),
            head_cm=self.number(f"{where} head_cm", doc.get("head_cm", 30.0), 1.0, 500.0),
            sensor_spread_cm=self.number(
                f"{where} sensor_spread_cm", doc.get("sensor_spread_cm", 5.0), 0.0, 100.0
            ),
            rain_factor=self.number(f"{where} rain_factor", doc.get("rain_factor", 1.0), 0.0, 5.0),
        )

    def fault(self, where: str, doc: dict[str, object], duration_s: float) -> Fault:
        kind = doc.get("kind")
        if kind not in FAULT_KINDS:
            raise self.fail(where, f"kind {kind!r} is not one of {', '.join(FAULT_KINDS)}.")
        allowed = {
            "spike": {"magnitude_cm"},
            "vehicle": {"end", "height_cm"},
            "stuck": {"end"},
            "dropout": {"end", "loss"},
            "outage": {"end", "buffer"},
            "battery": {"end", "rate_v_h", "cutoff_v"},
            "clock_skew": {"end", "skew", "drift_s_h"},
        }[kind]
        self.keys(f"{where} ({kind})", doc, {"sensor", "kind", "start"} | allowed)
        sensor = doc.get("sensor")
        if not isinstance(sensor, str) or not sensor:
            raise self.fail(where, 'name the sensor, e.g. sensor = "qh-03".')
        start = self.moment(f"{where} start", doc.get("start"))
        end = start if kind == "spike" else self.start_s + duration_s
        if "end" in doc:
            end = self.moment(f"{where} end", doc["end"])
        if end < start:
            raise self.fail(where, "end is before start; swap them.")
        fault = Fault(sensor_id=sensor, kind=kind, start_s=start, end_s=end)
        if kind == "spike":
            magnitude = self.number(
                f"{where} magnitude_cm", doc.get("magnitude_cm", 40.0), -50, 250
            )
            return replace(fault, magnitude_cm=magnitude)
        if kind == "vehicle":
            height = self.number(f"{where} height_cm", doc.get("height_cm", 140.0), 5.0, 250.0)
            return replace(fault, magnitude_cm=height)
        if kind == "dropout":
            return replace(fault, loss=self.number(f"{where} loss", doc.get("loss", 1.0), 0, 1))
        if kind == "outage":
            size = doc.get("buffer", 1440)
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise self.fail(where, f"buffer {size!r} must be a whole number of readings.")
            return replace(fault, buffer=size)
        if kind == "battery":
            rate = self.number(f"{where} rate_v_h", doc.get("rate_v_h", 0.2), 0.0, 10.0)
            cutoff = self.number(f"{where} cutoff_v", doc.get("cutoff_v", 3.0), 0.0, 5.0)
            return replace(fault, rate_v_h=rate, cutoff_v=cutoff)
        if kind == "clock_skew":
            skew = self.signed_duration(f"{where} skew", doc.get("skew", "0s"))
            drift = self.number(f"{where} drift_s_h", doc.get("drift_s_h", 0.0), -600.0, 600.0)
            return replace(fault, skew_s=skew, drift_s_h=drift)
        return fault

    # -- small readers ------------------------------------------------------------------

    def keys(self, where: str, doc: Mapping[str, object], allowed: set[str]) -> None:
        unknown = sorted(set(doc) - allowed)
        if unknown:
            raise self.fail(
                where,
                f"unknown key {unknown[0]!r}; the known keys are {', '.join(sorted(allowed))}.",
            )

    def table(self, where: str, value: object) -> dict[str, object]:
        if not isinstance(value, dict):
            raise self.fail(where, "must be a table.")
        return value

    def array(self, where: str, value: object) -> list[object]:
        if not isinstance(value, list):
            raise self.fail(where, "must be an array of tables, written [[...]].")
        return value

    def text(self, where: str, value: object) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, "is missing or empty; give it a short text.")
        return value.strip()

    def number(self, where: str, value: object, low: float, high: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(where, f"{value!r} is not a number; give one from {low:g} to {high:g}.")
        number = float(value)
        if not (math.isfinite(number) and low <= number <= high):
            raise self.fail(where, f"{value!r} is outside {low:g} to {high:g}.")
        return number

    def duration(self, where: str, value: object) -> float:
        seconds = self.signed_duration(where, value)
        if seconds <= 0:
            raise self.fail(where, f"{value!r} must be a duration above zero.")
        return seconds

    def signed_duration(self, where: str, value: object) -> float:
        if isinstance(value, str):
            text = value.strip()
            sign = -1.0 if text.startswith("-") else 1.0
            try:
                return sign * parse_offset(text.lstrip("+-"))
            except ValueError:
                pass
        raise self.fail(
            where, f'{value!r} is not a duration; write it like "90m", "6h30m" or "45s".'
        )

    def moment(self, where: str, value: object) -> float:
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise self.fail(where, "a date-time needs an offset, e.g. +07:00.")
            return value.timestamp()
        if isinstance(value, str):
            try:
                return self.start_s + parse_offset(value)
            except ValueError:
                pass
        raise self.fail(
            where,
            f'{value!r} is neither an offset from the start ("5h30m") nor a date-time '
            "with an offset.",
        )
