"""Rule 10, the alert lifecycle, as one transition table the engine interprets.

Read it as: an alert in state `before` (None: no open alert of that sensor and kind) that
meets `change` goes to `after`. `emits` says whether that is an event at all (acknowledging an
acknowledged alert changes nothing), and `ack` what happens to the acknowledgement (who, note,
when): kept, set by this change, or dropped because a worse level needs a fresh one. An alert
that reaches `cleared_ack` is closed and forgotten; a new alert of the same sensor and kind may
be raised while an old one waits in `cleared_unack`. Any pair not in the table is a bug in the
caller (the engine never asks for one), and `transition` says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NamedTuple

from floodwatch.contract import Change, Lifecycle

AckEffect = Literal["keep", "set", "drop"]


class Transition(NamedTuple):
    after: Lifecycle
    emits: bool
    ack: AckEffect


CLOSED: Lifecycle = "cleared_ack"

# fmt: off
TABLE: Mapping[tuple[Lifecycle | None, Change], Transition] = {
    # before           change            after            emits  acknowledgement
    (None,            "raised"):       Transition("active_unack",  True,  "keep"),
    ("active_unack",  "acknowledged"): Transition("active_ack",    True,  "set"),
    ("active_ack",    "acknowledged"): Transition("active_ack",    False, "keep"),
    ("cleared_unack", "acknowledged"): Transition("cleared_ack",   True,  "set"),
    ("cleared_ack",   "acknowledged"): Transition("cleared_ack",   False, "keep"),
    # A worse level needs a fresh acknowledgement.
    ("active_unack",  "escalated"):    Transition("active_unack",  True,  "drop"),
    ("active_ack",    "escalated"):    Transition("active_unack",  True,  "drop"),
    ("active_unack",  "deescalated"):  Transition("active_unack",  True,  "keep"),
    ("active_ack",    "deescalated"):  Transition("active_ack",    True,  "keep"),
    ("active_unack",  "cleared"):      Transition("cleared_unack", True,  "keep"),
    ("active_ack",    "cleared"):      Transition("cleared_ack",   True,  "keep"),
}
# fmt: on


class LifecycleError(ValueError):
    """A change the lifecycle does not allow from the alert's state (a bug in the caller)."""

    def __init__(self, before: Lifecycle | None, change: Change) -> None:
        allowed = sorted(c for b, c in TABLE if b == before)
        super().__init__(
            f"an alert in state {before or 'none'} cannot be {change}; "
            f"from there it can be: {', '.join(allowed) or 'nothing'} (alerts/lifecycle.py)"
        )


def transition(before: Lifecycle | None, change: Change) -> Transition:
    """The table's row for (before, change); LifecycleError if there is none."""
    row = TABLE.get((before, change))
    if row is None:
        raise LifecycleError(before, change)
    return row
