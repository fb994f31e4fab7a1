"""`refusal_direction_summary`: every checkpoint's direction, interventions and drift, one table each per model."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from workflow_lib.core import tables

KEYS = ["model", "technique", "step"]


def refusal_direction_tables(*, direction_paths: list[str], intervention_paths: list[str], drift_paths: list[str],
                             out_path: str | Path, interventions_out: str | Path, drift_out: str | Path) -> None:
    """Every checkpoint's selected direction, intervention rates and drift rows, one table each."""
    directions = pl.concat([tables.read_table(p, "refusal_direction") for p in direction_paths])
    tables.write_table(directions.sort(KEYS), out_path, "refusal_direction")
    interventions = pl.concat([tables.read_table(p, "refusal_interventions") for p in intervention_paths])
    tables.write_table(interventions.sort(KEYS + ["prompt_set", "condition"]), interventions_out,
                       "refusal_interventions")
    drift = pl.concat([tables.read_table(p, "refusal_drift") for p in drift_paths])
    tables.write_table(drift.sort(KEYS + ["layer", "position"]), drift_out, "refusal_drift")
