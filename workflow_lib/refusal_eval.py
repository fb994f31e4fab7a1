"""`refusal_eval`: how often a checkpoint refuses held-out harmful and harmless prompts.

Two measures per prompt set (test split):
- a generation-based refusal rate: batched greedy generation with left padding (both
  prompt sets in one call, so batches fill across them), judged by the substring judge
  (`judges.is_refusal`);
- the mean refusal score: log-odds of a refusal-start token at the first response
  position (Arditi et al. 2024), read from the same generation pass.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import torch

from workflow_lib import generation, judges, models, tables


def refusal_eval(*, model: str, technique: str, step: int, model_dir: str | Path, checkpoint_dir: str | Path,
                 prompt_paths: dict[str, str], settings: dict, out_path: str | Path, generations_path: str | Path,
                 device: str = "cpu", dtype: str = "float32") -> pl.DataFrame:
    lm, tokenizer = models.load_checkpoint(model_dir, checkpoint_dir, dtype=dtype, device=device)
    refusal_ids = judges.refusal_token_ids(tokenizer, settings["refusal_start_phrases"])
    selected = {}
    for prompt_set, path in prompt_paths.items():
        prompts = tables.read_table(path, "prompts").filter(pl.col("split") == settings.get("split", "test"))
        if settings.get("max_prompts") is not None:
            prompts = prompts.head(int(settings["max_prompts"]))
        selected[prompt_set] = prompts
    # one call for every prompt set: sorted by length together, batches fill across sets
    everything = [text for prompts in selected.values() for text in prompts["text"].to_list()]
    pooled = generation.generate(lm, tokenizer, everything, max_new_tokens=int(settings["max_new_tokens"]),
                                 batch_size=int(settings["batch_size"]), what="refusal_eval answers")
    summary_rows, generation_tables, offset = [], [], 0
    for prompt_set, prompts in selected.items():
        gens, offset = pooled[offset:offset + prompts.height], offset + prompts.height
        if prompts.is_empty():
            summary_rows.append({"prompt_set": prompt_set, "refusal_rate": None, "refusal_score_logodds": None,
                                 "n": 0, "status": "empty"})
            continue
        first_logits = torch.stack([g.first_logits for g in gens])
        scores = judges.refusal_logodds(first_logits, refusal_ids).tolist()
        refused = [judges.is_refusal(g.response) for g in gens]
        generation_tables.append(prompts.select(
            pl.lit(prompt_set).alias("prompt_set"), "prompt_id", "category", pl.col("text").alias("prompt"),
        ).with_columns(response=pl.Series([g.response for g in gens], dtype=pl.Utf8),
                       refused=pl.Series(refused, dtype=pl.Boolean),
                       refusal_score_logodds=pl.Series(scores, dtype=pl.Float64)))
        summary_rows.append({"prompt_set": prompt_set, "refusal_rate": sum(refused) / len(refused),
                             "refusal_score_logodds": sum(scores) / len(scores), "n": len(refused), "status": "ok"})
    keys = {"model": model, "technique": technique, "step": step}
    gens_table = (pl.concat(generation_tables) if generation_tables
                  else tables.empty_frame("refusal_generations").drop(list(keys)))
    tables.write_table(gens_table.with_columns(**{k: pl.lit(v) for k, v in keys.items()}),
                       generations_path, "refusal_generations")
    summary = pl.DataFrame(summary_rows, schema_overrides={"refusal_rate": pl.Float64,
                                                           "refusal_score_logodds": pl.Float64})
    return tables.write_table(summary.with_columns(**{k: pl.lit(v) for k, v in keys.items()}),
                              out_path, "refusal_eval")
