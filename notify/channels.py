"""The thin I/O shells that deliver one notification: webhook (httpx), e-mail (smtplib), SMS,
Zalo ZNS and Zalo Official Account messages (httpx), and the log. Each answers an `Outcome`:
delivered, retry later (the destination is down or rate-limits us), or dead (retrying cannot
help: a dead letter an operator sees and can replay).

How answers map to outcomes (pure, in `http_outcome`, `zalo_outcome`, `smtp_outcome`):

    HTTP 2xx                                   delivered (Zalo: only with "error": 0)
    HTTP 408, 425, 429, 5xx; no connection     retry (Retry-After honoured)
    other HTTP 4xx                             dead (the request is wrong or not allowed)
    Zalo error in rate_limit_codes             retry after `rate_limit_s`
    Zalo error in retry_codes                  retry
    any other Zalo error                       dead (the tables below say which codes mean what)
    SMTP 4xx, connection lost                  retry
    SMTP 5xx (recipient refused, login failed) dead

Zalo's codes, and where each default comes from (a channel may override both lists with
`rate_limit_codes` / `retry_codes` when its contract with Zalo says otherwise):

ZNS, https://zalo.cloud/zns/guidelines/handle-error-code ("Cách xử lý mã lỗi"):
     0   Success                                       delivered
  -100   Unknown error, "try again later"              retry
  -101..-105  application invalid / not existing / not activated / bad secret / no OA linked
  -106   method unsupported;   -107 message id invalid
  -108   phone number invalid (84xxx, 0xxx accepted);  -109 template id invalid
  -110   Zalo version unsupported (the user must update the app)
  -111   template data empty;  -112 template data invalid          all dead
  -32    rate limit: NOT on the part of that page we could read; kept as the default rate-limit
         code from the earlier adapter, configurable (see the report of branch notify13).

Zalo OA consultation ("tư vấn") text message, POST {url} with header `access_token` and body
{"recipient": {"user_id"}, "message": {"text"}}, text at most 2,000 characters; answer
{"error": 0, "message": "Success", "data": {...}}. Zalo's page is
https://developers.zalo.me/docs/official-account/tin-nhan/tin-tu-van/gui-tin-tu-van-dang-van-ban
(its text could not be read here); the shape, the limit and the answer are as restated by
https://developers-zns.goby.vn/zalo-follower-api/gui-tin-nhan-van-ban.
Zalo's own OA error table could not be read either, so no OA code is assumed to be worth
retrying: error 0 is delivered, -32 (the rate-limit default shared with ZNS, unverified) is
retried after `rate_limit_s`, HTTP 429/5xx are retried, and every other code is a dead letter
an operator sees (with Zalo's message) and can replay, or adds to `retry_codes`.
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

from notify.render import (
    ZALO_OA_TEXT_MAX,
    Message,
    sms_text,
    zalo_oa_text,
    zalo_phone,
    zns_template_data,
)
from notify.routing import Channel
from notify.signing import HEADER_DELIVERY, HEADER_SIGNATURE, HEADER_TIMESTAMP, signature

log = logging.getLogger("notify")

Status = Literal["delivered", "retry", "dead"]
# The tables in the module docstring say where each default comes from.
ZNS_RATE_LIMIT_CODES = (-32,)
ZNS_RETRY_CODES = (-100,)
ZALO_OA_RATE_LIMIT_CODES = (-32,)
ZALO_OA_RETRY_CODES: tuple[int, ...] = ()
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


def zalo_outcome(
    doc: object,
    service: str,
    rate_limit_codes: tuple[int, ...],
    retry_codes: tuple[int, ...],
    rate_limit_s: float = 60.0,
) -> Outcome:
    """A Zalo answer (ZNS or OA: both carry `error`, 0 for success, and `message`)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), int):
        return Outcome("retry", f"{service} answered without an error code: {str(doc)[:200]}")
    code = int(doc["error"])
    if code == 0:
        return DELIVERED
    detail = f"{service} error {code}: {doc.get('message', '')}"
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


def zalo_oa_request(channel: Channel, item: Outgoing) -> dict[str, object]:
    """An OA consultation text message to a follower's user_id, within the text limit."""
    limit = int(channel.number("max_length", ZALO_OA_TEXT_MAX))
    return {
        "recipient": {"user_id": item.address},
        "message": {"text": zalo_oa_text(item.message, limit)},
    }


class _ZaloAdapter(_Http):
    """What ZNS and OA messages share: the OA's access token in the `access_token` header, a
    JSON body, and an answer with Zalo's `error` code.

    An Official Account's access token lasts about a day; with `access_token_file` the token is
    read from that file whenever the file changes, so whatever refreshes it (a cron job with
    the OA's refresh token) needs no restart of the notifier."""

    service = "Zalo"
    rate_limit_codes: tuple[int, ...] = ()
    retry_codes: tuple[int, ...] = ()

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
            log.warning("cannot read the Zalo access token file %s: %s", self._token_file, exc)
        return self._token

    def request(self, item: Outgoing) -> dict[str, object]:
        raise NotImplementedError

    def send(self, item: Outgoing) -> Outcome:
        body = orjson.dumps(self.request(item))
        headers = {"Content-Type": "application/json", "access_token": self.token()}
        answer = self.post(self.channel.text("url"), body, headers)
        if isinstance(answer, Outcome):
            return answer
        if not 200 <= answer.status_code < 300:
            return http_outcome(answer.status_code, answer.text, answer.headers.get("Retry-After"))
        try:
            doc = orjson.loads(answer.content)
        except orjson.JSONDecodeError:
            return Outcome(
                "retry", f"{self.service} answered with something not JSON: {answer.text[:200]}"
            )
        return zalo_outcome(
            doc,
            self.service,
            _ints(self.channel.options.get("rate_limit_codes"), self.rate_limit_codes),
            _ints(self.channel.options.get("retry_codes"), self.retry_codes),
            self.channel.number("rate_limit_s", 60.0),
        )


class ZnsAdapter(_ZaloAdapter):
    """Zalo Notification Service: a pre-approved template with named, length-limited params,
    to a phone number."""

    service = "ZNS"
    rate_limit_codes = ZNS_RATE_LIMIT_CODES
    retry_codes = ZNS_RETRY_CODES

    def request(self, item: Outgoing) -> dict[str, object]:
        return zns_request(self.channel, item)


class ZaloOaAdapter(_ZaloAdapter):
    """A Zalo Official Account's consultation text message to a user who follows the OA."""

    service = "Zalo OA"
    rate_limit_codes = ZALO_OA_RATE_LIMIT_CODES
    retry_codes = ZALO_OA_RETRY_CODES

    def request(self, item: Outgoing) -> dict[str, object]:
        return zalo_oa_request(self.channel, item)


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
    if channel.type == "zalo_oa":
        return ZaloOaAdapter(channel)
    if channel.type == "email":
        return EmailAdapter(channel)
    return LogAdapter(channel)
