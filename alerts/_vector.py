"""Per-sensor sequence logic as whole-array numpy operations: the engine's readings are sorted by
(sensor, time), so each sensor is one contiguous segment, and every "previous reading", "last
time X happened" or "how long has Y held" becomes a shift or a forward fill within segments,
seeded by what the state carried over from the previous batch.

Forward fills use marks + cumsum + gather rather than np.maximum.accumulate: on this hardware a
cumsum over a boolean mask is several times faster than an accumulate over int64 indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

Bools = NDArray[np.bool_]
Ints = NDArray[np.int64]
Floats = NDArray[np.float64]
Index = NDArray[np.intp]
S = TypeVar("S", bound=np.generic)

NO_TIME = np.iinfo(np.int64).max  # "no run in progress" for carried run starts


@dataclass(frozen=True, slots=True)
class Segments:
    """The layout of readings sorted by sensor: where each sensor's run starts and ends."""

    sensor: NDArray[np.int32]  # per reading
    first: Bools  # per reading: the sensor's first reading in this batch
    first_idx: Index  # per segment
    last_idx: Index  # per segment
    seg_sensor: NDArray[np.int32]  # per segment

    @classmethod
    def of(cls, sensor: NDArray[np.int32]) -> Segments:
        n = len(sensor)
        first = np.empty(n, dtype=np.bool_)
        if n:
            first[0] = True
            np.not_equal(sensor[1:], sensor[:-1], out=first[1:])
        first_idx = np.flatnonzero(first)
        last_idx = np.empty_like(first_idx)
        if n:
            last_idx[:-1] = first_idx[1:] - 1
            last_idx[-1] = n - 1
        return cls(sensor, first, first_idx, last_idx, sensor[first_idx])

    def __len__(self) -> int:
        return len(self.sensor)

    @property
    def lengths(self) -> Index:
        return self.last_idx - self.first_idx + 1

    def shift(self, values: NDArray[S], carried: NDArray[S]) -> NDArray[S]:
        """Each reading's previous value; a segment's first reading gets the carried value.

        `values` has one element per reading, `carried` one per sensor of the registry (it is
        indexed by sensor number, like SensorArrays): a per-reading array there fails as soon
        as a sensor's number exceeds the batch's length (the calm-day crash)."""
        out = np.empty_like(values)
        out[1:] = values[:-1]
        out[self.first_idx] = carried[self.seg_sensor]
        return out

    def at_last(self, values: NDArray[S]) -> NDArray[S]:
        """The value at each segment's last reading."""
        return values[self.last_idx]

    def fill(self, mark: Bools, values: NDArray[S], carried: NDArray[S]) -> NDArray[S]:
        """The value at the latest marked reading at or before each reading, within its segment;
        readings before the segment's first mark get the carried value of their sensor."""
        marks = mark | self.first
        idx = np.flatnonzero(marks)
        picked = values[idx]
        unmarked_first = ~mark[idx]  # only segment starts can be marked but not `mark`
        if unmarked_first.any():
            picked[unmarked_first] = carried[self.sensor[idx[unmarked_first]]]
        ordinal = np.cumsum(marks, dtype=np.int32)
        ordinal -= 1
        return picked[ordinal]

    def latch(self, set_: Bools, reset: Bools, carried: Bools) -> Bools:
        """A set/reset flip-flop per sensor: on at a set, off at a reset (set wins a tie), else
        as before; before the first set or reset of a segment, the carried state."""
        return self.fill(set_ | reset, set_, carried)

    def run_start(self, cond: Bools, times: Ints, carried_since: Ints) -> Ints:
        """For readings where `cond` holds: the time the current unbroken run of `cond` began.
        A run that reaches back to the segment's start continues the carried run, if any
        (`carried_since` is NO_TIME when the previous batch ended outside a run)."""
        begins = cond.copy()
        begins[1:] &= ~cond[:-1]
        begins[self.first_idx] = cond[self.first_idx]
        marks = begins | self.first
        idx = np.flatnonzero(marks)
        start = times[idx]
        at_first = self.first[idx]
        start[at_first] = np.minimum(start[at_first], carried_since[self.sensor[idx[at_first]]])
        ordinal = np.cumsum(marks, dtype=np.int32)
        ordinal -= 1
        return start[ordinal]

    def carry_run(self, cond: Bools, start: Ints, previous: Ints) -> Ints:
        """The per-sensor run start to carry into the next batch."""
        out = previous.copy()
        last = self.last_idx
        out[self.seg_sensor] = np.where(cond[last], start[last], NO_TIME)
        return out

    def carry(self, values: NDArray[S], previous: NDArray[S]) -> NDArray[S]:
        """Per-sensor array updated with each segment's last value."""
        out = previous.copy()
        out[self.seg_sensor] = values[self.last_idx]
        return out


