"""Escalation as a pure state machine: alert events and clock ticks in, notifications out.

Rules, in the order the code applies them:
1. An event is applied once: one whose `seq` is not newer than the alert's last is ignored
   (a redelivery after a crash sends nothing twice).
2. `raised`: the rules' first recipients are told; the escalation ladder starts from the
   time the engine raised it.
3. `escalated` (level up): everyone told so far, plus first recipients of rules the new level
   now matches, are told; the engine asks for a fresh acknowledgement, so an acknowledged
   alert starts its ladder again.
4. `deescalated`: everyone told so far is told; the ladder goes on.
5. `acknowledged`: the ladder stops; everyone told is told who acknowledged it.
6. `cleared`: the ladder stops; everyone told is told; the alert is closed (kept as a
   tombstone for `TOMBSTONE_NS`, so a late redelivery cannot open it again).
7. A tick at `now`: each tier whose time has come (minutes since the alert became
   unacknowledged >= its `after_min`) is told, once, that nobody acknowledged it.
8. A finished flood episode is summarised to the first recipients of the flood rules its
   streets and highest level match; it has no escalation.
9. Maintenance (floodwatch.operations): rules 1-7 run as ever, but what they send about a
   sensor under maintenance goes to nobody (the shell records it as suppressed). When the
   maintenance ends (ended by an operator, or expired), each of the sensor's alerts still open
   and unacknowledged is announced (`maintenance_over`) to its first recipients, and its
   ladder starts again from that moment: the crew is told once the sensor counts again.
   An acknowledged or cleared alert stays quiet.

Time is passed in (`now_ns`), never read here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from notify.model import AlertFacts, MessageKind, Send
from notify.routing import Routing, route

TOMBSTONE_NS = 2 * 24 * 3600 * 10**9
_MIN_NS = 60 * 10**9


@dataclass(frozen=True, slots=True)
class Pending:
    due_ns: int
    tier: int
    after_min: float
    notify: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Track:
    facts: AlertFacts
    told: tuple[str, ...]  # in the order they were first told
    pending: tuple[Pending, ...]  # tiers not yet told, earliest first
    unack_since_ns: int | None  # None once acknowledged or cleared
    quiet: bool
    closed_ns: int | None = None  # set when cleared (rule 6)

    def to_dict(self) -> dict[str, object]:
        return {
            "facts": self.facts.to_dict(),
            "told": list(self.told),
            "pending": [[p.due_ns, p.tier, p.after_min, list(p.notify)] for p in self.pending],
            "unack_since_ns": self.unack_since_ns,
            "quiet": self.quiet,
            "closed_ns": self.closed_ns,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, object]) -> Track:
        facts = doc["facts"]
        told = doc["told"]
        pending = doc["pending"]
        assert isinstance(facts, dict) and isinstance(told, list) and isinstance(pending, list)
        unack = doc.get("unack_since_ns")
        closed = doc.get("closed_ns")
        return cls(
            facts=AlertFacts.from_dict(facts),
            told=tuple(str(t) for t in told),
            pending=tuple(Pending(int(d), int(t), float(a), tuple(n)) for d, t, a, n in pending),
            unack_since_ns=int(unack) if isinstance(unack, int) else None,
            quiet=bool(doc.get("quiet")),
            closed_ns=int(closed) if isinstance(closed, int) else None,
        )


Tracks = Mapping[str, Track]


def _ladder(
    routing: Routing, facts: AlertFacts, start_ns: int, told: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[Pending, ...], bool]:
    decision = route(routing, facts.kind, facts.level, facts.street, facts.ward, facts.sensor_id)
    seen = set(told)
    pending = []
    for number, tier in enumerate(decision.tiers, start=1):
        new = tuple(r for r in tier.notify if r not in seen and r not in decision.first)
        if new:
            pending.append(
                Pending(start_ns + int(tier.after_min * _MIN_NS), number, tier.after_min, new)
            )
    return decision.first, tuple(pending), decision.quiet_hours


def _tell(names: tuple[str, ...], message: MessageKind, track: Track, tier: int = 0) -> list[Send]:
    return [Send(name, message, tier, track.facts, track.quiet) for name in names]


def on_event(
    tracks: Tracks, facts: AlertFacts, routing: Routing, now_ns: int
) -> tuple[dict[str, Track], list[Send]]:
    """Apply one alert event (rules 1-6); return the changed tracks and what to send."""
    track = tracks.get(facts.alert_id)
    if track is not None and facts.seq <= track.facts.seq:
        return {}, []  # rule 1
    if track is not None and track.closed_ns is not None:
        return {}, []  # rule 6: a closed alert stays closed
    change = facts.change
    if track is None:
        if change in ("acknowledged", "cleared", "deescalated"):
            return {}, []  # nobody was told of it: nothing to announce
        start = min(facts.at_ns, now_ns)
        first, pending, quiet = _ladder(routing, facts, start, ())
        if not first:
            return {}, []
        track = Track(facts, first, pending, start, quiet)
        message: MessageKind = "raised" if change == "raised" else "escalated"
        return {facts.alert_id: track}, _tell(first, message, track)
    if change == "escalated":
        start = (
            track.unack_since_ns if track.unack_since_ns is not None else min(facts.at_ns, now_ns)
        )
        first, pending, quiet = _ladder(routing, facts, start, track.told)
        new_first = tuple(r for r in first if r not in track.told)
        told = track.told + new_first
        # Tiers already told keep their place; tiers still ahead follow the new level's rules.
        track = Track(facts, told, pending, start, quiet and track.quiet)
        return {facts.alert_id: track}, _tell(told, "escalated", track)
    if change == "deescalated":
        track = replace(track, facts=facts)
        return {facts.alert_id: track}, _tell(track.told, "deescalated", track)
    if change == "acknowledged":
        track = replace(track, facts=facts, pending=(), unack_since_ns=None)
        return {facts.alert_id: track}, _tell(track.told, "acknowledged", track)
    if change == "cleared":
        track = replace(track, facts=facts, pending=(), unack_since_ns=None, closed_ns=now_ns)
        return {facts.alert_id: track}, _tell(track.told, "cleared", track)
    # A repeated `raised` with a newer seq cannot happen (seq 1 raises); keep the facts.
    return {facts.alert_id: replace(track, facts=facts)}, []


def on_tick(tracks: Tracks, now_ns: int) -> tuple[dict[str, Track], list[Send], list[str]]:
    """Rule 7, and the end of tombstones: (changed tracks, sends, alert ids to forget)."""
    changed: dict[str, Track] = {}
    sends: list[Send] = []
    forget: list[str] = []
    for alert_id, track in tracks.items():
        if track.closed_ns is not None:
            if now_ns - track.closed_ns >= TOMBSTONE_NS:
                forget.append(alert_id)
            continue
        if track.unack_since_ns is None or not track.pending or track.pending[0].due_ns > now_ns:
            continue
        told = list(track.told)
        pending = list(track.pending)
        while pending and pending[0].due_ns <= now_ns:
            tier = pending.pop(0)
            new = tuple(r for r in tier.notify if r not in told)
            told.extend(new)
            sends.extend(
                Send(r, "unacknowledged", tier.tier, track.facts, track.quiet, tier.after_min)
                for r in new
            )
        changed[alert_id] = replace(track, told=tuple(told), pending=tuple(pending))
    return changed, sends, forget


def next_due_ns(tracks: Tracks) -> int | None:
    """When the next tier is due, for the shell's timer (None: nothing waiting)."""
    due = [
        t.pending[0].due_ns
        for t in tracks.values()
        if t.pending and t.unack_since_ns is not None and t.closed_ns is None
    ]
    return min(due) if due else None


