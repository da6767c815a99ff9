"""Escalation timelines, driven by an injectable clock: named rows of "events and ticks in,
exact notifications out", then properties that hold for any timeline."""

from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from floodwatch.registry import SHIPPED_REGISTRY, load_registry
from notify.escalation import TOMBSTONE_NS, Track, next_due_ns, on_episode, on_event, on_tick
from notify.model import AlertFacts, Send, facts_from_retained
from notify.routing import parse_routing

MIN = 60 * 10**9
T0 = 1_796_000_000 * 10**9  # the alert is raised at T0

ROUTING = parse_routing(
    """
[channels.log]
type = "log"
[recipients.gis]
channels = ["log"]
[recipients.officer]
channels = ["log"]
[recipients.chief]
channels = ["log"]
[recipients.crew]
channels = ["log"]

[[rules]]
kinds = ["flood"]
min_level = 1
notify = ["gis"]
escalate = [{ after_min = 10, notify = ["officer"] }, { after_min = 20, notify = ["chief"] }]

[[rules]]
kinds = ["flood"]
min_level = 3
notify = ["crew"]
""",
    "escalation.toml",
    {},
)


def facts(
    change: str, seq: int, level: int = 1, at_min: float = 0, who: str | None = None
) -> AlertFacts:
    at = T0 + int(at_min * MIN)
    return AlertFacts(
        alert_id=f"qh-02:flood:{T0}",
        event_id=f"qh-02:flood:{T0}:{change}:{at}",
        seq=seq,
        sensor_id="qh-02",
        sensor_name="Quoc Huong west-middle",
        street="Quoc Huong",
        ward="An Khanh",
        kind="flood",
        change=change,
        state="active_ack" if change == "acknowledged" else "active_unack",
        level=level,
        level_name=("normal", "flooded", "hazard", "impassable", "closed")[level],
        at_ns=at,
        since_ns=T0,
        depth_cm=12.0 + 10 * level,
        who=who,
    )


@dataclass(frozen=True)
class Ev:
    at_min: float
    change: str
    level: int = 1


@dataclass(frozen=True)
class Tick:
    at_min: float


def run(steps: list[Ev | Tick]) -> list[tuple[float, str, str, int]]:
    """Play a timeline; (minute, recipient, message, tier) of every notification."""
    tracks: dict[str, Track] = {}
    out: list[tuple[float, str, str, int]] = []
    seq = 0
    for step in steps:
        now = T0 + int(step.at_min * MIN)
        sends: list[Send]
        if isinstance(step, Ev):
            seq += 1
            who = "Nguyễn Văn A" if step.change == "acknowledged" else None
            changed, sends = on_event(
                tracks, facts(step.change, seq, step.level, step.at_min, who), ROUTING, now
            )
            forget: list[str] = []
        else:
            changed, sends, forget = on_tick(tracks, now)
        tracks.update(changed)
        for alert_id in forget:
            tracks.pop(alert_id)
        out += [(step.at_min, s.recipient, s.message, s.tier) for s in sends]
    return out


Timeline = tuple[list[Ev | Tick], list[tuple[float, str, str, int]]]

TIMELINES: dict[str, Timeline] = {
    "nobody acknowledges: each tier in turn, once": (
        [Ev(0, "raised"), Tick(9.9), Tick(10), Tick(15), Tick(20), Tick(60)],
        [
            (0, "gis", "raised", 0),
            (10, "officer", "unacknowledged", 1),
            (20, "chief", "unacknowledged", 2),
        ],
    ),
    "acknowledged after 5 minutes: no escalation, gis told who": (
        [Ev(0, "raised"), Ev(5, "acknowledged"), Tick(10), Tick(30)],
        [(0, "gis", "raised", 0), (5, "gis", "acknowledged", 0)],
    ),
    "acknowledged after the first tier: both told, the chief never": (
        [Ev(0, "raised"), Tick(10), Ev(12, "acknowledged"), Tick(20), Tick(40)],
        [
            (0, "gis", "raised", 0),
            (10, "officer", "unacknowledged", 1),
            (12, "gis", "acknowledged", 0),
            (12, "officer", "acknowledged", 0),
        ],
    ),
    "cleared before anyone acknowledged: escalation stops, cleared announced": (
        [Ev(0, "raised"), Tick(10), Ev(14, "cleared"), Tick(20), Tick(40)],
        [
            (0, "gis", "raised", 0),
            (10, "officer", "unacknowledged", 1),
            (14, "gis", "cleared", 0),
            (14, "officer", "cleared", 0),
        ],
    ),
    "escalated to level 3: everyone told plus the crew; the ladder keeps its clock": (
        [Ev(0, "raised"), Ev(5, "escalated", 3), Tick(10), Tick(20)],
        [
            (0, "gis", "raised", 0),
            (5, "gis", "escalated", 0),
            (5, "crew", "escalated", 0),
            (10, "officer", "unacknowledged", 1),
            (20, "chief", "unacknowledged", 2),
        ],
    ),
    "escalated after an acknowledgement: the ladder starts again from then": (
        [Ev(0, "raised"), Ev(2, "acknowledged"), Ev(30, "escalated", 2), Tick(39), Tick(40)],
        [
            (0, "gis", "raised", 0),
            (2, "gis", "acknowledged", 0),
            (30, "gis", "escalated", 0),
            (40, "officer", "unacknowledged", 1),
        ],
    ),
    "late tick: overdue tiers all go at once": (
        [Ev(0, "raised"), Tick(45)],
        [
            (0, "gis", "raised", 0),
            (45, "officer", "unacknowledged", 1),
            (45, "chief", "unacknowledged", 2),
        ],
    ),
}


