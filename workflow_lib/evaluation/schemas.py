"""The tables of generations, refusal and jailbreak success: every column's name, type, unit and meaning (docs/tables.md).

Importing the package registers them with `workflow_lib.core.tables`, so a stage's code digest
covers the schemas of the tables it writes.
"""

from __future__ import annotations

import polars as pl

from workflow_lib.core.tables import CHECKPOINT_KEYS, columns, register

SCHEMAS = register("evaluation", {
    "generations": columns(
        *CHECKPOINT_KEYS,
        ("prompt_set", pl.Utf8, "-", "harmful, harmless or harmless_lookalike"),
        ("split", pl.Utf8, "-", "the prompts' split"),
        ("prompt_id", pl.Utf8, "-", "id in the prompts table"),
        ("wrapper", pl.Utf8, "-", "none, template:<template_id> (the request wrapped in that jailbreak template) "
         "or prefill (the answer forced to begin with jailbreak.prefill)"),
        ("hook", pl.Utf8, "-", "none, ablation (the refusal direction removed from every residual-stream write), "
         "ablation_keep_first_token (the same, each prompt's first token spared) or actadd (the raw mean "
         "difference added at its layer)"),
        ("direction_source", pl.Utf8, "-", "for a hook: own (this checkpoint's direction) or <technique>@<step> "
         "(the trajectory's final one); null without a hook"),
        ("max_new_tokens", pl.Int64, "tokens", "the budget generated: the largest any consumer of this "
         "condition asked for (a smaller budget reads the ids cut to it)"),
        ("token_ids", pl.List(pl.Int64), "token ids", "the greedy answer's ids, the stop token included when "
         "it stopped (after the prefill, for prefill)"),
        ("n_tokens", pl.Int64, "tokens", "len(token_ids)"),
        ("stopped", pl.Boolean, "-", "ended its turn within max_new_tokens"),
        ("response", pl.Utf8, "-", "token_ids decoded without special tokens, stripped"),
        ("refusal_score_logodds", pl.Float64, "nats", "log-odds of a refusal-start token at the first response "
         "position (refusal_eval.refusal_start_phrases)"),
    ),
    "refusal_eval": columns(
        *CHECKPOINT_KEYS,
        ("prompt_set", pl.Utf8, "-", "harmful or harmless (test split)"),
        ("refusal_rate", pl.Float64, "fraction", "share of greedy responses the substring judge calls a refusal"),
        ("refusal_score_logodds", pl.Float64, "nats", "mean log-odds of a refusal-start token at the first response position"),
        ("n", pl.Int64, "prompts", "prompts evaluated"),
        ("status", pl.Utf8, "-", "ok, or empty when the set had no prompts"),
    ),
    "refusal_generations": columns(
        *CHECKPOINT_KEYS,
        ("prompt_set", pl.Utf8, "-", "harmful or harmless"),
        ("prompt_id", pl.Utf8, "-", "id in the prompts table"),
        ("category", pl.Utf8, "-", "prompt category"),
        ("prompt", pl.Utf8, "-", "the user instruction"),
        ("response", pl.Utf8, "-", "greedy response"),
        ("refused", pl.Boolean, "-", "substring judge verdict"),
        ("refusal_score_logodds", pl.Float64, "nats", "log-odds of a refusal-start token at the first response position"),
    ),
    "trajectory": columns(
        *CHECKPOINT_KEYS,
        ("prompt_set", pl.Utf8, "-", "harmful or harmless"),
        ("refusal_rate", pl.Float64, "fraction", "from refusal_eval"),
        ("refusal_score_logodds", pl.Float64, "nats", "from refusal_eval"),
        ("n", pl.Int64, "prompts", "from refusal_eval"),
        ("status", pl.Utf8, "-", "from refusal_eval"),
        ("train_loss", pl.Float64, "nats/token", "from the checkpoint manifest"),
        ("tokens_seen", pl.Int64, "tokens", "from the checkpoint manifest"),
    ),
    "jailbreak": columns(
        *CHECKPOINT_KEYS,
        ("attack", pl.Utf8, "-", "none, template:<template_id>, prefill or direction_ablation"),
        ("prompt_set", pl.Utf8, "-", "harmful (attack success) or harmless (over-refusal)"),
        ("template_family", pl.Utf8, "-", "the template's family (attack_templates.family); null otherwise"),
        ("direction_source", pl.Utf8, "-", "direction_ablation only: own (this checkpoint's direction), "
         "<technique>@<step> (the trajectory's final one), or none"),
        ("judge", pl.Utf8, "-", "substring, logodds or classifier"),
        ("category", pl.Utf8, "-", "all, or a harmful prompt category (the per-category breakdown)"),
        ("asr", pl.Float64, "fraction", "share of responses the judge does not call a refusal (attack success "
         "rate on harmful prompts; the compliance rate on harmless ones)"),
        ("refusal_rate", pl.Float64, "fraction", "1 - asr: on harmless prompts, the over-refusal rate"),
        ("n", pl.Int64, "prompts", "responses judged"),
        ("ci_low", pl.Float64, "fraction", "95% Wilson interval of asr, lower end"),
        ("ci_high", pl.Float64, "fraction", "95% Wilson interval of asr, upper end"),
        ("status", pl.Utf8, "-", "ok, empty, or no_direction (direction_ablation with no direction anywhere "
         "on the trajectory)"),
    ),
    "jailbreak_generations": columns(
        *CHECKPOINT_KEYS,
        ("attack", pl.Utf8, "-", "as in jailbreak"),
        ("prompt_set", pl.Utf8, "-", "harmful or harmless"),
        ("template_family", pl.Utf8, "-", "as in jailbreak"),
        ("direction_source", pl.Utf8, "-", "as in jailbreak"),
        ("prompt_id", pl.Utf8, "-", "id in the prompts table"),
        ("category", pl.Utf8, "-", "prompt category"),
        ("prompt", pl.Utf8, "-", "the request, before any template"),
        ("response", pl.Utf8, "-", "greedy response (after the prefill, for prefill)"),
        ("n_tokens", pl.Int64, "tokens", "generated tokens, end-of-turn included"),
        ("truncated", pl.Boolean, "-", "stopped by max_new_tokens"),
        ("refusal_score_logodds", pl.Float64, "nats", "refusal log-odds at the first response position"),
        ("refused_substring", pl.Boolean, "-", "substring judge"),
        ("refused_logodds", pl.Boolean, "-", "log-odds judge (score > 0)"),
        ("refused_classifier", pl.Boolean, "-", "classifier judge; null when none is configured"),
    ),
})
