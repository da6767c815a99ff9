"""The last N live events, so a Server-Sent Events client can resume where it was, on this
API process or on any other replica behind the same front door.

Every replica hears the same MQTT messages, so an event's id is made from what it reports, not
from when this process heard it: `{key}-{digest}`, where `key` is the time the pipeline gave
the change (a reading's own time, the engine's reading time for an alert, arrival for an
operator's change) in ns, and `digest` 12 hex digits of a hash of the message behind the event.
Two replicas give the same event the same id (issue 14: a page resumes on another replica when
its own dies).

A client that resumes (`Last-Event-ID`) gets what this process holds from its id on: found by
id, from the events that arrived here up to `RESUME_OVERLAP_NS` before it (replicas may hear
messages from different publishers in a slightly different order, so an event the old replica
sent after the id may have arrived here just before it); not found (an event this process has
not heard yet), from the first held event whose key is at least the id's. So
a resuming client may receive an event twice; each event is a snapshot of one sensor's state,
so applying one again, in order, is harmless. When the id cannot be placed (malformed, older
than this process, or older than anything held after the buffer dropped events), the client is
told with a `gap` event and then gets everything held.
Within one process the buffer keeps arrival order, and live events are sent in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from sse_starlette import ServerSentEvent

_ID = re.compile(r"([0-9]{1,20})-([0-9a-f]{12})")
# Most events handed to one client per step; it asks again at once when more are held.
BATCH = 256
# How much earlier than a resuming client's last event (by arrival here) replay starts:
# covers the order in which two replicas hear messages of different publishers (ms apart on one
# broker cluster), with room for a busy machine.
RESUME_OVERLAP_NS = 2_000_000_000


def event_id(event: str, key_ns: int, source: bytes) -> str:
    """The id every replica gives this event: its key and a digest of what it reports
    (`source`: the message behind it, with the sensor id), never this process's counter."""
    digest = hashlib.blake2b(event.encode() + b"\0" + source, digest_size=6).hexdigest()
    return f"{max(key_ns, 0)}-{digest}"


@dataclass(frozen=True, slots=True)
class StreamEvent:
    seq: int  # this process's position, for its own clients' cursors
    id: str
    event: str  # "reading", "alert" or "sensor"
    data: str  # one line of JSON
    # The event as text/event-stream bytes, encoded once for every client that is sent it.
    encoded: bytes = b""
    key_ns: int = 0
    heard_ns: int = 0  # when this process logged it (monotonic clock)


@dataclass(frozen=True, slots=True)
class Gap:
    """What a resuming client missed and cannot get back."""

    reason: str
    last_event_id: str | None  # None: not known (a slow reader's dropped events)
    oldest_event_id: str | None
    missed: int | None  # None when unknown

    def as_json(self) -> dict[str, object]:
        return {
            "reason": self.reason,
            "last_event_id": self.last_event_id,
            "oldest_event_id": self.oldest_event_id,
            "missed": self.missed,
            "advice": "refetch /v1/sensors and /v1/alerts to catch up",
        }