def on_maintenance_end(
    tracks: Tracks, sensor_id: str, routing: Routing, now_ns: int
) -> tuple[dict[str, Track], list[Send]]:
    """Rule 9: the sensor's maintenance ended at `now_ns`."""
    changed: dict[str, Track] = {}
    sends: list[Send] = []
    for alert_id, track in sorted(tracks.items()):
        if track.facts.sensor_id != sensor_id or track.closed_ns is not None:
            continue
        if track.unack_since_ns is None:
            continue
        first, pending, quiet = _ladder(routing, track.facts, now_ns, ())
        if not first and not pending:
            continue
        track = replace(track, told=first, pending=pending, unack_since_ns=now_ns, quiet=quiet)
        changed[alert_id] = track
        cause = f"{alert_id}:maintenance_over:{now_ns}"
        sends.extend(Send(r, "maintenance_over", 0, track.facts, quiet, cause=cause) for r in first)
    return changed, sends


def on_episode(facts: AlertFacts, routing: Routing) -> list[Send]:
    """Rule 8: who hears that a flood episode ended (`facts.street` lists its streets)."""
    told: dict[str, None] = {}
    for street in facts.street.split(", "):
        decision = route(routing, "flood", facts.level, street, facts.ward, facts.sensor_id)
        told.update(dict.fromkeys(decision.first))
    return [Send(name, "episode", 0, facts, False) for name in told]
