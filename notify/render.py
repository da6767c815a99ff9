"""Notification text from an alert, in the recipient's language, and the shapes each service
needs (webhook JSON, e-mail text and HTML, SMS text, Zalo ZNS template parameters). Pure.

User-facing strings live in one catalogue per language, `notify/messages/{vi,en}.json`, except
the names of the alert levels: those come from the IOC page's catalogues (`level.*` keys of
api/static/i18n/{vi,en}.json, through floodwatch.i18n), so an operator and a field crew read the
same words. Proper names (streets, sensors, the ward) come from the registry, with their
diacritics (`name`, `street`) or in English (`name_en`, `street_en`), in AlertFacts.
"""

from __future__ import annotations

import functools
import html
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from floodwatch.i18n import level_label
from notify.model import AlertFacts, MessageKind, Send

MESSAGES = Path(__file__).resolve().parent / "messages"
# The fields a notification is made of; a ZNS template parameter takes one of them.
MESSAGE_FIELDS = (
    "title",
    "kind",
    "street",
    "ward",
    "sensor",
    "sensor_name",
    "depth",
    "level_name",
    "since",
    "action",
    "link",
    "who",
    "note",
    "minutes",
    "alert_id",
)


@functools.cache
def catalogue(language: str) -> Mapping[str, object]:
    doc: dict[str, object] = json.loads((MESSAGES / f"{language}.json").read_text("utf-8"))
    return doc


def _section(cat: Mapping[str, object], name: str) -> Mapping[str, object]:
    value = cat[name]
    assert isinstance(value, dict)
    return value


def _str(cat: Mapping[str, object], *path: str) -> str:
    node: object = cat
    for key in path:
        assert isinstance(node, dict)
        node = node[key]
    assert isinstance(node, str)
    return node


@dataclass(frozen=True, slots=True)
class Message:
    """One notification rendered for one recipient."""

    language: str
    title: str
    text: str  # plain text, several lines
    html: str
    sms: str  # one short line
    fields: Mapping[str, str]  # MESSAGE_FIELDS, for webhooks and ZNS templates


def local_time(time_ns: int, timezone: str, fmt: str) -> str:
    return datetime.fromtimestamp(time_ns / 1e9, ZoneInfo(timezone)).strftime(fmt)


def _depth(cat: Mapping[str, object], depth_cm: float | None) -> str:
    if depth_cm is None:
        return _str(cat, "unknown")
    text = f"{depth_cm:.0f} cm" if float(depth_cm).is_integer() else f"{depth_cm:.1f} cm"
    return text.replace(".", ",") if cat.get("decimal_comma") else text


def _action(cat: Mapping[str, object], facts: AlertFacts, message: MessageKind) -> str:
    actions = _section(cat, "actions")
    if message in ("acknowledged", "cleared", "episode"):
        return _str(actions, message)
    entry = actions.get(facts.kind, "")
    if isinstance(entry, dict):
        key = "tide" if facts.level_name.startswith("alarm") else str(max(1, min(4, facts.level)))
        return str(entry.get(key, ""))
    return str(entry)


def link_for(page_url: str, facts: AlertFacts) -> str:
    """The page link: `{sensor}` and `{alert}` in --page-url are filled in."""
    return page_url.replace("{sensor}", facts.sensor_id).replace("{alert}", facts.alert_id)


