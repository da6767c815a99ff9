"""Partitions shared fairly between the live cluster workers (docs/CLUSTER.md, "Balancing"):
pure; the I/O shell is `ingest/cluster.py` (`NatsSource._balance`).

Every worker announces itself in a JetStream key-value bucket (a heartbeat whose key lapses
with the bucket's TTL when the worker dies) with the partitions it is pinned to and which of
them are *active* (took readings within ACTIVE_S). From the members' announcements each worker
works out the same targets: the active partitions shared as evenly as counts allow, the
`T mod M` members holding the most getting ceil(T/M), the others floor(T/M) (so the fewest
partitions move). Then:

- a member above its target releases one partition at a time, the one with the fewest readings
  lately (a handover pauses a partition: better a quiet ward than a flooding one), the most
  recently gained first among equals; it releases the next only once another member announces
  the previous one, or after `settle_s`;
- a member below its target asks for every partition it does not hold (pulls them), and so do
  all members when nobody is below target (a dead worker's partitions or a ward's first
  readings are then taken by whoever asks first, and shared out afterwards); a member at or
  above its target does not ask while another is below, so what is released goes to a member
  that needs it.

Quiet partitions (no reading within ACTIVE_S) count for nobody and are never released: they
cost nothing, and a released partition stays unowned (no stale checks, no acknowledgements)
until its next reading pins it to a taker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# A partition is active when it took a reading within this window. Short, because a released
# partition is pinned to its taker only by its next reading: until then nobody owns it (no
# stale checks), so only partitions with readings flowing are counted and moved.
ACTIVE_S = 10.0


@dataclass(frozen=True, slots=True)
class Member:
    """What a worker announces: the partitions it is pinned to, and the active ones."""

    owned: frozenset[int]
    active: frozenset[int]


@dataclass(frozen=True, slots=True)
class Release:
    """A partition this worker gave up, at `since` (monotonic seconds)."""

    part: int
    since: float


@dataclass(frozen=True, slots=True)
class Decision:
    release: int | None  # the partition to give up now, if any
    ask: bool  # pull the partitions this worker does not hold


def targets(active_counts: Mapping[str, int]) -> dict[str, int]:
    """Member -> how many active partitions it should hold: floor or ceil of T/M, ceil going to
    the members that hold the most (ties by id), so that the targets sum to T and the fewest
    partitions move."""
    if not active_counts:
        return {}
    total = sum(active_counts.values())
    floor, extra = divmod(total, len(active_counts))
    order = sorted(active_counts, key=lambda m: (-active_counts[m], m))
    return {m: floor + (1 if k < extra else 0) for k, m in enumerate(order)}


def view_with(me: str, mine: Member, announced: Mapping[str, Member]) -> dict[str, Member]:
    """The members as this worker sees them: its own entry from its own state (the freshest),
    and no other member credited with a partition this worker holds (a stale announcement)."""
    view = {
        member: Member(m.owned - mine.owned, m.active - mine.owned)
        for member, m in announced.items()
        if member != me
    }
    view[me] = mine
    return view


def decide(
    me: str,
    view: Mapping[str, Member],
    load: Mapping[int, int],
    gained: Mapping[int, float],
    last: Release | None,
    now: float,
    settle_s: float,
) -> Decision:
    """What worker `me` does now, given the members' `view` (view_with), the readings each of
    its partitions took lately (`load`), when it gained each (`gained`, monotonic seconds), its
    last release and the time."""
    counts = {member: len(m.active) for member, m in view.items()}
    target = targets(counts)
    below = any(counts[m] < target[m] for m in view if m != me)
    mine = view[me]
    ask = counts[me] < target[me] or not below
    if counts[me] <= target[me] or not below:
        # Nobody is asking: a partition released now would wait unowned for a taker.
        return Decision(None, ask)
    if last is not None and now - last.since < settle_s:
        taken = any(last.part in m.owned for member, m in view.items() if member != me)
        if not taken:
            return Decision(None, ask)
    part = min(mine.active, key=lambda p: (load.get(p, 0), -gained.get(p, 0.0), -p))
    return Decision(part, ask)


@dataclass(frozen=True, slots=True)
class Activity:
    """Readings taken per partition over the last ACTIVE_S: snapshots of the cumulative counts
    (monotonic seconds, counts), oldest first."""

    snapshots: tuple[tuple[float, tuple[int, ...]], ...] = ()

    def observe(self, now: float, taken: tuple[int, ...], window_s: float = ACTIVE_S) -> Activity:
        """This state with the cumulative counts `taken` seen at `now`, older snapshots beyond
        the window dropped (the oldest within it kept as the baseline)."""
        kept = [s for s in self.snapshots if now - s[0] <= window_s]
        return Activity((*kept, (now, taken)))

    def load(self) -> dict[int, int]:
        """Partition -> readings taken within the window (only those that took some)."""
        if not self.snapshots:
            return {}
        first, last = self.snapshots[0][1], self.snapshots[-1][1]
        if len(self.snapshots) == 1:
            first = tuple(0 for _ in last)
        return {p: n - first[p] for p, n in enumerate(last) if n - first[p] > 0}
