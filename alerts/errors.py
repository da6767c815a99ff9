"""The alert engine's exceptions, under Floodwatch's own tree.

FloodwatchError
└── AlertsError          the alert engine was asked something it cannot do
    ├── UnknownAlert     no open alert has this id (never raised, or cleared and acknowledged)
    └── UnknownSensor    a reading names a sensor the engine was not built with
"""

from __future__ import annotations

from floodwatch.errors import FloodwatchError


class AlertsError(FloodwatchError):
    """Base of the alert engine's errors."""


class UnknownAlert(AlertsError):
    """No open alert has the given id; the message says what open ids look like."""

    def __init__(self, alert_id: str, open_ids: int) -> None:
        super().__init__(
            f"no open alert has id {alert_id[:120]!r} ({open_ids} alerts are open); it was "
            "never raised, or it is closed (cleared and acknowledged). Alert ids look like "
            "'qh-02:flood:1795691100000000000' (sensor, kind, time of the raising reading in ns)."
        )
        self.alert_id = alert_id


class UnknownSensor(AlertsError):
    """A reading's sensor id is not in the registry the engine was built from."""

    def __init__(self, sensor_id: str) -> None:
        super().__init__(
            f"reading from sensor {sensor_id[:80]!r}, which is not in the engine's registry; "
            "rebuild the engine state from the registry that ingest validates against."
        )
        self.sensor_id = sensor_id
