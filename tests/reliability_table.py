"""Write RELIABILITY.md's table from the rows the fault suite recorded in its last run.

Usage: .venv/bin/pytest tests/test_reliability.py && .venv/bin/python -m tests.reliability_table
The clustered table (tests/test_cluster_faults.py): `... -m tests.reliability_table --cluster`.
"""

from __future__ import annotations

import re
import sys

import orjson

from tests.conftest import ROOT
from tests.test_reliability import ARTEFACT

DOC = ROOT / "RELIABILITY.md"
BEGIN, END = "<!-- table: begin -->", "<!-- table: end -->"
CLUSTER_BEGIN, CLUSTER_END = "<!-- cluster table: begin -->", "<!-- cluster table: end -->"


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


def cluster_table() -> str:
    """The clustered rows of the last suite run, then those of runs with a longer influxd
    outage (FLOODWATCH_FAULT_OUTAGE_S)."""
    from tests.test_cluster_faults import ARTEFACT as CLUSTER_ARTEFACT

    rows = orjson.loads(CLUSTER_ARTEFACT.read_bytes())
    for extra in sorted(CLUSTER_ARTEFACT.parent.glob(CLUSTER_ARTEFACT.stem + "-*.json")):
        rows += [r for r in orjson.loads(extra.read_bytes()) if r["fault"].startswith("influxd")]
    out = [
        "| fault | what was done | published | acknowledged | stored | lost | duplicated | "
        "alerts missing / doubled / extra (of) | time to resume | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        level = "" if r["level"] == "workers" else " **(consumer level, not ingest)**"
        out.append(
            f"| {r['fault']}{level} | {r['action']} | {r['published']:,} | "
            f"{r['acknowledged']:,} | {r['stored']:,} | {r['lost']:,} | {r['duplicated']:,} | "
            f"{r['alerts_missing']} / {r['alerts_doubled']} / {r['alerts_extra']} "
            f"({r['alerts']}) | "
            f"{r['resume_s']:.1f} s | {r['notes']} |"
        )
    return "\n".join(out)


def main() -> int:
    cluster = "--cluster" in sys.argv[1:]
    begin, end = (CLUSTER_BEGIN, CLUSTER_END) if cluster else (BEGIN, END)
    rows = cluster_table() if cluster else table()
    text = DOC.read_text()
    new = re.sub(
        f"{re.escape(begin)}.*?{re.escape(end)}", f"{begin}\n{rows}\n{end}", text, flags=re.S
    )
    DOC.write_text(new)
    print(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
