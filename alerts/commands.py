"""Operators' acknowledgements as the alert engine's command protocol (CONTRACT section 3):
the request on `commands/ack` and the reply on its `reply_to` topic, built and parsed here by
both sides (ingest, which applies them; the API and `python -m ingest ack`, which ask).

A refusal carries a `code` for programs (the API maps it to an HTTP status) and an `error`
sentence for people. An acknowledgement of an acknowledged alert is no refusal: the reply is
ok with no events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import orjson

from alerts.events import AlertEvent
from floodwatch.notes import note_problem

AckErrorCode = Literal[
    "bad_request",  # not JSON, or a field missing, of the wrong type or too long
    "unknown_alert",  # no open alert has this id
    "not_ready",  # the engine has not restored its state yet (InfluxDB unreachable at start)
]
ACK_ERROR_CODES: tuple[AckErrorCode, ...] = get_args(AckErrorCode)
MAX_WHO_CHARS = 200
MAX_NOTE_CHARS = 2000


@dataclass(frozen=True, slots=True)
class AckRequest:
    alert_id: str
    who: str  # the operator
    note: str
    reply_to: str  # where the answer goes; "" for none

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "alert_id": self.alert_id,
                "who": self.who,
                "note": self.note,
                "reply_to": self.reply_to,
            }
        )


@dataclass(frozen=True, slots=True)
class AckReply:
    """The answer: `ok` with the events the acknowledgement made, or a refusal."""

    ok: bool
    events: tuple[AlertEvent, ...] = ()
    code: AckErrorCode | None = None
    error: str = ""

    @classmethod
    def refused(cls, code: AckErrorCode, error: str) -> AckReply:
        return cls(False, (), code, error)

    def to_json(self) -> bytes:
        if self.ok:
            return orjson.dumps({"ok": True, "events": [e.to_dict() for e in self.events]})
        return orjson.dumps({"ok": False, "code": self.code, "error": self.error})

    @classmethod
    def from_json(cls, payload: bytes) -> AckReply:
        """ValueError if the payload is not a reply this version understands."""
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"the acknowledgement reply is not JSON: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("ok"), bool):
            raise ValueError("the acknowledgement reply is not an object with a boolean `ok`")
        if doc["ok"]:
            events = doc.get("events", [])
            if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
                raise ValueError("the acknowledgement reply's `events` is not a list of objects")
            return cls(True, tuple(AlertEvent.from_dict(e) for e in events))
        code = doc.get("code")
        if code not in ACK_ERROR_CODES:
            raise ValueError(f"the acknowledgement reply has an unknown error code {code!r}")
        error = doc.get("error")
        return cls.refused(code, error if isinstance(error, str) else str(code))


def parse_ack_request(payload: bytes) -> tuple[str, AckRequest | AckReply]:
    """(reply topic, the request or the refusal to send back); never raises. The reply topic
    is "" when the request names none usable (a wildcard is never published to)."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return "", AckReply.refused("bad_request", "the request is not JSON")
    if not isinstance(doc, dict):
        return "", AckReply.refused("bad_request", "the request must be a JSON object")
    reply_to = doc.get("reply_to")
    reply = reply_to if isinstance(reply_to, str) and not {"#", "+"} & set(reply_to) else ""
    alert_id, who, note = doc.get("alert_id"), doc.get("who"), doc.get("note", "")
    if not isinstance(alert_id, str) or not isinstance(who, str) or not who.strip():
        return reply, AckReply.refused(
            "bad_request", "alert_id and who (the operator) are required"
        )
    if len(who) > MAX_WHO_CHARS:
        return reply, AckReply.refused(
            "bad_request", f"who must be at most {MAX_WHO_CHARS} characters"
        )
    if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
        return reply, AckReply.refused(
            "bad_request", f"note must be text of at most {MAX_NOTE_CHARS} characters"
        )
    problem = note_problem(note)
    if problem is not None:
        # Checked before the engine changes anything: an alert acknowledged in memory whose
        # event cannot be stored would be lost, and a retry answered "already acknowledged".
        return reply, AckReply.refused("bad_request", problem)
    return reply, AckRequest(alert_id, who.strip(), note, reply)
