"""`refusal_interventions`: what the selected refusal direction does to generations on test prompts.

Three conditions on the harmful and harmless test prompts: `baseline`, `ablation`
(the direction removed from every residual-stream write) and `actadd` (the raw mean
difference added at its layer, at every position, generated tokens included), as in
Arditi et al. 2024, sections 3 and 4. Each condition gets the substring judge's
refusal rate and the refusal log-odds at the first response position, read from the
checkpoint's planned greedy answers (`generation_store`: the baseline is the plain
generation, the other two the directed one). A distinct-token ratio per response flags
degenerate output, which the substring judge would otherwise count as compliance.
"""

from __future__ import annotations

import polars as pl

from workflow_lib.core import direction_file
from workflow_lib.evaluation import generation_plan, generation_store, judges
from workflow_lib.core import models, tables

CONDITIONS = tuple(generation_plan.INTERVENTION_HOOK)


def distinct_token_ratio(tokenizer, text: str) -> float:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return len(set(ids)) / len(ids) if ids else 0.0


def run_interventions(*, model: str, technique: str, step: int, model_dir, direction_path,
                      prompt_paths: dict[str, str], generations_paths: list, settings: dict, out_path) -> pl.DataFrame:
    """Judge each condition's stored answers (cut to `max_new_tokens`); `no_direction` where none was made."""
    direction = direction_file.read_direction(direction_path)
    conditions = list(settings["conditions"])
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise ValueError(f"refusal_direction.interventions.conditions names {unknown}; use {list(CONDITIONS)}")
    keys = {"model": model, "technique": technique, "step": step}
    stored = generation_store.read(generations_paths)
    tokenizer = models.load_tokenizer(model_dir)
    has_direction = direction["status"] == direction_file.STATUS_OK
    rows = []
    for prompt_set, path in prompt_paths.items():
        prompts = generation_store.selected_prompts(path, settings["split"], settings.get("max_prompts"))
        for condition in conditions:
            hook = generation_plan.INTERVENTION_HOOK[condition]
            if hook == "ablation" and settings.get("skip_first_token", False):
                hook = "ablation_keep_first_token"
            row = {**keys, "condition": condition, "prompt_set": prompt_set, "refusal_rate": None,
                   "refusal_score_logodds": None, "distinct_token_ratio": None, "n": prompts.height,
                   "layer": direction["layer"] if condition != "baseline" else None,
                   "position": direction["position"] if condition != "baseline" else None, "status": "ok"}
            if condition != "baseline" and not has_direction:
                row["status"] = direction_file.NO_DIRECTION
            elif prompts.height:
                answers = generation_store.answers(
                    stored, tokenizer, prompt_set=prompt_set, split=settings["split"], wrapper="none", hook=hook,
                    prompt_ids=prompts["prompt_id"].to_list(), max_new_tokens=int(settings["max_new_tokens"]),
                    direction_source=None if hook == "none" else "own")
                row["refusal_rate"] = sum(judges.is_refusal(a.response) for a in answers) / len(answers)
                row["refusal_score_logodds"] = sum(a.refusal_score_logodds for a in answers) / len(answers)
                row["distinct_token_ratio"] = sum(distinct_token_ratio(tokenizer, a.response)
                                                  for a in answers) / len(answers)
            rows.append(row)
    frame = pl.DataFrame(rows, schema_overrides={"refusal_rate": pl.Float64, "refusal_score_logodds": pl.Float64,
                                                 "distinct_token_ratio": pl.Float64, "layer": pl.Int64,
                                                 "position": pl.Int64})
    return tables.write_table(frame, out_path, "refusal_interventions")
