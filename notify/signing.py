"""Webhook signatures: HMAC-SHA256 over `{timestamp}.{body}`, so a receiver can check that a
notification comes from Floodwatch and is recent. Pure.

Headers on every webhook request:
    X-Floodwatch-Delivery    the notification id (the same on every retry: deduplicate on it)
    X-Floodwatch-Timestamp   Unix seconds when this attempt was signed
    X-Floodwatch-Signature   sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>
"""

from __future__ import annotations

import hashlib
import hmac

HEADER_DELIVERY = "X-Floodwatch-Delivery"
HEADER_TIMESTAMP = "X-Floodwatch-Timestamp"
HEADER_SIGNATURE = "X-Floodwatch-Signature"
# Receivers should refuse a timestamp further than this from their clock (replays).
TOLERANCE_S = 300


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(
        secret.encode("utf-8"), str(timestamp).encode("ascii") + b"." + body, hashlib.sha256
    )
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str,
    timestamp: str,
    body: bytes,
    header: str,
    now_s: float,
    tolerance_s: int = TOLERANCE_S,
) -> bool:
    """True when `header` signs `body` at `timestamp` and the timestamp is recent."""
    if not timestamp.isdigit() or abs(now_s - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, int(timestamp), body), header)
