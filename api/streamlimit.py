"""A cap on concurrent `/v1/stream` clients: past `max_streams`, a new one is answered 503 with
`Retry-After`, before any work is done for it.

Plain ASGI around the whole app: a stream counts from the moment its request arrives until its
response ends however it ends (finished, dropped as too slow, client gone), so the count can
neither leak nor be overrun by clients arriving together.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

STREAM_PATH = "/v1/stream"
# A client refused now should not come back at once: streams end when clients leave, which
# is rarely within seconds.
RETRY_AFTER_S = 30


class StreamLimit:
    def __init__(self, app: ASGIApp, max_streams: int, path: str = STREAM_PATH) -> None:
        self.app = app
        self.max_streams = max_streams
        self.path = path
        self.active = 0
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        if self.active >= self.max_streams:
            self.refused += 1
            await self._refuse(send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1

    async def _refuse(self, send: Send) -> None:
        body = orjson.dumps(
            {
                "detail": f"this API serves at most {self.max_streams} live streams at once and "
                f"all are in use; retry in {RETRY_AFTER_S} s, or ask its operator to raise "
                "--max-streams"
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(RETRY_AFTER_S).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
