"""`python -m simulators`: the command line of the simulators (see the package docstring)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import numpy as np
import orjson

from floodwatch.contract import MAX_FUTURE_NS
from floodwatch.errors import FloodwatchError, SettingsError
from floodwatch.registry import Sensor, load_registry
from floodwatch.settings import (
    COMMON_OPTIONS,
    MQTT_V311,
    SENSOR_CREDENTIALS,
    add_options,
    configure_logging,
    env_name,
    option,
    real_number,
    settings_from_args,
    whole_number,
)
from simulators.live import DESCRIPTION as LIVE_DESCRIPTION
from simulators.live import SIMULATOR_OPTIONS, run_live, select_sensors
from simulators.load import LOAD_MODES, LoadMode, LoadPlan, auto_processes, load_registry_geojson
from simulators.messages import (
    TIMESTAMP_MODES,
    TimeMap,
    TimestampMode,
    build_messages,
    iso_time,
    time_map,
)
from simulators.physics import World, simulate_world
from simulators.progress import Progress
from simulators.publish import STACK_ADVICE, Devices, broker_problem, play
from simulators.replay import parse_recording, recording_csv, replay_messages
from simulators.scenario import (
    MAX_ARRAY,
    SCENARIOS_ENV,
    Scenario,
    check_against_registry,
    find_scenario,
    load_scenario,
    scenario_dir,
    shipped_scenarios,
)
from simulators.sensors import Reports, StatusEvent, report
from simulators.truth import ground_truth

log = logging.getLogger("simulators")

# Ingest refuses readings stamped more than this far after their arrival.
MAX_FUTURE_S = MAX_FUTURE_NS / 1e9

OVERVIEW = """\
Simulated flood sensors for An Khanh ward: the Saigon river's tide at Phu An, storms, drains
that back up, and sensors that misbehave the way field sensors do. Readings go to the MQTT
broker on {root}/v1/sensors/{id}/reading in the JSON of CONTRACT section 2.

commands:
  run SCENARIO    publish a scenario (real time, accelerated, or as fast as possible)
  truth SCENARIO  write a scenario's ground truth (floods per sensor, artefact readings)
  plot SCENARIO   draw a scenario's river, rain and street depths into a PNG
  list            the shipped scenarios
  replay FILE     publish recorded readings from a CSV file
  load            many virtual sensors at a set rate, for benchmarks
  live            the first, periodic-shower simulator (also what runs with no command)

examples:
  python -m simulators list
  python -m simulators plot october-storm
  python -m simulators run october-storm --speed 1440     # 24 hours in a minute
  python -m simulators run demo --speed 60 --timestamps wall --loop
  python -m simulators load --sensors 1000 --rate 50000

`python -m simulators COMMAND --help` explains each command. With no command,
`python -m simulators [options]` runs `live`, so `python -m simulators --interval 2
--speed 60` works as it always did.
"""

RUN_DESCRIPTION = """\
Publish a scenario: every sensor's readings (and its online/offline status) as the scenario's
sensors report them, including their faults: spikes, parked vehicles, stuck values, lost
readings, dying batteries, skewed clocks, and outages after which buffered readings arrive
as arrays. SCENARIO is a shipped name (`python -m simulators list`) or a path to a .toml file.

Pacing (--speed): 1 plays the scenario in real time, 1440 plays 24 hours in a minute, 0 as
fast as the broker accepts. A one-line progress bar shows on a terminal (not with --quiet).

Timestamps (--timestamps), since ingest refuses readings stamped more than 5 minutes ahead:
  original  the scenario's own dates (in the past), so stored series match its ground truth
  recent    moved by whole days to end just before the run starts (same hours of the day)
  wall      the wall-clock time each reading is due: the water runs --speed times faster
            than the clock while timestamps stay live (for demos; with --loop it repeats)

--truth FILE writes the ground truth with the times as this run stamps them."""

TRUTH_DESCRIPTION = """\
Compute a scenario's ground truth without publishing anything, as JSON (format
floodwatch-truth/1, described in `python -c "import simulators; help(simulators)"`): each
sensor's flood episodes (start, end, peak and level reached), the readings that are
artefacts, its faults, silences and battery; the river's and each street's peak. Times are
the scenario's own. The shipped scenarios have theirs next to them, as NAME.truth.json.

