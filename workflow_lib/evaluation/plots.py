"""Figures of refusal and jailbreak success along each trajectory (matplotlib, written atomically)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from workflow_lib.core import statistics, tables
from workflow_lib.core.figures import figure_legend, plt, save_figure


SET_STYLE = {"harmful": "-", "harmless": "--", "harmless_lookalike": ":"}


def refusal_trajectory(trajectory_path: str | Path, out_path: str | Path) -> None:
    """Refusal rate (top row) and refusal log-odds (bottom row) against step, one column per technique.

    Solid lines: held-out harmful prompts (higher is safer). Dashed: held-out
    harmless prompts (higher is over-refusal). Bands: 95% Wilson intervals.
    Step 0 of a technique with `start_from` is its parent's checkpoint.
    """
    table = tables.read_table(trajectory_path, "trajectory")
    techniques = table["technique"].unique(maintain_order=True).sort().to_list()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(2, len(techniques), figsize=(3.2 * len(techniques) + 0.6, 6.0), squeeze=False,
                             sharey="row")
    for col, technique in enumerate(techniques):
        ax_rate, ax_score = axes[0, col], axes[1, col]
        for k, (prompt_set, style) in enumerate(SET_STYLE.items()):
            rows = table.filter((pl.col("technique") == technique) & (pl.col("prompt_set") == prompt_set)).sort("step")
            if rows.is_empty():
                continue
            kwargs = dict(linestyle=style, marker="o", color=colours[k], label=f"{prompt_set} (n={rows['n'].max()})")
            ax_rate.plot(rows["step"], rows["refusal_rate"], **kwargs)
            low, high = statistics.wilson_of_rates(rows["refusal_rate"], rows["n"])
            ax_rate.fill_between(rows["step"], low, high, color=colours[k], alpha=0.15, linewidth=0)
            ax_score.plot(rows["step"], rows["refusal_score_logodds"], **kwargs)
        ax_rate.set(title=technique, ylim=(-0.03, 1.03))
        ax_score.axhline(0.0, color="grey", linewidth=0.8)
        ax_score.set(xlabel="fine-tuning step")
    axes[0, 0].set_ylabel("refusal rate (substring judge)")
    axes[1, 0].set_ylabel("refusal log-odds, first token")
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.suptitle(f"Refusal on held-out test prompts along each trajectory (model: {table['model'][0]})", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_path)


def jailbreak_asr(table_path: str | Path, out_path: str | Path) -> None:
    """Attack success rate per attack along each trajectory (substring judge), plus over-refusal.

    Columns: techniques. Top: ASR on harmful test prompts per attack, with 95% Wilson
    bands. Bottom: refusal rate on harmless test prompts, direct and template-wrapped
    (over-refusal). Missing points are checkpoints where an attack could not run
    (direction_ablation without a direction on the trajectory).
    """
    table = tables.read_table(table_path, "jailbreak").filter((pl.col("judge") == "substring")
                                                              & (pl.col("category") == "all"))
    techniques = table["technique"].unique(maintain_order=True).sort().to_list()
    attacks = table["attack"].unique(maintain_order=True).to_list()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(2, len(techniques), figsize=(3.4 * len(techniques) + 1.6, 6.4), squeeze=False,
                             sharey=True)
    for col, technique in enumerate(techniques):
        for row, prompt_set in enumerate(("harmful", "harmless")):
            ax = axes[row, col]
            for k, attack in enumerate(attacks):
                rows = table.filter((pl.col("technique") == technique) & (pl.col("prompt_set") == prompt_set)
                                    & (pl.col("attack") == attack) & (pl.col("status") == "ok")).sort("step")
                if rows.is_empty():
                    continue
                colour = colours[k % len(colours)]
                value = rows["asr"] if prompt_set == "harmful" else rows["refusal_rate"]
                ax.plot(rows["step"], value, marker="o", color=colour, label=attack.replace("template:", ""))
                if prompt_set == "harmful":
                    ax.fill_between(rows["step"], rows["ci_low"], rows["ci_high"], color=colour, alpha=0.12,
                                    linewidth=0)
            ax.set(ylim=(-0.03, 1.03))
            if row == 0:
                ax.set_title(technique)
            else:
                ax.set_xlabel("fine-tuning step")
    axes[0, 0].set_ylabel("harmful prompts: attack success rate")
    axes[1, 0].set_ylabel("harmless prompts: refusal rate")
    figure_legend(fig, axes)
    fig.suptitle("Jailbreak susceptibility along each trajectory (substring judge, test prompts)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    save_figure(fig, out_path)
