"""Alerts as CAP 1.2 (OASIS Common Alerting Protocol) messages, in an Atom feed.

Each message carries two <info> blocks, Vietnamese (vi-VN) first, then English (en-US), with
the same facts: what it is (a flood, rising water, a high river), the depth in cm, what to
do, and when the message expires. Words come from the message catalogues (api.i18n).

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

from api import i18n
from api.alerts import AlertRecord
from api.i18n import Lang
from api.times import WARD_ZONE, iso, zone
from floodwatch.registry import Registry, Sensor, ascii_name

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
# When an importer should drop a message it has heard nothing more about: an active alert is
# re-sent (Update) only when its level changes, so its expiry is generous; a Cancel soon.
EXPIRES_NS = 6 * 3600 * 10**9
CANCEL_EXPIRES_NS = 3600 * 10**9
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


def _depth(record: AlertRecord) -> float | None:
    depth = record.payload.get("depth_cm")
    return float(depth) if isinstance(depth, int | float) and not isinstance(depth, bool) else None


def _local_time(time_ns: int, lang: Lang) -> str:
    """A time as people in the ward read it: 18:05 26/11/2026 (vi) or 2026-11-26 18:05 (en)."""
    text = iso(time_ns, _WARD)  # 2026-11-26T18:05:00.000+07:00
    day, clock = text[:10], text[11:16]
    return f"{clock} {day[8:10]}/{day[5:7]}/{day[:4]}" if lang == "vi" else f"{day} {clock}"


def _topic(record: AlertRecord, sensor: Sensor | None) -> str:
    """Which words an alert gets: a rising alert is not a flood, a gauge's is the river's."""
    if record.kind == "rising":
        return "rising"
    return "tide" if sensor is not None and sensor.kind == "tide" else "flood"


def _instruction(topic: str, level: int, cancelled: bool) -> str:
    if cancelled:
        return "cap.instruction.all_clear"
    if topic in ("rising", "tide"):
        return f"cap.instruction.{topic}"
    return "cap.instruction.avoid" if level >= 3 else "cap.instruction.monitor"


def _info(alert: ET.Element, message: CapMessage, sensor: Sensor | None, lang: Lang) -> ET.Element:
    """One <info> block in `lang`: the same facts (depth in cm, instruction, expiry) in words."""
    record = message.record
    cancelled = message.msg_type == "Cancel"
    level = record.level or 0
    topic = _topic(record, sensor)
    english = lang == "en"
    if sensor is not None:
        street = sensor.street_en if english else sensor.street
        name = sensor.name_en if english else sensor.name
        ward = ascii_name(sensor.ward) if english else sensor.ward
    else:
        street = name = record.sensor_id
        ward = "An Khanh" if english else "An Khánh"
    depth = _depth(record)
    depth_text = f"{depth:.0f}" if depth is not None else i18n.text(lang, "cap.depth_unknown")
    level_words = i18n.level_label(lang, sensor.kind if sensor else "street", record.level_name)
    event = i18n.text(lang, f"cap.event.{topic}")
    at = record.payload.get("reading_time_ns")
    when = _local_time(at if type(at) is int else message.sent_ns, lang)
    values = {
        "street": street,
        "name": name,
        "sensor": record.sensor_id,
        "depth": depth_text,
        "level": level_words,
        "event": event,
        "time": when,
    }
    info = _sub(alert, "info")
    _sub(info, "language", i18n.CAP_LANGUAGE[lang])
    _sub(info, "category", "Met")
    _sub(info, "event", event)
    _sub(info, "responseType", "AllClear" if cancelled else ("Avoid" if level >= 3 else "Monitor"))
    _sub(info, "urgency", "Past" if cancelled else "Immediate")
    _sub(info, "severity", severity(record, sensor))
    _sub(info, "certainty", "Observed")
    _sub(
        info,
        "expires",
        cap_time(message.sent_ns + (CANCEL_EXPIRES_NS if cancelled else EXPIRES_NS)),
    )
    _sub(info, "senderName", i18n.text(lang, "cap.sender_name"))
    headline = "cap.headline.cleared" if cancelled else f"cap.headline.{topic}"
    _sub(info, "headline", i18n.text(lang, headline, **values))
    description = "cap.description.cleared" if cancelled else f"cap.description.{topic}"
    _sub(info, "description", i18n.text(lang, description, **values))
    _sub(info, "instruction", i18n.text(lang, _instruction(topic, level, cancelled)))
    for value_name, value in (
        ("floodwatch:alert_id", record.alert_id),
        ("floodwatch:sensor", record.sensor_id),
        ("floodwatch:kind", record.kind),
        ("floodwatch:level", str(level)),
        ("floodwatch:depth_cm", f"{depth:.1f}" if depth is not None else ""),
    ):
        if not value:
            continue
        parameter = _sub(info, "parameter")
        _sub(parameter, "valueName", value_name)
        _sub(parameter, "value", value)
    area = _sub(info, "area")
    _sub(area, "areaDesc", i18n.text(lang, "cap.area", street=street, ward=ward))
    if sensor is not None:
        # CAP circle: "lat,lon radius_km"; 100 m around the sensor.
        _sub(area, "circle", f"{sensor.lat:.5f},{sensor.lon:.5f} 0.1")
    return info


def cap_alert(message: CapMessage, sender: str, registry: Registry) -> ET.Element:
    """One CAP 1.2 <alert> element for a message: an <info> in Vietnamese, then in English."""
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
    for lang in i18n.LANGS:
        _info(alert, message, sensor, lang)
    return alert


def atom_feed(
    messages: Sequence[CapMessage], sender: str, registry: Registry, now_ns: int
) -> bytes:
    """An Atom feed with one entry per CAP message, the <alert> inline in <content>."""
    feed = ET.Element(f"{{{ATOM_NS}}}feed")
    ET.SubElement(feed, f"{{{ATOM_NS}}}id").text = f"urn:floodwatch:{sender}:alerts"
    ET.SubElement(feed, f"{{{ATOM_NS}}}title").text = i18n.text(i18n.DEFAULT_LANG, "cap.feed_title")
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
