"""Error sentences and accent-insensitive search keys: table-driven and property tests of the
pure helpers (api.problems, floodwatch.registry.search_key). No servers."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.problems import (
    unknown_parameter_sentence,
    unknown_parameters,
    validation_detail,
    validation_sentence,
)
from floodwatch.registry import ascii_name, search_key

# The letters of Vietnamese with their marks, both cases (what registry names are made of).
VIETNAMESE = (
    "aàáảãạăằắẳẵặâầấẩẫậbcdđeèéẻẽẹêềếểễệghiìíỉĩịklmnoòóỏõọôồốổỗộơờớởỡợpqrstuùúủũụưừứửữựvxyỳýỷỹỵ"
)
LETTERS = VIETNAMESE + VIETNAMESE.upper() + " 0123456789"


@pytest.mark.parametrize(
    ("error", "name", "words"),
    [
        (
            {"type": "missing", "loc": ("query", "start"), "input": None},
            "start",
            ["start is missing", "send"],
        ),
        (
            {"type": "datetime_from_date_parsing", "loc": ("query", "end"), "input": "x y"},
            "end",
            ["%2B", "Z"],
        ),
        (
            {"type": "literal_error", "loc": ("query", "state"), "input": "z"},
            "state",
            ["state 'z' is not accepted"],
        ),
        (
            {"type": "string_pattern_mismatch", "loc": ("path", "sensor_id"), "input": "A"},
            "sensor_id",
            ["qh-02"],
        ),
        ({"type": "json_invalid", "loc": ("body", 1), "input": {}}, "body", ["not valid JSON"]),
        ({"type": "mystery", "loc": ("query", "q"), "input": 1}, "q", ["/docs"]),
    ],
)
def test_validation_errors_become_sentences(
    error: dict[str, object], name: str, words: list[str]
) -> None:
    """Each pydantic error type gets a sentence naming the parameter and what to send."""
    found, text = validation_sentence(error)
    assert found == name and text.endswith(".")
    for word in words:
        assert word in text


errors = st.fixed_dictionaries(
    {
        "type": st.text(max_size=30),
        "loc": st.lists(st.one_of(st.text(max_size=20), st.integers()), max_size=4),
        "input": st.one_of(st.none(), st.text(max_size=200), st.integers(), st.floats()),
        "ctx": st.dictionaries(st.text(max_size=10), st.one_of(st.text(), st.integers())),
    }
)


@given(st.lists(errors, max_size=3))
def test_any_error_list_gives_one_short_sentence(found: list[dict[str, object]]) -> None:
    """Whatever FastAPI reports, the answer is one sentence of bounded length, never a crash."""
    text = validation_detail(found)
    assert text.endswith(".") and "\n" not in text and len(text) < 600


def test_unknown_parameters_are_named_once_in_order() -> None:
    """Undeclared names, each once, in the order sent; the sentence lists what is taken."""
    declared = frozenset({"start", "end"})
    assert unknown_parameters(["start", "x", "y", "x"], declared) == ["x", "y"]
    text = unknown_parameter_sentence(["x"], declared)
    assert text.startswith("Unknown query parameter 'x'") and "(end, start)" in text


@given(st.text(alphabet=LETTERS, max_size=40))
def test_search_key_is_ascii_lowercase_and_idempotent(name: str) -> None:
    """A Vietnamese name's key has no marks, no capitals, and is its own key."""
    key = search_key(name)
    assert key.isascii() and key == key.lower() and search_key(key) == key


@given(st.text(alphabet=LETTERS, min_size=1, max_size=40))
def test_a_name_typed_without_accents_matches(name: str) -> None:
    """Typing the name without its marks (or decomposed) gives the same key as the name."""
    assert search_key(ascii_name(name)) == search_key(name)
    assert search_key(unicodedata.normalize("NFD", name)) == search_key(name)