--readings FILE.csv also writes every published reading (the format `replay` reads), with
its artefact kinds, when it was sent and the true depth."""

PLOT_DESCRIPTION = """\
Draw a scenario into a PNG before running it: the river stage at Phu An against the alarm
levels and each street's road level, the rain, and the depth on each street (its lowest
point thick, each sensor thin, published readings as dots, artefacts as red crosses)."""

LIST_DESCRIPTION = f"""\
List the scenarios in the scenario folder (scenarios/ in the project, or ${SCENARIOS_ENV})."""

REPLAY_DESCRIPTION = """\
Publish recorded readings from a CSV file with a header row: sensor, ts (ISO 8601 with an
offset, or epoch milliseconds), level_cm or distance_mm, and optionally battery_v, rssi and
seq; other columns are ignored (so `truth --readings` output replays as is). Comma- or
semicolon-separated (Excel's "CSV UTF-8" and Vietnamese Excel's `;` with decimal commas both
work). Every row is checked first by ingest's own decoder: if any would be refused (a depth
outside the physical range, an unknown sensor, a bad time...), each is listed with its line
number and reason, nothing is sent and the exit status is 2.

--speed paces by the recorded timestamps (0, the default: as fast as the broker accepts);
--timestamps as for `run`; --batch N sends each sensor's readings in arrays of up to N."""

