"""Who gets what: the routing file (TOML), validated once at start, and the pure routing decision.

The file has four parts (README "The notifier" documents each key):

    [settings]             language, timezone, quiet hours for the non-urgent kinds
    [channels.NAME]        how to reach people: webhook, email, sms, zalo_zns, zalo_oa or log
    [recipients.NAME]      a person or a system: name, language, addresses, channels
    [[rules]]              which alerts (kinds, minimum level, streets, wards, sensors) go to
                           which recipients, and who is told next if nobody acknowledges

Every error names the file, the line and the fix. String values of a channel may be written
`env:VARIABLE` to keep credentials out of the file. Nothing here does I/O except reading the
file in `load_routing`; `route` and `quiet_until` are pure.
"""

from __future__ import annotations

import os
import re
import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from floodwatch.errors import FloodwatchError
from notify.render import MESSAGE_FIELDS, ZALO_OA_TEXT_MAX

ChannelType = Literal["webhook", "email", "sms", "zalo_zns", "zalo_oa", "log"]
CHANNEL_TYPES: tuple[ChannelType, ...] = ("webhook", "email", "sms", "zalo_zns", "zalo_oa", "log")
LANGUAGES = ("vi", "en")
ALERT_KINDS = ("flood", "rising", "stale", "battery_low", "fault")
# Floods and rising water reach people at any hour; quiet hours only delay the others.
URGENT_KINDS = frozenset({"flood", "rising"})
QUIET_KINDS = frozenset({"stale", "battery_low", "fault"})
# Which address a recipient needs for each channel type (webhook and log need none).
ADDRESS_FIELD: Mapping[ChannelType, str | None] = {
    "webhook": None,
    "email": "email",
    "sms": "phone",
    "zalo_zns": "phone",
    "zalo_oa": "zalo_user_id",  # the id of a user who follows the Official Account
    "log": None,
}
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CLOCK = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


def fold(name: str) -> str:
    """A name compared without case or diacritics: "Quốc Hương" matches "Quoc Huong", so rules
    keep working whichever way the registry spells its streets."""
    text = name.replace("đ", "d").replace("Đ", "D")
    decomposed = unicodedata.normalize("NFD", text)
    return "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn").casefold().strip()


class RoutingError(FloodwatchError):
    """The routing file is wrong; the message names the file, the line and the fix."""


@dataclass(frozen=True, slots=True)
class Channel:
    name: str
    type: ChannelType
    options: Mapping[str, object]  # type-specific settings, `env:` values resolved

    def text(self, key: str, default: str = "") -> str:
        value = self.options.get(key, default)
        return value if isinstance(value, str) else default

    def number(self, key: str, default: float) -> float:
        value = self.options.get(key, default)
        return float(value) if isinstance(value, int | float) else default

    def flag(self, key: str, default: bool) -> bool:
        value = self.options.get(key, default)
        return value if isinstance(value, bool) else default


@dataclass(frozen=True, slots=True)
class Recipient:
    name: str  # the key in the file: `recipients.NAME`
    display: str  # for people ("Cán bộ trực phường An Khánh")
    language: str
    channels: tuple[str, ...]
    email: str = ""
    phone: str = ""
    zalo_user_id: str = ""


@dataclass(frozen=True, slots=True)
class Tier:
    """Recipients told when an alert is still unacknowledged `after_min` minutes after it
    became unacknowledged."""

    after_min: float
    notify: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rule:
    line: int
    kinds: frozenset[str]
    min_level: int
    streets: frozenset[str]  # folded (see `fold`); empty: any
    wards: frozenset[str]
    sensors: frozenset[str]
    notify: tuple[str, ...]
    escalate: tuple[Tier, ...]
    quiet_hours: bool  # delay deliveries during quiet hours (never for flood or rising)

    def matches(self, kind: str, level: int, street: str, ward: str, sensor: str) -> bool:
        return (
            kind in self.kinds
            and level >= self.min_level
            and (not self.streets or fold(street) in self.streets)
            and (not self.wards or fold(ward) in self.wards)
            and (not self.sensors or sensor in self.sensors)
        )


@dataclass(frozen=True, slots=True)
class QuietHours:
    start: time
    end: time

    def contains(self, local: time) -> bool:
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end  # across midnight


