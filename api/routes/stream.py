"""`/v1/stream`: Server-Sent Events of live readings and alerts, resumable by Last-Event-ID."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Header
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.deps import ServicesDep, ViewerDep
from api.schemas import error_responses

router = APIRouter(tags=["stream"])

# Browsers wait this long before reconnecting after a drop (the SSE `retry` field).
RETRY_MS = 2000

DESCRIPTION = """\
Server-Sent Events (`text/event-stream`), each with an `id`:

- `reading`: a sensor has a new latest reading; `data` is the sensor's properties as in
  /v1/sensors (depth, time, level, battery, stale, ...). Older backfilled readings are not
  sent (they are in /v1/sensors/{id}/readings).
- `alert`: a sensor's alerts changed (retained `alerts/{id}` message); `data` has `sensor`,
  `alert_level`, `alert_state`, `alerts` (as in /v1/alerts) and `properties` (the sensor as
  in /v1/sensors, whose stale flag the engine's verdict can change).
- `gap`: sent first when `Last-Event-ID` asks for events the server no longer holds (it keeps
  the last `--stream-buffer` events, 10,000 by default, and forgets them on restart), or when
  a slow client falls behind that buffer; `data` says why and how many were missed (when
  known). Refetch /v1/sensors and /v1/alerts after it.

Reconnect with the last `id` seen in `Last-Event-ID`, and every event still held after it
is sent first, by this replica or any other behind the same front door: ids are made from the
event (its time and a digest of what it reports), so every replica gives an event the same id.
A resumed stream may repeat events from up to 2 s before that id (replicas hear messages in a
slightly different order); each is a snapshot of one sensor, so apply them in order.
Heartbeat comments (`: ping`) keep idle connections open.

At most `--max-streams` clients (50 by default) are served at once: one more is answered 503
with `Retry-After`. A client that takes no data for `--stream-send-timeout` seconds (15 by
default) is dropped; it resumes with `Last-Event-ID`.
"""


@router.get(
    "/v1/stream",
    summary="Live readings and alerts as Server-Sent Events",
    description=DESCRIPTION,
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}},
        **error_responses(401, 403),
        503: {
            "description": "Every one of the --max-streams streams is in use; retry after "
            "`Retry-After` seconds.",
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        },
    },
)
async def stream(
    services: ServicesDep,
    _: ViewerDep,
    last_event_id: Annotated[
        str | None,
        Header(max_length=64, description="The last event id received, to resume after it."),
    ] = None,
) -> EventSourceResponse:
    log = services.events
    metrics = services.metrics
    heartbeat = services.options.heartbeat_s

    async def events() -> AsyncIterator[ServerSentEvent | bytes]:
        metrics.sse_clients += 1
        try:
            cursor, gap = log.resume(last_event_id)
            yield ServerSentEvent(comment="floodwatch live stream", retry=RETRY_MS)
            while True:
                if gap is not None:
                    # No id: the client keeps its last event's id for its next resume.
                    yield ServerSentEvent(data=orjson.dumps(gap.as_json()).decode(), event="gap")
                held, gap = log.after(cursor)
                if gap is not None:
                    cursor = log.oldest_seq - 1
                    continue
                if held:
                    # One write for everything held, each event encoded once for all clients:
                    # a client's cost per event is a slice of bytes, not an encoding and a send.
                    yield b"".join(item.encoded for item in held)
                    cursor = held[-1].seq
                await log.wait(cursor, heartbeat)
        finally:
            metrics.sse_clients -= 1

    # A client that cannot take an event for --stream-send-timeout is dropped (it resumes by
    # Last-Event-ID); until then what it has not read waits in the server's bounded socket
    # buffers, as the server's write waits for it to drain.
    return EventSourceResponse(
        events(), ping=heartbeat, send_timeout=services.options.stream_send_timeout_s
    )
