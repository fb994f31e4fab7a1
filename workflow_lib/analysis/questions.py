"""Analyses across checkpoints and techniques: the tables that answer the research questions.

- `trajectories`: every per-checkpoint measurement in one long table;
- `llc_asr_correlation`: is LLC (level, or change since the previous step) related to
  jailbreak success? Spearman and Pearson with bootstrap intervals and permutation
  p-values (`workflow_lib.core.statistics`), per technique and pooled;
- `direction_emergence`: the first step at which a refusal direction passes selection;
- `technique_comparison`: one row per technique's final checkpoint.

A measurement that is missing or flagged (a failed LLC summary, no direction, an
attack that could not run) stays in the tables as a row with its status and reason;
it is never dropped or zero-filled.
"""

from __future__ import annotations


import polars as pl

from workflow_lib.core import statistics, tables

KEYS = ["model", "technique", "step"]
BLACK_BOX = "pooled"  # mean ASR over the attacks that need no direction (none, templates, prefill)


def _rows(frame: pl.DataFrame, **columns) -> pl.DataFrame:
    """`frame` with the trajectories columns it lacks, as typed nulls or the given literals."""
    return tables.fill_missing(frame.with_columns(pl.lit(v).alias(k) for k, v in columns.items()), "trajectories")


def _llc_rows(llc: pl.DataFrame, differences: pl.DataFrame | None = None) -> pl.DataFrame:
    """LLC levels (value_std: `llc_se`) and changes since the previous step (value_std: the paired
    `delta_se` of `llc_differences` when given, else the two levels' errors combined)."""
    summary = (llc.filter(pl.col("row") == "summary")
               .with_columns(pl.concat_str("parameter_space", pl.lit("/"), "dataset").alias("detail"))
               .sort(KEYS + ["detail"]))
    level = summary.select(*KEYS, "detail", value=pl.col("llc_mean"), value_std=pl.col("llc_se"),
                           n=pl.col("n_ok_chains"), status=pl.col("status"), reason=pl.col("reason"))
    previous = level.with_columns(pl.col("step").shift(1).over("technique", "detail").alias("previous_step"),
                                  pl.col("value").shift(1).over("technique", "detail").alias("previous"),
                                  pl.col("status").shift(1).over("technique", "detail").alias("previous_status"),
                                  pl.col("value_std").shift(1).over("technique", "detail").alias("previous_std"))
    if differences is not None and differences.height:
        paired = (differences.filter(pl.col("kind") == "consecutive")
                  .select("model", "technique", "step",
                          detail=pl.concat_str("parameter_space", pl.lit("/"), "dataset"), paired_se="delta_se"))
        previous = previous.join(paired, on=KEYS + ["detail"], how="left")
    else:
        previous = previous.with_columns(paired_se=pl.lit(None, dtype=pl.Float64))
    change = previous.select(
        *KEYS, "detail",
        value=pl.when(pl.col("status").eq("ok") & pl.col("previous_status").eq("ok"))
        .then(pl.col("value") - pl.col("previous")),
        value_std=pl.coalesce("paired_se", (pl.col("value_std") ** 2 + pl.col("previous_std") ** 2).sqrt()),
        status=pl.when(pl.col("previous_step").is_null()).then(pl.lit("no_previous_step"))
        .when(pl.col("status").eq("ok") & pl.col("previous_status").eq("ok")).then(pl.lit("ok"))
        .otherwise(pl.lit("failed")),
        reason=pl.when(pl.col("previous_step").is_null()).then(pl.lit("first checkpoint of the trajectory"))
        .when(pl.col("status").ne("ok")).then(pl.lit("LLC failed at this step: ") + pl.col("reason"))
        .when(pl.col("previous_status").ne("ok"))
        .then(pl.lit("LLC failed at step ") + pl.col("previous_step").cast(pl.Utf8))
        .otherwise(pl.lit("")),
    )
    return pl.concat([_rows(level, measure="llc"), _rows(change, measure="llc_change")])