def held_low(sensor: NDArray[np.int32], times: Ints, values: Floats, window_ns: int) -> Floats:
    """For each reading, the lowest value its sensor held over [time - window, time], where a
    value is held when two consecutive readings inside the window are at or above it (so one
    low spike is not a low), and the reading's own value counts.

    Readings must be sorted by (sensor, time). A sparse table answers each range-minimum
    query in two lookups: O(n log w) for windows of up to w readings.
    """
    n = len(values)
    if n == 0:
        return values.copy()
    # pair[j]: the level readings j and j+1 both reached; +inf where j+1 is another sensor.
    pair = np.full(n, np.inf)
    same = sensor[1:] == sensor[:-1]
    pair[:-1] = np.where(same, np.maximum(values[:-1], values[1:]), np.inf)
    left = _window_left(sensor, times, window_ns)
    right = np.arange(n, dtype=np.int64) - 1  # pairs (j, j+1) with j+1 <= the reading
    return np.minimum(values, range_min(pair, left, right))


def range_min(values: Floats, left: Ints, right: Ints) -> Floats:
    """min(values[left[k] : right[k] + 1]) for each k; +inf where the range is empty."""
    n = len(values)
    out = np.full(len(left), np.inf)
    length = right - left + 1
    ok = np.flatnonzero(length > 0)
    if not len(ok):
        return out
    left, right, length = left[ok], right[ok], length[ok]
    top = int(length.max()).bit_length() - 1
    table = [values]
    for p in range(1, top + 1):
        half = 1 << (p - 1)
        prev = table[-1]
        nxt = prev.copy()
        np.minimum(prev[: n - half], prev[half:], out=nxt[: n - half])
        table.append(nxt)
    # floor(log2(length)) per query, without floating point.
    power = np.zeros(len(ok), dtype=np.int64)
    for p in range(1, top + 1):
        power += length >= (1 << p)
    found = np.empty(len(ok))
    for p in range(top + 1):
        sel = np.flatnonzero(power == p)
        if len(sel):
            level = table[p]
            found[sel] = np.minimum(level[left[sel]], level[right[sel] - (1 << p) + 1])
    out[ok] = found
    return out


def _window_left(sensor: NDArray[np.int32], times: Ints, window_ns: int) -> Ints:
    """Index of the first reading of the same sensor at or after time - window."""
    t_lo = int(times.min())
    span = int(times.max()) - t_lo + window_ns + 1
    n_keys = int(sensor.max()) + 1
    if n_keys * span < 2**62:
        # One sorted int64 key (sensor-major, then time) turns the query into a searchsorted.
        key = sensor.astype(np.int64) * span + (times - t_lo + window_ns)
        return np.searchsorted(key, key - window_ns, side="left").astype(np.int64)
    # Backfills spanning centuries of sensors do not fit one key: per segment, still vectorised.
    seg = Segments.of(sensor)
    left = np.empty(len(times), dtype=np.int64)
    for a, b in zip(seg.first_idx.tolist(), seg.last_idx.tolist(), strict=True):
        part = times[a : b + 1]
        left[a : b + 1] = a + np.searchsorted(part, part - window_ns, side="left")
    return left
