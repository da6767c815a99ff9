"""Acknowledgement notes: what can be stored as is, and the sentence for what cannot."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from floodwatch.notes import note_problem

_storable = st.characters(blacklist_categories=("Cc", "Cs")) | st.just("\t")


@given(st.text(_storable, max_size=1000))
def test_printable_text_and_tabs_are_storable(note: str) -> None:
    assert note_problem(note) is None


@given(st.text(_storable, max_size=50), st.characters(categories=["Cc"]))
def test_any_control_character_but_tab_is_named_with_its_position(head: str, bad: str) -> None:
    problem = note_problem(head + bad + "x")
    if bad == "\t":
        assert problem is None
        return
    assert problem is not None and f"character {len(head) + 1}" in problem
    assert ("line break" in problem) == (bad in "\r\n")
    assert unicodedata.category(bad) == "Cc"
