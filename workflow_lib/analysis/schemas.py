"""The tables of analyses across checkpoints and the run's cost: every column's name, type, unit and meaning (docs/tables.md).

Importing the package registers them with `workflow_lib.core.tables`, so a stage's code digest
covers the schemas of the tables it writes.
"""

from __future__ import annotations

import polars as pl

from workflow_lib.core.tables import CHECKPOINT_KEYS, columns, register

SCHEMAS = register("analysis", {
    "trajectories": columns(
        *CHECKPOINT_KEYS,
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
    "llc_asr_correlation": columns(
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
    "direction_emergence": columns(
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
    "technique_comparison": columns(
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
    "susceptibility_alignment": columns(
        *CHECKPOINT_KEYS,
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
    "susceptibility_rotation": columns(
        *CHECKPOINT_KEYS,
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
    "job_costs": columns(
        ("rule", pl.Utf8, "-", "Snakemake rule of the job"),
        ("stage", pl.Utf8, "-", "the rules file that declares the rule (`rules/<stage>.smk`)"),
        ("job", pl.Utf8, "-", "the job's wildcards, as the path of its benchmark file under the rule"),
        ("wall_s", pl.Float64, "s", "wall time of the job (Snakemake `benchmark:` column s)"),
        ("cpu_s", pl.Float64, "s", "CPU time of the job and its children (null when too short to sample)"),
        ("max_rss_mb", pl.Float64, "MB", "peak resident memory (null when too short to sample)"),
    ),
    "job_costs_by_stage": columns(
        ("stage", pl.Utf8, "-", "the rules file (`rules/<stage>.smk`)"),
        ("jobs", pl.Int64, "jobs", "jobs of the stage that have a benchmark file"),
        ("wall_s", pl.Float64, "s", "sum of the jobs' wall times (exceeds elapsed time when jobs ran at once)"),
        ("cpu_s", pl.Float64, "s", "sum of the jobs' CPU times"),
        ("peak_rss_mb", pl.Float64, "MB", "largest peak RSS of any of the stage's jobs"),
        ("wall_share", pl.Float64, "fraction", "the stage's share of the summed wall time of all jobs"),
    ),
})