LOAD_DESCRIPTION = """\
Publish readings from N virtual sensors (ids load-00000...) at a target rate for a while,
from several processes when one cannot keep up (--processes 0 picks enough, one per CPU at
most), each with one MQTT connection and unlimited QoS 1 messages in flight. Prints what the
broker acknowledged: readings/s and messages/s, from the first publish to the last PUBACK.
Publishes the broker refused (a PUBACK reason code of 0x80 or more, e.g. 0x87 Not authorized
when the login may not publish there) are counted and reported as refused, and exit 1; over
--mqtt-protocol 3.1.1 a refusal cannot be seen (the broker acknowledges or drops it silently).
--mode array sends --batch readings per message (backfill shape); --mode single one each.
--write-registry FILE writes a registry of the virtual sensors, for an ingest that should
accept them (python -m ingest --registry FILE)."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """A scenario ready to publish, plot or judge."""

    scenario: Scenario
    seed: int
    sensors: tuple[Sensor, ...]
    world: World
    reports: Reports
    events: tuple[StatusEvent, ...]


# `truth` and `plot` publish nothing: of the shared options they need only these.
OFFLINE_OPTIONS = tuple(opt for opt in COMMON_OPTIONS if opt.flag in ("--registry", "--log-level"))
# The simulators publish to the broker and never touch InfluxDB: --help lists no InfluxDB option.
_INFLUX_FLAGS = ("--influx-url", "--influx-db")
PUBLISH_OPTIONS = tuple(opt for opt in COMMON_OPTIONS if opt.flag not in _INFLUX_FLAGS)
# The shared settings still hold InfluxDB's; the publishing commands give them the defaults.
INFLUX_DEFAULTS = {
    opt.flag.removeprefix("--").replace("-", "_"): opt.default
    for opt in COMMON_OPTIONS
    if opt.flag in _INFLUX_FLAGS
}
SEED = option("--seed", "", "seed of the sensor noise, faults and rain gusts (empty: the file's)")
SENSORS = option("--sensors", "", "comma-separated sensor ids to simulate (empty: every sensor)")
SPEED_RUN = option(
    "--speed", "1", "scenario seconds per wall-clock second (0: as fast as possible)"
)
SPEED_REPLAY = option("--speed", "0", "recorded seconds per wall-clock second (0: at once)")
TIMESTAMPS = option(
    "--timestamps", "original", "which clock readings are stamped with: original, recent or wall"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulators",
        description=OVERVIEW,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(
        name: str, summary: str, description: str, handler: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=summary,
            description=description
            + "\n\nEvery option can also be set with the FLOODWATCH_* variable named in its help.",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler, **INFLUX_DEFAULTS)
        return sub

    run = command("run", "publish a scenario", RUN_DESCRIPTION, _run)
    run.add_argument("scenario", metavar="SCENARIO", help="a shipped scenario's name or a .toml")
    add_options(run, (*PUBLISH_OPTIONS, SENSOR_CREDENTIALS, SPEED_RUN, TIMESTAMPS, SEED, SENSORS))
    add_options(run, (option("--truth", "", "also write this run's ground truth to this file"),))
    run.add_argument("--loop", action="store_true", help="repeat until stopped (needs wall)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    truth = command("truth", "write a scenario's ground truth", TRUTH_DESCRIPTION, _truth)
    truth.add_argument("scenario", metavar="SCENARIO", help="a shipped scenario's name or a .toml")
    add_options(truth, (*OFFLINE_OPTIONS, SEED))
    truth.add_argument("-o", "--output", default="-", help="JSON file (default: standard output)")
    truth.add_argument("--readings", default="", help="also write the readings to this CSV file")

    plot = command("plot", "draw a scenario into a PNG", PLOT_DESCRIPTION, _plot)
    plot.add_argument("scenario", metavar="SCENARIO", help="a shipped scenario's name or a .toml")
    add_options(plot, (*OFFLINE_OPTIONS, SEED))
    plot.add_argument("-o", "--output", default="", help="PNG file (default: SCENARIO.png here)")

    command("list", "list the shipped scenarios", LIST_DESCRIPTION, _list)

    replay = command("replay", "publish readings from a CSV file", REPLAY_DESCRIPTION, _replay)
    replay.add_argument("file", metavar="FILE.csv", help="the recording")
    add_options(replay, (*PUBLISH_OPTIONS, SENSOR_CREDENTIALS, SPEED_REPLAY, TIMESTAMPS))
    add_options(replay, (option("--batch", "1", f"readings per message, 1 to {MAX_ARRAY}"),))
    replay.add_argument("--quiet", action="store_true", help="no progress bar")

    load = command("load", "benchmark load: N sensors at R readings/s", LOAD_DESCRIPTION, _load)
    add_options(
        load,
        (
            *PUBLISH_OPTIONS,
            option("--sensors", "100", "virtual sensors (ids load-00000 onwards)"),
            option("--rate", "50000", "target readings per second, all processes together"),
            option("--mode", "array", "array (--batch readings per message) or single"),
            option("--batch", "100", f"readings per array message, 1 to {MAX_ARRAY}"),
            option("--duration", "10", "seconds to publish for"),
            option("--processes", "0", "publisher processes (0: enough for the rate)"),
            option("--write-registry", "", "write a registry of the virtual sensors here"),
        ),
    )
    load.add_argument("--json", action="store_true", help="print the result as one JSON line")

    live = command("live", "the periodic-shower simulator", LIVE_DESCRIPTION, run_live)
    add_options(live, (*PUBLISH_OPTIONS, SENSOR_CREDENTIALS, *SIMULATOR_OPTIONS))
    # The bare command runs `live`, so its options belong in the top-level help too.
    live_options = live.format_help().partition("\noptions:\n")[2]
    parser.epilog = "options with no command (those of `live`):\n" + live_options
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    names = {"run", "truth", "plot", "list", "replay", "load", "live"}
    if not words or (words[0] not in names and words[0] not in ("-h", "--help")):
        words = ["live", *words]  # the first simulator's command line, unchanged
    args = parser.parse_args(words)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


# -- commands -----------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
        configure_logging(settings.log_level, "simulators")
        speed = real_number(args.speed, "--speed", positive=False)
        mode = _timestamps(args.timestamps)
        prepared = _prepare(args, settings.registry_path, _ids(args.sensors))
        scenario = prepared.scenario
        if args.loop and mode != "wall":
            raise SettingsError(
                "--loop repeats the scenario with live timestamps; add --timestamps wall "
                f"(or set {env_name('--timestamps')}=wall)."
            )
        began = time.time()
        try:
            timemap = time_map(mode, scenario.start_s, scenario.end_s, began, speed)
        except ValueError:
            raise SettingsError(
                "--timestamps wall maps scenario time onto the clock at --speed, "
                "so --speed must be above 0; fix --speed or --timestamps."
            ) from None
        if mode != "wall" and timemap.stamp_one(scenario.end_s) > began:
            raise SettingsError(
                f"scenario {scenario.name} ends at {iso_time(scenario.end_s)}, after now, and "
                "ingest refuses readings from the future; use --timestamps recent or wall."
            )
    except FloodwatchError as exc:
        print(f"simulators: {exc}", file=sys.stderr)
        return 2
    _warn_future(prepared.reports, timemap, speed, scenario.start_s, began)
    if args.truth:
        _write_truth(prepared, timemap, Path(args.truth))
    stop = _stop_on_signals()
    if settings.log_level != "DEBUG":
        # One "connected" line per simulated device would drown the start line.
        logging.getLogger("floodwatch.mqtt").setLevel(logging.WARNING)
    devices = Devices(settings, prepared.sensors)
    try:
        devices.start()
    except FloodwatchError as exc:
        print(f"simulators: {broker_problem(exc)}", file=sys.stderr)
        return 1
    reports = prepared.reports
    published = int(np.count_nonzero(reports.published))
    pace = "as fast as possible" if speed == 0 else f"at {speed:g}x"
    if speed > 0:
        pace += f" (about {_duration(scenario.duration_s / speed)})"
    log.info(
        "run %s (seed %d): %s of scenario from %s, %d sensors, %d readings, %s, "
        "%s timestamps%s on %s under %s",
        scenario.name,
        prepared.seed,
        _duration(scenario.duration_s),
        iso_time(scenario.start_s),
        len(prepared.sensors),
        published,
        pace,
        mode,
        "" if mode == "original" else f" (scenario start stamped {iso_time(timemap.to_s)})",
        settings.mqtt,
        devices.topics.base,
    )
    counts = np.bincount(reports.sensor, minlength=len(prepared.sensors)).astype(np.int64)
    progress = Progress(f"{scenario.name}", enabled=not args.quiet)
    messages = readings = 0
    status = 0
    loop_pass = 0
    try:
        while True:
            for index in range(len(prepared.sensors)):
                devices.status(index, online=True)
            pass_began = began + loop_pass * scenario.duration_s / speed if speed > 0 else began
            if loop_pass:
                timemap = TimeMap(scenario.start_s, pass_began, speed)
            played = play(
                build_messages(reports, prepared.events, timemap, counts * loop_pass),
                devices,
                start_s=scenario.start_s,
                duration_s=scenario.duration_s,
                speed=speed,
                began_wall_s=pass_began,
                stop=stop,
                progress=progress,
            )
            messages += played.messages
            readings += played.readings
            if not played.completed or not args.loop:
                break
            pass_end = pass_began + scenario.duration_s / speed
            if stop.wait(max(0.0, pass_end - time.time())):
                break
            loop_pass += 1
        progress.finish(f"{readings:,} readings")
        for index in range(len(prepared.sensors)):
            devices.status(index, online=False)
    except FloodwatchError as exc:
        log.error("publishing failed: %s", exc)
        status = 1
    unacknowledged = devices.drain()
    devices.stop()
    log.info(
        "stopped after %.1f s: published %d readings in %d messages from %d sensors%s",
        time.time() - began,
        readings,
        messages,
        len(prepared.sensors),
        f"; {unacknowledged} messages not acknowledged by the broker" if unacknowledged else "",
    )
    return status or _refusals(devices)


def _truth(args: argparse.Namespace) -> int:
    try:
        configure_logging(str(args.log_level).upper(), "simulators")
        prepared = _prepare(args, Path(args.registry), ())
    except FloodwatchError as exc:
        print(f"simulators: {exc}", file=sys.stderr)
        return 2
    timemap = TimeMap(prepared.scenario.start_s, prepared.scenario.start_s)
    if args.output == "-":
        sys.stdout.write(_truth_json(prepared, timemap).decode())
    else:
        _write_truth(prepared, timemap, Path(args.output))
    if args.readings:
        Path(args.readings).write_text(recording_csv(prepared.reports, timemap))
    return 0


def _plot(args: argparse.Namespace) -> int:
    try:
        configure_logging(str(args.log_level).upper(), "simulators")
        prepared = _prepare(args, Path(args.registry), ())
        from simulators.plot import plot_scenario
    except ImportError as exc:
        print(
            f"simulators: plotting needs matplotlib ({exc}); pip install matplotlib.",
            file=sys.stderr,
        )
        return 2
    except FloodwatchError as exc:
        print(f"simulators: {exc}", file=sys.stderr)
        return 2
    path = Path(args.output or f"{prepared.scenario.name}.png")
    plot_scenario(prepared.scenario, prepared.seed, prepared.world, prepared.reports, path)
    print(f"wrote {path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    folder = scenario_dir()
    files = shipped_scenarios(folder)
    if not files:
        print(f"no scenarios in {folder}", file=sys.stderr)
        return 1
    for path in files:
        try:
            scenario = load_scenario(path)
        except FloodwatchError as exc:
            print(f"{path.stem:<24} (invalid: {exc})")
            continue
        when = iso_time(scenario.start_s)[:16].replace("T", " ")
        length = _duration(scenario.duration_s)
        print(f"{scenario.name:<24} {length:>6}  from {when}  {scenario.title}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
        configure_logging(settings.log_level, "simulators")
        speed = real_number(args.speed, "--speed", positive=False)
        mode = _timestamps(args.timestamps)
        batch = whole_number(args.batch, "--batch", minimum=1, maximum=MAX_ARRAY)
        registry = load_registry(settings.registry_path)
        source = Path(args.file)
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError(f"cannot read {source}: {exc.strerror or exc}.") from exc
        recording = parse_recording(text, registry, str(source))
        began = time.time()
        try:
            timemap = time_map(mode, recording.start_s, recording.end_s, began, speed)
        except ValueError:
            raise SettingsError(
                "--timestamps wall needs --speed above 0; fix --speed or --timestamps."
            ) from None
        latest = timemap.stamp_one(recording.end_s)
        if mode != "wall" and latest > began + MAX_FUTURE_S:
            raise SettingsError(
                f"{source} holds readings up to {iso_time(recording.end_s)}, in the future; "
                "use --timestamps recent."
            )
    except FloodwatchError as exc:
        print(f"simulators: {exc}", file=sys.stderr)
        return 2
    stop = _stop_on_signals()
    logging.getLogger("floodwatch.mqtt").setLevel(logging.WARNING)
    devices = Devices(settings, recording.sensors, "replay")
    try:
        devices.start()
    except FloodwatchError as exc:
        print(f"simulators: {broker_problem(exc)}", file=sys.stderr)
        return 1
    messages = replay_messages(recording, timemap, batch)
    log.info(
        "replay %s: %d readings of %d sensors in %d messages, %s, %s timestamps",
        args.file,
        recording.time_s.size,
        len(recording.sensors),
        len(messages),
        "as fast as possible" if speed == 0 else f"at {speed:g}x",
        mode,
    )
    progress = Progress(source.name, enabled=not args.quiet)
    status = 0
    try:
        played = play(
            messages,
            devices,
            start_s=recording.start_s,
            duration_s=recording.end_s - recording.start_s,
            speed=speed,
            began_wall_s=began,
            stop=stop,
            progress=progress,
        )
        progress.finish(f"{played.readings:,} readings")
    except FloodwatchError as exc:
        log.error("publishing failed: %s", exc)
        played = None
        status = 1
    unacknowledged = devices.drain()
    devices.stop()
    if played is not None:
        log.info(
            "replayed %d readings in %d messages in %.1f s%s",
            played.readings,
            played.messages,
            time.time() - began,
            f"; {unacknowledged} not acknowledged by the broker" if unacknowledged else "",
        )
    return status or _refusals(devices)


def _load(args: argparse.Namespace) -> int:
    from simulators.load import run_load

    try:
        settings = settings_from_args(args)
        configure_logging(settings.log_level, "simulators")
        mode = str(args.mode)
        if mode not in LOAD_MODES:
            raise SettingsError(
                f"--mode {mode!r} must be array or single; fix --mode or {env_name('--mode')}."
            )
        load_mode: LoadMode = "array" if mode == "array" else "single"
        rate = real_number(args.rate, "--rate", positive=True)
        processes = whole_number(args.processes, "--processes", minimum=0, maximum=64)
        plan = LoadPlan(
            endpoint=settings.mqtt,
            topic_root=settings.topic_root,
            sensors=whole_number(args.sensors, "--sensors", minimum=1, maximum=99_999),
            rate=rate,
            mode=load_mode,
            batch=whole_number(args.batch, "--batch", minimum=1, maximum=MAX_ARRAY),
            duration_s=real_number(args.duration, "--duration", positive=True),
            processes=processes or auto_processes(load_mode, rate),
        )
    except FloodwatchError as exc:
        print(f"simulators: {exc}", file=sys.stderr)
        return 2
    if args.write_registry:
        Path(args.write_registry).write_bytes(load_registry_geojson(plan))
    log.info(
        "load: %d sensors, target %s readings/s as %s, %g s, %d process%s, on %s",
        plan.sensors,
        f"{plan.rate:,.0f}",
        "single readings" if plan.mode == "single" else f"arrays of {plan.batch}",
        plan.duration_s,
        plan.processes,
        "" if plan.processes == 1 else "es",
        settings.mqtt,
    )
    result = run_load(plan)
    for error in result.errors:
        log.error("%s", error)
    if any("did not accept" in error for error in result.errors):
        log.error("%s", STACK_ADVICE)
    if args.json:
        print(orjson.dumps(result.as_dict()).decode(), flush=True)
    else:
        target = "" if result.readings_per_s >= 0.98 * plan.rate else " (below the target)"
        refused = (
            f"; {result.refused_readings:,} readings in {result.refused_messages:,} messages "
            f"REFUSED by the broker ({result.refusal})"
            if result.refused_messages
            else "; refusals cannot be seen over MQTT 3.1.1"
            if settings.mqtt.protocol == MQTT_V311
            else ""
        )
        print(
            f"load: {result.readings:,} readings in {result.messages:,} messages acknowledged "
            f"in {result.elapsed_s:.2f} s: {result.readings_per_s:,.0f} readings/s, "
            f"{result.messages_per_s:,.0f} messages/s from {plan.processes} "
            f"process{'' if plan.processes == 1 else 'es'}; target {plan.rate:,.0f} "
            f"readings/s{target}{refused}",
            flush=True,
        )
    return 0 if result.readings and not result.errors else 1


# -- helpers --------------------------------------------------------------------------------


def _refusals(devices: Devices) -> int:
    """Exit status 1, said in one line, when the broker refused any publish (0x87...)."""
    refused, reason = devices.refused()
    if not refused:
        if not devices.refusals_visible():
            log.info(
                "over MQTT 3.1.1 the broker cannot say that it refused a publish: a message "
                "its ACL denies counts as sent here; look for refusals in the broker's log "
                "(NATS: Publish Violation)"
            )
        return 0
    log.error(
        "the broker REFUSED %d of those messages (%s): they were not published; check that "
        "each login may publish there (--sensor-credentials gives each sensor its own)",
        refused,
        reason,
    )
    return 1


def _prepare(args: argparse.Namespace, registry_path: Path, ids: tuple[str, ...]) -> Prepared:
    registry = load_registry(registry_path)
    scenario = load_scenario(find_scenario(str(args.scenario)))
    check_against_registry(scenario, registry)
    seed = scenario.seed if not str(args.seed).strip() else whole_number(args.seed, "--seed")
    sensors = select_sensors(registry, ids)
    world = simulate_world(scenario, seed)
    reports, events = report(scenario, world, sensors, seed)
    return Prepared(scenario, seed, sensors, world, reports, events)


def _truth_json(prepared: Prepared, timemap: TimeMap) -> bytes:
    doc = ground_truth(
        prepared.scenario,
        prepared.seed,
        prepared.world,
        prepared.reports,
        timemap,
    )
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


def _write_truth(prepared: Prepared, timemap: TimeMap, path: Path) -> None:
    path.write_bytes(_truth_json(prepared, timemap))


def _warn_future(
    reports: Reports, timemap: TimeMap, speed: float, start_s: float, began_s: float
) -> None:
    """Say how many readings ingest will refuse as stamped in the future (skewed clocks)."""
    rows = np.flatnonzero(reports.published)
    stamps = timemap.stamp(reports.time_s[rows]) + reports.skew_s[rows]
    due = began_s + (reports.sent_s[rows] - start_s) / speed if speed > 0 else began_s
    ahead = int(np.count_nonzero(stamps - due > MAX_FUTURE_S))
    if ahead:
        log.warning(
            "%d readings are stamped more than 5 minutes ahead of their publication "
            "(clock skew faults): ingest will refuse them",
            ahead,
        )


def _timestamps(value: object) -> TimestampMode:
    for mode in TIMESTAMP_MODES:
        if value == mode:
            return mode
    raise SettingsError(
        f"--timestamps {value!r} must be original, recent or wall; fix --timestamps or "
        f"{env_name('--timestamps')}."
    )


def _ids(value: object) -> tuple[str, ...]:
    return tuple(dict.fromkeys(part.strip() for part in str(value).split(",") if part.strip()))


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
    return f"{seconds:.0f} s"


if __name__ == "__main__":
    sys.exit(main())
