"""A one-line progress bar on stderr, drawn only for a person watching a terminal."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

REDRAW_S = 0.2
WIDTH = 24


class Progress:
    """Redraws `label [#####-----] 42% note  ETA 0:31` in place, at most five times a second.

    Silent when `enabled` is false (the caller passes `--quiet`) or the stream is not a
    terminal, so logs and pipes never fill with carriage returns.
    """

    def __init__(self, label: str, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self._stream = sys.stderr if stream is None else stream
        self._label = label
        self._on = enabled and self._stream.isatty()
        self._began = time.monotonic()
        self._drawn_at = -REDRAW_S
        self._width = 0

    @property
    def enabled(self) -> bool:
        return self._on

    def due(self) -> bool:
        """Whether the next update would redraw (so callers build notes only then)."""
        return self._on and time.monotonic() - self._drawn_at >= REDRAW_S

    def update(self, fraction: float, note: str = "", *, force: bool = False) -> None:
        if not self._on:
            return
        now = time.monotonic()
        if not force and now - self._drawn_at < REDRAW_S:
            return
        self._drawn_at = now
        self._draw(render(self._label, fraction, note, now - self._began))

    def finish(self, note: str = "") -> None:
        """Draw the full bar once more and end its line."""
        if not self._on:
            return
        self._draw(render(self._label, 1.0, note, time.monotonic() - self._began))
        self._stream.write("\n")
        self._stream.flush()
        self._on = False

    def _draw(self, line: str) -> None:
        columns = shutil.get_terminal_size((80, 24)).columns
        line = line[: max(10, columns - 1)]
        self._stream.write("\r" + line + " " * max(0, self._width - len(line)))
        self._stream.flush()
        self._width = len(line)


def render(label: str, fraction: float, note: str, elapsed_s: float) -> str:
    """The bar's text for a fraction done after `elapsed_s` seconds."""
    fraction = min(max(fraction, 0.0), 1.0)
    filled = round(WIDTH * fraction)
    bar = "#" * filled + "-" * (WIDTH - filled)
    eta = ""
    if 0.0 < fraction < 1.0 and elapsed_s > 0.5:
        left = elapsed_s * (1.0 - fraction) / fraction
        # A fraction barely above zero promises no useful estimate (or an infinite one).
        if left < 100 * 3600:
            eta = f"  ETA {int(left // 60)}:{int(left % 60):02d}"
    return f"{label} [{bar}] {fraction * 100:3.0f}% {note}{eta}".rstrip()
