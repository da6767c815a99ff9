"""Operators' changes reaching ingest without a restart (floodwatch.operations): the retained
registry overrides are applied to the decoder's and the engine's registry, and each change
published on `changes/{id}` is stored as a `sensor_change` row (ingest is the one writer).

| thread              | owns                         | talks to                                   |
|---------------------|------------------------------|--------------------------------------------|
| `ingest-operations` | the LiveRegistry (overrides) | the owner's queue (apply), InfluxDB, broker |
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from floodwatch.mqtt import Delivery
from floodwatch.operations import LiveRegistry, SensorChange
from floodwatch.registry import Registry
from floodwatch.topics import Topics
from ingest.line_protocol import encode_point

log = logging.getLogger(__name__)


class OperationsFollower:
    def __init__(
        self,
        topics: Topics,
        live: LiveRegistry,
        apply: Callable[[Registry], None],
        store_lines: Callable[[list[str]], None],
        ack: Callable[[list[Delivery]], int],
        stop: threading.Event,
    ) -> None:
        self.topics = topics
        self.live = live
        self._apply = apply
        self._store_lines = store_lines
        self._ack = ack
        self._stop = stop
        self._inbox: queue.Queue[Delivery] = queue.Queue()
        self._registry_prefix = topics.registry_override("")
        self._changes_prefix = topics.sensor_changes("")
        self.thread = threading.Thread(target=self._run, name="ingest-operations", daemon=True)

    def wants(self, topic: str) -> bool:
        return topic.startswith((self._registry_prefix, self._changes_prefix))

    def deliver(self, delivery: Delivery) -> None:
        """paho's thread: queue it for the operations thread."""
        self._inbox.put(delivery)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                delivery = self._inbox.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self.handle(delivery)
            except Exception:  # one bad message must not stop registry updates
                log.exception("operations: could not apply %s", delivery.topic)
            self._ack([delivery])

    def handle(self, delivery: Delivery) -> None:
        topic = delivery.topic
        sensor_id = self.topics.last_level(topic, self._registry_prefix)
        if sensor_id is not None:
            registry = self.live.apply(sensor_id, delivery.payload)
            for problem in self.live.problems:
                log.error("registry override skipped: %s", problem)
            if registry is not None:
                self._apply(registry)
                log.info(
                    "registry changed (%s): %d sensors in force, %d retired",
                    sensor_id,
                    len(registry.sensors),
                    len(registry.retired),
                )
            return
        if self.topics.last_level(topic, self._changes_prefix) is None:
            return
        change = SensorChange.from_json(delivery.payload)
        if change is None:
            log.warning("ignoring a message on %s that is not a sensor change", topic)
            return
        self._store_lines([encode_point(*change.influx_point())])
