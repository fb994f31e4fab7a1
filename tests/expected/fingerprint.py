"""The shape of every table a tiny end-to-end run writes: columns, types and row counts.

`tests/expected/tiny_tables.json` holds it for the tiny config (tests/config/tiny.yaml), written from a run
of the code before the one-declaration refactor (issue 21) and compared by tests/test_workflow.py. Values
are not stored: floats differ in their last bits between CPUs. A deliberate change of a table's shape
rewrites the file: `python tests/expected/fingerprint.py <workdir of a tiny run>`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl

EXPECTED = Path(__file__).with_name("tiny_tables.json")
# Targets outside `all` (calibration, seed check) and the run's own cost tables, whose stage column
# follows the rules files.
SKIPPED = ("llc_calibration/", "susceptibility_seed_check/", "job_costs", "generations/cache/")


def fingerprint(workdir: Path) -> dict[str, dict]:
    """Relative path -> {"columns": [[name, dtype], ...], "rows": n} for every result table of a run."""
    found = {}
    for path in sorted((workdir / "results").rglob("*.parquet")):
        rel = str(path.relative_to(workdir))
        if any(s in rel for s in SKIPPED):
            continue
        schema = pl.read_parquet_schema(path)
        found[rel] = {"columns": [[name, str(dtype)] for name, dtype in schema.items()],
                      "rows": pl.scan_parquet(path).select(pl.len()).collect().item()}
    return found


if __name__ == "__main__":
    shapes = fingerprint(Path(sys.argv[1]))
    EXPECTED.write_text("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(shapes.items()))
                        + "\n}\n")
    print(f"wrote {EXPECTED}")
