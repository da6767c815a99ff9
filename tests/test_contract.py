"""The contract in one place: docs/CONTRACT.md names every value floodwatch/contract.py defines
and every route the API serves, and no stage reaches into ingest for it. Pure: reads files
only (building the API app connects to nothing)."""

from __future__ import annotations

import re

import pytest

from alerts.commands import ACK_ERROR_CODES
from api.app import create_app
from floodwatch import contract
from floodwatch.operations import CHANGE_KINDS, CHANGE_MEASUREMENT
from tests.conftest import ROOT
from tests.test_api_support import api_settings

DOC = (ROOT / "docs" / "CONTRACT.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("what", "names"),
    [
        ("dead-letter codes", contract.REJECTION_CODES),
        ("alert kinds", contract.KINDS),
        ("changes", contract.CHANGES),
        ("lifecycle states", contract.LIFECYCLES),
        ("street level names", contract.STREET_LEVEL_NAMES),
        ("tide level names", contract.TIDE_LEVEL_NAMES),
        ("acknowledgement error codes", ACK_ERROR_CODES),
        ("operators' change kinds", CHANGE_KINDS),
        (
            "measurements",
            (
                contract.READING_MEASUREMENT,
                contract.STATUS_MEASUREMENT,
                contract.DEADLETTER_MEASUREMENT,
                contract.ALERT_MEASUREMENT,
                contract.EPISODE_MEASUREMENT,
                CHANGE_MEASUREMENT,
            ),
        ),
    ],
)
def test_the_written_contract_names_every_value_of_the_code(
    what: str, names: tuple[str, ...]
) -> None:
    """A code, kind, state or measurement added in code and not in docs/CONTRACT.md fails."""
    missing = [name for name in names if f"`{name}`" not in DOC]
    assert not missing, f"docs/CONTRACT.md does not name these {what}: {missing}"


HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _route_key(path: str) -> str:
    """A path with its query left off and every `{parameter}` written `{}`: the document may
    name a parameter more briefly than the code (`{id}` for `{sensor_id}`)."""
    return re.sub(r"\{[^}]*\}", "{}", path.split("?", 1)[0])


def documented_routes(doc: str) -> set[tuple[str, str]]:
    """(METHOD, route) of each route the HTTP API table of section 4 lists in its first column:
    `GET /a`, `/b` (the method carries on), `POST`/`DELETE /c` (both methods)."""
    section = doc.split("## 4. HTTP API", 1)[1].split("\n## ", 1)[0]
    found: set[tuple[str, str]] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line.split(" | ", 1)[0]
        current: list[str] = []  # the methods of the last route named: `/b` carries them on
        pending: list[str] = []  # methods alone in their span, for the next route
        for span in re.findall(r"`([^`]*)`", first_cell):
            words = span.split()
            leading = [word for word in words if word in HTTP_METHODS]
            if words and len(leading) == len(words):
                pending += leading
                continue
            if words and words[-1].startswith("/"):
                current = pending + leading if pending or leading else current
                pending = []
                found.update((method, _route_key(words[-1])) for method in current)
    return found


def test_the_written_contract_names_every_api_route() -> None:
    """A route added to the API and not to docs/CONTRACT.md section 4 fails."""
    schema = create_app(api_settings(1, 1, "contract")).openapi()
    served = {
        (method.upper(), _route_key(path))
        for path, operations in schema["paths"].items()
        for method in operations
    }
    missing = sorted(served - documented_routes(DOC))
    assert not missing, f"docs/CONTRACT.md section 4 does not list these routes: {missing}"


def test_no_stage_but_ingest_imports_ingest() -> None:
    """Shared types live in floodwatch/: alerts, api, simulators, bench never import ingest."""
    pattern = re.compile(r"^\s*(from|import) ingest\b", re.MULTILINE)
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("alerts", "api", "simulators", "floodwatch", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
