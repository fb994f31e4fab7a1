"""`refusal_eval`: how often a checkpoint refuses held-out harmful and harmless prompts.

Two measures per prompt set (test split), read from the checkpoint's planned greedy answers
(`generation_store`, direct requests, cut to `max_new_tokens`):
- a generation-based refusal rate, judged by the substring judge (`judges.is_refusal`);
- the mean refusal score: log-odds of a refusal-start token at the first response
  position (Arditi et al. 2024), scored when the answer was generated.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from workflow_lib.evaluation import generation_store, judges
from workflow_lib.core import models, tables


def refusal_eval(*, model: str, technique: str, step: int, model_dir: str | Path, prompt_paths: dict[str, str],
                 generations_path: str | Path, settings: dict, out_path: str | Path,
                 judged_path: str | Path) -> pl.DataFrame:
    """Judge the stored answers; writes the per-set table (`out_path`) and the per-prompt one (`judged_path`)."""
    stored = generation_store.read([generations_path])
    tokenizer = models.load_tokenizer(model_dir)
    split = settings.get("split", "test")
    summary_rows, generation_tables = [], []
    for prompt_set, path in prompt_paths.items():
        prompts = generation_store.selected_prompts(path, split, settings.get("max_prompts"))
        if prompts.is_empty():
            summary_rows.append({"prompt_set": prompt_set, "refusal_rate": None, "refusal_score_logodds": None,
                                 "n": 0, "status": "empty"})
            continue
        answers = generation_store.answers(stored, tokenizer, prompt_set=prompt_set, split=split, wrapper="none",
                                           hook="none", prompt_ids=prompts["prompt_id"].to_list(),
                                           max_new_tokens=int(settings["max_new_tokens"]))
        scores = [a.refusal_score_logodds for a in answers]
        refused = [judges.is_refusal(a.response) for a in answers]
        generation_tables.append(prompts.select(
            pl.lit(prompt_set).alias("prompt_set"), "prompt_id", "category", pl.col("text").alias("prompt"),
        ).with_columns(response=pl.Series([a.response for a in answers], dtype=pl.Utf8),
                       refused=pl.Series(refused, dtype=pl.Boolean),
                       refusal_score_logodds=pl.Series(scores, dtype=pl.Float64)))
        summary_rows.append({"prompt_set": prompt_set, "refusal_rate": sum(refused) / len(refused),
                             "refusal_score_logodds": sum(scores) / len(scores), "n": len(refused), "status": "ok"})
    keys = {"model": model, "technique": technique, "step": step}
    gens_table = (pl.concat(generation_tables) if generation_tables
                  else tables.empty_frame("refusal_generations").drop(list(keys)))
    tables.write_table(gens_table.with_columns(**{k: pl.lit(v) for k, v in keys.items()}),
                       judged_path, "refusal_generations")
    summary = pl.DataFrame(summary_rows, schema_overrides={"refusal_rate": pl.Float64,
                                                           "refusal_score_logodds": pl.Float64})
    return tables.write_table(summary.with_columns(**{k: pl.lit(v) for k, v in keys.items()}),
                              out_path, "refusal_eval")
