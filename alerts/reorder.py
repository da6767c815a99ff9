"""Readings that reach the engine behind newer ones of their sensor, judged in their place.

The engine ignores a reading older than its sensor's last judged one (rule 1: stored, never
judged), so that an old backfill never raises anything. In the clustered mode that rule meets
NATS: around a leader's death it stores or delivers some of a sensor's readings seconds after
later ones (docs/CLUSTER.md), and a flood judged without them is raised late, cleared at
another reading or missed. `LateReplay` keeps the engine's recent history (what each step,
stale tick and acknowledgement was given, with the state before it every so often); a batch
holding readings that were never judged, behind newer readings judged within `window_ns` of
arrival, is judged again from the last state before their place, with them in it. The replay's
events not already emitted are the ones to emit now; those emitted before stand (they were
published), and the state after the replay is the engine's from then on.

Pure: values in, values out; the caller passes `now_ns` and owns the state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from alerts.engine import step
from alerts.errors import UnknownAlert
from alerts.events import AlertEvent, Event
from alerts.state import EngineState, ReadingArrays

# What the engine did to the state besides judging readings (a stale tick, an
# acknowledgement), to do again in a replay.
Operation = Callable[[EngineState], tuple[EngineState, list[Event]]]

# A state is kept before at most this many recorded entries per window (a replay starts from
# the last one before the late readings' place and steps again from there).
SNAPSHOTS_PER_WINDOW = 64


@dataclass(slots=True)
class _Entry:
    now_ns: int
    batch: ReadingArrays | None  # a step's readings; None for an Operation
    operation: Operation | None
    event_ids: list[str]
    before: EngineState | None = None  # kept on some entries only (snapshots)


@dataclass(slots=True)
class Replayed:
    """What a late batch did: the state to keep and the events to emit now."""

    state: EngineState
    events: list[Event]
    replayed: int  # readings judged in their place (0: no replay)
    sensors: set[int] = field(default_factory=set)  # their sensors (republish their state)


class LateReplay:
    """The recent history of one engine, to judge late readings in their place."""

    def __init__(self, window_ns: int) -> None:
        self.window_ns = window_ns
        self._every_ns = max(1, window_ns // SNAPSHOTS_PER_WINDOW)
        self._entries: list[_Entry] = []
        self._last_snapshot_ns: int | None = None
        # (sensor, reading time) of every reading in the entries: a late one among them is a
        # redelivery, not a reading never judged.
        self._judged: Counter[tuple[int, int]] = Counter()

    def clear(self) -> None:
        """Forget the history (the state was replaced: rebuilt, reconfigured)."""
        self._entries.clear()
        self._judged.clear()
        self._last_snapshot_ns = None

    # -- recording ----------------------------------------------------------------------------

    def operate(
        self, state: EngineState, operation: Operation, now_ns: int
    ) -> tuple[EngineState, list[Event]]:
        """Apply and record an operation (a stale tick, an acknowledgement)."""
        new, events = operation(state)
        self._record(_Entry(now_ns, None, operation, _ids(events)), state)
        return new, events

    def step(self, state: EngineState, batch: ReadingArrays, now_ns: int) -> Replayed:
        """Judge `batch`; its readings never judged that belong before newer readings judged
        within the window are judged in their place."""
        late = self._never_judged_late(state, batch)
        places, left = self._places(batch.take(late), state.config.n) if late.any() else ({}, None)
        if left is None or not places:
            new, events = step(state, batch, now_ns)
            self._record(_Entry(now_ns, batch, None, _ids(events)), state)
            return Replayed(new, events, 0)
        state, events = self._replay(places)
        placed = ReadingArrays.concat(list(places.values()))
        # The rest: the batch's other readings, and late ones with no place in the window
        # (newer ones judged before it), which the engine ignores as late (rule 1).
        rest = ReadingArrays.concat([batch.take(~late), left])
        new, more = step(state, rest, now_ns)
        self._record(_Entry(now_ns, rest, None, _ids(more)), state)
        return Replayed(new, events + more, len(placed), set(placed.sensor.tolist()))

    # -- internals ----------------------------------------------------------------------------

    def _record(self, entry: _Entry, before: EngineState) -> None:
        now = entry.now_ns
        if self._last_snapshot_ns is None or now - self._last_snapshot_ns >= self._every_ns:
            entry.before = before
            self._last_snapshot_ns = now
        self._entries.append(entry)
        if entry.batch is not None:
            self._count(entry.batch, 1)
        self._trim(now)

    def _trim(self, now_ns: int) -> None:
        """Drop entries before the last snapshot that is older than the window (a replay
        always starts from a snapshot)."""
        horizon = now_ns - self.window_ns
        cut = 0
        for k, entry in enumerate(self._entries):
            if entry.now_ns > horizon:
                break
            if entry.before is not None:
                cut = k
        if cut:
            for entry in self._entries[:cut]:
                if entry.batch is not None:
                    self._count(entry.batch, -1)
            del self._entries[:cut]

    def _count(self, batch: ReadingArrays, by: int) -> None:
        for key in zip(batch.sensor.tolist(), batch.time_ns.tolist(), strict=True):
            self._judged[key] += by
            if self._judged[key] <= 0:
                del self._judged[key]

    def _never_judged_late(self, state: EngineState, batch: ReadingArrays) -> np.ndarray:
        """Readings older than their sensor's last judged one and not among those judged within
        the window."""
        if not self._entries or not len(batch):
            return np.zeros(len(batch), dtype=bool)
        late = batch.time_ns < state.arrays.last_ns[batch.sensor]
        for k in np.flatnonzero(late).tolist():
            if (int(batch.sensor[k]), int(batch.time_ns[k])) in self._judged:
                late[k] = False
        return late

    def _places(
        self, late: ReadingArrays, n_sensors: int
    ) -> tuple[dict[int, ReadingArrays], ReadingArrays]:
        """Where each late reading belongs: the first entry holding a newer reading of its
        sensor (by entry index); and the late readings with no place (their sensor had a newer
        one judged before the first entry)."""
        places: dict[int, ReadingArrays] = {}
        oldest = self._entries[0].before
        assert oldest is not None  # the entries start at a snapshot (see _trim)
        placeable = oldest.arrays.last_ns[late.sensor] < late.time_ns
        left = late.take(placeable)
        for k, entry in enumerate(self._entries):
            batch = entry.batch
            if batch is None or not len(batch):
                continue
            newest = np.full(n_sensors, np.iinfo(np.int64).min, dtype=np.int64)
            np.maximum.at(newest, batch.sensor, batch.time_ns)
            here = newest[left.sensor] > left.time_ns
            if here.any():
                places[k] = left.take(here)
                left = left.take(~here)
                if not len(left):
                    break
        return places, ReadingArrays.concat([late.take(~placeable), left])

    def _replay(self, places: dict[int, ReadingArrays]) -> tuple[EngineState, list[Event]]:
        """Step again from the last snapshot at or before the first place, each late reading
        added to its place's readings; returns the state after the last entry and the events
        the replay made that were not emitted before."""
        first_place = min(places)
        start = max(k for k in range(first_place + 1) if self._entries[k].before is not None)
        state = self._entries[start].before
        assert state is not None  # the entries start at a snapshot (see _trim)
        emitted = {i for entry in self._entries[start:] for i in entry.event_ids}
        new_events: list[Event] = []
        for k in range(start, len(self._entries)):
            entry = self._entries[k]
            if entry.before is not None:
                entry.before = state
            if entry.batch is not None:
                if k in places:
                    entry.batch = ReadingArrays.concat([entry.batch, places[k]])
                    self._count(places[k], 1)
                state, events = step(state, entry.batch, entry.now_ns)
            else:
                assert entry.operation is not None
                try:
                    state, events = entry.operation(state)
                except UnknownAlert:
                    events = []  # acknowledged an alert the replay never raised
            entry.event_ids = _ids(events)
            new_events += [e for e in events if _id(e) not in emitted]
        return state, new_events


def _id(event: Event) -> str:
    return event.event_id if isinstance(event, AlertEvent) else repr(event)


def _ids(events: list[Event]) -> list[str]:
    return [_id(e) for e in events]
