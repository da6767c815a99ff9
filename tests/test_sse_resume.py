"""SSE resume across API replicas (issue 14): a client whose replica dies resumes on another with
its Last-Event-ID and misses nothing, although the replicas heard the messages in a slightly
different order and the other one may not have heard the last ones yet (pure, property)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from api.eventlog import RESUME_OVERLAP_NS, EventLog

T0 = 1_795_000_000_000_000_000
TICK_NS = 1_000_000  # one event per ms on both replicas


class _Ticks:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        self.now += TICK_NS
        return self.now


@st.composite
def two_replicas(draw: st.DrawFn) -> tuple[list[tuple[str, int, bytes]], list[int], int, int]:
    """Events (kind, key, source) in replica A's order; B's order (each moved a few places,
    as two subscribers of one cluster may hear different publishers); how many A sent its
    client before dying; how many B had heard when the client came back."""
    n = draw(st.integers(1, 60))
    # Keys roughly follow arrival (reading times), with the jitter of different publishers.
    jitter = draw(st.lists(st.integers(-50, 50), min_size=n, max_size=n))
    kinds = draw(st.lists(st.sampled_from(["reading", "alert"]), min_size=n, max_size=n))
    events = [(kinds[k], T0 + k * 10**6 + jitter[k] * 10**5, b"s%d" % k) for k in range(n)]
    order = list(range(n))
    for _ in range(draw(st.integers(0, n))):
        k = draw(st.integers(0, n - 1))
        j = min(n - 1, k + draw(st.integers(1, 3)))
        order[k], order[j] = order[j], order[k]
    sent = draw(st.integers(1, n))
    heard = draw(st.integers(0, n))
    return events, order, sent, heard


@settings(max_examples=100, deadline=None)
@given(two_replicas())
def test_a_client_resuming_on_another_replica_misses_no_event(
    case: tuple[list[tuple[str, int, bytes]], list[int], int, int],
) -> None:
    events, order, sent, heard = case
    a = EventLog(1000, clock=_Ticks(), started_ns=0)
    ids = [a.publish(kind, "{}", key, source).id for kind, key, source in events]
    received = set(ids[:sent])
    b = EventLog(1000, clock=_Ticks(), started_ns=0)
    for k in order[:heard]:
        b.publish(*_data(events[k]))
    cursor, gap = b.resume(ids[sent - 1])
    assert gap is None
    for k in order[heard:]:  # what B hears after the client came back
        b.publish(*_data(events[k]))
    replayed, gap = b.after(cursor, limit=10_000)
    assert gap is None
    received |= {e.id for e in replayed}
    assert received == set(ids)
    # Events repeated are those B heard within the overlap before the client's last one.
    assert len(replayed) <= len(ids) - sent + RESUME_OVERLAP_NS // TICK_NS + 1


def _data(event: tuple[str, int, bytes]) -> tuple[str, str, int, bytes]:
    kind, key, source = event
    return kind, "{}", key, source


def test_a_replica_started_after_the_last_event_says_there_is_a_gap() -> None:
    """A replica that began listening after the client's last event cannot vouch for what came
    in between: a gap (the page refetches), then everything it holds."""
    log = EventLog(100, started_ns=T0 + 5 * 10**9)
    held = log.publish("alert", "{}", T0 + 6 * 10**9, b"x")
    cursor, gap = log.resume(f"{T0}-0123456789ab")
    assert gap is not None and "started after" in gap.reason
    assert [e.id for e in log.after(cursor)[0]] == [held.id]