@dataclass(frozen=True, slots=True)
class Routing:
    source: str
    language: str
    timezone: str
    quiet: QuietHours | None
    channels: Mapping[str, Channel]
    recipients: Mapping[str, Recipient]
    rules: tuple[Rule, ...]

    @property
    def empty(self) -> bool:
        return not self.rules


# -- the decision (pure) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """Who is told now, and the escalation ladder after them (tiers of all matching rules,
    merged by delay)."""

    first: tuple[str, ...]
    tiers: tuple[Tier, ...]
    quiet_hours: bool


def route(routing: Routing, kind: str, level: int, street: str, ward: str, sensor: str) -> Decision:
    """The recipients of an alert, from every matching rule, each recipient once."""
    first: dict[str, None] = {}
    by_delay: dict[float, dict[str, None]] = {}
    quiet = kind not in URGENT_KINDS
    for rule in routing.rules:
        if not rule.matches(kind, level, street, ward, sensor):
            continue
        first.update(dict.fromkeys(rule.notify))
        for tier in rule.escalate:
            by_delay.setdefault(tier.after_min, {}).update(dict.fromkeys(tier.notify))
        quiet = quiet and rule.quiet_hours
    told = set(first)
    tiers: list[Tier] = []
    for delay in sorted(by_delay):
        new = tuple(r for r in by_delay[delay] if r not in told)
        told.update(new)
        if new:
            tiers.append(Tier(delay, new))
    return Decision(tuple(first), tuple(tiers), quiet and bool(first))


def quiet_until(routing: Routing, now_ns: int) -> int | None:
    """When the quiet hours around `now_ns` end (epoch ns), or None outside them."""
    if routing.quiet is None:
        return None
    zone = ZoneInfo(routing.timezone)
    local = datetime.fromtimestamp(now_ns / 1e9, zone)
    if not routing.quiet.contains(local.time()):
        return None
    end = datetime.combine(local.date(), routing.quiet.end, zone)
    if end <= local:
        end += timedelta(days=1)
    return int(end.timestamp()) * 10**9


# -- loading and validation ------------------------------------------------------------------


def load_routing(path: Path, environ: Mapping[str, str] | None = None) -> Routing:
    """Read and validate a routing file; RoutingError names the line and the fix."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RoutingError(
            f"{path}: cannot read the routing file ({exc}); point --routing at a TOML file."
        ) from exc
    return parse_routing(text, str(path), os.environ if environ is None else environ)


def parse_routing(text: str, source: str, environ: Mapping[str, str]) -> Routing:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RoutingError(f"{source}: not valid TOML: {exc}; fix the syntax there.") from exc
    return _Validator(text, source, environ).routing(doc)


class _Lines:
    """Line numbers of tables and keys, so errors about meaning can name a line too."""

    _TABLE = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
    _ARRAY = re.compile(r"^\s*\[\[\s*([^\[\]]+?)\s*\]\]\s*(#.*)?$")
    _KEY = re.compile(
        r'^\s*((?:"[^"]*"|[A-Za-z0-9_-]+)(?:\s*\.\s*(?:"[^"]*"|[A-Za-z0-9_-]+))*)\s*='
    )

    def __init__(self, text: str) -> None:
        self.tables: dict[str, int] = {}
        self.keys: dict[tuple[str, str], int] = {}
        counts: dict[str, int] = {}
        current = ""
        for number, line in enumerate(text.splitlines(), start=1):
            if m := self._ARRAY.match(line):
                name = _unquote_path(m.group(1))
                index = counts.get(name, 0)
                counts[name] = index + 1
                current = f"{name}[{index}]"
                self.tables[current] = number
            elif m := self._TABLE.match(line):
                current = _unquote_path(m.group(1))
                self.tables[current] = number
            elif m := self._KEY.match(line):
                # A dotted key `a.b = 1` is key `b` of table `a` too.
                parts = _unquote_path(m.group(1)).split(".")
                self.keys.setdefault((current, parts[0]), number)
                inner = ".".join(p for p in (current, *parts[:-1]) if p)
                self.keys.setdefault((inner, parts[-1]), number)

    def of(self, table: str, key: str | None = None) -> int:
        if key is not None and (table, key) in self.keys:
            return self.keys[(table, key)]
        # A key inside an inline table (`x = { y = 1 }`) belongs to the line of `x`.
        parent, _, child = table.rpartition(".")
        if parent and (parent, child) in self.keys:
            return self.keys[(parent, child)]
        return self.tables.get(table, 1)


