"""The tables of the LLC and susceptibilities: every column's name, type, unit and meaning (docs/tables.md).

Importing the package registers them with `workflow_lib.core.tables`, so a stage's code digest
covers the schemas of the tables it writes.
"""

from __future__ import annotations

import polars as pl

from workflow_lib.core.tables import CHECKPOINT_KEYS, ESTIMATOR, LLC_KEYS, SGLD_TRACE, SUSCEPTIBILITY_KEYS, columns, register

SCHEMAS = register("slt", {
    "llc": columns(
        *CHECKPOINT_KEYS,
        *LLC_KEYS,
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
    "llc_trace": columns(
        *CHECKPOINT_KEYS,
        *LLC_KEYS,
        ("seed", pl.Int64, "-", "as in llc"),
        *SGLD_TRACE,
        ("batch_key", pl.Int64, "-", "fingerprint of the minibatch's token ids: equal keys at a (chain, step) of "
         "two checkpoints mean their draws are paired (same batches; the same seed also gives the same noise)"),
    ),
    "llc_differences": columns(
        ("model", pl.Utf8, "-", "model name (key of `models`)"),
        ("technique", pl.Utf8, "-", "technique of the trajectory"),
        *LLC_KEYS,
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
    "llc_calibration": columns(
        *CHECKPOINT_KEYS,
        *LLC_KEYS,
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
    "llc_calibration_trace": columns(
        *CHECKPOINT_KEYS,
        *LLC_KEYS,
        ("lr", pl.Float64, "-", "grid point step size"),
        ("n_beta", pl.Float64, "-", "grid point n_beta"),
        ("localization", pl.Float64, "-", "grid point localization"),
        *SGLD_TRACE,
    ),
    "susceptibility_tokens": columns(
        *CHECKPOINT_KEYS,
        *SUSCEPTIBILITY_KEYS,
        ("prompt_id", pl.Utf8, "-", "prompt id; jailbreak-wrapped rows append `@<template name>`"),
        ("token_pos", pl.Int64, "tokens", "position of the predicted token in the sequence (1 = second token)"),
        ("token", pl.Int64, "-", "token id at token_pos (the predicted token)"),
        ("segment", pl.Utf8, "-", "prompt (chat template and user turn) or answer"),
        ("chi", pl.Float64, "nats^2", "susceptibility of this token's loss to component C (devinterp estimator, "
         "workflow_lib/slt/susceptibility.py, or its linear-response limit for the linear_response.per_token "
         "components); NaN if a chain produced NaN"),
    ),
    "susceptibility_sequences": columns(
        *CHECKPOINT_KEYS,
        *SUSCEPTIBILITY_KEYS,
        ("prompt_id", pl.Utf8, "-", "prompt id; jailbreak-wrapped rows append `@<template name>`"),
        ("n_tokens", pl.Int64, "tokens", "answer tokens of the sequence"),
        ("chi", pl.Float64, "nats^2", "linear-response chi averaged over the sequence's answer tokens, with the "
         "gradient of all sampling sequences"),
        ("chi_half_a", pl.Float64, "nats^2", "the same from the first half of the sampling sequences alone"),
        ("chi_half_b", pl.Float64, "nats^2", "the same from the second half"),
    ),
    "susceptibility": columns(
        *CHECKPOINT_KEYS,
        *SUSCEPTIBILITY_KEYS,
        ESTIMATOR,
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
    "susceptibility_reliability": columns(
        *CHECKPOINT_KEYS,
        ("seed", pl.Int64, "-", "as in the susceptibility table"),
        ESTIMATOR,
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
    "susceptibility_structure": columns(
        *CHECKPOINT_KEYS,
        ("seed", pl.Int64, "-", "as in the susceptibility table"),
        ESTIMATOR,
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
    "susceptibility_seed_check": columns(
        *CHECKPOINT_KEYS,
        ("seed_a", pl.Int64, "-", "sampler seed of the first run"),
        ("seed_b", pl.Int64, "-", "sampler seed of the second run"),
        ("ranked_by", pl.Utf8, "-", "observable (mean answer-token chi) or contrast (chi of a minus chi of b)"),
        ("name", pl.Utf8, "-", "the observable, or a key of susceptibility.structure.contrasts"),
        ("spearman", pl.Float64, "-", "Spearman correlation of the two component rankings"),
        ("n_components", pl.Int64, "components", "components ranked"),
        ("primary", pl.Boolean, "-", "the observable or contrast named by susceptibility.seed_check.observable"),
    ),
})
