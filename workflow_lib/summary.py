"""`summary`: join every checkpoint's measurements into one trajectory table per model."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from workflow_lib import tables

KEYS = ["model", "technique", "step"]


def trajectory(*, manifest_paths: list[str], refusal_eval_paths: list[str], out_path: str | Path) -> pl.DataFrame:
    """Refusal measurements per checkpoint and prompt set, with the checkpoint's training state.

    A checkpoint without a refusal_eval row would be a DAG bug, so the join is an
    inner join checked for completeness rather than a silent left join.
    """
    manifest = pl.concat([tables.read_table(p, "checkpoint") for p in manifest_paths])
    refusal = pl.concat([tables.read_table(p, "refusal_eval") for p in refusal_eval_paths])
    joined = refusal.join(manifest.select(*KEYS, "train_loss", "tokens_seen"), on=KEYS, how="left")
    missing = joined.filter(pl.col("tokens_seen").is_null())
    if missing.height:
        raise ValueError(f"refusal_eval rows without a checkpoint manifest row: {missing.select(KEYS).rows()}")
    return tables.write_table(joined.sort(KEYS + ["prompt_set"]), out_path, "trajectory")


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


def jailbreak_table(*, table_paths: list[str], out_path: str | Path) -> pl.DataFrame:
    """Every checkpoint's attack success rates, one table."""
    table = pl.concat([tables.read_table(p, "jailbreak") for p in table_paths])
    return tables.write_table(table.sort(KEYS + ["prompt_set", "attack", "judge", "category"]), out_path, "jailbreak")