def _unquote_path(path: str) -> str:
    return ".".join(part.strip().strip('"') for part in path.split("."))


class _Validator:
    def __init__(self, text: str, source: str, environ: Mapping[str, str]) -> None:
        self.lines = _Lines(text)
        self.source = source
        self.environ = environ

    def fail(self, table: str, key: str | None, message: str) -> RoutingError:
        return RoutingError(f"{self.source}, line {self.lines.of(table, key)}: {message}")

    # -- typed getters --------------------------------------------------------------------------

    def _text(self, table: str, doc: Mapping[str, object], key: str, default: str = "") -> str:
        value = doc.get(key, default)
        if not isinstance(value, str):
            raise self.fail(table, key, f"{key} must be text in quotes, got {value!r}.")
        return value

    def _names(self, table: str, doc: Mapping[str, object], key: str) -> tuple[str, ...]:
        value = doc.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(table, key, f'{key} must be a list of names, like ["a", "b"].')
        return tuple(str(v) for v in value)

    def _number(
        self, table: str, doc: Mapping[str, object], key: str, default: float, minimum: float
    ) -> float:
        value = doc.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise self.fail(table, key, f"{key} must be a number of {minimum:g} or more.")
        return float(value)

    def _bool(self, table: str, doc: Mapping[str, object], key: str, default: bool) -> bool:
        value = doc.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(table, key, f"{key} must be true or false.")
        return value

    def _table(self, parent: str, doc: Mapping[str, object], key: str) -> dict[str, object]:
        value = doc.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(parent, key, f"{key} must be a table ([{key}] or {key} = {{...}}).")
        return value

    # -- the parts ------------------------------------------------------------------------------

    def routing(self, doc: dict[str, object]) -> Routing:
        known = {"settings", "channels", "recipients", "rules"}
        for key in doc:
            if key not in known:
                raise self.fail(
                    key,
                    None,
                    f"unknown section {key!r}; use settings, channels, recipients, rules.",
                )
        settings = self._table("", doc, "settings")
        language = self._text("settings", settings, "language", "vi")
        if language not in LANGUAGES:
            raise self.fail("settings", "language", f"language must be one of {LANGUAGES}.")
        timezone = self._text("settings", settings, "timezone", "Asia/Ho_Chi_Minh")
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise self.fail(
                "settings",
                "timezone",
                f"unknown time zone {timezone!r}; use e.g. Asia/Ho_Chi_Minh.",
            ) from None
        quiet = None
        quiet_text = self._text("settings", settings, "quiet_hours", "")
        if quiet_text:
            start, sep, end = quiet_text.partition("-")
            ms, me = _CLOCK.fullmatch(start.strip()), _CLOCK.fullmatch(end.strip())
            if not sep or ms is None or me is None or start.strip() == end.strip():
                raise self.fail(
                    "settings", "quiet_hours", 'quiet_hours must look like "22:00-06:00" (local).'
                )
            quiet = QuietHours(
                time(int(ms.group(1)), int(ms.group(2))), time(int(me.group(1)), int(me.group(2)))
            )
        for key in settings:
            if key not in ("language", "timezone", "quiet_hours"):
                raise self.fail("settings", key, f"unknown setting {key!r}.")
        channels = {
            name: self.channel(name, body)
            for name, body in self._table("", doc, "channels").items()
        }
        recipients = {
            name: self.recipient(name, body, channels, language)
            for name, body in self._table("", doc, "recipients").items()
        }
        raw_rules = doc.get("rules", [])
        if not isinstance(raw_rules, list):
            raise self.fail("rules", None, "rules must be written as [[rules]] tables.")
        rules = tuple(self.rule(i, body, recipients) for i, body in enumerate(raw_rules))
        return Routing(
            source=self.source,
            language=language,
            timezone=timezone,
            quiet=quiet,
            channels=channels,
            recipients=recipients,
            rules=rules,
        )

    def channel(self, name: str, body: object) -> Channel:
        table = f"channels.{name}"
        if not _NAME.fullmatch(name):
            raise self.fail(table, None, f"channel name {name!r}: use letters, digits, - and _.")
        if not isinstance(body, dict):
            raise self.fail(table, None, f"channels.{name} must be a table.")
        kind = body.get("type")
        if kind not in CHANNEL_TYPES:
            raise self.fail(
                table, "type", f"channels.{name}: type must be one of {', '.join(CHANNEL_TYPES)}."
            )
        options: dict[str, object] = {}
        for key, value in body.items():
            options[key] = self._resolve(table, key, value)
        required = {
            "webhook": ("url", "secret"),
            "email": ("smtp_host", "from"),
            "sms": ("url",),
            "zalo_zns": ("url", "template_id", "params"),
            "zalo_oa": ("url",),
            "log": (),
        }[kind]
        for key in required:
            if not options.get(key):
                raise self.fail(table, None, f"channels.{name} ({kind}) needs {key} = ...")
        for key in ("url",):
            url = options.get(key)
            if isinstance(url, str) and url and not url.startswith(("http://", "https://")):
                raise self.fail(table, key, f"{key} must start with http:// or https://.")
        if kind == "zalo_zns":
            self._zns_params(table, options["params"])
        if kind in ("zalo_zns", "zalo_oa"):
            if not options.get("access_token") and not options.get("access_token_file"):
                raise self.fail(
                    table,
                    None,
                    f"channels.{name} ({kind}) needs access_token = ... or access_token_file "
                    "= ... (a file your token refresh writes).",
                )
            for key in ("rate_limit_codes", "retry_codes"):
                codes = options.get(key, [])
                if not isinstance(codes, list) or not all(
                    isinstance(c, int) and not isinstance(c, bool) for c in codes
                ):
                    raise self.fail(table, key, f"{key} must be a list of Zalo error codes.")
        if kind == "zalo_oa":
            limit = options.get("max_length", ZALO_OA_TEXT_MAX)
            if isinstance(limit, bool) or not isinstance(limit, int):
                limit = 0
            if not 1 <= limit <= ZALO_OA_TEXT_MAX:
                raise self.fail(
                    table,
                    "max_length",
                    f"max_length must be from 1 to {ZALO_OA_TEXT_MAX} (Zalo's limit for a "
                    "consultation text message).",
                )
        return Channel(name, kind, options)

    def _zns_params(self, table: str, params: object) -> None:
        if not isinstance(params, dict) or not params:
            raise self.fail(table, "params", "params must map each template parameter to a field.")
        for pname, spec in params.items():
            where = f"{table}.params"
            if not isinstance(spec, dict):
                raise self.fail(where, pname, f'{pname} = {{ field = "street", max = 30 }}.')
            fld, limit = spec.get("field"), spec.get("max", 30)
            if fld not in MESSAGE_FIELDS:
                raise self.fail(
                    where, pname, f"{pname}: field must be one of {', '.join(MESSAGE_FIELDS)}."
                )
            if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 400:
                raise self.fail(where, pname, f"{pname}: max must be a length from 1 to 400.")

    def _resolve(self, table: str, key: str, value: object) -> object:
        if isinstance(value, str) and value.startswith("env:"):
            variable = value[4:]
            if variable not in self.environ:
                raise self.fail(
                    table,
                    key,
                    f"{key} reads ${variable}, which is not set; export it or "
                    "write the value in the file.",
                )
            return self.environ[variable]
        if isinstance(value, dict):
            return {k: self._resolve(f"{table}.{key}", k, v) for k, v in value.items()}
        return value

    def recipient(
        self, name: str, body: object, channels: Mapping[str, Channel], language: str
    ) -> Recipient:
        table = f"recipients.{name}"
        if not _NAME.fullmatch(name):
            raise self.fail(table, None, f"recipient name {name!r}: use letters, digits, - and _.")
        if not isinstance(body, dict):
            raise self.fail(table, None, f"recipients.{name} must be a table.")
        for key in body:
            if key not in ("name", "language", "channels", "email", "phone", "zalo_user_id"):
                raise self.fail(table, key, f"unknown key {key!r} for a recipient.")
        lang = self._text(table, body, "language", language)
        if lang not in LANGUAGES:
            raise self.fail(table, "language", f"language must be one of {LANGUAGES}.")
        names = self._names(table, body, "channels")
        if not names:
            raise self.fail(table, "channels", f"recipients.{name} needs channels = [...].")
        email = self._text(table, body, "email")
        phone = self._text(table, body, "phone")
        zalo_user_id = self._text(table, body, "zalo_user_id")
        for channel_name in names:
            channel = channels.get(channel_name)
            if channel is None:
                raise self.fail(
                    table, "channels", f"channel {channel_name!r} is not defined in [channels]."
                )
            needed = ADDRESS_FIELD[channel.type]
            if needed == "email" and "@" not in email:
                raise self.fail(table, "email", f"{channel_name} sends e-mail: set email = ...")
            if needed == "phone" and not re.fullmatch(r"\+?[0-9]{9,15}", phone):
                raise self.fail(
                    table, "phone", f'{channel_name} needs phone = "+8490..." (digits, 9-15).'
                )
            if needed == "zalo_user_id" and not re.fullmatch(r"[0-9]{1,32}", zalo_user_id):
                raise self.fail(
                    table,
                    "zalo_user_id",
                    f'{channel_name} needs zalo_user_id = "..." (the digits Zalo gives a user '
                    "who follows the Official Account).",
                )
        return Recipient(
            name=name,
            display=self._text(table, body, "name", name),
            language=lang,
            channels=names,
            email=email,
            phone=phone,
            zalo_user_id=zalo_user_id,
        )

    def rule(self, index: int, body: object, recipients: Mapping[str, Recipient]) -> Rule:
        table = f"rules[{index}]"
        if not isinstance(body, dict):
            raise self.fail(table, None, "each [[rules]] must be a table.")
        allowed = ("kinds", "min_level", "streets", "wards", "sensors", "notify", "escalate")
        for key in body:
            if key not in (*allowed, "quiet_hours"):
                raise self.fail(table, key, f"unknown key {key!r} for a rule.")
        kinds = self._names(table, body, "kinds") or ALERT_KINDS
        for kind in kinds:
            if kind not in ALERT_KINDS:
                raise self.fail(table, "kinds", f"kind {kind!r} is not one of {ALERT_KINDS}.")
        quiet = self._bool(table, body, "quiet_hours", not (set(kinds) & URGENT_KINDS))
        if quiet and set(kinds) & URGENT_KINDS:
            raise self.fail(
                table,
                "quiet_hours",
                "flood and rising alerts are never held for quiet hours; give them a rule of "
                "their own without quiet_hours = true.",
            )
        notify = self._recipients(table, body, "notify", recipients)
        if not notify:
            raise self.fail(table, "notify", "a rule needs notify = [recipient names].")
        raw_tiers = body.get("escalate", [])
        if not isinstance(raw_tiers, list):
            raise self.fail(table, "escalate", "escalate must be a list of tables.")
        tiers: list[Tier] = []
        for number, tier in enumerate(raw_tiers):
            where = f"{table}.escalate"
            if not isinstance(tier, dict):
                raise self.fail(
                    where, None, "each escalate entry is { after_min = N, notify = [...] }."
                )
            after = self._number(table, tier, "after_min", -1, 1)
            if tiers and after <= tiers[-1].after_min:
                raise self.fail(
                    table, "escalate", f"escalate[{number}]: after_min must grow from tier to tier."
                )
            tiers.append(Tier(after, self._recipients(table, tier, "notify", recipients)))
        return Rule(
            line=self.lines.of(table),
            kinds=frozenset(kinds),
            min_level=int(self._number(table, body, "min_level", 0, 0)),
            streets=frozenset(fold(n) for n in self._names(table, body, "streets")),
            wards=frozenset(fold(n) for n in self._names(table, body, "wards")),
            sensors=frozenset(self._names(table, body, "sensors")),
            notify=notify,
            escalate=tuple(tiers),
            quiet_hours=quiet,
        )

    def _recipients(
        self, table: str, doc: Mapping[str, object], key: str, recipients: Mapping[str, Recipient]
    ) -> tuple[str, ...]:
        names = self._names(table, doc, key)
        for name in names:
            if name not in recipients:
                raise self.fail(table, key, f"recipient {name!r} is not defined in [recipients].")
        return names