def _refusal_rows(refusal: pl.DataFrame) -> pl.DataFrame:
    lows, highs = statistics.wilson_of_rates(refusal["refusal_rate"], refusal["n"])
    rates = refusal.select(*KEYS, detail="prompt_set", value="refusal_rate", n="n", status="status").with_columns(
        pl.Series("ci_low", lows, pl.Float64), pl.Series("ci_high", highs, pl.Float64),
        reason=pl.lit(""))
    logodds = refusal.select(*KEYS, detail="prompt_set", value="refusal_score_logodds", n="n", status="status",
                             reason=pl.lit(""))
    return pl.concat([_rows(rates, measure="refusal_rate"), _rows(logodds, measure="refusal_score_logodds")])


def _jailbreak_rows(jailbreak: pl.DataFrame) -> pl.DataFrame:
    overall = jailbreak.filter(pl.col("category") == "all")
    reason = (pl.when(pl.col("status") == "ok").then(pl.lit(""))
              .otherwise(pl.lit("attack status: ") + pl.col("status")))
    asr = overall.filter(pl.col("prompt_set") == "harmful").select(
        *KEYS, detail="attack", judge="judge", value="asr", ci_low="ci_low", ci_high="ci_high", n="n",
        status="status", reason=reason)
    over = overall.filter(pl.col("prompt_set") == "harmless").select(
        *KEYS, detail="attack", judge="judge", value="refusal_rate", n="n", status="status", reason=reason,
        # the Wilson interval of the refusal rate is the ASR interval mirrored
        ci_low=1 - pl.col("ci_high"), ci_high=1 - pl.col("ci_low"))
    pooled = (asr.filter(pl.col("detail") != "direction_ablation")
              .group_by(*KEYS, "judge")
              .agg(value=pl.col("value").mean(), n=pl.col("n").sum(),
                   bad=pl.col("detail").filter(pl.col("status") != "ok"))
              .with_columns(status=pl.when(pl.col("bad").list.len() == 0).then(pl.lit("ok"))
                            .otherwise(pl.lit("failed")),
                            reason=pl.when(pl.col("bad").list.len() == 0).then(pl.lit(""))
                            .otherwise(pl.lit("attacks not ok: ") + pl.col("bad").list.join(", ")),
                            detail=pl.lit(BLACK_BOX))
              .drop("bad"))
    return pl.concat([_rows(asr, measure="asr"), _rows(pooled, measure="asr"), _rows(over, measure="over_refusal")])


def _direction_rows(directions: pl.DataFrame) -> pl.DataFrame:
    detail = pl.when(pl.col("status") == "ok").then(
        pl.format("layer {} position {}", pl.col("layer"), pl.col("position")))
    base = directions.with_columns(detail=detail, reason=pl.col("reason").fill_null(""))
    kl = base.select(*KEYS, "detail", "status", "reason", value="kl")
    bypass = base.select(*KEYS, "detail", "status", "reason", value="bypass_score")
    layer = base.select(*KEYS, "detail", "status", "reason", value=pl.col("layer").cast(pl.Float64))
    return pl.concat([_rows(kl, measure="direction_kl"), _rows(bypass, measure="direction_bypass_score"),
                      _rows(layer, measure="direction_layer")])


def drift_reference(directions: pl.DataFrame, technique: str) -> dict | None:
    """The (layer, position) of the trajectory's final selected direction, or None."""
    final = directions.filter(pl.col("technique") == technique).sort("step").tail(1)
    if final.is_empty() or final["status"][0] != "ok":
        return None
    return {"layer": final["layer"][0], "position": final["position"][0], "step": final["step"][0]}


