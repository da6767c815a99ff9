"""The contract in one place: docs/CONTRACT.md names every value floodwatch/contract.py defines,
and no stage reaches into ingest for it. Pure: reads files only."""

from __future__ import annotations

import re

import pytest

from alerts.commands import ACK_ERROR_CODES
from floodwatch import contract
from tests.conftest import ROOT

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
        (
            "measurements",
            (
                contract.READING_MEASUREMENT,
                contract.STATUS_MEASUREMENT,
                contract.DEADLETTER_MEASUREMENT,
                contract.ALERT_MEASUREMENT,
                contract.EPISODE_MEASUREMENT,
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
