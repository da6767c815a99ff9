"""Security headers on every answer: a Content-Security-Policy, no MIME sniffing, no framing,
no referrer.

The IOC page loads only its own files (`/static`, the vendored Leaflet), so its policy is
`'self'` for everything, plus `data:` images (Leaflet's CSS) and the origins of optional map
tiles or WMS images an operator configured. Its markup uses style attributes (legend
swatches) but no inline script or `<style>` element, so only style *attributes* are allowed
inline. The API docs (/docs, /redoc, served offline by fastapi-offline) start from one inline
script each: their policy allows exactly that script by its SHA-256, computed from the page
being sent, plus the inline styles and blob: worker ReDoc needs.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Pages whose inline start-up script is allowed by hash (fastapi-offline's defaults).
DOC_PAGES = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
_INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc\s*=)[^>]*>(.*?)</script>", re.S | re.I)
_TEMPLATE_LABEL = re.compile(r"\{[^}]*\}")

FIXED_HEADERS = (
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
)


def image_origin(url: str) -> str | None:
    """The CSP source for images from a tile or WMS URL template: its scheme and host, with
    a `{s}`-style template label as the leftmost `*` (CSP allows a wildcard only there)."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    labels = parts.netloc.split(".")
    if _TEMPLATE_LABEL.search(labels[0]):
        labels[0] = "*"
    host = ".".join(labels)
    if "{" in host or "}" in host:
        # A template label deeper in the host cannot be written as a CSP source: allow the
        # scheme, the narrowest rule that still shows the operator's tiles.
        return f"{parts.scheme}:"
    return f"{parts.scheme}://{host}"


def page_policy(image_origins: Iterable[str] = ()) -> str:
    """The Content-Security-Policy of the IOC page and every API answer."""
    images = " ".join(["'self'", "data:", *dict.fromkeys(image_origins)])
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "style-src-attr 'unsafe-inline'",
            f"img-src {images}",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


def docs_policy(body: bytes) -> str:
    """The policy of an API docs page: its own inline scripts by hash, nothing else inline
    but styles (ReDoc injects `<style>` elements) and ReDoc's search worker."""
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(body)
    ]
    return "; ".join(
        (
            "default-src 'self'",
            " ".join(["script-src 'self'", *hashes]),
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "worker-src 'self' blob:",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


class SecurityHeaders:
    """ASGI middleware (not BaseHTTPMiddleware, which would buffer /v1/stream): sets the
    headers on every HTTP answer, keeping any a route set itself."""

    def __init__(self, app: ASGIApp, image_origins: Sequence[str] = ()) -> None:
        self.app = app
        self.policy = page_policy(image_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] in DOC_PAGES:
            await self._docs(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._set(message, self.policy)
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _docs(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A docs page is a few kB of HTML: hold it whole to hash its inline script.
        start: Message | None = None
        chunks: list[bytes] = []

        async def hold(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            self._set(start, docs_policy(body))
            await send(start)
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, hold)

    @staticmethod
    def _set(message: Message, policy: str) -> None:
        headers = MutableHeaders(scope=message)
        headers.setdefault("content-security-policy", policy)
        for name, value in FIXED_HEADERS:
            headers.setdefault(name, value)


def configured_image_origins(*urls: str) -> tuple[str, ...]:
    """The image origins of the operator's tile and WMS URLs (empty settings add none)."""
    origins = (image_origin(url.strip()) for url in urls)
    return tuple(dict.fromkeys(o for o in origins if o is not None))
