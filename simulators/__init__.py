"""Simulated flood sensors for An Khanh: a pure, seeded water model and `python -m simulators`.

Pipeline, one way: scenario file -> physics (the true water) -> sensors (what they report)
-> messages (payloads, timestamps) -> publish (MQTT). Everything before `publish` is pure:
no I/O, no clock, numpy in and out, and one seed gives one run.

  scenario.py  TOML scenario files (scenarios/*.toml, format in scenarios/README.md), checked
  physics.py   the Saigon river's tide at Phu An from harmonic constituents (M2, S2, N2, K2,
               K1, O1, P1, M4), storms, and each street as a pond filled by rain and by the
               river backing up through the drains, emptied by drains while the river allows
  sensors.py   each sensor's readings: schedule, ~1 cm noise, rounding, distance sensors, and
               the field's faults (spike, parked vehicle, stuck, dropout, dying battery,
               clock skew, link outage with backfill)
  truth.py     the ground truth: flood episodes per sensor, artefact readings, silences
  messages.py  scenario time -> published timestamps (original, recent, wall), payloads
  publish.py   one MQTT connection per device, paced by the wall clock; progress.py draws
               the progress bar
  replay.py    CSV recordings in (replay) and out (truth --readings)
  load.py      the benchmark load generator (several publisher processes)
  plot.py      the PNG of a scenario (matplotlib)
  live.py, street.py  the first simulator (periodic showers), still the bare command's

Commands: `python -m simulators --help`, and `python -m simulators COMMAND --help`.

Timestamps of accelerated runs. Ingest refuses a reading stamped more than 5 minutes after it
arrives, so `run` never stamps ahead of the clock: by default (`--timestamps original`) a
reading carries the scenario's own date, and the shipped scenarios are set in October 2026,
in the past; published in order at any speed, every reading is from the past when it
arrives, and what InfluxDB stores lines up with the ground truth unchanged. `recent` moves
the whole scenario by whole days so it ends just before the run starts; `wall` stamps each
reading with the wall-clock time it is due, so the water runs faster than the clock (the
demo stack). Truth written by `run --truth` uses the same mapping as the run.

Ground truth (`python -m simulators truth SCENARIO`; shipped as scenarios/NAME.truth.json),
JSON, format "floodwatch-truth/1". Times are ISO 8601 strings in +07:00 with milliseconds,
exactly as the readings are stamped; depths in cm:

  {
    "format": "floodwatch-truth/1",
    "scenario": "october-storm", "title": "...", "seed": 1,
    "start": "2026-10-09T12:00:00.000+07:00", "end": "...",
    "time_map": {"scenario_start": "...", "stamped_start": "...", "scale": 1.0},
    "river": {"peak_cm": 158.5, "peak_at": "...", "rain_mm": 62.3, "rain_peak_mm_h": 100.8},
    "streets": {"Quoc Huong": {"ground_cm": 142.0, "peak_cm": 55.3, "peak_at": "..."}, ...},
    "sensors": {
      "qh-02": {
        "street": "Quoc Huong", "kind": "street" | "tide", "sends": "level_cm" | "distance_mm",
        "interval_s": 60.0, "thresholds_cm": [10, 20, 30, 50], "offset_cm": 2.1,
        "episodes": [                      # true depth >= thresholds_cm[0]
          {"start": "...", "end": "..." | null,    # null: still flooded at the end
           "peak_cm": 53.2, "peak_at": "...",
           "level": 4, "level_name": "closed",     # thresholds reached by the peak
           "minutes_to_peak": 50.5, "minutes_to_drain": 88.0 | null}
        ],
        "artefacts": [                     # published readings that misstate the water,
          {"kinds": ["spike" | "vehicle" | "stuck" | "clock_skew", ...],   # in runs of
           "from": "...", "until": "...",  # consecutive readings with the same kinds;
           "ts": ["...", ...]}             # every reading's ts, as published
        ],
        "faults": [{"kind": "outage", "start": "...", "end": "..."}],
        "silences": [                      # nothing arrives for 3 intervals or more
          {"from": "...", "until": "..." | null, "missed": 12}
        ],
        "battery_low_from": "..." | null,  # first published reading under 3.3 V
        "readings": {"taken": 1440, "published": 1436, "lost": 4, "backfilled": 0,
                     "artefacts": 0}
      }, ...
    }
  }

Episodes come from the noise-free depth under each sensor (or the river stage, for the tide
gauge, against its alarm levels), without debounce or hysteresis; a scorer matches an alert
episode to a true one by overlap and allows for the alert engine's debounce (2 readings) and
hysteresis (10 minutes). An artefact is identified by its sensor and its `ts`.
"""
