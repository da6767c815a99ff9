"""The registry changing under a running engine (an operator's calibration, new thresholds, an
added or retired sensor; floodwatch.operations): the same state, with the new configuration.

Rules:
1. Nothing is judged here and no event is made: a change of thresholds or mount height takes
   effect with the next reading (the level a reading reaches is judged against the ladder in
   force when it is judged), so the change itself raises and clears nothing.
2. Every sensor keeps its index: sensors the engine already knows keep their memory (levels,
   peaks, debounce), new ones are appended with a fresh memory, heard "now" (their stale clock
   starts when they were added, not when the engine started).
3. A retired sensor keeps its row and its open alerts (an operator acknowledges them), but it
   is never stale: its readings are dead-lettered before the engine, so its silence means
   nothing.

Pure: time is passed in.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from alerts.state import EngineState, config_from_registry, initial_arrays
from floodwatch.registry import Registry, Sensor

# A retired sensor's interval: never stale (3 of them still fit in an int64 of nanoseconds).
RETIRED_INTERVAL_NS = 10**18


def reconfigure(state: EngineState, registry: Registry, now_ns: int) -> EngineState:
    """`state` judged from now on with `registry` (rules 1-3)."""
    old = state.config
    known = set(old.sensor_ids)
    order = list(old.sensor_ids) + [s for s in registry.sensors if s not in known]
    by_id = {**registry.retired, **registry.sensors}
    sensors: dict[str, Sensor] = {}
    for sensor_id in order:
        sensor = by_id.get(sensor_id)
        if sensor is None:
            # Neither in force nor retired (an added sensor whose override was dropped): keep
            # its old row as a retired one, so its index and open alerts stay valid.
            sensor = _old_sensor(state, sensor_id)
        sensors[sensor_id] = sensor
    config = config_from_registry(
        Registry(sensors=sensors, streets=registry.streets), old.time_scale
    )
    live = np.array([sid in registry.sensors for sid in order], dtype=np.bool_)
    config = dataclasses.replace(
        config, interval_ns=np.where(live, config.interval_ns, RETIRED_INTERVAL_NS)
    )
    fresh = initial_arrays(config.n, config.max_levels)
    n_old = old.n
    grown: dict[str, np.ndarray] = {}
    for f in dataclasses.fields(fresh):
        target = getattr(fresh, f.name)
        source = getattr(state.arrays, f.name)
        if target.ndim == 1:
            target[:n_old] = source
        else:
            width = min(target.shape[1], source.shape[1])
            target[:n_old, :width] = source[:, :width]
        grown[f.name] = target
    heard = grown["heard_ns"]
    heard[n_old:] = now_ns
    arrays = dataclasses.replace(fresh, **grown)
    return dataclasses.replace(state, config=config, arrays=arrays)


def _old_sensor(state: EngineState, sensor_id: str) -> Sensor:
    """A stand-in built from the engine's own row (name and place do not matter to it)."""
    cfg = state.config
    i = cfg.index[sensor_id]
    ladder = cfg.thresholds[i, : int(cfg.n_levels[i])]
    return Sensor(
        id=sensor_id,
        name=sensor_id,
        street=cfg.streets[int(cfg.street_of[i])],
        ward="",
        kind="tide" if bool(cfg.tide[i]) else "street",
        lon=0.0,
        lat=0.0,
        thresholds_cm=tuple(float(x) for x in ladder),
        interval_s=float(cfg.interval_ns[i]) / 1e9,
    )
