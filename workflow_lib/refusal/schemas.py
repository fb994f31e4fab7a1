"""The tables of the refusal direction: every column's name, type, unit and meaning (docs/tables.md).

Importing the package registers them with `workflow_lib.core.tables`, so a stage's code digest
covers the schemas of the tables it writes.
"""

from __future__ import annotations

import polars as pl

from workflow_lib.core.tables import CHECKPOINT_KEYS, columns, register

SCHEMAS = register("refusal", {
    "refusal_candidates": columns(
        *CHECKPOINT_KEYS,
        ("layer", pl.Int64, "-", "decoder block whose input (resid_pre) the mean difference is taken at"),
        ("position", pl.Int64, "tokens from the end", "post-instruction position, -1 = last prompt token"),
        ("position_token", pl.Utf8, "-", "the chat-template token at that position"),
        ("mean_diff_norm", pl.Float64, "activation units", "norm of the harmful - harmless mean difference "
         "(filtered train prompts; unfiltered when the filter kept too few)"),
        ("bypass_score", pl.Float64, "nats", "mean refusal log-odds on harmful val prompts with the direction "
         "ablated everywhere (lower = ablation removes refusal); null if not scored"),
        ("induce_score", pl.Float64, "nats", "mean refusal log-odds on harmless val prompts with the mean "
         "difference added at its layer (> 0 = addition induces refusal); null if not scored"),
        ("kl", pl.Float64, "nats", "KL(baseline || ablated) of the next-token distribution, mean over harmless "
         "val prompts; null if not scored"),
        ("filtered_reason", pl.Utf8, "-", "why the candidate cannot be selected ('; '-joined), null if it passes"),
        ("selected", pl.Boolean, "-", "the selected direction: lowest bypass_score among candidates that pass"),
    ),
    "refusal_direction": columns(
        *CHECKPOINT_KEYS,
        ("status", pl.Utf8, "-", "ok, or no_direction (no candidate passed, or the train filter kept too few)"),
        ("reason", pl.Utf8, "-", "why there is no direction; null when ok"),
        ("layer", pl.Int64, "-", "layer of the selected direction; null without one"),
        ("position", pl.Int64, "tokens from the end", "position of the selected direction; null without one"),
        ("bypass_score", pl.Float64, "nats", "the selected candidate's bypass score"),
        ("induce_score", pl.Float64, "nats", "the selected candidate's induce score"),
        ("kl", pl.Float64, "nats", "the selected candidate's KL on harmless val prompts"),
        ("n_layers", pl.Int64, "layers", "decoder layers of the model"),
        ("n_candidates", pl.Int64, "candidates", "candidates in refusal_candidates"),
        ("n_scored", pl.Int64, "candidates", "candidates scored on the val prompts"),
        ("n_passing", pl.Int64, "candidates", "candidates that pass every filter"),
        ("n_harmful_train", pl.Int64, "prompts", "harmful train prompts"),
        ("n_harmless_train", pl.Int64, "prompts", "harmless train prompts"),
        ("n_harmful_kept", pl.Int64, "prompts", "harmful train prompts with refusal score > 0 (the train filter)"),
        ("n_harmless_kept", pl.Int64, "prompts", "harmless train prompts with refusal score < 0"),
        ("n_harmful_val", pl.Int64, "prompts", "harmful val prompts scored (after the val filter); null if none"),
        ("n_harmless_val", pl.Int64, "prompts", "harmless val prompts scored (after the val filter)"),
    ),
    "refusal_interventions": columns(
        *CHECKPOINT_KEYS,
        ("condition", pl.Utf8, "-", "baseline, ablation (direction removed everywhere) or actadd (mean "
         "difference added at its layer)"),
        ("prompt_set", pl.Utf8, "-", "harmful or harmless (test split)"),
        ("refusal_rate", pl.Float64, "fraction", "share of greedy responses the substring judge calls a refusal"),
        ("refusal_score_logodds", pl.Float64, "nats", "mean log-odds of a refusal-start token at the first "
         "response position"),
        ("distinct_token_ratio", pl.Float64, "fraction", "mean share of distinct tokens per response: low values "
         "flag degenerate, repetitive output that the substring judge would count as compliance"),
        ("n", pl.Int64, "prompts", "prompts evaluated"),
        ("layer", pl.Int64, "-", "layer of the direction used; null for baseline or without a direction"),
        ("position", pl.Int64, "tokens from the end", "position of the direction used"),
        ("status", pl.Utf8, "-", "ok, or no_direction (the intervention was not run)"),
    ),
    "refusal_drift": columns(
        *CHECKPOINT_KEYS,
        ("layer", pl.Int64, "-", "decoder block (resid_pre)"),
        ("position", pl.Int64, "tokens from the end", "post-instruction position"),
        ("mean_diff_norm", pl.Float64, "activation units", "norm of this checkpoint's unfiltered mean difference"),
        ("cos_to_previous", pl.Float64, "-", "cosine to the previous checkpoint's mean difference (null at the "
         "first step)"),
        ("cos_to_final", pl.Float64, "-", "cosine to the trajectory's final checkpoint's mean difference"),
        ("cos_to_base", pl.Float64, "-", "cosine to the base model's mean difference"),
        ("reference", pl.Utf8, "-", "checkpoint whose selected direction the projections use, as "
         "technique@step; null when it has none"),
        ("proj_harmful", pl.Float64, "activation units", "mean projection of harmful train activations onto the "
         "reference direction (unit)"),
        ("proj_harmless", pl.Float64, "activation units", "mean projection of harmless train activations onto the "
         "reference direction"),
        ("selected_here", pl.Boolean, "-", "this (layer, position) is this checkpoint's selected direction"),
    ),
    "component_alignment": columns(
        *CHECKPOINT_KEYS,
        ("component", pl.Utf8, "-", "component, named as susceptibility components (`l3 attn`, `l3 mlp`, `l3h2`, "
         "`l3g0`, `l3`)"),
        ("layer", pl.Int64, "-", "decoder layer"),
        ("head", pl.Int64, "-", "attention head or GQA group; null otherwise"),
        ("component_kind", pl.Utf8, "-", "attn, mlp, head, group or layer"),
        ("weight", pl.Utf8, "-", "output weights projected: o_proj (columns of the head or group), down_proj, or "
         "both for a layer"),
        ("alignment", pl.Float64, "-", "||r^T W_out||: norm of the output weights' projection onto the unit "
         "refusal direction r"),
        ("alignment_ratio", pl.Float64, "-", "alignment / (||W_out||_F / sqrt(d_model)): 1 = as aligned as a "
         "random direction on average"),
        ("status", pl.Utf8, "-", "ok, or no_direction (this checkpoint has no selected direction)"),
    ),
})
