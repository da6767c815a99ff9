"""`python -m simulators live` (also the bare `python -m simulators`): periodic-shower sensors.

The first simulator, kept for the local stack and quick checks: every registry sensor sees a
shower that floods and drains its street once per period and a plain semidiurnal tide, with
live timestamps, until stopped. The scenario engine (`run`) models the real physics.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from floodwatch.errors import FloodwatchError, SettingsError
from floodwatch.mqtt import MqttConnection, Will, sensor_client_id
from floodwatch.registry import Registry, Sensor, load_registry
from floodwatch.settings import (
    Settings,
    configure_logging,
    env_name,
    option,
    real_number,
    settings_from_args,
    whole_number,
)
from floodwatch.topics import Topics
from simulators.publish import broker_problem
from simulators.street import SHOWER_PERIOD_S, build_fleet, initial_state, reading_payload, step

SIMULATOR_OPTIONS = (
    option("--interval", "5", "wall-clock seconds between two readings of each sensor"),
    option(
        "--speed",
        "1",
        "time acceleration of the modelled water: 60 runs showers and tides 60 times faster "
        "than the clock (timestamps stay real)",
    ),
    option("--duration", "0", "seconds to run, then stop cleanly (0: until Ctrl-C or SIGTERM)"),
    option("--count", "0", "readings per sensor, then stop cleanly (0: no limit)"),
    option("--seed", "1", "seed of the model; the same seed gives the same readings"),
    option(
        "--shower-period",
        f"{SHOWER_PERIOD_S:g}",
        "modelled seconds from one shower to the next on each street",
    ),
    option("--sensors", "", "comma-separated sensor ids to simulate (empty: every sensor)"),
)

# Real sensors are one device each, each with its own connection and will. Beyond this many
# the simulator shares one connection instead, to spare the broker and the process.
MAX_DEVICE_CONNECTIONS = 50
CONNECT_TIMEOUT_S = 10.0
# How long a clean stop waits for the broker to acknowledge what is still in flight.
DRAIN_TIMEOUT_S = 5.0
ONLINE = b"online"
OFFLINE = b"offline"

DESCRIPTION = f"""\
Simulate the flood sensors of the registry and publish their readings to the MQTT broker on
{{root}}/v1/sensors/{{id}}/reading (QoS 1), in the JSON of CONTRACT section 2. Street sensors
see a dry road with a periodic shower that floods it to 15-45 cm and drains it (deepest on
Quoc Huong and Nguyen Van Huong); the tide gauge follows a semidiurnal tide of about 1.5 m.
Sensors whose registry entry sends distance_mm publish the raw distance instead of the depth.

Like a real device, each sensor has its own MQTT connection (when there are at most
{MAX_DEVICE_CONNECTIONS} sensors; more share one) and publishes `online` on
{{root}}/v1/sensors/{{id}}/status (retained) at start, `offline` at a clean stop, and
`offline` as its will if the process dies.

With no command, `python -m simulators` runs this one, so `python -m simulators --interval 2
--speed 60` works as it always did. Every option can also be set with the FLOODWATCH_*
variable named in its help.
"""


@dataclass(frozen=True, slots=True)
class RunOptions:
    """The simulator's own options, checked."""

    interval_s: float
    speed: float
    duration_s: float
    count: int
    seed: int
    shower_period_s: float
    sensor_ids: tuple[str, ...]  # empty: every sensor


def run_options(args: argparse.Namespace) -> RunOptions:
    """Check the simulator's own options; raise SettingsError naming the flag and variable."""
    ids = tuple(part.strip() for part in str(args.sensors).split(",") if part.strip())
    return RunOptions(
        interval_s=real_number(args.interval, "--interval", positive=True),
        speed=real_number(args.speed, "--speed", positive=True),
        duration_s=real_number(args.duration, "--duration", positive=False),
        count=whole_number(args.count, "--count"),
        seed=whole_number(args.seed, "--seed"),
        shower_period_s=real_number(args.shower_period, "--shower-period", positive=True),
        sensor_ids=tuple(dict.fromkeys(ids)),
    )


def select_sensors(registry: Registry, ids: tuple[str, ...]) -> tuple[Sensor, ...]:
    """The sensors named by --sensors, in that order, or every sensor of the registry."""
    if not ids:
        return tuple(registry.sensors.values())
    unknown = [sensor_id for sensor_id in ids if sensor_id not in registry.sensors]
    if unknown:
        raise SettingsError(
            f"--sensors names {', '.join(map(repr, unknown))}, not in the registry "
            f"{registry.source}; use ids from it in --sensors or {env_name('--sensors')}."
        )
    return tuple(registry.sensors[sensor_id] for sensor_id in ids)


