"""Every error answer is `{"detail": one sentence}` saying what was wrong and what to send.

FastAPI's own 422s are lists of pydantic errors quoting raw regexes; `validation_sentence`
turns the first one into a sentence a person can act on. `unknown_parameters` backs the rule
that a query parameter a route does not declare is refused (400) rather than ignored: a typo
such as `?sinse=` would otherwise silently return everything. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# What a parameter whose pattern failed should look like, by name (the routes' patterns).
EXPECTED_FORM: Mapping[str, str] = {
    "sensor_id": "a sensor id from GET /v1/sensors, e.g. qh-02",
    "sensor": "a sensor id from GET /v1/sensors, e.g. qh-02",
    "every": "a whole number and a unit s, m, h, d or w, e.g. 5m or 1d",
    "cursor": "the cursor from a `next` link exactly as given, or no cursor",
    "event_id": "an event id from GET /v1/events",
}
TIME_PARAMETERS = frozenset({"start", "end", "since", "until"})
TIME_EXAMPLE = "2026-11-26T18:05:00%2B07:00 or 2026-11-26T11:05:00Z"


def sentence(text: str) -> str:
    """`text` as one sentence ending in one full stop. The case is left alone: most begin
    with a parameter's name, which is code (`limit`, not `Limit`)."""
    # Names in an answer can come from the request (a body's unknown field): one line only.
    text = "".join(c if c.isprintable() else "?" for c in text).strip().rstrip(".")
    return text + "." if text else text


def _name(loc: Sequence[Any]) -> tuple[str, str]:
    """(where, name) of an error's location, e.g. ("query", "start") or ("body", "note")."""
    where = str(loc[0]) if loc else "request"
    names = [str(part) for part in loc[1:] if isinstance(part, str)]
    name = ".".join(names) if names else where
    return where[:20], name[:40]


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:40] + ("..." if len(text) > 40 else ""))


def validation_sentence(error: Mapping[str, Any]) -> tuple[str, str]:
    """(parameter name, one sentence) for one pydantic error as FastAPI reports it."""
    where, name = _name(error.get("loc") or ())
    kind = str(error.get("type", ""))
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if where == "body":
        return name, _body_sentence(name, kind, ctx)
    if kind == "missing":
        return name, sentence(f"{name} is missing: send the {where} parameter {name}")
    if name in TIME_PARAMETERS or kind.startswith(("datetime", "timezone")):
        if kind == "timezone_aware":
            return name, sentence(
                f"{name} needs a UTC offset or Z: send e.g. {name}={TIME_EXAMPLE}"
            )
        if isinstance(value, str) and " " in value.strip():
            return name, sentence(
                f"{name} {_shown(value)} holds a space where its + was: a + in a URL "
                f"arrives as a space, so write it as %2B (e.g. {TIME_EXAMPLE}) or give the "
                "time in UTC with Z"
            )
        return name, sentence(
            f"{name} {_shown(value)} is not a time: send ISO 8601 with an offset, e.g. "
            f"{name}={TIME_EXAMPLE}"
        )
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "")
        return name, sentence(f"{name} {_shown(value)} is not accepted: send {expected}")
    if kind in ("int_parsing", "int_type", "float_parsing"):
        return name, sentence(f"{name} {_shown(value)} is not a number: send a whole number")
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = {
            "greater_than_equal": f"at least {ctx.get('ge')}",
            "greater_than": f"more than {ctx.get('gt')}",
            "less_than_equal": f"at most {ctx.get('le')}",
            "less_than": f"less than {ctx.get('lt')}",
        }[kind]
        return name, sentence(f"{name} {_shown(value)} is out of range: send a value {bound}")
    if kind == "string_too_long":
        return name, sentence(
            f"{name} is too long: send at most {ctx.get('max_length')} characters"
        )
    if kind == "string_too_short":
        return name, sentence(
            f"{name} is empty or too short: send at least {ctx.get('min_length')} character(s)"
        )
    if kind == "string_pattern_mismatch":
        form = EXPECTED_FORM.get(name, "the form shown in /docs")
        return name, sentence(f"{name} {_shown(value)} is not valid: send {form}")
    return name, sentence(f"{name} {_shown(value)} is not valid: see /docs for what to send")


def _body_sentence(name: str, kind: str, ctx: Mapping[str, Any]) -> str:
    if kind == "json_invalid":
        return sentence('The body is not valid JSON: send e.g. {"note": "crew sent"}')
    if kind == "missing" and name == "body":
        return sentence('The body is missing: send JSON, e.g. {"note": "crew sent"} or {}')
    if kind == "extra_forbidden":
        return sentence(f"The body has a field {name!r} this request does not take: remove it")
    if kind == "string_too_long":
        return sentence(f"{name} is too long: send at most {ctx.get('max_length')} characters")
    if kind in ("string_type", "model_attributes_type", "dict_type"):
        return sentence(
            f'{name} has the wrong type: send a JSON object such as {{"note": "crew sent"}}'
        )
    if kind == "value_error" and ctx.get("error"):
        # Our own validators already say what is wrong and what to send (e.g. a note's NUL).
        return sentence(str(ctx["error"]))
    return sentence(f"The body's {name} is not valid: see /docs for the request's body")


def validation_detail(errors: Sequence[Mapping[str, Any]]) -> str:
    """One sentence for a failed request: its first error (the others often follow from it)."""
    if not errors:
        return sentence("The request is not valid: see /docs for what to send")
    return validation_sentence(errors[0])[1]


def unknown_parameters(sent: Iterable[str], declared: frozenset[str]) -> list[str]:
    """The query parameters sent that the route does not declare, in the order sent."""
    return list(dict.fromkeys(name for name in sent if name not in declared))


def unknown_parameter_sentence(unknown: Sequence[str], declared: frozenset[str]) -> str:
    names = ", ".join(repr(n[:40]) for n in unknown[:5])
    allowed = ", ".join(sorted(declared)) or "none"
    noun = "parameter" if len(unknown) == 1 else "parameters"
    return sentence(
        f"Unknown query {noun} {names}: remove it or use one this request takes ({allowed})"
    )