def _drift_rows(drift: pl.DataFrame, directions: pl.DataFrame) -> pl.DataFrame:
    out = []
    for technique in drift["technique"].unique().sort():
        rows = drift.filter(pl.col("technique") == technique)
        reference = drift_reference(directions, technique)
        if reference is None:
            marked = (rows.select(*KEYS).unique().with_columns(
                value=pl.lit(None, pl.Float64), status=pl.lit("no_direction"),
                reason=pl.lit("the trajectory's final checkpoint has no selected direction: no layer to follow")))
            out += [_rows(marked, measure=m) for m in ("drift_cos_to_final", "drift_cos_to_base")]
            continue
        at = rows.filter((pl.col("layer") == reference["layer"]) & (pl.col("position") == reference["position"]))
        detail = f"layer {reference['layer']} position {reference['position']}"
        for measure, column in (("drift_cos_to_final", "cos_to_final"), ("drift_cos_to_base", "cos_to_base")):
            frame = at.select(*KEYS, value=column).with_columns(
                detail=pl.lit(detail),
                status=pl.when(pl.col("value").is_null()).then(pl.lit("undefined")).otherwise(pl.lit("ok")),
                reason=pl.when(pl.col("value").is_null()).then(pl.lit("zero mean difference: no cosine"))
                .otherwise(pl.lit("")))
            out.append(_rows(frame, measure=measure))
    return pl.concat(out) if out else tables.empty_frame("trajectories")


def trajectories(*, refusal_path, llc_path=None, llc_differences_path=None, jailbreak_path=None,
                 directions_path=None, drift_path=None, out_path) -> pl.DataFrame:
    """Every measurement per (model, technique, step) in one long table (`trajectories` schema).

    The refusal-eval trajectory defines the checkpoints; every other stage is optional
    (a stage switched off contributes no measure, and the README says which stages
    feed which analysis).
    """
    refusal = tables.read_table(refusal_path, "trajectory")
    parts = [_refusal_rows(refusal)]
    if llc_path:
        differences = tables.read_table(llc_differences_path, "llc_differences") if llc_differences_path else None
        parts.append(_llc_rows(tables.read_table(llc_path, "llc"), differences))
    if jailbreak_path:
        parts.append(_jailbreak_rows(tables.read_table(jailbreak_path, "jailbreak")))
    if directions_path:
        directions = tables.read_table(directions_path, "refusal_direction")
        parts.append(_direction_rows(directions))
        if drift_path:
            parts.append(_drift_rows(tables.read_table(drift_path, "refusal_drift"), directions))
    tokens = refusal.select(*KEYS, "tokens_seen").unique()
    table = pl.concat(parts).drop("tokens_seen").join(tokens, on=KEYS, how="left")
    table = tables.conform(table, "trajectories").sort(KEYS + ["measure", "detail", "judge"], nulls_last=True)
    return tables.write_table(table, out_path, "trajectories")


def _pairs(table: pl.DataFrame, llc_measure: str, llc_detail: str, attack: str, judge: str) -> pl.DataFrame:
    """LLC and ASR side by side per checkpoint, with the reason a checkpoint cannot enter."""
    llc = table.filter((pl.col("measure") == llc_measure) & (pl.col("detail") == llc_detail)).select(
        *KEYS, llc="value", llc_se="value_std", llc_status="status")
    asr = table.filter((pl.col("measure") == "asr") & (pl.col("detail") == attack) & (pl.col("judge") == judge)
                       ).select(*KEYS, asr="value", asr_status="status")
    return llc.join(asr, on=KEYS, how="full", coalesce=True).with_columns(
        excluded=pl.when(pl.col("llc_status").is_null()).then(pl.lit("no LLC"))
        .when(pl.col("llc_status") != "ok").then(pl.lit("LLC ") + pl.col("llc_status"))
        .when(pl.col("asr_status").is_null()).then(pl.lit("no ASR"))
        .when(pl.col("asr_status") != "ok").then(pl.lit("ASR ") + pl.col("asr_status")))


