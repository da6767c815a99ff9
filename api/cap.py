"""Alerts as CAP 1.2 (OASIS Common Alerting Protocol) messages, in an Atom feed.

A CAP message describes one alert at one moment, so each alert becomes a chain of messages:
`Alert` when it is raised, `Update` when its level changes (referencing the earlier
messages), `Cancel` when it clears (referencing them too). `cap_messages` derives the chains
from the alert engine's stored events alone, so every API process, before and after a
restart, issues the same identifiers, times and references: an importer never sees an alert
announced twice or an identifier reused. Sensor-health alerts (stale, battery_low, fault)
are for operators, not the public, and are left out.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from api.alerts import AlertRecord
from api.times import WARD_ZONE, iso, zone
from floodwatch.registry import Registry, Sensor

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
ATOM_NS = "http://www.w3.org/2005/Atom"
CAP_MEDIA_TYPE = "application/cap+xml"
ATOM_MEDIA_TYPE = "application/atom+xml"
ET.register_namespace("cap", CAP_NS)
ET.register_namespace("", ATOM_NS)

CAP_SENDER = "floodwatch.an-khanh"
MsgType = Literal["Alert", "Update", "Cancel"]
TECHNICAL_KINDS = frozenset({"stale", "battery_low", "fault"})
PUBLIC_KINDS = ("flood", "rising")
# Cancelled chains stay in the feed this long, so importers polling it see the Cancel.
KEEP_CANCELLED_NS = 24 * 3600 * 10**9
# CAP severity by ladder rung: street 1 flooded .. 4 closed; tide alarm I .. III.
STREET_SEVERITY = ("Unknown", "Minor", "Moderate", "Severe", "Extreme")
TIDE_SEVERITY = ("Unknown", "Minor", "Moderate", "Severe")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")
_WARD = zone(WARD_ZONE)


def cap_time(time_ns: int) -> str:
    """CAP's dateTime: seconds and an explicit offset (the XSD allows no fraction and no Z)."""
    text = iso(time_ns, _WARD)
    return text[:19] + text[-6:]


def severity(record: AlertRecord, sensor: Sensor | None) -> str:
    if record.kind == "rising":
        return "Moderate"
    ladder = TIDE_SEVERITY if sensor is not None and sensor.kind == "tide" else STREET_SEVERITY
    level = record.level or 0
    return ladder[min(level, len(ladder) - 1)] if level > 0 else "Unknown"


@dataclass(frozen=True, slots=True)
class CapMessage:
    identifier: str
    msg_type: MsgType
    sent_ns: int
    references: tuple[str, ...]  # "sender,identifier,sent" of the earlier messages
    record: AlertRecord


def cap_messages(changes: Sequence[AlertRecord], now_ns: int, sender: str) -> list[CapMessage]:
    """The latest CAP message of every public alert's chain, newest first.

    `changes` are the engine's stored events (AlertSource.changes), each the alert's state
    after the change, with the engine's `seq` and `change` in its payload. Acknowledgements
    add no message, and only a flood alert's level changes make an Update; a chain whose
    Cancel is older than KEEP_CANCELLED_NS is dropped. An alert raised before the events reach
    back (30 days) starts at its first one there.
    """
    by_alert: dict[str, list[AlertRecord]] = {}
    for record in changes:
        if record.kind not in TECHNICAL_KINDS:
            by_alert.setdefault(record.alert_id, []).append(record)
    latest: list[CapMessage] = []
    for alert_id, records in by_alert.items():
        records.sort(key=lambda r: (_seq(r), r.changed_at_ns or 0))
        chain: list[CapMessage] = []
        for record in records:
            if record.payload.get("change") == "acknowledged":
                continue  # an operator's note, not news for the public
            last = chain[-1] if chain else None
            msg_type: MsgType
            if last is None or last.msg_type == "Cancel":
                if not record.active:
                    continue
                msg_type, chain = "Alert", []
            elif record.active and record.kind == "flood" and record.level != last.record.level:
                # Only a flood alert has levels of its own; the others carry the sensor's.
                msg_type = "Update"
            elif not record.active:
                msg_type = "Cancel"
            else:
                continue
            sent = record.changed_at_ns or now_ns
            if last is not None and msg_type != "Alert":
                sent = max(sent, last.sent_ns + 10**9)  # CAP times have whole seconds
            refs = tuple(f"{sender},{m.identifier},{cap_time(m.sent_ns)}" for m in chain)
            number = _seq(record) or len(chain) + 1
            identifier = f"floodwatch.{_UNSAFE.sub('_', alert_id)}.{number}"
            chain.append(CapMessage(identifier, msg_type, sent, refs, record))
        if chain and not (
            chain[-1].msg_type == "Cancel" and now_ns - chain[-1].sent_ns > KEEP_CANCELLED_NS
        ):
            latest.append(chain[-1])
    return sorted(latest, key=lambda m: -m.sent_ns)