def test_timelines() -> None:
    """Each named timeline sends exactly the notifications listed, in order."""
    for name, (steps, expected) in TIMELINES.items():
        assert run(steps) == expected, name


def test_a_redelivered_event_sends_nothing_twice() -> None:
    """The same event applied again (the broker redelivers after a crash) changes nothing."""
    raised = facts("raised", 1)
    tracks, sends = on_event({}, raised, ROUTING, T0)
    assert len(sends) == 1
    assert on_event(tracks, raised, ROUTING, T0 + MIN) == ({}, [])


def test_a_cleared_alert_stays_closed_until_its_tombstone_goes() -> None:
    """After clearing, a redelivered `raised` opens nothing; the tombstone is forgotten later."""
    tracks, _ = on_event({}, facts("raised", 1), ROUTING, T0)
    changed, _ = on_event(tracks, facts("cleared", 2, at_min=3), ROUTING, T0 + 3 * MIN)
    tracks.update(changed)
    assert on_event(tracks, facts("raised", 1), ROUTING, T0 + 4 * MIN) == ({}, [])
    _, _, forget = on_tick(tracks, T0 + 3 * MIN + TOMBSTONE_NS)
    assert forget == [f"qh-02:flood:{T0}"]


def test_events_of_alerts_nobody_was_told_of_are_ignored() -> None:
    """A level-0 alert matches no rule; its acknowledgement announces nothing."""
    assert on_event({}, facts("raised", 1, level=0), ROUTING, T0) == ({}, [])
    assert on_event({}, facts("acknowledged", 2), ROUTING, T0) == ({}, [])


def test_tracks_survive_a_round_trip_through_json() -> None:
    """What the store saves reads back equal (escalation resumes after a restart)."""
    tracks, _ = on_event({}, facts("raised", 1), ROUTING, T0)
    track = next(iter(tracks.values()))
    assert Track.from_dict(track.to_dict()) == track
    assert next_due_ns(tracks) == T0 + 10 * MIN


steps = st.lists(
    st.tuples(
        st.floats(0, 5, allow_nan=False), st.sampled_from(["tick", "ack", "escalate", "clear"])
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(steps)
def test_nothing_after_the_stop_except_escalations(timeline: list[tuple[float, str]]) -> None:
    """For any timeline: nobody is told `unacknowledged` after an acknowledgement or a clear
    (until a level escalation asks again), nobody is told twice of the same tier, and after a
    clear nothing more is sent."""
    plan: list[Ev | Tick] = [Ev(0, "raised")]
    at, level = 0.0, 1
    for gap, action in timeline:
        at += gap * 5
        if action == "tick":
            plan.append(Tick(at))
        elif action == "ack":
            plan.append(Ev(at, "acknowledged", level))
        elif action == "escalate" and level < 4:
            level += 1
            plan.append(Ev(at, "escalated", level))
        elif action == "clear":
            plan.append(Ev(at, "cleared", level))
    sent = run(plan)
    stopped = False
    reminders: set[tuple[str, int]] = set()
    cleared_at = None
    for minute, recipient, message, tier in sent:
        if cleared_at is not None:
            assert minute == cleared_at and message == "cleared"
        if message in ("acknowledged", "cleared"):
            stopped = True
        elif message == "escalated":
            stopped = False
        elif message == "unacknowledged":
            assert not stopped
            assert (recipient, tier) not in reminders
            reminders.add((recipient, tier))
        if message == "cleared":
            cleared_at = minute


def test_an_escalated_event_for_an_unknown_alert_opens_it() -> None:
    """An alert first seen at level 3 (the notifier started late) is announced as escalated."""
    changed, sends = on_event({}, replace(facts("escalated", 4, level=3)), ROUTING, T0)
    assert {(s.recipient, s.message) for s in sends} == {
        ("gis", "escalated"),
        ("crew", "escalated"),
    }
    assert changed


def test_episode_summary_goes_to_the_flood_rules_first_recipients() -> None:
    """Rule 8: an episode that reached level 3 is summarised to the level-1 and level-3 rules'
    first recipients, once each, with no escalation."""
    episode = replace(facts("episode", 1, level=3), street="Quoc Huong, Duong 12")
    sends = on_episode(episode, ROUTING)
    assert [(s.recipient, s.message, s.quiet) for s in sends] == [
        ("gis", "episode", False),
        ("crew", "episode", False),
    ]
    assert on_episode(replace(episode, level=0), ROUTING) == []


def test_retained_states_give_only_unacknowledged_alerts() -> None:
    """A sensor's retained state opens its unacknowledged alerts (numbered 0, so the real
    `raised` event that may follow changes nothing); acknowledged ones are left alone."""
    registry = load_registry(SHIPPED_REGISTRY)
    doc = {
        "sensor": "qh-02",
        "street": "Quoc Huong",
        "level": 2,
        "depth_cm": 25.0,
        "alerts": [
            {"alert_id": f"qh-02:flood:{T0}", "kind": "flood", "state": "active_unack", "level": 2},
            {"alert_id": "qh-02:battery_low:5", "kind": "battery_low", "state": "active_ack"},
        ],
    }
    [opened] = facts_from_retained(doc, registry, T0 + MIN)
    assert (opened.seq, opened.change, opened.level_name, opened.since_ns) == (
        0,
        "raised",
        "hazard",
        T0,
    )
    tracks, sends = on_event({}, opened, ROUTING, T0 + MIN)
    assert [s.recipient for s in sends] == ["gis"]
    assert on_event(tracks, facts("raised", 1, level=2), ROUTING, T0 + MIN)[1] == []
    assert facts_from_retained({"alerts": "nope"}, registry, T0) == []
    assert facts_from_retained(None, registry, T0) == []