def llc_asr_correlation(*, trajectories_path, settings: dict, out_path) -> pl.DataFrame:
    """Spearman and Pearson between LLC and ASR, per technique and pooled over techniques.

    Replicate trajectories (`settings["replicate_of"]`: trajectory -> technique) are the
    unit of inference: a technique's scope pools its replicates, and the bootstrap
    draws replicates within each technique, then checkpoints within each replicate,
    with every LLC redrawn within its standard error (statistics.bootstrap_interval).

    Pairs: every LLC (parameter space/dataset) x {level, change since the previous
    step} x every attack (and the pooled black-box ASR) x judge. A checkpoint enters
    when both its LLC and its ASR are ok; the ones left out are counted and named.
    """
    table = tables.read_table(trajectories_path, "trajectories")
    replicate_of = settings.get("replicate_of") or {}
    model = table["model"][0] if table.height else ""
    llc_details = table.filter(pl.col("measure") == "llc")["detail"].unique().sort().to_list()
    attacks = table.filter(pl.col("measure") == "asr").select("detail", "judge").unique().sort(["judge", "detail"])
    rows = []
    for llc_measure in ("llc", "llc_change"):
        for llc_detail in llc_details:
            for attack, judge in attacks.rows():
                pairs = _pairs(table, llc_measure, llc_detail, attack, judge).with_columns(
                    replicate_of=pl.col("technique").replace_strict(replicate_of, default=pl.col("technique")))
                scopes = [(t, pairs.filter(pl.col("replicate_of") == t))
                          for t in pairs["replicate_of"].unique().sort()]
                for scope_name, scoped in scopes + [("pooled", pairs)]:
                    rows += _correlation_rows(model, scope_name, llc_measure, llc_detail, attack, judge, scoped,
                                              settings)
    frame = pl.DataFrame(rows, schema={c.name: c.dtype for c in tables.schema("llc_asr_correlation")}) \
        if rows else tables.empty_frame("llc_asr_correlation")
    if not llc_details or attacks.is_empty():
        missing = "LLC" if not llc_details else "jailbreak ASR"
        frame = tables.fill_missing(pl.DataFrame([{
            "model": model, "technique": "pooled", "status": "missing_input",
            "reason": f"no {missing} in this run: enable that stage to correlate"}]), "llc_asr_correlation")
    return tables.write_table(frame, out_path, "llc_asr_correlation")


def _correlation_rows(model, scope, llc_measure, llc_detail, attack, judge, pairs: pl.DataFrame,
                      settings: dict) -> list[dict]:
    usable = pairs.filter(pl.col("excluded").is_null())
    excluded = pairs.filter(pl.col("excluded").is_not_null())
    note = "; ".join(f"{t}@{s}: {why}" for t, s, why in excluded.select("technique", "step", "excluded").rows())
    out = []
    for method in ("spearman", "pearson"):
        result = statistics.correlate(usable["llc"].to_numpy(), usable["asr"].to_numpy(), method,
                                      n_resamples=settings["bootstrap_resamples"],
                                      n_permutations=settings["permutations"], seed=settings["seed"],
                                      clusters=usable["technique"].to_numpy(),
                                      strata=usable["replicate_of"].to_numpy(),
                                      x_se=usable["llc_se"].fill_null(0.0).to_numpy())
        reason = "; ".join(r for r in (result.reason, f"left out: {note}" if note else "") if r)
        out.append({"model": model, "technique": scope, "llc_measure": llc_measure, "llc_detail": llc_detail,
                    "attack": attack, "judge": judge, "method": method, "n_checkpoints": result.n,
                    "n_excluded": excluded.height, "estimate": result.estimate, "ci_low": result.ci_low,
                    "ci_high": result.ci_high, "p_value": result.p_value,
                    "n_resamples_used": result.n_resamples_used, "status": result.status, "reason": reason})
    return out


def direction_emergence(*, directions_path, out_path) -> pl.DataFrame:
    """Per technique: the first step whose refusal direction passes every selection filter."""
    directions = tables.read_table(directions_path, "refusal_direction").sort(KEYS)
    rows = []
    for (model, technique), group in directions.group_by(["model", "technique"], maintain_order=True):
        ok = group.filter(pl.col("status") == "ok")
        first = group["step"].min()
        base = {"model": model, "technique": technique, "n_steps": group.height,
                "n_steps_with_direction": ok.height}
        if ok.is_empty():
            reasons = "; ".join(f"step {s}: {r}" for s, r in group.select("step", "reason").rows())
            rows.append(base | {"status": "never", "reason": reasons})
            continue
        hit = ok.row(0, named=True)
        status = "present_at_start" if hit["step"] == first else "emerged"
        rows.append(base | {"emergence_step": hit["step"], "layer": hit["layer"], "position": hit["position"],
                            "kl": hit["kl"], "bypass_score": hit["bypass_score"], "status": status, "reason": ""})
    frame = tables.fill_missing(pl.DataFrame(rows), "direction_emergence")
    return tables.write_table(frame, out_path, "direction_emergence")


