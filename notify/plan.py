"""From "tell this recipient" to queued deliveries: one per channel of the recipient, rendered in
the recipient's language, with a deterministic notification id and quiet hours applied. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import orjson

from alerts.events import AlertEvent
from floodwatch.contract import iso_time
from notify.channels import Outgoing
from notify.model import AlertFacts, Send
from notify.render import Message, render
from notify.routing import ADDRESS_FIELD, Recipient, Routing, quiet_until
from notify.store import Delivery, NewDelivery

WEBHOOK_TYPE = "floodwatch.notification"


def notification_id(send: Send, channel: str) -> str:
    """The same event for the same recipient and channel always gets the same id."""
    facts = send.facts
    if send.cause:
        return f"{send.cause}|{send.recipient}|{channel}"
    cause = (
        f"{facts.alert_id}:unacknowledged:{send.tier}"
        if send.message == "unacknowledged"
        else facts.event_id
    )
    return f"{cause}|{send.recipient}|{channel}"


def iso(time_ns: int) -> str:
    return iso_time(time_ns)


def alert_doc(facts: AlertFacts) -> dict[str, object]:
    doc: dict[str, object] = {
        "alert_id": facts.alert_id,
        "event_id": facts.event_id,
        "seq": facts.seq,
        "sensor": facts.sensor_id,
        "sensor_name": facts.sensor_name,
        "street": facts.street,
        "ward": facts.ward,
        "kind": facts.kind,
        "change": facts.change,
        "state": facts.state,
        "level": facts.level,
        "level_name": facts.level_name,
        "since": iso(facts.since_ns),
        "at": iso(facts.at_ns),
    }
    for key in ("depth_cm", "detail", "battery_v", "rise_cm", "peak_cm", "who", "note"):
        value = getattr(facts, key)
        if value not in (None, ""):
            doc[key] = value
    return doc


def webhook_body(send: Send, nid: str, message: Message) -> bytes:
    doc: dict[str, object] = {
        "type": WEBHOOK_TYPE,
        "version": 1,
        "notification_id": nid,
        "message": send.message,
        "tier": send.tier,
        "recipient": send.recipient,
        "language": message.language,
        "title": message.title,
        "text": message.text,
        "link": message.fields["link"],
        "alert": alert_doc(send.facts),
    }
    if send.unacked_min is not None:
        doc["unacknowledged_min"] = send.unacked_min
    return orjson.dumps(doc)


def address_of(recipient: Recipient, channel_type: str) -> str:
    field = ADDRESS_FIELD.get(channel_type)  # type: ignore[call-overload]
    return "" if field is None else str(getattr(recipient, field))


def plan(
    sends: Sequence[Send],
    routing: Routing,
    page_url: str,
    now_ns: int,
    suppressed: Mapping[str, str] | None = None,
) -> list[NewDelivery]:
    """Queued deliveries for these sends (a recipient no longer in the file is skipped).

    `suppressed`: sensor id -> why its notifications go to nobody (maintenance); those are
    recorded, never sent."""
    suppressed = suppressed or {}
    held_until = quiet_until(routing, now_ns)
    out: list[NewDelivery] = []
    for send in sends:
        recipient = routing.recipients.get(send.recipient)
        if recipient is None:
            continue
        message = render(send, recipient.language, routing.timezone, page_url)
        for channel_name in recipient.channels:
            channel = routing.channels[channel_name]
            nid = notification_id(send, channel_name)
            address = address_of(recipient, channel.type)
            payload = {
                "address": address,
                "recipient_name": recipient.display,
                "message": {
                    "language": message.language,
                    "title": message.title,
                    "text": message.text,
                    "html": message.html,
                    "sms": message.sms,
                    "fields": dict(message.fields),
                },
                "body": webhook_body(send, nid, message).decode(),
            }
            out.append(
                NewDelivery(
                    notification_id=nid,
                    dest=f"{channel_name}|{address}",
                    channel=channel_name,
                    recipient=send.recipient,
                    alert_id=send.facts.alert_id,
                    message=send.message,
                    tier=send.tier,
                    payload=orjson.dumps(payload),
                    not_before_ns=held_until if (send.quiet and held_until) else 0,
                    suppressed=suppressed.get(send.facts.sensor_id, ""),
                )
            )
    return out


def outgoing(delivery: Delivery) -> Outgoing:
    doc = orjson.loads(delivery.payload)
    m = doc["message"]
    message = Message(m["language"], m["title"], m["text"], m["html"], m["sms"], m["fields"])
    return Outgoing(delivery.notification_id, doc["address"], message, doc["body"].encode())


_TEXT_FIELDS = ("event_id", "alert_id", "sensor_id", "street", "kind", "change", "state")
_INT_FIELDS = ("seq", "at_ns")


def event_from_payload(payload: bytes) -> AlertEvent | None:
    """An alert event from its MQTT payload, or None if it is not one (logged by the caller).

    Only flood events carry `level` and `level_name` (CONTRACT section 3): a rising, stale,
    battery or fault event has null there and is as much an alert event."""
    try:
        event = AlertEvent.from_json(payload)
    except (ValueError, TypeError):
        return None
    if not all(isinstance(getattr(event, f), str) for f in _TEXT_FIELDS):
        return None
    if not all(type(getattr(event, f)) is int for f in _INT_FIELDS):
        return None
    level_ok = type(event.level) is int
    name_ok = isinstance(event.level_name, str)
    if event.kind != "flood":
        level_ok = level_ok or event.level is None
        name_ok = name_ok or event.level_name is None
    if not (level_ok and name_ok):
        return None
    return event
