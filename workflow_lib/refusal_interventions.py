"""`refusal_interventions`: what the selected refusal direction does to generations on test prompts.

Three conditions on the harmful and harmless test prompts: `baseline`, `ablation`
(the direction removed from every residual-stream write) and `actadd` (the raw mean
difference added at its layer, at every position, generated tokens included), as in
Arditi et al. 2024, sections 3 and 4. Each condition gets the substring judge's
refusal rate and the refusal log-odds at the first response position, from one
batched greedy generation. A distinct-token ratio per response flags degenerate
output, which the substring judge would otherwise count as compliance.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import polars as pl
import torch
from safetensors import safe_open

from workflow_lib import generation, interventions, judges, models, refusal_direction, tables

CONDITIONS = ("baseline", "ablation", "actadd")


def read_direction(path: str | Path) -> dict:
    """The direction file's metadata and tensors (`direction`, `direction_raw` only when status is ok)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    layer = None if meta.get("layer") in (None, "None") else int(meta["layer"])
    position = None if meta.get("position") in (None, "None") else int(meta["position"])
    return {"status": meta["status"], "layer": layer, "position": position, "tensors": tensors,
            "positions": [int(p) for p in meta["positions"].split(",")]}


def distinct_token_ratio(tokenizer, text: str) -> float:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return len(set(ids)) / len(ids) if ids else 0.0


def condition_context(model, direction: dict, condition: str, skip_first_token: bool = False):
    if condition == "baseline":
        return contextlib.nullcontext()
    if condition == "ablation":
        return interventions.ablation(model, direction["tensors"]["direction"].to(next(model.parameters()).device),
                                      skip_first_token)
    if condition == "actadd":
        raw = direction["tensors"]["direction_raw"].to(torch.float32).to(next(model.parameters()).device)
        return interventions.addition(model, raw, direction["layer"])
    raise ValueError(f"unknown intervention condition {condition!r}; use one of {list(CONDITIONS)}")


def run_interventions(*, model: str, technique: str, step: int, model_dir, checkpoint_dir, direction_path,
                      prompt_paths: dict[str, str], settings: dict, refusal_phrases: list[str], out_path,
                      device: str = "cpu", dtype: str = "float32") -> pl.DataFrame:
    direction = read_direction(direction_path)
    conditions = list(settings["conditions"])
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise ValueError(f"refusal_direction.interventions.conditions names {unknown}; use {list(CONDITIONS)}")
    keys = {"model": model, "technique": technique, "step": step}
    rows = []
    has_direction = direction["status"] == refusal_direction.STATUS_OK
    runnable = [c for c in conditions if c == "baseline" or has_direction]
    lm = tokenizer = None
    if runnable:
        lm, tokenizer = models.load_checkpoint(model_dir, checkpoint_dir, dtype=dtype, device=device)
        refusal_ids = judges.refusal_token_ids(tokenizer, refusal_phrases)
    texts = {prompt_set: refusal_direction.read_prompts(path, settings["split"], settings.get("max_prompts"))
             for prompt_set, path in prompt_paths.items()}
    everything = [t for set_texts in texts.values() for t in set_texts]
    generations = {}
    for condition in runnable if everything else []:
        # one call per condition for every prompt set: sorted by length together, batches fill across sets
        with condition_context(lm, direction, condition, bool(settings.get("skip_first_token", False))):
            pooled = generation.generate(lm, tokenizer, everything, max_new_tokens=int(settings["max_new_tokens"]),
                                         batch_size=int(settings["batch_size"]), what=f"intervention {condition}")
        offset = 0
        for prompt_set, set_texts in texts.items():
            generations[prompt_set, condition] = pooled[offset:offset + len(set_texts)]
            offset += len(set_texts)
    for prompt_set, set_texts in texts.items():
        for condition in conditions:
            row = {**keys, "condition": condition, "prompt_set": prompt_set, "refusal_rate": None,
                   "refusal_score_logodds": None, "distinct_token_ratio": None, "n": len(set_texts),
                   "layer": direction["layer"] if condition != "baseline" else None,
                   "position": direction["position"] if condition != "baseline" else None, "status": "ok"}
            if condition not in runnable:
                row["status"] = refusal_direction.NO_DIRECTION
            elif set_texts:
                gens = generations[prompt_set, condition]
                scores = judges.refusal_logodds(torch.stack([g.first_logits for g in gens]), refusal_ids)
                row["refusal_rate"] = sum(judges.is_refusal(g.response) for g in gens) / len(gens)
                row["refusal_score_logodds"] = float(scores.mean())
                row["distinct_token_ratio"] = sum(distinct_token_ratio(tokenizer, g.response) for g in gens) / len(gens)
            rows.append(row)
    frame = pl.DataFrame(rows, schema_overrides={"refusal_rate": pl.Float64, "refusal_score_logodds": pl.Float64,
                                                 "distinct_token_ratio": pl.Float64, "layer": pl.Int64,
                                                 "position": pl.Int64})
    return tables.write_table(frame, out_path, "refusal_interventions")