class EventLog:
    """A ring buffer of the last `capacity` events; runs on the event loop's thread only."""

    def __init__(
        self,
        capacity: int,
        clock: Callable[[], int] = time.monotonic_ns,
        started_ns: int | None = None,
    ) -> None:
        self.capacity = capacity
        self._clock = clock
        # Wall time this process began to listen: it cannot vouch for what came before.
        self.started_ns = time.time_ns() if started_ns is None else started_ns
        self._events: deque[StreamEvent] = deque(maxlen=capacity)
        self._seq_of: dict[str, int] = {}  # held events' ids -> their newest seq
        self.last_seq = 0
        self.dropped = 0  # events that left the buffer, never to be replayed
        self._wakeup = asyncio.Event()

    def __len__(self) -> int:
        return len(self._events)

    @property
    def oldest_seq(self) -> int:
        """The seq of the oldest event held (last_seq + 1 when none is)."""
        return self.last_seq - len(self._events) + 1

    def publish(self, event: str, data: str, key_ns: int, source: bytes) -> StreamEvent:
        """Log an event; `key_ns` and `source` make its id (see `event_id`)."""
        self.last_seq += 1
        eid = event_id(event, key_ns, source)
        encoded = ServerSentEvent(data=data, event=event, id=eid).encode()
        item = StreamEvent(self.last_seq, eid, event, data, encoded, key_ns, self._clock())
        if len(self._events) == self.capacity:
            gone = self._events[0]
            self.dropped += 1
            if self._seq_of.get(gone.id) == gone.seq:
                del self._seq_of[gone.id]
        self._events.append(item)
        self._seq_of[eid] = item.seq
        # Wake every waiting client at once, then arm a fresh event for the next publish.
        self._wakeup.set()
        self._wakeup = asyncio.Event()
        return item

    def _held(self, seq: int) -> StreamEvent:
        return self._events[seq - self.oldest_seq]

    def _overlap_start(self, seq: int) -> int:
        """The first held seq that arrived at most RESUME_OVERLAP_NS before event `seq`."""
        since = self._held(seq).heard_ns - RESUME_OVERLAP_NS
        while seq > self.oldest_seq and self._held(seq - 1).heard_ns >= since:
            seq -= 1
        return seq

    def resume(self, last_event_id: str | None) -> tuple[int, Gap | None]:
        """Where a client continues (send events with seq > cursor), and what it missed."""
        if not last_event_id:
            return self.last_seq, None
        oldest = self._events[0].id if self._events else None
        text = last_event_id.strip()
        match = _ID.fullmatch(text)
        if match is None:
            malformed = "Last-Event-ID is not an id this API gives out"
            return self.oldest_seq - 1, Gap(malformed, text[:64], oldest, None)
        seq = self._seq_of.get(text)
        if seq is None:
            key = int(match.group(1))
            reason: str | None = None
            if self.dropped and self._events and self._events[0].key_ns > key:
                reason = (
                    f"this API keeps only the last {self.capacity} events; those after "
                    "Last-Event-ID are no longer all held"
                )
            elif key < self.started_ns:
                # What happened before this process listened is known here only as the broker's
                # retained state, not event by event.
                reason = "this API started after that event; what happened in between is lost"
            if reason is not None:
                return self.oldest_seq - 1, Gap(reason, text, oldest, None)
            if not self._events:
                return self.last_seq, None
            # Not heard here yet, or heard long ago: from the first event at least as new,
            # else (newer than everything held) from what arrived just now.
            first = next((e.seq for e in self._events if e.key_ns >= key), self.last_seq)
            return self._overlap_start(first) - 1, None
        start = self._overlap_start(seq)
        # The client has its last event: send it again only inside a replayed overlap.
        return (seq if start == seq else start - 1), None

    def after(self, cursor: int, limit: int = BATCH) -> tuple[list[StreamEvent], Gap | None]:
        """Up to `limit` held events after `cursor`; a Gap if a slow reader fell behind the
        buffer. Bounded, so a client far behind does not copy the whole buffer at once."""
        if cursor >= self.last_seq:
            return [], None
        gap = None
        if cursor < self.oldest_seq - 1:
            missed = self.oldest_seq - 1 - cursor
            gap = Gap(
                f"this client fell {missed} events behind the server's buffer of "
                f"{self.capacity}; they were dropped",
                None,
                self._events[0].id,
                missed,
            )
            cursor = self.oldest_seq - 1
        start = cursor - self.oldest_seq + 1
        return list(itertools.islice(self._events, start, start + limit)), gap

    async def wait(self, cursor: int, timeout_s: float) -> None:
        """Return when an event after `cursor` exists, or after `timeout_s`."""
        if self.last_seq > cursor:
            return
        wakeup = self._wakeup
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), timeout_s)