def render(send: Send, language: str, timezone: str, page_url: str) -> Message:
    cat = catalogue(language)
    facts = send.facts

    def english(name: str) -> str:
        """The registry's English form of a name, for English messages only."""
        return name if language == "en" else ""

    fmt = _str(cat, "time_format")
    minutes = f"{send.unacked_min:g}" if send.unacked_min is not None else ""
    kind_names = _section(cat, "kinds_tide") if facts.tide else {}
    fields: dict[str, str] = {
        "kind": str(kind_names.get(facts.kind) or _str(cat, "kinds", facts.kind)),
        "street": english(facts.street_en) or facts.street,
        "ward": facts.ward,
        "sensor": facts.sensor_id,
        "sensor_name": english(facts.sensor_name_en) or facts.sensor_name,
        "depth": _depth(cat, facts.depth_cm),
        "level_name": level_label(
            "en" if language == "en" else "vi", "tide" if facts.tide else "street", facts.level_name
        ),
        "since": local_time(facts.since_ns, timezone, fmt),
        "at": local_time(facts.at_ns, timezone, fmt),
        "action": _action(cat, facts, send.message),
        "link": link_for(page_url, facts),
        "who": facts.who or "",
        "note": facts.note or "",
        "minutes": minutes,
        "alert_id": facts.alert_id,
    }
    title = _str(cat, "titles", send.message).format(**fields)
    fields["title"] = title
    lines_cat = _section(cat, "lines")
    wanted = ["street", "sensor"]
    if facts.kind in ("flood", "rising") or facts.depth_cm is not None:
        wanted += ["depth", "level"]
    wanted += ["since"]
    if send.message in ("unacknowledged", "acknowledged", "cleared", "episode", "maintenance_over"):
        wanted.append(send.message)
    wanted += ["action"]
    if page_url:
        wanted.append("link")
    if facts.tide:
        wanted = ["depth_tide" if name == "depth" else name for name in wanted]
    body = [str(lines_cat[name]).format(**fields) for name in wanted]
    footer = str(lines_cat["footer"])
    text = "\n".join([title, "", *body, "", footer])
    parts = _section(cat, "sms_parts")
    details = [str(parts["since"]).format(**fields)]
    if facts.depth_cm is not None:
        depth_part = str(parts["depth_tide" if facts.tide else "depth"]).format(**fields)
        details.insert(0, depth_part)
    joined = ", ".join(details)
    sms = _str(cat, "sms").format(
        title=title,
        details=joined[:1].upper() + joined[1:],
        action=fields["action"],
        link=fields["link"],
    )
    sms = re.sub(r"\s+", " ", sms).strip()
    doc_html = (
        f'<!doctype html><html lang="{language}"><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><body>"
        f"<h1>{html.escape(title)}</h1><ul>"
        + "".join(f"<li>{_linkify(line, fields['link'])}</li>" for line in body)
        + f"</ul><p><small>{html.escape(footer)}</small></p></body></html>"
    )
    return Message(language, title, text, doc_html, sms, fields)


def _linkify(line: str, link: str) -> str:
    escaped = html.escape(line)
    if link and link in line:
        anchor = f'<a href="{html.escape(link, quote=True)}">{html.escape(link)}</a>'
        return escaped.replace(html.escape(link), anchor)
    return escaped


# -- service shapes ------------------------------------------------------------------------------


def strip_diacritics(text: str) -> str:
    """Vietnamese without accents, for SMS senders that only carry GSM-7 (đ -> d)."""
    text = text.replace("đ", "d").replace("Đ", "D")
    decomposed = unicodedata.normalize("NFD", text)
    plain = "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")
    return plain.replace("\u2013", "-")


def clip(text: str, limit: int) -> str:
    """At most `limit` characters, an ellipsis marking a cut."""
    return text if len(text) <= limit else text[: max(0, limit - 1)].rstrip() + "…"


def sms_text(message: Message, max_length: int, ascii_only: bool) -> str:
    text = strip_diacritics(message.sms) if ascii_only else message.sms
    if ascii_only:
        return text if len(text) <= max_length else text[: max_length - 3].rstrip() + "..."
    return clip(text, max_length)


def zns_template_data(message: Message, params: Mapping[str, object]) -> dict[str, str]:
    """ZNS `template_data`: each approved parameter from its field, within its length limit."""
    data: dict[str, str] = {}
    for name, spec in params.items():
        assert isinstance(spec, dict)
        limit = int(spec.get("max", 30))
        data[name] = clip(message.fields.get(str(spec["field"]), ""), limit)
    return data


# Zalo's limit for an Official Account's consultation text message (notify/channels.py says
# where it comes from).
ZALO_OA_TEXT_MAX = 2000


def zalo_oa_text(message: Message, max_length: int) -> str:
    """The plain-text notification, several lines, within Zalo's and the channel's limit."""
    return clip(message.text, min(max_length, ZALO_OA_TEXT_MAX))


def zalo_phone(phone: str) -> str:
    """ZNS wants the international form without '+': +84 90... or 090... -> 8490..."""
    digits = phone.lstrip("+")
    if digits.startswith("0"):
        digits = "84" + digits[1:]
    return digits