def run_live(args: argparse.Namespace) -> int:
    """The `live` command: check the options, then publish until stopped."""
    try:
        settings = settings_from_args(args)
        run = run_options(args)
        configure_logging(settings.log_level, "simulators")
        sensors = select_sensors(load_registry(settings.registry_path), run.sensor_ids)
    except FloodwatchError as exc:
        print(f"simulators: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return _simulate(settings, run, sensors, stop)


def _simulate(
    settings: Settings, run: RunOptions, sensors: tuple[Sensor, ...], stop: threading.Event
) -> int:
    log = logging.getLogger("simulators")
    if settings.log_level != "DEBUG":
        # One "connected" line per simulated device would drown the start line.
        logging.getLogger("floodwatch.mqtt").setLevel(logging.WARNING)
    topics = Topics(settings.topic_root)
    fleet = build_fleet(sensors, run.seed, shower_period_s=run.shower_period_s, speed=run.speed)
    links, route = _connections(settings, topics, sensors)
    started: list[MqttConnection] = []
    try:
        for link in links:
            link.start(timeout_s=CONNECT_TIMEOUT_S)
            started.append(link)
    except FloodwatchError as exc:
        print(f"simulators: {broker_problem(exc)}", file=sys.stderr)
        for link in started:
            link.stop()
        return 1
    if len(links) < len(sensors):
        log.warning(
            "%d sensors share one MQTT connection (more than %d): if this process dies, "
            "their status stays online",
            len(sensors),
            MAX_DEVICE_CONNECTIONS,
        )
    log.info(
        "simulating %d sensors on %s under %s: one reading each every %g s, "
        "water at %gx speed, seed %d",
        len(sensors),
        settings.mqtt,
        topics.base,
        run.interval_s,
        run.speed,
        run.seed,
    )

    begin = time.monotonic()
    deadline = begin + run.duration_s if run.duration_s else math.inf
    published = 0
    status = 0
    try:
        for sensor, link in zip(sensors, route, strict=True):
            link.publish(topics.status(sensor.id), ONLINE, qos=1, retain=True)
        state = initial_state(fleet)
        ticks = 0
        while not stop.is_set():
            state, readings = step(fleet, state, time.time())
            for reading, link in zip(readings, route, strict=True):
                link.publish(topics.reading(reading.sensor_id), reading_payload(reading), qos=1)
            published += len(readings)
            ticks += 1
            if run.count and ticks >= run.count:
                break
            next_at = min(begin + ticks * run.interval_s, deadline)
            if stop.wait(max(0.0, next_at - time.monotonic())) or next_at >= deadline:
                break
        for sensor, link in zip(sensors, route, strict=True):
            link.publish(topics.status(sensor.id), OFFLINE, qos=1, retain=True)
    except FloodwatchError as exc:
        log.error("publishing failed: %s", exc)
        status = 1

    unacknowledged = _drain(links, DRAIN_TIMEOUT_S)
    for link in links:
        link.stop()
    log.info(
        "stopped after %.1f s: published %d readings from %d sensors%s",
        time.monotonic() - begin,
        published,
        len(sensors),
        f"; {unacknowledged} messages not acknowledged by the broker" if unacknowledged else "",
    )
    return status


def _connections(
    settings: Settings, topics: Topics, sensors: tuple[Sensor, ...]
) -> tuple[list[MqttConnection], list[MqttConnection]]:
    """The connections to open, and the one each sensor publishes on (same order as sensors)."""
    pid = os.getpid()
    if len(sensors) > MAX_DEVICE_CONNECTIONS:
        shared = MqttConnection(settings.mqtt, f"floodwatch-sim-{pid}")
        return [shared], [shared] * len(sensors)
    links = [
        MqttConnection(
            settings.sensor_endpoint(sensor.id),
            sensor_client_id(settings.sensor_endpoint(sensor.id), sensor.id, "sim", pid),
            will=Will(topics.status(sensor.id), OFFLINE, qos=1, retain=True),
        )
        for sensor in sensors
    ]
    return links, links


def _drain(links: Sequence[MqttConnection], timeout_s: float) -> int:
    """Wait until the broker acknowledged every QoS 1 publish, or the timeout; return the rest."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while True:
        pending = sum(link.pending_publishes() for link in links)
        if not pending or time.monotonic() >= deadline:
            return pending
        pause.wait(0.02)
