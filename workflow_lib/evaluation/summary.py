"""`summary` and `jailbreak_summary`: every checkpoint's refusal and attack success rates, one table per model."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from workflow_lib.core import tables

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


def jailbreak_table(*, table_paths: list[str], out_path: str | Path) -> pl.DataFrame:
    """Every checkpoint's attack success rates, one table."""
    table = pl.concat([tables.read_table(p, "jailbreak") for p in table_paths])
    return tables.write_table(table.sort(KEYS + ["prompt_set", "attack", "judge", "category"]), out_path, "jailbreak")
