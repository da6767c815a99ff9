"""User-facing words of CAP and the episode report, from the page's own message catalogues.

One catalogue per language (`api/static/i18n/vi.json`, `en.json`: flat dotted keys), shared
with the IOC page, so a level or alert kind reads the same on the screen, in CAP and on paper.
Vietnamese is the default: the ward's operators and residents read it first.
"""

from __future__ import annotations

from collections.abc import Mapping

# One reader of the catalogues for every process (the notifier too): floodwatch.i18n.
from floodwatch.i18n import Lang as Lang
from floodwatch.i18n import catalogue as catalogue
from floodwatch.i18n import level_label as level_label

LANGS: tuple[Lang, ...] = ("vi", "en")
DEFAULT_LANG: Lang = "vi"
# CAP's <language> is an RFC 3066 tag.
CAP_LANGUAGE: Mapping[Lang, str] = {"vi": "vi-VN", "en": "en-US"}


def text(lang: Lang, key: str, **values: object) -> str:
    """The message `key` in `lang` with `{name}` placeholders filled; KeyError if absent
    (a test checks that both catalogues hold the same keys)."""
    template = catalogue(lang)[key]
    return template.format(**values) if values else template


def kind_label(lang: Lang, kind: str) -> str:
    """An alert kind (flood, rising, stale, battery_low, fault) in words."""
    return catalogue(lang).get(f"kind.{kind}", kind)
