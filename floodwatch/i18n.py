"""The words people read, from the page's message catalogues: one per language
(`api/static/i18n/vi.json`, `en.json`: flat dotted keys), shared by the IOC page, the API (CAP,
the episode report) and the notifier, so a level reads the same on the screen, on paper and in
an SMS or Zalo message to a field crew.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Literal

import orjson

from floodwatch.errors import FloodwatchError

Lang = Literal["vi", "en"]
CATALOGUES = Path(__file__).resolve().parent.parent / "api" / "static" / "i18n"


class CatalogueError(FloodwatchError):
    """A message catalogue is missing or malformed; the message names the file."""


@cache
def catalogue(lang: Lang) -> Mapping[str, str]:
    """The catalogue of `lang`, read once; CatalogueError naming the file if missing or bad."""
    path = CATALOGUES / f"{lang}.json"
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise CatalogueError(
            f"the message catalogue {path} cannot be read ({exc}); restore it from the "
            "repository (api/static/i18n)"
        ) from exc
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise CatalogueError(f"{path} must be one JSON object of text values; restore it")
    return doc


def level_label(lang: Lang, sensor_kind: str, level_name: str | None) -> str:
    """A ladder rung's name (`flooded`, `alarm_2`...) in words (`level.street.*`,
    `level.tide.*`); the raw name if unknown."""
    if level_name is None:
        return ""
    ladder = "tide" if sensor_kind == "tide" else "street"
    return catalogue(lang).get(f"level.{ladder}.{level_name}", level_name)
