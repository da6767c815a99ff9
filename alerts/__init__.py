"""Where readings are judged: the alert engine of CONTRACT section 3, pure and vectorised."""

from alerts.engine import acknowledge, check_stale, step
from alerts.errors import AlertsError, UnknownAlert, UnknownSensor
from alerts.events import AlertEvent, Event, FloodEpisode
from alerts.rebuild import rebuild, rebuild_window_start
from alerts.state import (
    Alert,
    EngineState,
    OpenEpisode,
    ReadingArrays,
    new_state,
    readings_to_arrays,
)
from alerts.views import StreetStatus, sensor_payload, street_view

__all__ = [
    "Alert",
    "AlertEvent",
    "AlertsError",
    "EngineState",
    "Event",
    "FloodEpisode",
    "OpenEpisode",
    "ReadingArrays",
    "StreetStatus",
    "UnknownAlert",
    "UnknownSensor",
    "acknowledge",
    "check_stale",
    "new_state",
    "readings_to_arrays",
    "rebuild",
    "rebuild_window_start",
    "sensor_payload",
    "step",
    "street_view",
]
