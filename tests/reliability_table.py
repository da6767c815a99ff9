"""Write RELIABILITY.md's table from the rows the fault suite recorded in its last run.

Usage: .venv/bin/pytest tests/test_reliability.py && .venv/bin/python -m tests.reliability_table
The clustered rows (tests/test_cluster_faults.py): `... -m tests.reliability_table --cluster`
prints them for the clustered table.
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


def cluster_rows() -> str:
    """RELIABILITY.md's clustered rows 1, 2, 5 and 6 from the last run of
    tests/test_cluster_faults.py (and runs with a longer influxd outage,
    FLOODWATCH_FAULT_OUTAGE_S), in the clustered table's columns, for pasting: the table also
    holds other tests' rows, written by hand."""
    from tests.test_cluster_faults import ARTEFACT as CLUSTER_ARTEFACT

    rows = orjson.loads(CLUSTER_ARTEFACT.read_bytes())
    for extra in sorted(CLUSTER_ARTEFACT.parent.glob(CLUSTER_ARTEFACT.stem + "-*.json")):
        rows += [r for r in orjson.loads(extra.read_bytes()) if r["fault"].startswith("influxd")]
    out = []
    for r in rows:
        out.append(
            f"| {r['fault']} (`tests/test_cluster_faults.py`) | {r['action']}; "
            f"{r['notes']} | {r['published']:,} | {r['acknowledged']:,} | {r['stored']:,} | "
            f"{r['lost']:,} | {r['duplicated']:,} | {r['alerts_missing']} / "
            f"{r['alerts_doubled']} of {r['alerts']} ({r['alerts_extra']} decided otherwise) | "
            f"{r['resume_s']:.1f} s |"
        )
    return "\n".join(out)


def main() -> int:
    if "--cluster" in sys.argv[1:]:
        print(cluster_rows())
        return 0
    text = DOC.read_text()
    new = re.sub(
        f"{re.escape(BEGIN)}.*?{re.escape(END)}", f"{BEGIN}\n{table()}\n{END}", text, flags=re.S
    )
    DOC.write_text(new)
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
