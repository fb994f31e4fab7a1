"""Figures of the refusal direction's interventions along each trajectory."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from workflow_lib.core import tables
from workflow_lib.core.figures import figure_legend, plt, save_figure


CONDITION_STYLE = {"baseline": ("-", "o"), "ablation": ("--", "v"), "actadd": (":", "^")}


def refusal_interventions(directions_path: str | Path, interventions_path: str | Path, out_path: str | Path) -> None:
    """Refusal rate under the refusal-direction interventions, along each trajectory.

    Columns: techniques. Rows: harmful and harmless test prompts. Lines: baseline,
    ablation of the selected direction, activation addition of it. Labels on the top
    row give the selected layer/position per checkpoint; 'none' marks a checkpoint
    without a direction (its ablation and actadd points are missing, not zero).
    """
    directions = tables.read_table(directions_path, "refusal_direction")
    table = tables.read_table(interventions_path, "refusal_interventions")
    techniques = table["technique"].unique(maintain_order=True).sort().to_list()
    fig, axes = plt.subplots(2, len(techniques), figsize=(3.2 * len(techniques) + 0.6, 6.0), squeeze=False,
                             sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for col, technique in enumerate(techniques):
        for row, prompt_set in enumerate(("harmful", "harmless")):
            ax = axes[row, col]
            for k, (condition, (style, marker)) in enumerate(CONDITION_STYLE.items()):
                rows = table.filter((pl.col("technique") == technique) & (pl.col("prompt_set") == prompt_set)
                                    & (pl.col("condition") == condition) & (pl.col("status") == "ok")).sort("step")
                if not rows.is_empty():
                    ax.plot(rows["step"], rows["refusal_rate"], linestyle=style, marker=marker, color=colours[k],
                            label=condition)
            ax.set(ylim=(-0.03, 1.08))
            if row == 0:
                ax.set_title(technique)
                for d in directions.filter(pl.col("technique") == technique).iter_rows(named=True):
                    label = f"L{d['layer']}/{d['position']}" if d["status"] == "ok" else "none"
                    ax.annotate(label, (d["step"], 1.02), fontsize=6, ha="center", va="bottom", color="grey")
            else:
                ax.set_xlabel("fine-tuning step")
        axes[0, 0].set_ylabel("harmful prompts: refusal rate")
        axes[1, 0].set_ylabel("harmless prompts: refusal rate")
    figure_legend(fig, axes)
    fig.suptitle("Refusal under the selected refusal direction's interventions (test prompts; labels: layer/position)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    save_figure(fig, out_path)
