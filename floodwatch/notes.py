"""What an operator's acknowledgement note may hold, checked the same way by the API (422)
and by ingest's alert engine (refused before any alert changes).

A note is free text on one line: letters of any script, punctuation, emoji and tabs. Line
breaks are refused because an alert event travels as one InfluxDB line-protocol line (and the
outbox and batch splitting rely on that); NUL, other control characters and lone surrogates
are refused because they cannot be stored or sent as UTF-8 JSON intact. How long a note may
be is each caller's limit (the API's 1,000 characters, the engine's command's own).
"""

from __future__ import annotations

import unicodedata

_NAMES = {"\x00": "NUL", "\n": "a line break", "\r": "a line break"}


def note_problem(note: str) -> str | None:
    """One sentence saying what is wrong with `note`, or None when it can be stored as is."""
    for index, ch in enumerate(note):
        category = unicodedata.category(ch)
        if ch == "\t" or category not in ("Cc", "Cs"):
            continue
        where = f"at character {index + 1}"
        if ch in "\r\n":
            return f"note has a line break {where}; write the note on one line"
        name = _NAMES.get(ch, "a control character")
        what = "a lone surrogate" if category == "Cs" else name
        return (
            f"note has {what} (U+{ord(ch):04X}) {where}, which cannot be stored; "
            "remove it and send the note again"
        )
    return None
