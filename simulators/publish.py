"""The MQTT shell of `run` and `replay`: one connection per device, messages paced by a clock.

Like a real device, each sensor has its own MQTT connection with an `offline` retained will
(up to MAX_DEVICE_CONNECTIONS sensors; beyond that they share one), says `online` when it
starts and `offline` when it stops.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from floodwatch.errors import BrokerError, FloodwatchError
from floodwatch.mqtt import MqttConnection, Will, sensor_client_id
from floodwatch.registry import Sensor
from floodwatch.settings import Settings
from floodwatch.topics import Topics
from simulators.messages import OFFLINE, ONLINE, Message
from simulators.progress import Progress

log = logging.getLogger("simulators")

# Beyond this many sensors the simulator shares one connection, to spare the broker.
MAX_DEVICE_CONNECTIONS = 50
CONNECT_TIMEOUT_S = 10.0
# How long a clean stop waits for the broker to acknowledge what is still in flight.
DRAIN_TIMEOUT_S = 10.0
# Sleep at most this long at a time, so Ctrl-C and the progress bar stay responsive.
TICK_S = 0.1
HCMC = timezone(timedelta(hours=7))


STACK_ADVICE = (
    "To publish into a running stack (scripts/stack), give its broker and logins: "
    "--mqtt-url mqtt://admin:PASSWORD@HOST:PORT (PASSWORD is mqtt.admin in "
    ".stack/credentials/credentials.json; HOST:PORT is where the stack's broker listens, "
    "127.0.0.1:1883 unless scripts/stack said otherwise) and "
    "--sensor-credentials .stack/credentials/sensors.json, so each sensor logs in as itself "
    "(or the FLOODWATCH_MQTT_URL and FLOODWATCH_SENSOR_CREDENTIALS variables)."
)


def broker_problem(exc: FloodwatchError) -> str:
    """What to print when the broker cannot be used: the error and, for a refused login or an
    unreachable broker, how to point a simulator at a running stack."""
    text = str(exc)
    if not isinstance(exc, BrokerError):
        return text
    return f"{text if text.endswith('.') else text + '.'}\n{STACK_ADVICE}"


class Devices:
    """The sensors' MQTT connections; `route[i]` is the one sensor i publishes on."""

    def __init__(self, settings: Settings, sensors: Sequence[Sensor], label: str = "sim") -> None:
        self.topics = Topics(settings.topic_root)
        self.sensors = tuple(sensors)
        pid = os.getpid()
        if len(self.sensors) > MAX_DEVICE_CONNECTIONS:
            shared = MqttConnection(settings.mqtt, f"floodwatch-{label}-{pid}")
            self.links = [shared]
            self.route = [shared] * len(self.sensors)
        else:
            self.links = [
                MqttConnection(
                    settings.sensor_endpoint(sensor.id),
                    sensor_client_id(settings.sensor_endpoint(sensor.id), sensor.id, label, pid),
                    will=Will(self.topics.status(sensor.id), OFFLINE, qos=1, retain=True),
                )
                for sensor in self.sensors
            ]
            self.route = self.links
        self._started: list[MqttConnection] = []

    def start(self) -> None:
        """Connect every device; raise BrokerError (after closing the others) if one cannot."""
        if len(self.links) < len(self.sensors):
            log.warning(
                "%d sensors share one MQTT connection (more than %d): if this process dies, "
                "their status stays online",
                len(self.sensors),
                MAX_DEVICE_CONNECTIONS,
            )
        try:
            for link in self.links:
                link.start(timeout_s=CONNECT_TIMEOUT_S)
                self._started.append(link)
        except FloodwatchError:
            self.stop()
            raise

    def status(self, index: int, online: bool) -> None:
        sensor_id = self.sensors[index].id
        payload = ONLINE if online else OFFLINE
        self.route[index].publish(self.topics.status(sensor_id), payload, qos=1, retain=True)

    def send(self, message: Message) -> None:
        sensor_id = self.sensors[message.sensor].id
        if message.channel == "status":
            self.route[message.sensor].publish(
                self.topics.status(sensor_id), message.payload, qos=1, retain=True
            )
        else:
            self.route[message.sensor].publish(
                self.topics.reading(sensor_id), message.payload, qos=1
            )

    def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> int:
        """Wait until the broker acknowledged every publish, or the timeout; return the rest."""
        deadline = time.monotonic() + timeout_s
        pause = threading.Event()
        while True:
            pending = sum(link.pending_publishes() for link in self._started)
            if not pending or time.monotonic() >= deadline:
                return pending
            pause.wait(0.02)

    def refused(self) -> tuple[int, str]:
        """Publishes the broker refused (reason code 0x80 or more), and the last reason."""
        count = sum(link.refused_publishes for link in self.links)
        reason = next((link.last_refusal for link in self.links if link.last_refusal), "")
        return count, reason

    def refusals_visible(self) -> bool:
        """False over MQTT 3.1.1, where a denied publish is acknowledged or dropped silently."""
        return all(link.refusals_visible for link in self.links)

    def stop(self) -> None:
        for link in self._started:
            link.stop()
        self._started.clear()


@dataclass(frozen=True, slots=True)
class Played:
    """What one pass published."""

    messages: int
    readings: int
    completed: bool  # False when stopped early


def play(
    messages: Sequence[Message],
    devices: Devices,
    *,
    start_s: float,
    duration_s: float,
    speed: float,
    began_wall_s: float,
    stop: threading.Event,
    progress: Progress,
) -> Played:
    """Publish messages at their due times: wall = began + (at - start) / speed (0: at once)."""
    sent = readings = 0

    def show(at_s: float) -> None:
        if progress.due():
            fraction = (at_s - start_s) / duration_s if duration_s > 0 else 1.0
            progress.update(fraction, f"{local_clock(at_s)}  {readings:,} readings")

    for message in messages:
        if speed > 0:
            due = began_wall_s + (message.at_s - start_s) / speed
            while (wait := due - time.time()) > 0:
                if stop.wait(min(wait, TICK_S)):
                    return Played(sent, readings, completed=False)
                show(message.at_s)
        if stop.is_set():
            return Played(sent, readings, completed=False)
        devices.send(message)
        sent += 1
        readings += message.readings
        show(message.at_s)
    return Played(sent, readings, completed=True)


def local_clock(time_s: float) -> str:
    """Scenario time as Ho Chi Minh City day and time, for the progress bar."""
    moment = datetime.fromtimestamp(time_s, UTC).astimezone(HCMC)
    return moment.strftime("%d %b %H:%M")
