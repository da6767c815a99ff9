"""The last N live events, numbered, so a Server-Sent Events client can resume where it was.

Event ids are `{boot}-{seq}`: `seq` counts up from 1 in this process and `boot` is random per
process, so an id from before a restart is recognised as such rather than misread. A client
that resumes (`Last-Event-ID`) gets every event after its id that is still held; if it asks
for more than is held (it was away too long, the server restarted, or the id is not ours) it
is told so with a `gap` event and then gets everything that is held.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import secrets
from collections import deque
from dataclasses import dataclass

from sse_starlette import ServerSentEvent

_ID = re.compile(r"([0-9a-f]{8})-([0-9]{1,18})")
# Most events handed to one client per step; it asks again at once when more are held.
BATCH = 256


@dataclass(frozen=True, slots=True)
class StreamEvent:
    seq: int
    id: str
    event: str  # "reading", "alert", "sensor" or "notification"
    data: str  # one line of JSON
    # The event as text/event-stream bytes, encoded once for every client that is sent it.
    encoded: bytes = b""


@dataclass(frozen=True, slots=True)
class Gap:
    """What a resuming client missed and cannot get back."""

    reason: str
    last_event_id: str
    oldest_event_id: str | None
    missed: int | None  # None when unknown (another process's ids)

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

    def __init__(self, capacity: int, boot: str | None = None) -> None:
        self.capacity = capacity
        self.boot = boot or secrets.token_hex(4)
        self._events: deque[StreamEvent] = deque(maxlen=capacity)
        self.last_seq = 0
        self._wakeup = asyncio.Event()

    def __len__(self) -> int:
        return len(self._events)

    @property
    def oldest_seq(self) -> int:
        """The seq of the oldest event held (last_seq + 1 when none is)."""
        return self.last_seq - len(self._events) + 1

    def event_id(self, seq: int) -> str:
        return f"{self.boot}-{seq}"

    def publish(self, event: str, data: str) -> StreamEvent:
        self.last_seq += 1
        event_id = self.event_id(self.last_seq)
        encoded = ServerSentEvent(data=data, event=event, id=event_id).encode()
        item = StreamEvent(self.last_seq, event_id, event, data, encoded)
        self._events.append(item)
        # Wake every waiting client at once, then arm a fresh event for the next publish.
        self._wakeup.set()
        self._wakeup = asyncio.Event()
        return item

    def resume(self, last_event_id: str | None) -> tuple[int, Gap | None]:
        """Where a client continues (send events with seq > cursor), and what it missed."""
        if not last_event_id:
            return self.last_seq, None
        oldest = self.event_id(self.oldest_seq) if self._events else None
        match = _ID.fullmatch(last_event_id.strip())
        if match is None or match.group(1) != self.boot:
            reason = (
                "the server restarted since that event; what happened in between is lost"
                if match is not None
                else "Last-Event-ID is not an id this server gave out"
            )
            return self.oldest_seq - 1, Gap(reason, last_event_id[:64], oldest, None)
        seq = int(match.group(2))
        if seq > self.last_seq:
            return self.last_seq, Gap(
                "Last-Event-ID is ahead of this server's events", last_event_id, oldest, None
            )
        if seq < self.oldest_seq - 1:
            missed = self.oldest_seq - 1 - seq
            return self.oldest_seq - 1, Gap(
                f"the server keeps only the last {self.capacity} events; {missed} were dropped",
                last_event_id,
                oldest,
                missed,
            )
        return seq, None

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
                self.event_id(cursor),
                self.event_id(self.oldest_seq),
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
