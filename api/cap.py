"""Alerts as CAP 1.2 (OASIS Common Alerting Protocol) messages, in an Atom feed.

A CAP message describes one alert at one moment, so each alert becomes a chain of messages:
`Alert` when it first becomes active, `Update` when its level changes (referencing the
earlier messages), `Cancel` when it clears or disappears (referencing them too). `CapLedger`
builds the chains from successive snapshots of an AlertSource; it lives in memory, so after a
restart an alert that is still active starts a fresh chain with `Alert`. Sensor-health
alerts (stale, battery_low, fault) are for operators, not the public, and are left out.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
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

MsgType = Literal["Alert", "Update", "Cancel"]
TECHNICAL_KINDS = frozenset({"stale", "battery_low", "fault"})
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


@dataclass(slots=True)
class _Chain:
    messages: list[CapMessage] = field(default_factory=list)

    @property
    def last(self) -> CapMessage:
        return self.messages[-1]


class CapLedger:
    """Successive alert snapshots in, the current CAP message of every alert chain out."""

    def __init__(self, sender: str) -> None:
        self.sender = sender
        self._chains: dict[str, _Chain] = {}
        self._serial = 0

    def _ref(self, message: CapMessage) -> str:
        return f"{self.sender},{message.identifier},{cap_time(message.sent_ns)}"

    def _add(self, chain: _Chain, msg_type: MsgType, record: AlertRecord, now_ns: int) -> None:
        self._serial += 1
        previous = chain.messages[-1] if chain.messages else None
        sent = record.changed_at_ns or now_ns
        if previous is not None:
            sent = max(sent, previous.sent_ns + 10**9)  # CAP times have whole seconds
        refs = tuple(self._ref(m) for m in chain.messages) if msg_type != "Alert" else ()
        identifier = f"floodwatch.{_UNSAFE.sub('_', record.alert_id)}.{self._serial}"
        chain.messages.append(CapMessage(identifier, msg_type, sent, refs, record))

    def observe(self, records: Sequence[AlertRecord], now_ns: int) -> None:
        """Compare a snapshot with the chains: start, update or cancel them."""
        seen: set[str] = set()
        for record in records:
            if record.kind in TECHNICAL_KINDS:
                continue
            seen.add(record.alert_id)
            chain = self._chains.get(record.alert_id)
            if record.active:
                if chain is None or chain.last.msg_type == "Cancel":
                    chain = self._chains[record.alert_id] = _Chain()
                    self._add(chain, "Alert", record, now_ns)
                elif chain.last.record.level != record.level:
                    self._add(chain, "Update", record, now_ns)
            elif chain is not None and chain.last.msg_type != "Cancel":
                self._add(chain, "Cancel", record, now_ns)
        for alert_id, chain in self._chains.items():
            if alert_id not in seen and chain.last.msg_type != "Cancel":
                self._add(chain, "Cancel", chain.last.record, now_ns)
        # Forget chains cancelled long ago, so the ledger stays small.
        for alert_id in [
            a
            for a, c in self._chains.items()
            if c.last.msg_type == "Cancel" and now_ns - c.last.sent_ns > KEEP_CANCELLED_NS
        ]:
            del self._chains[alert_id]

    def current(self) -> list[CapMessage]:
        """The latest message of every chain, newest first."""
        return sorted((c.last for c in self._chains.values()), key=lambda m: -m.sent_ns)


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
