"""`plot`: a PNG of a scenario before it runs: river stage, rain, and depth on each street.

matplotlib is imported here only, so the other commands run without it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from floodwatch.contract import STREET_LEVEL_NAMES
from floodwatch.registry import STREET_THRESHOLDS_CM, TIDE_THRESHOLDS_CM
from simulators.physics import World
from simulators.scenario import Scenario
from simulators.sensors import CLOCK_SKEW, Reports, sensor_offsets_cm, true_depth_cm

HCMC = timezone(timedelta(hours=7))
STREET_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown")
LEVEL_NAMES = STREET_LEVEL_NAMES[1:]  # the rungs above `normal`
# The chart labels the tide alarms as the Phu An gauge's own names (CONTRACT: alarm_1..3).
ALARM_NAMES = ("alarm I", "alarm II", "alarm III")


def plot_scenario(
    scenario: Scenario, seed: int, world: World, reports: Reports, path: Path
) -> None:
    """Draw the scenario's true water and its sensors' readings into a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    def when(times_s: np.ndarray) -> list[datetime]:
        return [datetime.fromtimestamp(float(t), UTC).astimezone(HCMC) for t in times_s]

    figure, (river, rain, streets) = plt.subplots(
        3, 1, figsize=(12, 9), sharex=True, height_ratios=(1.2, 0.7, 1.6)
    )
    grid = when(world.times_s)
    figure.suptitle(f"{scenario.name}: {scenario.title}\nseed {seed}", fontsize=11)

    river.plot(grid, world.stage_cm / 100.0, color="navy", label="Saigon river at Phu An")
    for level, name in zip(TIDE_THRESHOLDS_CM, ALARM_NAMES, strict=True):
        river.axhline(level / 100.0, color="crimson", lw=0.8, ls=":")
        river.text(grid[-1], level / 100.0, f"{name} ", color="crimson", fontsize=7, ha="right")
    for index, name in enumerate(world.streets):
        ground = scenario.streets[name].ground_cm / 100.0
        colour = STREET_COLOURS[index % len(STREET_COLOURS)]
        river.axhline(ground, color=colour, lw=0.8, ls="--", label=f"{name} road level")
    river.set_ylabel("stage (m)")
    river.legend(loc="lower left", fontsize=7, ncol=2)
    river.grid(alpha=0.3)

    step_h = scenario.step_s / 3600.0
    rain.fill_between(grid, world.rain_mm_h, step="mid", color="steelblue", alpha=0.7)
    total = float(np.sum(world.rain_mm_h)) * step_h
    rain.set_ylabel("rain (mm/h)")
    rain.text(0.01, 0.8, f"{total:.0f} mm in all", transform=rain.transAxes, fontsize=8)
    rain.grid(alpha=0.3)

    offsets = sensor_offsets_cm(scenario, reports.sensors, seed)
    top = max(60.0, float(np.max(world.depth_cm, initial=0.0)) * 1.15)
    odd_times: list[datetime] = []
    odd_depths: list[float] = []
    for index, name in enumerate(world.streets):
        colour = STREET_COLOURS[index % len(STREET_COLOURS)]
        streets.plot(grid, world.depth_cm[:, index], color=colour, lw=2, label=f"{name}")
        for s, sensor in enumerate(reports.sensors):
            if sensor.street_en != name:
                continue
            depth = true_depth_cm(world, sensor, float(offsets[s]), world.times_s)
            streets.plot(grid, depth, color=colour, lw=0.5, alpha=0.6)
            rows = np.flatnonzero(reports.of(s) & reports.published)
            # A skewed clock does not change the value: only value artefacts get a cross.
            odd = (reports.artefact[rows] & ~np.uint8(CLOCK_SKEW)) != 0
            streets.scatter(
                when(reports.time_s[rows[~odd]]),
                reports.depth_cm[rows[~odd]],
                s=2,
                color=colour,
                alpha=0.4,
            )
            odd_times += when(reports.time_s[rows[odd]])
            odd_depths += reports.depth_cm[rows[odd]].tolist()
    if odd_times:
        shown = np.minimum(np.array(odd_depths), top * 0.97)
        streets.scatter(odd_times, shown, s=16, marker="x", color="red", label="artefact readings")
        if max(odd_depths) > top:
            streets.text(
                0.01,
                0.93,
                f"crosses at the top are off scale (up to {max(odd_depths):.0f} cm)",
                transform=streets.transAxes,
                fontsize=7,
                color="red",
            )
    if scenario.faults:
        lines = [
            f"{f.sensor_id} {f.kind} {_clock(f.start_s)}"
            + (
                ""
                if f.kind == "spike"
                else "-end"
                if f.end_s >= scenario.end_s
                else f"-{_clock(f.end_s)}"
            )
            for f in scenario.faults
        ]
        streets.text(
            0.01,
            0.86,
            "faults:\n" + "\n".join(lines),
            transform=streets.transAxes,
            fontsize=7,
            va="top",
            family="monospace",
        )
    for level, name in zip(STREET_THRESHOLDS_CM, LEVEL_NAMES, strict=True):
        streets.axhline(level, color="crimson", lw=0.8, ls=":")
        streets.text(
            grid[-1], level, f"{name} ", color="crimson", fontsize=7, ha="right", va="bottom"
        )
    streets.set_ylabel("depth on the road (cm)")
    streets.set_ylim(-2, top)
    streets.legend(loc="upper center", fontsize=7, ncol=2)
    streets.grid(alpha=0.3)
    streets.xaxis.set_major_formatter(mdates.DateFormatter("%d %b %H:%M", tz=HCMC))  # type: ignore[no-untyped-call]
    streets.set_xlabel("Ho Chi Minh City time (+07:00)")
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _clock(time_s: float) -> str:
    return datetime.fromtimestamp(time_s, UTC).astimezone(HCMC).strftime("%H:%M")
