"""Write RELIABILITY.md's table from the rows the fault suite recorded in its last run.

Usage: .venv/bin/pytest tests/test_reliability.py && .venv/bin/python -m tests.reliability_table
"""

from __future__ import annotations

import re
import sys

import orjson

from tests.conftest import ROOT
from tests.test_reliability import ARTEFACT

DOC = ROOT / "RELIABILITY.md"
BEGIN, END = "<!-- table: begin -->", "<!-- table: end -->"


def table() -> str:
    rows = orjson.loads(ARTEFACT.read_bytes())
    out = [
        "| fault | what was done | published | stored | lost | duplicated | recovery | "
        "peak RSS (ingest) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['fault']} | {r['action']} | {r['published']:,} | {r['stored']:,} | "
            f"{r['lost']:,} | {r['duplicated']:,} | {r['recovery_s']:.1f} s | "
            f"{r['peak_rss_mb']:.0f} MB |"
        )
    return "\n".join(out)


def main() -> int:
    text = DOC.read_text()
    new = re.sub(
        f"{re.escape(BEGIN)}.*?{re.escape(END)}", f"{BEGIN}\n{table()}\n{END}", text, flags=re.S
    )
    DOC.write_text(new)
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
