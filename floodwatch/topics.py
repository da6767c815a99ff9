"""MQTT topic names of CONTRACT section 2, built and parsed in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SensorChannel = Literal["reading", "status"]


@dataclass(frozen=True, slots=True)
class Topics:
    """All topics live under `{root}/v1/`."""

    root: str = "floodwatch"

    @property
    def base(self) -> str:
        return f"{self.root}/v1"

    def reading(self, sensor_id: str) -> str:
        return f"{self.base}/sensors/{sensor_id}/reading"

    def status(self, sensor_id: str) -> str:
        return f"{self.base}/sensors/{sensor_id}/status"

    def alert(self, sensor_id: str) -> str:
        return f"{self.base}/alerts/{sensor_id}"

    def alert_events(self, sensor_id: str) -> str:
        """Each alert event (raised, escalated, acknowledged, ...) as it happens; not retained."""
        return f"{self.base}/events/{sensor_id}"

    @property
    def all_alert_events(self) -> str:
        return f"{self.base}/events/+"

    @property
    def episodes(self) -> str:
        """Each finished flood episode."""
        return f"{self.base}/episodes"

    def notifications(self, alert_id: str) -> str:
        """The notifier's record of who was told of an alert, and when (retained)."""
        return f"{self.base}/notifications/{alert_id}"

    def maintenance(self, sensor_id: str) -> str:
        """A sensor's maintenance record (retained; empty when it is not under maintenance)."""
        return f"{self.base}/maintenance/{sensor_id}"

    def registry_override(self, sensor_id: str) -> str:
        """An operator's change to a sensor's registry entry (retained; empty: the file's)."""
        return f"{self.base}/registry/{sensor_id}"

    def sensor_changes(self, sensor_id: str) -> str:
        """Each operator change to a sensor (maintenance, calibration, ...), for the audit."""
        return f"{self.base}/changes/{sensor_id}"

    def last_level(self, topic: str, prefix_of: str) -> str | None:
        """The sensor id ending `topic` if it is `prefix_of`'s topic for some id, else None:
        `last_level(t, self.maintenance(""))`."""
        if not topic.startswith(prefix_of):
            return None
        rest = topic[len(prefix_of) :]
        return rest if rest and "/" not in rest else None

    @property
    def ack_commands(self) -> str:
        """Operators' acknowledgements, for the ingest process that owns the alert state."""
        return f"{self.base}/commands/ack"

    @property
    def deadletter(self) -> str:
        return f"{self.base}/deadletter"

    @property
    def all_readings(self) -> str:
        return f"{self.base}/sensors/+/reading"

    @property
    def all_statuses(self) -> str:
        return f"{self.base}/sensors/+/status"

    def parse_sensor_topic(self, topic: str) -> tuple[str, SensorChannel] | None:
        """`(sensor_id, channel)` for a `sensors/{id}/reading|status` topic, else None.

        The id is returned as sent, unvalidated: the decoder judges it against the registry.
        """
        prefix = self.base + "/sensors/"
        if not topic.startswith(prefix):
            return None
        rest = topic[len(prefix) :]
        sensor_id, sep, channel = rest.rpartition("/")
        if not sep or not sensor_id or "/" in sensor_id:
            return None
        if channel == "reading":
            return sensor_id, "reading"
        if channel == "status":
            return sensor_id, "status"
        return None

    # The clustered mode's NATS account rewrites each sensor's publish to
    # `part/{partition}/{ward}/{id}/{channel}` before any subscriber sees it (docs/CLUSTER.md),
    # so an MQTT subscriber there finds the sensors' messages under these filters instead.
    @property
    def all_partitioned(self) -> tuple[str, str]:
        return f"{self.base}/part/+/+/+/reading", f"{self.base}/part/+/+/+/status"

    def unpartitioned(self, topic: str) -> str:
        """The contract's `sensors/{id}/{channel}` topic for a partition topic
        `part/{partition}/{ward}/{id}/{channel}`; any other topic unchanged."""
        prefix = self.base + "/part/"
        if not topic.startswith(prefix):
            return topic
        levels = topic[len(prefix) :].split("/")
        if len(levels) != 4:
            return topic
        return f"{self.base}/sensors/{levels[2]}/{levels[3]}"
