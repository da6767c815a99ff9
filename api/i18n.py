"""User-facing words of CAP and the episode report, from the page's own message catalogues.

One catalogue per language (`api/static/i18n/vi.json`, `en.json`: flat dotted keys), shared
with the IOC page, so a level or alert kind reads the same on the screen, in CAP and on paper.
Vietnamese is the default: the ward's operators and residents read it first.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Literal

import orjson

from api.errors import ApiError

Lang = Literal["vi", "en"]
LANGS: tuple[Lang, ...] = ("vi", "en")
DEFAULT_LANG: Lang = "vi"
# CAP's <language> is an RFC 3066 tag.
CAP_LANGUAGE: Mapping[Lang, str] = {"vi": "vi-VN", "en": "en-US"}
CATALOGUES = Path(__file__).resolve().parent / "static" / "i18n"


@cache
def catalogue(lang: Lang) -> Mapping[str, str]:
    """The catalogue of `lang`, read once; ApiError naming the file if it is missing or bad."""
    path = CATALOGUES / f"{lang}.json"
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ApiError(
            f"the message catalogue {path} cannot be read ({exc}); restore it from the "
            "repository (api/static/i18n)"
        ) from exc
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise ApiError(f"{path} must be one JSON object of text values; restore it")
    return doc


def text(lang: Lang, key: str, **values: object) -> str:
    """The message `key` in `lang` with `{name}` placeholders filled; KeyError if absent
    (a test checks that both catalogues hold the same keys)."""
    template = catalogue(lang)[key]
    return template.format(**values) if values else template


def level_label(lang: Lang, sensor_kind: str, level_name: str | None) -> str:
    """A ladder rung's name (`flooded`, `alarm_2`...) in words; the raw name if unknown."""
    if level_name is None:
        return ""
    ladder = "tide" if sensor_kind == "tide" else "street"
    return catalogue(lang).get(f"level.{ladder}.{level_name}", level_name)


def kind_label(lang: Lang, kind: str) -> str:
    """An alert kind (flood, rising, stale, battery_low, fault) in words."""
    return catalogue(lang).get(f"kind.{kind}", kind)