def _seq(record: AlertRecord) -> int:
    seq = record.payload.get("seq")
    return seq if type(seq) is int else 0


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    element = ET.SubElement(parent, f"{{{CAP_NS}}}{tag}")
    if text is not None:
        element.text = text
    return element


def _event_name(record: AlertRecord, sensor: Sensor | None) -> str:
    if record.kind == "rising":
        return "Rapidly rising water"
    if sensor is not None and sensor.kind == "tide":
        return "High river level"
    return "Street flooding"


def cap_alert(message: CapMessage, sender: str, registry: Registry) -> ET.Element:
    """One CAP 1.2 <alert> element for a message."""
    record = message.record
    sensor = registry.get(record.sensor_id)
    alert = ET.Element(f"{{{CAP_NS}}}alert")
    _sub(alert, "identifier", message.identifier)
    _sub(alert, "sender", sender)
    _sub(alert, "sent", cap_time(message.sent_ns))
    _sub(alert, "status", "Actual")
    _sub(alert, "msgType", message.msg_type)
    _sub(alert, "scope", "Public")
    if message.references:
        _sub(alert, "references", " ".join(message.references))
    info = _sub(alert, "info")
    _sub(info, "language", "en")
    _sub(info, "category", "Met")
    _sub(info, "event", _event_name(record, sensor))
    cancelled = message.msg_type == "Cancel"
    level = record.level or 0
    _sub(info, "responseType", "AllClear" if cancelled else ("Avoid" if level >= 3 else "Monitor"))
    _sub(info, "urgency", "Past" if cancelled else "Immediate")
    _sub(info, "severity", severity(record, sensor))
    _sub(info, "certainty", "Observed")
    _sub(info, "senderName", "Floodwatch, An Khanh ward, Ho Chi Minh City")
    street = sensor.street if sensor is not None else record.sensor_id
    name = record.level_name or record.kind
    headline = f"{street}: {name}" + (" (cleared)" if cancelled else "")
    _sub(info, "headline", headline)
    _sub(
        info,
        "description",
        f"Sensor {record.sensor_id} ({sensor.name if sensor else 'unknown'}) reports "
        f"{name}, level {level}; alert {record.alert_id} is {record.state or 'unknown'}.",
    )
    for value_name, value in (
        ("floodwatch:alert_id", record.alert_id),
        ("floodwatch:sensor", record.sensor_id),
        ("floodwatch:level", str(level)),
    ):
        parameter = _sub(info, "parameter")
        _sub(parameter, "valueName", value_name)
        _sub(parameter, "value", value)
    area = _sub(info, "area")
    ward = sensor.ward if sensor is not None else "An Khanh"
    _sub(area, "areaDesc", f"{street}, {ward} ward, Ho Chi Minh City")
    if sensor is not None:
        # CAP circle: "lat,lon radius_km"; 100 m around the sensor.
        _sub(area, "circle", f"{sensor.lat:.5f},{sensor.lon:.5f} 0.1")
    return alert


def atom_feed(
    messages: Sequence[CapMessage], sender: str, registry: Registry, now_ns: int
) -> bytes:
    """An Atom feed with one entry per CAP message, the <alert> inline in <content>."""
    feed = ET.Element(f"{{{ATOM_NS}}}feed")
    ET.SubElement(feed, f"{{{ATOM_NS}}}id").text = f"urn:floodwatch:{sender}:alerts"
    ET.SubElement(feed, f"{{{ATOM_NS}}}title").text = "Floodwatch alerts, An Khanh ward"
    ET.SubElement(feed, f"{{{ATOM_NS}}}updated").text = cap_time(now_ns)
    author = ET.SubElement(feed, f"{{{ATOM_NS}}}author")
    ET.SubElement(author, f"{{{ATOM_NS}}}name").text = "Floodwatch"
    for message in messages:
        entry = ET.SubElement(feed, f"{{{ATOM_NS}}}entry")
        ET.SubElement(entry, f"{{{ATOM_NS}}}id").text = f"urn:floodwatch:cap:{message.identifier}"
        alert = cap_alert(message, sender, registry)
        headline = alert.find(f"{{{CAP_NS}}}info/{{{CAP_NS}}}headline")
        title = headline.text if headline is not None and headline.text else message.identifier
        ET.SubElement(entry, f"{{{ATOM_NS}}}title").text = f"{message.msg_type}: {title}"
        ET.SubElement(entry, f"{{{ATOM_NS}}}updated").text = cap_time(message.sent_ns)
        content = ET.SubElement(entry, f"{{{ATOM_NS}}}content", {"type": CAP_MEDIA_TYPE})
        content.append(alert)
    body: bytes = ET.tostring(feed, encoding="utf-8", xml_declaration=True)
    return body
