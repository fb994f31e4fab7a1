"""`llc_summary`, `susceptibility_summary`: every checkpoint's LLC and susceptibility rows, one table per model."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from workflow_lib.core import tables

KEYS = ["model", "technique", "step"]


def llc_table(*, llc_paths: list[str], out_path: str | Path) -> pl.DataFrame:
    """Every checkpoint's `llc` rows (chains and summaries) in one table per model."""
    table = pl.concat([tables.read_table(p, "llc") for p in llc_paths])
    return tables.write_table(table.sort(KEYS + ["parameter_space", "dataset", "row", "chain"], nulls_last=True),
                              out_path, "llc")


def susceptibility_tables(*, table_paths: list[str], structure_paths: list[str], out_path: str | Path,
                          structure_out: str | Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Every checkpoint's `susceptibility` and `susceptibility_structure` rows, one table each per model."""
    table = pl.concat([tables.read_table(p, "susceptibility") for p in table_paths])
    structure = pl.concat([tables.read_table(p, "susceptibility_structure") for p in structure_paths])
    table = tables.write_table(table.sort(KEYS + ["estimator", "seed", "layer", "head", "component", "observable"],
                                          nulls_last=True), out_path, "susceptibility")
    structure = tables.write_table(structure, structure_out, "susceptibility_structure")
    return table, structure


def susceptibility_reliability_table(*, table_paths: list[str], out_path: str | Path) -> pl.DataFrame:
    """Every checkpoint's ranking reliabilities in one table per model."""
    table = pl.concat([tables.read_table(p, "susceptibility_reliability") for p in table_paths])
    return tables.write_table(table.sort(KEYS + ["estimator", "component_kind", "ranked_by", "name", "source"]),
                              out_path, "susceptibility_reliability")
