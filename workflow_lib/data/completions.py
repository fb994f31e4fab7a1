"""`base_completions`: the base model's own greedy answers to the train prompts.

They are the retain targets of refusal SFT (the model keeps answering benign
requests the way it already did), and later the compliant "rejected" answers for
DPO and the harmful fine-tuning attack.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from workflow_lib.core import generation
from workflow_lib.core import models, tables


def base_completions(*, model: str, model_dir: str | Path, prompt_paths: list[str], settings: dict,
                     out_path: str | Path, device: str = "cpu", dtype: str = "float32") -> pl.DataFrame:
    prompts = pl.concat([tables.read_table(p, "prompts") for p in prompt_paths])
    prompts = prompts.filter(pl.col("split").is_in(settings.get("splits", ["train"])))
    if prompts.is_empty():
        raise ValueError(f"no prompts in splits {settings.get('splits')} to complete; check prompts.*.splits")
    lm, tokenizer = models.load_base(model_dir, dtype=dtype, device=device)
    lm.eval()
    gens = generation.generate(lm, tokenizer, prompts["text"].to_list(),
                               max_new_tokens=int(settings["max_new_tokens"]), batch_size=int(settings["batch_size"]),
                               what="base completions")
    table = prompts.select(
        pl.lit(model).alias("model"), "prompt_id", "set", "split", pl.col("text").alias("prompt"),
    ).with_columns(
        response=pl.Series([g.response for g in gens], dtype=pl.Utf8),
        n_response_tokens=pl.Series([g.n_tokens for g in gens], dtype=pl.Int64),
        truncated=pl.Series([g.truncated for g in gens], dtype=pl.Boolean),
    )
    return tables.write_table(table, out_path, "completions")
