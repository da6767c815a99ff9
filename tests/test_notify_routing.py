"""The notifier's routing file: the shipped files validate, mistakes name their line, and the
routing decision and quiet hours follow the rules."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notify.routing import (
    RoutingError,
    Tier,
    fold,
    load_routing,
    parse_routing,
    quiet_until,
    route,
)
from tests.conftest import ROOT

BASE = """
[settings]
quiet_hours = "22:00-06:00"

[channels.hook]
type = "webhook"
url = "http://127.0.0.1:9/hook"
secret = "s3cret"

[channels.mail]
type = "email"
smtp_host = "127.0.0.1"
from = "floodwatch@example.vn"

[recipients.gis]
channels = ["hook"]

[recipients.officer]
name = "Cán bộ trực phường An Khánh"
channels = ["mail"]
email = "officer@example.vn"

[recipients.chief]
channels = ["mail"]
email = "chief@example.vn"
language = "en"
"""

RULES = """
[[rules]]
kinds = ["flood"]
min_level = 1
notify = ["gis"]
escalate = [{ after_min = 10, notify = ["officer"] }, { after_min = 20, notify = ["chief"] }]

[[rules]]
kinds = ["flood"]
min_level = 2
streets = ["Quốc Hương"]
notify = ["officer"]

[[rules]]
kinds = ["battery_low", "stale"]
notify = ["officer"]
"""


def routing(extra: str = RULES):  # type: ignore[no-untyped-def]
    return parse_routing(BASE + extra, "routing.toml", {})


def test_shipped_routing_files_validate() -> None:
    """The example and the demo routing files load without errors."""
    example = load_routing(ROOT / "config" / "notify-routing.example.toml")
    demo = load_routing(ROOT / "config" / "notify-routing.demo.toml")
    assert example.rules and demo.rules
    assert {c.type for c in example.channels.values()} == {
        "webhook",
        "email",
        "sms",
        "zalo_zns",
        "zalo_oa",
    }
    assert {c.type for c in demo.channels.values()} == {"log"}


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# (name, text appended to BASE, what the error says, the line it names by a unique fragment)
MISTAKES = [
    ("unknown kind", '[[rules]]\nkinds = ["flod"]\nnotify = ["gis"]\n', "kind 'flod'", "flod"),
    (
        "flood held in quiet hours",
        '[[rules]]\nkinds = ["flood"]\nquiet_hours = true\nnotify = ["gis"]\n',
        "never held for quiet hours",
        "quiet_hours = true",
    ),
    (
        "unknown recipient",
        '[[rules]]\nkinds = ["flood"]\nnotify = ["nobody"]\n',
        "recipient 'nobody'",
        '"nobody"',
    ),
    (
        "tiers out of order",
        '[[rules]]\nnotify = ["gis"]\nescalate = [{ after_min = 20, notify = ["chief"] }, '
        '{ after_min = 10, notify = ["officer"] }]\n',
        "must grow",
        "escalate =",
    ),
    ("negative level", '[[rules]]\nmin_level = -1\nnotify = ["gis"]\n', "min_level", "min_level"),
    (
        "rule without recipients",
        '[[rules]]\nkinds = ["stale"]\n',
        "notify = [recipient names]",
        "[[rules]]",
    ),
    (
        "sms recipient without phone",
        '[channels.sms]\ntype = "sms"\nurl = "http://127.0.0.1:9/sms"\n'
        '[recipients.crew]\nchannels = ["sms"]\n',
        "phone",
        "[recipients.crew]",
    ),
    (
        "webhook without secret",
        '[channels.h2]\ntype = "webhook"\nurl = "http://x/"\n',
        "secret",
        "[channels.h2]",
    ),
    (
        "bad channel type",
        '[channels.pager]\ntype = "pager"\n',
        "type must be one of",
        'type = "pager"',
    ),
    (
        "zns parameter field unknown",
        '[channels.z]\ntype = "zalo_zns"\nurl = "http://x/"\naccess_token = "t"\n'
        'template_id = "1"\nparams.duong = { field = "road", max = 30 }\n',
        "field must be one of",
        "params.duong",
    ),
    (
        "zns without any token",
        '[channels.z]\ntype = "zalo_zns"\nurl = "http://x/"\ntemplate_id = "1"\n'
        'params.duong = { field = "street", max = 30 }\n',
        "access_token_file",
        "[channels.z]",
    ),
    (
        "zalo oa recipient without a user id",
        '[channels.oa]\ntype = "zalo_oa"\nurl = "http://x/"\naccess_token = "t"\n'
        '[recipients.crew]\nchannels = ["oa"]\nphone = "0912345678"\n',
        "zalo_user_id",
        "[recipients.crew]",
    ),
    (
        "zalo oa text longer than zalo takes",
        '[channels.oa]\ntype = "zalo_oa"\nurl = "http://x/"\naccess_token = "t"\n'
        "max_length = 5000\n",
        "2000",
        "max_length",
    ),
    (
        "zalo codes not a list of numbers",
        '[channels.oa]\ntype = "zalo_oa"\nurl = "http://x/"\naccess_token = "t"\n'
        'retry_codes = ["-100"]\n',
        "list of Zalo error codes",
        "retry_codes",
    ),
    (
        "unset env value",
        '[channels.h3]\ntype = "webhook"\nurl = "http://x/"\nsecret = "env:NOPE_X"\n',
        "$NOPE_X",
        "NOPE_X",
    ),
]


@pytest.mark.parametrize(("name", "extra", "says", "where"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistakes_name_their_line(name: str, extra: str, says: str, where: str) -> None:
    """Each mistake is refused with a sentence naming the file and the line it is on."""
    text = BASE + extra
    with pytest.raises(RoutingError) as caught:
        parse_routing(text, "routing.toml", {})
    message = str(caught.value)
    assert says in message
    assert f"routing.toml, line {_line_of(text, where)}:" in message


def test_toml_syntax_errors_name_the_line() -> None:
    """A TOML syntax error says where it is."""
    with pytest.raises(RoutingError, match=r"line 3"):
        parse_routing('[settings]\nlanguage = "vi"\nquiet_hours = 22:00\n', "r.toml", {})


def test_env_values_are_read_from_the_environment() -> None:
    """`env:NAME` values come from the environment, keeping secrets out of the file."""
    text = BASE.replace('secret = "s3cret"', 'secret = "env:HOOK_SECRET"')
    loaded = parse_routing(text, "r.toml", {"HOOK_SECRET": "from-env"})
    assert loaded.channels["hook"].text("secret") == "from-env"


ROUTES = [
    # (kind, level, street, first recipients, escalation tiers)
    ("flood", 1, "Duong 12", ("gis",), (Tier(10, ("officer",)), Tier(20, ("chief",)))),
    # Level 2 on Quốc Hương: the officer is told at once, so the 10-minute tier is left out.
    ("flood", 2, "Quoc Huong", ("gis", "officer"), (Tier(20, ("chief",)),)),
    ("flood", 2, "Quốc Hương", ("gis", "officer"), (Tier(20, ("chief",)),)),
    ("flood", 0, "Duong 12", (), ()),
    ("battery_low", 0, "Duong 12", ("officer",), ()),
    ("rising", 3, "Duong 12", (), ()),
]


@pytest.mark.parametrize(("kind", "level", "street", "first", "tiers"), ROUTES)
def test_route(
    kind: str, level: int, street: str, first: tuple[str, ...], tiers: tuple[Tier, ...]
) -> None:
    """Every matching rule adds its recipients once; tiers exclude who is already told."""
    decision = route(routing(), kind, level, street, "An Khanh", "qh-02")
    assert decision.first == first
    assert decision.tiers == tiers


def test_quiet_hours_hold_only_non_urgent_kinds_until_morning() -> None:
    """Battery alerts at 23:30 local wait until 06:00; floods never wait."""
    r = routing()
    zone = ZoneInfo("Asia/Ho_Chi_Minh")
    night = int(datetime(2026, 12, 5, 23, 30, tzinfo=zone).timestamp()) * 10**9
    noon = int(datetime(2026, 12, 5, 12, 0, tzinfo=zone).timestamp()) * 10**9
    morning = int(datetime(2026, 12, 6, 6, 0, tzinfo=zone).timestamp()) * 10**9
    assert quiet_until(r, night) == morning
    assert quiet_until(r, noon) is None
    assert route(r, "battery_low", 0, "Duong 12", "An Khanh", "d12-01").quiet_hours
    assert not route(r, "flood", 1, "Duong 12", "An Khanh", "d12-01").quiet_hours


def test_fold_ignores_case_and_diacritics() -> None:
    """Street names match whichever way the registry spells them."""
    assert fold("Nguyễn Văn Hưởng") == fold("nguyen van huong")
    assert fold("Đường 12") == fold("Duong 12")


@given(
    st.lists(
        st.tuples(
            st.lists(
                st.sampled_from(["flood", "rising", "stale", "battery_low", "fault"]), max_size=3
            ),
            st.integers(0, 4),
            st.booleans(),
        ),
        min_size=1,
        max_size=4,
    ),
    st.sampled_from(["flood", "rising", "stale", "battery_low", "fault"]),
    st.integers(0, 4),
)
def test_floods_are_never_held_whatever_the_rules(
    rules: list[tuple[list[str], int, bool]], kind: str, level: int
) -> None:
    """Any routing file that loads holds flood and rising notifications for nobody; and each
    recipient appears once among the first recipients and the tiers."""
    text = BASE
    for kinds, min_level, quiet in rules:
        text += f'[[rules]]\nkinds = {kinds!r}\nmin_level = {min_level}\nnotify = ["gis"]\n'
        text += 'escalate = [{ after_min = 5, notify = ["officer", "gis"] }]\n'
        if quiet:
            text += "quiet_hours = true\n"
    text = text.replace("'", '"')
    try:
        loaded = parse_routing(text, "r.toml", {})
    except RoutingError:
        return  # e.g. quiet hours asked for floods: refused at load
    decision = route(loaded, kind, level, "Duong 12", "An Khanh", "d12-01")
    if kind in ("flood", "rising"):
        assert not decision.quiet_hours
    named = list(decision.first) + [r for t in decision.tiers for r in t.notify]
    assert len(named) == len(set(named))