def _final_value(table: pl.DataFrame, measure: str, detail: str | None = None, judge: str | None = None):
    rows = table.filter(pl.col("measure") == measure)
    if detail is not None:
        rows = rows.filter(pl.col("detail") == detail)
    if judge is not None:
        rows = rows.filter(pl.col("judge") == judge)
    return rows.row(0, named=True) if rows.height else None


def technique_comparison(*, trajectories_path, settings: dict, out_path) -> pl.DataFrame:
    """One row per technique's final checkpoint: refusal, over-refusal, ASR per attack kind, LLC, KL.

    `llc_change_from_base` is the LLC change over the technique's own trajectory (final
    step minus its step 0), measured on its own training mix. Templates are averaged
    into `asr_templates`; the per-template rates are in `trajectories`.
    """
    table = tables.read_table(trajectories_path, "trajectories")
    judge, llc_detail = settings["judge"], settings.get("llc_detail")
    llc_details = table.filter(pl.col("measure") == "llc")["detail"].unique().sort().to_list()
    if llc_detail is None and llc_details:
        llc_detail = llc_details[0]
    rows = []
    for (model, technique), group in table.group_by(["model", "technique"], maintain_order=True):
        final_step, first_step = group["step"].max(), group["step"].min()
        final = group.filter(pl.col("step") == final_step)
        problems = []

        def value(measure, detail=None, judge_=None, what=None):
            row = _final_value(final, measure, detail, judge_)
            if row is None or row["status"] != "ok" or row["value"] is None:
                problems.append(f"{what or measure}: " + ("not measured" if row is None else row["status"]))
                return None
            return row["value"]

        asr_rows = final.filter((pl.col("measure") == "asr") & (pl.col("judge") == judge)
                                & pl.col("detail").str.starts_with("template:"))
        templates_ok = asr_rows.filter(pl.col("status") == "ok")
        llc_final = value("llc", llc_detail) if llc_detail else None
        llc_base = None
        if llc_detail:
            base = _final_value(group.filter(pl.col("step") == first_step), "llc", llc_detail)
            llc_base = base["value"] if base is not None and base["status"] == "ok" else None
        direction = _final_value(final, "direction_kl")
        row = {
            "model": model, "technique": technique, "final_step": final_step, "judge": judge,
            "refusal_rate": value("refusal_rate", "harmful", what="harmful refusal rate"),
            "over_refusal_rate": value("refusal_rate", "harmless", what="harmless refusal rate"),
            "asr_none": value("asr", "none", judge, "asr none"),
            "asr_templates": templates_ok["value"].mean() if templates_ok.height else None,
            "asr_prefill": value("asr", "prefill", judge, "asr prefill"),
            "asr_direction_ablation": value("asr", "direction_ablation", judge, "asr direction_ablation"),
            "llc_detail": llc_detail, "llc": llc_final,
            "llc_change_from_base": (llc_final - llc_base) if llc_final is not None and llc_base is not None
            else None,
            "direction_status": direction["status"] if direction is not None else "not_measured",
            "direction_kl": direction["value"] if direction is not None else None,
        }
        if asr_rows.height > templates_ok.height:
            problems.append(f"{asr_rows.height - templates_ok.height} template attacks not ok")
        row["status"] = "ok" if not problems else "incomplete"
        row["reason"] = "; ".join(problems)
        rows.append(row)
    frame = pl.DataFrame(rows, schema={c.name: c.dtype for c in tables.schema("technique_comparison")})
    return tables.write_table(frame.sort(["model", "technique"]), out_path, "technique_comparison")
