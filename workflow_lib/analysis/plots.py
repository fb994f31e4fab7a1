"""Figures of the cross-checkpoint analyses (matplotlib, Agg backend, written atomically).

Missing or flagged values are drawn as gaps, or as labelled grey marks, never as zeros.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from workflow_lib.core import tables
from workflow_lib.core.figures import figure_legend, plt, save_figure

KEYS = ["model", "technique", "step"]


def _colours() -> list[str]:
    return plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _measure(table: pl.DataFrame, technique: str, measure: str, detail: str | None = None,
             judge: str | None = None) -> pl.DataFrame:
    rows = table.filter((pl.col("technique") == technique) & (pl.col("measure") == measure))
    if detail is not None:
        rows = rows.filter(pl.col("detail") == detail)
    if judge is not None:
        rows = rows.filter(pl.col("judge") == judge)
    return rows.sort("step")


def _ok(rows: pl.DataFrame) -> pl.DataFrame:
    return rows.filter((pl.col("status") == "ok") & pl.col("value").is_not_null())


def _mark_missing(ax, rows: pl.DataFrame, y: float, text: str) -> None:
    for step in rows.filter(pl.col("status") != "ok")["step"]:
        ax.annotate(text, (step, y), fontsize=6, color="grey", ha="center", va="bottom", rotation=90)


def trajectories(trajectories_path: str | Path, out_path: str | Path, judge: str = "substring") -> None:
    """The main figure: LLC, refusal and attack success along every technique's trajectory.

    Columns: techniques. Row 1: LLC (mean over chains, error bars one standard
    deviation; 'x' marks a failed estimate). Row 2: refusal rate on held-out harmful
    (solid) and harmless (dashed) prompts. Row 3: attack success rate per attack.
    """
    table = tables.read_table(trajectories_path, "trajectories")
    techniques = table["technique"].unique().sort().to_list()
    llc_details = table.filter(pl.col("measure") == "llc")["detail"].unique().sort().to_list()
    attacks = (table.filter((pl.col("measure") == "asr") & (pl.col("judge") == judge))["detail"]
               .unique(maintain_order=True).to_list())
    n_rows = 1 + bool(llc_details) + bool(attacks)
    fig, axes = plt.subplots(n_rows, len(techniques), figsize=(3.3 * len(techniques) + 1.8, 2.6 * n_rows),
                             squeeze=False, sharey="row")
    colours = _colours()
    for col, technique in enumerate(techniques):
        row = 0
        if llc_details:
            ax = axes[row, col]
            for k, detail in enumerate(llc_details):
                rows = _measure(table, technique, "llc", detail)
                ok = _ok(rows)
                ax.errorbar(ok["step"], ok["value"], yerr=ok["value_std"].fill_null(0), marker="o", capsize=3,
                            color=colours[k], label=f"LLC {detail}")
                failed = rows.filter(pl.col("status") != "ok")
                ax.plot(failed["step"], np.zeros(failed.height), "x", color="grey",
                        label="LLC failed (not plotted)" if failed.height else None)
            ax.set_title(technique)
            row += 1
        ax = axes[row, col]
        for prompt_set, style in (("harmful", "-"), ("harmless", "--")):
            rows = _ok(_measure(table, technique, "refusal_rate", prompt_set))
            ax.plot(rows["step"], rows["value"], linestyle=style, marker="o", color="black",
                    label=f"refusal rate, {prompt_set}")
            ax.fill_between(rows["step"], rows["ci_low"], rows["ci_high"], color="black", alpha=0.08, linewidth=0)
        ax.set(ylim=(-0.03, 1.03))
        if not llc_details:
            ax.set_title(technique)
        row += 1
        if attacks:
            ax = axes[row, col]
            for k, attack in enumerate(attacks):
                rows = _measure(table, technique, "asr", attack, judge)
                ok = _ok(rows)
                ax.plot(ok["step"], ok["value"], marker="o", color=colours[k % len(colours)],
                        linestyle=":" if attack == "pooled" else "-", label=f"ASR {attack.replace('template:', '')}")
            ax.set(ylim=(-0.03, 1.03))
        axes[-1, col].set_xlabel("fine-tuning step")
    labels = (["LLC"] if llc_details else []) + ["refusal rate"] + ([f"attack success ({judge})"] if attacks else [])
    for row, label in enumerate(labels):
        axes[row, 0].set_ylabel(label)
    figure_legend(fig, axes)
    fig.suptitle(f"Trajectories of every technique (model: {table['model'][0]}; bands: 95% Wilson)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    save_figure(fig, out_path)


def llc_vs_asr(trajectories_path: str | Path, correlation_path: str | Path, out_path: str | Path,
               judge: str = "substring") -> None:
    """LLC level against ASR at every checkpoint, one panel per attack, coloured by technique.

    Each panel's title gives the pooled Spearman rho with its bootstrap 95% interval and
    permutation p-value, and n (checkpoints); the legend gives each technique's rho.
    """
    table = tables.read_table(trajectories_path, "trajectories")
    corr = tables.read_table(correlation_path, "llc_asr_correlation")
    llc_details = table.filter(pl.col("measure") == "llc")["detail"].unique().sort().to_list()
    attacks = (table.filter((pl.col("measure") == "asr") & (pl.col("judge") == judge))["detail"]
               .unique(maintain_order=True).to_list())
    if not llc_details or not attacks:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, corr["reason"][0] if corr.height else "no LLC or no ASR in this run", ha="center",
                wrap=True)
        save_figure(fig, out_path)
        return
    detail = llc_details[0]
    techniques = table["technique"].unique().sort().to_list()
    fig, axes = plt.subplots(1, len(attacks), figsize=(3.2 * len(attacks) + 1.8, 3.4), squeeze=False, sharey=True)
    colours = _colours()
    for a, attack in enumerate(attacks):
        ax = axes[0, a]
        for k, technique in enumerate(techniques):
            llc = _ok(_measure(table, technique, "llc", detail)).select("step", llc="value")
            asr = _ok(_measure(table, technique, "asr", attack, judge)).select("step", asr="value")
            points = llc.join(asr, on="step")
            rho = corr.filter((pl.col("technique") == technique) & (pl.col("attack") == attack)
                              & (pl.col("llc_measure") == "llc") & (pl.col("llc_detail") == detail)
                              & (pl.col("judge") == judge) & (pl.col("method") == "spearman"))
            label = technique + (f" (rho {rho['estimate'][0]:+.2f})" if rho.height and rho["status"][0] == "ok"
                                 else " (rho undefined)")
            ax.plot(points["llc"], points["asr"], "o-", color=colours[k % len(colours)], alpha=0.8,
                    label=label if a == 0 else None)
        pooled = corr.filter((pl.col("technique") == "pooled") & (pl.col("attack") == attack)
                             & (pl.col("llc_measure") == "llc") & (pl.col("llc_detail") == detail)
                             & (pl.col("judge") == judge) & (pl.col("method") == "spearman"))
        if pooled.height and pooled["status"][0] == "ok":
            r = pooled.row(0, named=True)
            title = (f"{attack.replace('template:', '')}\nrho {r['estimate']:+.2f} "
                     f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}], p={r['p_value']:.2f}, n={r['n_checkpoints']}")
        else:
            title = f"{attack.replace('template:', '')}\n" + (pooled["status"][0] if pooled.height else "no data")
        ax.set_title(title, fontsize=8)
        ax.set(xlabel=f"LLC ({detail})", ylim=(-0.03, 1.03))
    axes[0, 0].set_ylabel(f"attack success rate ({judge})")
    figure_legend(fig, axes)
    fig.suptitle("LLC vs jailbreak success per checkpoint (lines join a technique's steps in order)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    save_figure(fig, out_path)


def drift(drift_path: str | Path, directions_path: str | Path, emergence_path: str | Path, technique: str,
          out_path: str | Path) -> None:
    """cos(mean difference at step, at the final step) over layer x step for one technique.

    Circles: the layer selected at each step that has a direction at this position; grey
    cells have no cosine (a zero mean difference, e.g. block 0 at template tokens). The dashed line is
    the emergence step, the first at which a direction passes selection. Position:
    the final direction's, else the last prompt token.
    """
    table = tables.read_table(drift_path, "refusal_drift").filter(pl.col("technique") == technique)
    directions = tables.read_table(directions_path, "refusal_direction").filter(pl.col("technique") == technique)
    emergence = tables.read_table(emergence_path, "direction_emergence").filter(pl.col("technique") == technique)
    final = directions.sort("step").tail(1)
    position = final["position"][0] if final.height and final["status"][0] == "ok" else -1
    at = table.filter(pl.col("position") == position)
    steps = sorted(at["step"].unique().to_list())
    layers = sorted(at["layer"].unique().to_list())
    grid = np.full((len(layers), len(steps)), np.nan)
    for row in at.iter_rows(named=True):
        if row["cos_to_final"] is not None:
            grid[layers.index(row["layer"]), steps.index(row["step"])] = row["cos_to_final"]
    fig, ax = plt.subplots(figsize=(1.1 * len(steps) + 2.6, 0.16 * len(layers) + 2.6))
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="lightgrey")  # grey: no cosine (zero mean difference)
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", origin="lower", cmap=cmap, vmin=-1, vmax=1,
                      extent=(-0.5, len(steps) - 0.5, -0.5, len(layers) - 0.5))
    fig.colorbar(image, ax=ax, label="cos to final mean difference")
    selected = directions.filter((pl.col("status") == "ok") & (pl.col("position") == position))
    ax.plot([steps.index(s) for s in selected["step"]], [layers.index(layer) for layer in selected["layer"]], "o",
            markerfacecolor="none", markeredgecolor="black", label="selected direction")
    status = emergence["status"][0] if emergence.height else "never"
    if status in ("emerged", "present_at_start"):
        x = steps.index(emergence["emergence_step"][0]) - 0.5
        ax.axvline(x, color="black", linestyle="--", label=f"emergence: step {emergence['emergence_step'][0]}")
    ax.set_xticks(range(len(steps)), [str(s) for s in steps])
    ax.set(xlabel="fine-tuning step", ylabel="layer (block input)",
           title=f"{technique}: refusal-direction drift at position {position}"
           + ("" if status != "never" else " (no step has a direction)"))
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=2)
    fig.tight_layout()
    save_figure(fig, out_path)


# The alignment-susceptibility correlations drawn, in this order where present: over all heads and MLPs, then
# each kind alone (linear response); attention and MLP blocks (SGLD's usual components).
ALIGNMENT_FAMILIES = [("linear_response", "head+mlp"), ("linear_response", "mlp"), ("linear_response", "head"),
                      ("sgld", "attn+mlp")]


def alignment(alignment_path: str | Path, correlation_path: str | Path, rotation_path: str | Path,
              out_path: str | Path) -> None:
    """Top: per technique, how strongly each layer's attention (solid) and MLP (dashed) output weights
    write along that checkpoint's refusal direction (1 = a random direction), one colour per step.
    Bottom: the alignment-susceptibility Spearman per step, and the largest principal angle between
    consecutive checkpoints' top susceptibility PCs (where susceptibilities were computed).
    """
    table = tables.read_table(alignment_path, "component_alignment")
    corr = tables.read_table(correlation_path, "susceptibility_alignment")
    rot = tables.read_table(rotation_path, "susceptibility_rotation")
    techniques = table["technique"].unique().sort().to_list()
    fig, axes = plt.subplots(2, len(techniques), figsize=(3.4 * len(techniques) + 1.8, 6.2), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for col, technique in enumerate(techniques):
        ax = axes[0, col]
        rows = table.filter((pl.col("technique") == technique) & pl.col("component_kind").is_in(["attn", "mlp"]))
        steps = rows["step"].unique().sort().to_list()
        for k, step in enumerate(steps):
            colour = cmap(k / max(1, len(steps) - 1))
            for kind, style in (("attn", "-"), ("mlp", "--")):
                ok = rows.filter((pl.col("step") == step) & (pl.col("component_kind") == kind)
                                 & (pl.col("status") == "ok")).sort("layer")
                if ok.height:
                    ax.plot(ok["layer"], ok["alignment_ratio"], style, color=colour, label=f"step {step} {kind}")
        missing = [s for s in steps if rows.filter((pl.col("step") == s) & (pl.col("status") == "ok")).is_empty()]
        ax.set_title(technique + (f"\nno direction at steps {missing}" if missing else ""), fontsize=9)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set(xlabel="layer")
        ax.legend(fontsize=6)
        ax = axes[1, col]
        c = corr.filter((pl.col("technique") == technique) & (pl.col("status") == "ok")).sort("step")
        for estimator, family in ALIGNMENT_FAMILIES:
            f = c.filter((pl.col("estimator") == estimator) & (pl.col("component_kind") == family))
            if f.height:
                ax.errorbar(f["step"], f["spearman"], yerr=[f["spearman"] - f["ci_low"], f["ci_high"] - f["spearman"]],
                            marker="o", capsize=3, label=f"rho(alignment, chi): {family} ({estimator})")
        r = (rot.filter((pl.col("technique") == technique) & (pl.col("status") == "ok"))
             .group_by("step", "seed", "estimator").agg(pl.col("angle_deg").max()).sort("step"))
        for (estimator,), g in r.group_by(["estimator"], maintain_order=True):
            ax.plot(g["step"], g["angle_deg"] / 90, "s--", label=f"largest PC angle / 90 deg ({estimator})")
        if not c.height and not r.height:
            reasons = corr.filter(pl.col("technique") == technique)["reason"].unique().to_list()
            ax.text(0.5, 0.5, "\n".join(reasons)[:160], ha="center", va="center", fontsize=7, wrap=True,
                    transform=ax.transAxes)
        ax.set(xlabel="fine-tuning step", ylim=(-1.05, 1.05))
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.legend(fontsize=6)
    axes[0, 0].set_ylabel("alignment with r (x random)")
    axes[1, 0].set_ylabel("rho, or angle / 90 deg")
    fig.suptitle("Refusal-direction alignment of component output weights, and susceptibility structure", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_path)


COMPARISON_COLUMNS = {"refusal_rate": "refusal (harmful)", "over_refusal_rate": "over-refusal (harmless)",
                      "asr_none": "ASR none", "asr_templates": "ASR templates", "asr_prefill": "ASR prefill",
                      "asr_direction_ablation": "ASR direction ablation"}


def technique_comparison(comparison_path: str | Path, out_path: str | Path) -> None:
    """Each technique's final checkpoint: rates as grouped bars (left), LLC change from step 0 (right).

    A missing bar is a value that could not be measured (the table's reason says why).
    """
    table = tables.read_table(comparison_path, "technique_comparison")
    techniques = table["technique"].to_list()
    fig, (ax, ax_llc) = plt.subplots(1, 2, figsize=(1.3 * len(techniques) * 2 + 4, 3.6),
                                     gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / len(COMPARISON_COLUMNS)
    colours = _colours()
    for k, (column, label) in enumerate(COMPARISON_COLUMNS.items()):
        values = [v if v is not None else np.nan for v in table[column].to_list()]
        ax.bar(np.arange(len(techniques)) + (k - len(COMPARISON_COLUMNS) / 2 + 0.5) * width, values, width,
               color=colours[k % len(colours)], label=label)
    ax.set_xticks(range(len(techniques)), [f"{t}@{s}" for t, s in zip(techniques, table["final_step"])],
                  fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel=f"rate ({table['judge'][0] if table.height else ''} judge)")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    change = [v if v is not None else np.nan for v in table["llc_change_from_base"].to_list()]
    ax_llc.bar(range(len(techniques)), change, color="grey")
    ax_llc.axhline(0.0, color="black", linewidth=0.8)
    ax_llc.set_xticks(range(len(techniques)), techniques, rotation=45, ha="right", fontsize=8)
    ax_llc.set(ylabel=f"LLC change from step 0 ({table['llc_detail'][0] if table.height else ''})")
    for i, kl in enumerate(table["direction_kl"].to_list()):
        ax_llc.annotate("no dir." if kl is None else f"KL {kl:.2f}", (i, 0), fontsize=6, ha="center",
                        va="bottom", rotation=90, color="black")
    fig.suptitle("Techniques compared at their final checkpoints", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_path)


def job_costs(stages: pl.DataFrame, out_path) -> None:
    """Summed wall and CPU time per stage (minutes) beside the largest job's peak RSS per stage (GiB)."""
    order = stages.sort("wall_s")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.45 * max(order.height, 3) + 1.5), sharey=True)
    y = list(range(order.height))
    left.barh([i + 0.2 for i in y], (order["wall_s"].fill_null(0) / 60).to_list(), height=0.4,
              label="wall time (sum over jobs)")
    left.barh([i - 0.2 for i in y], (order["cpu_s"].fill_null(0) / 60).to_list(), height=0.4, label="CPU time")
    left.set_yticks(y, order["stage"].to_list())
    left.set_xlabel("minutes")
    left.legend(loc="lower right", fontsize=8)
    right.barh(y, (order["peak_rss_mb"].fill_null(0) / 1024).to_list(), height=0.5, color="tab:gray")
    right.set_xlabel("peak RSS of the stage's largest job (GiB)")
    fig.suptitle("Cost per stage (Snakemake benchmark files)")
    save_figure(fig, out_path)
