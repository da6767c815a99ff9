"""The thin I/O shells that deliver one notification: webhook (httpx), e-mail (smtplib), SMS
and Zalo ZNS (httpx), and the log. Each answers an `Outcome`: delivered, retry later (the
destination is down or rate-limits us), or dead (retrying cannot help: a dead letter).

How answers map to outcomes (pure, in `http_outcome`, `zns_outcome`, `smtp_outcome`):

    HTTP 2xx                                   delivered (ZNS: only with "error": 0)
    HTTP 408, 425, 429, 5xx; no connection     retry (Retry-After honoured)
    other HTTP 4xx                             dead (the request is wrong or not allowed)
    ZNS error in rate_limit_codes (-32)        retry after `rate_limit_s`
    ZNS error in retry_codes (-100)            retry
    any other ZNS error (-108 phone, -109 template, -112 data, -124 token, ...)   dead
    SMTP 4xx, connection lost                  retry
    SMTP 5xx (recipient refused, login failed) dead
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import os
import smtplib
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal, Protocol

import httpx
import orjson

from notify.render import Message, sms_text, zalo_phone, zns_template_data
from notify.routing import Channel
from notify.signing import HEADER_DELIVERY, HEADER_SIGNATURE, HEADER_TIMESTAMP, signature

log = logging.getLogger("notify")

Status = Literal["delivered", "retry", "dead"]
DEFAULT_ZNS_URL = "https://business.openapi.zalo.me/message/template"
ZNS_RATE_LIMIT_CODES = (-32,)
ZNS_RETRY_CODES = (-100,)
ZNS_TRACKING_ID_MAX = 48
USER_AGENT = "floodwatch-notify/0.1"


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    detail: str = ""
    retry_after_s: float | None = None


DELIVERED = Outcome("delivered")


@dataclass(frozen=True, slots=True)
class Outgoing:
    """What a channel needs to deliver one queued notification."""

    notification_id: str
    address: str
    message: Message
    body: bytes  # the webhook's JSON body


class Adapter(Protocol):
    def send(self, item: Outgoing) -> Outcome: ...

    def close(self) -> None: ...


# -- classification (pure) -----------------------------------------------------------------------


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return None if parsed is None else max(0.0, parsed.timestamp() - time.time())


def http_outcome(status: int, body: str, retry_after: str | None) -> Outcome:
    if 200 <= status < 300:
        return DELIVERED
    detail = f"HTTP {status}: {body[:200]}".strip()
    if status in (408, 425, 429) or status >= 500:
        return Outcome("retry", detail, _retry_after(retry_after))
    return Outcome("dead", detail)


def zns_outcome(
    doc: object,
    rate_limit_codes: tuple[int, ...] = ZNS_RATE_LIMIT_CODES,
    retry_codes: tuple[int, ...] = ZNS_RETRY_CODES,
    rate_limit_s: float = 60.0,
) -> Outcome:
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), int):
        return Outcome("retry", f"ZNS answered without an error code: {str(doc)[:200]}")
    code = int(doc["error"])
    if code == 0:
        return DELIVERED
    detail = f"ZNS error {code}: {doc.get('message', '')}"
    if code in rate_limit_codes:
        return Outcome("retry", detail + " (rate limited)", rate_limit_s)
    if code in retry_codes:
        return Outcome("retry", detail)
    return Outcome("dead", detail)


def smtp_outcome(code: int, text: str) -> Outcome:
    detail = f"SMTP {code}: {text[:200]}"
    return Outcome("retry", detail) if 400 <= code < 500 else Outcome("dead", detail)


def _ints(value: object, default: tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return tuple(int(v) for v in value)
    return default


# -- adapters ------------------------------------------------------------------------------------


class _Http:
    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.client = httpx.Client(
            timeout=channel.number("timeout_s", 10.0),
            headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
        )

    def close(self) -> None:
        self.client.close()

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> httpx.Response | Outcome:
        try:
            return self.client.post(url, content=body, headers=dict(headers))
        except httpx.HTTPError as exc:
            return Outcome("retry", f"{type(exc).__name__}: {exc}")


class WebhookAdapter(_Http):
    def send(self, item: Outgoing) -> Outcome:
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            HEADER_DELIVERY: item.notification_id,
            HEADER_TIMESTAMP: str(timestamp),
            HEADER_SIGNATURE: signature(self.channel.text("secret"), timestamp, item.body),
        }
        answer = self.post(self.channel.text("url"), item.body, headers)
        if isinstance(answer, Outcome):
            return answer
        return http_outcome(answer.status_code, answer.text, answer.headers.get("Retry-After"))


class SmsAdapter(_Http):
    """A generic HTTP JSON SMS gateway (README documents the request and answers)."""

    def send(self, item: Outgoing) -> Outcome:
        text = sms_text(
            item.message,
            int(self.channel.number("max_length", 160)),
            self.channel.flag("ascii", False),
        )
        body = orjson.dumps(
            {
                "to": item.address,
                "text": text,
                "sender": self.channel.text("sender", "Floodwatch"),
                "reference": item.notification_id,
            }
        )
        headers = {"Content-Type": "application/json"}
        token = self.channel.text("token")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        answer = self.post(self.channel.text("url"), body, headers)
        if isinstance(answer, Outcome):
            return answer
        return http_outcome(answer.status_code, answer.text, answer.headers.get("Retry-After"))


def zns_tracking_id(notification_id: str) -> str:
    """ZNS keeps a tracking id of its own length limit: a digest of the notification id."""
    return hashlib.sha256(notification_id.encode()).hexdigest()[:32]


def zns_request(channel: Channel, item: Outgoing) -> dict[str, object]:
    params = channel.options.get("params", {})
    assert isinstance(params, dict)
    return {
        "phone": zalo_phone(item.address),
        "template_id": channel.text("template_id"),
        "template_data": zns_template_data(item.message, params),
        "tracking_id": zns_tracking_id(item.notification_id),
    }


class ZnsAdapter(_Http):
    """Zalo Notification Service: a pre-approved template with named, length-limited params.

    An Official Account's access token lasts about a day; with `access_token_file` the token is
    read from that file whenever the file changes, so whatever refreshes it (a cron job with
    the OA's refresh token) needs no restart of the notifier."""

    def __init__(self, channel: Channel) -> None:
        super().__init__(channel)
        self._token = channel.text("access_token")
        self._token_file = channel.text("access_token_file")
        self._token_mtime = -1

    def token(self) -> str:
        if not self._token_file:
            return self._token
        try:
            mtime = os.stat(self._token_file).st_mtime_ns
            if mtime != self._token_mtime:
                with open(self._token_file, encoding="utf-8") as f:
                    self._token = f.read().strip()
                self._token_mtime = mtime
        except OSError as exc:
            log.warning("cannot read the ZNS access token file %s: %s", self._token_file, exc)
        return self._token

    def send(self, item: Outgoing) -> Outcome:
        body = orjson.dumps(zns_request(self.channel, item))
        headers = {"Content-Type": "application/json", "access_token": self.token()}
        answer = self.post(self.channel.text("url", DEFAULT_ZNS_URL), body, headers)
        if isinstance(answer, Outcome):
            return answer
        if not 200 <= answer.status_code < 300:
            return http_outcome(answer.status_code, answer.text, answer.headers.get("Retry-After"))
        try:
            doc = orjson.loads(answer.content)
        except orjson.JSONDecodeError:
            return Outcome("retry", f"ZNS answered with something not JSON: {answer.text[:200]}")
        return zns_outcome(
            doc,
            _ints(self.channel.options.get("rate_limit_codes"), ZNS_RATE_LIMIT_CODES),
            _ints(self.channel.options.get("retry_codes"), ZNS_RETRY_CODES),
            self.channel.number("rate_limit_s", 60.0),
        )


class EmailAdapter:
    """SMTP with optional STARTTLS and login; plain text with an HTML alternative."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def close(self) -> None:
        pass

    def message(self, item: Outgoing) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = item.message.title
        msg["From"] = self.channel.text("from")
        msg["To"] = item.address
        msg["Date"] = email.utils.formatdate(localtime=False)
        msg["Message-ID"] = f"<{zns_tracking_id(item.notification_id)}@floodwatch>"
        msg[HEADER_DELIVERY] = item.notification_id
        msg.set_content(item.message.text)
        msg.add_alternative(item.message.html, subtype="html")
        # After the parts exist: set_content moves Content-* headers into the first part.
        msg["Content-Language"] = item.message.language
        return msg

    def send(self, item: Outgoing) -> Outcome:
        ch = self.channel
        try:
            with smtplib.SMTP(
                ch.text("smtp_host"),
                int(ch.number("smtp_port", 25)),
                timeout=ch.number("timeout_s", 15),
            ) as smtp:
                if ch.flag("starttls", False):
                    # `ca_file`: the CA of a mail server with a private certificate.
                    cafile = ch.text("ca_file") or None
                    smtp.starttls(context=ssl.create_default_context(cafile=cafile))
                if ch.text("username"):
                    smtp.login(ch.text("username"), ch.text("password"))
                smtp.send_message(self.message(item))
        except smtplib.SMTPRecipientsRefused as exc:
            code, refusal = next(iter(exc.recipients.values()))
            return smtp_outcome(code, refusal.decode(errors="replace"))
        except smtplib.SMTPResponseException as exc:
            error = exc.smtp_error
            reason = error.decode(errors="replace") if isinstance(error, bytes) else str(error)
            return smtp_outcome(exc.smtp_code, reason)
        except (smtplib.SMTPException, OSError) as exc:
            return Outcome("retry", f"{type(exc).__name__}: {exc}")
        return DELIVERED


class LogAdapter:
    """Writes the notification to the notifier's log: the demo's channel, and a safe default."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def close(self) -> None:
        pass

    def send(self, item: Outgoing) -> Outcome:
        log.info("notification %s: %s", item.notification_id, item.message.sms)
        return DELIVERED


def adapter_for(channel: Channel) -> Adapter:
    if channel.type == "webhook":
        return WebhookAdapter(channel)
    if channel.type == "sms":
        return SmsAdapter(channel)
    if channel.type == "zalo_zns":
        return ZnsAdapter(channel)
    if channel.type == "email":
        return EmailAdapter(channel)
    return LogAdapter(channel)
