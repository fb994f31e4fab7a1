"""Figures for the report (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402

from workflow_lib import tables  # noqa: E402

SET_STYLE = {"harmful": "-", "harmless": "--", "harmless_lookalike": ":"}


def wilson_interval(rate: pl.Series, n: pl.Series, z: float = 1.96) -> tuple[pl.Series, pl.Series]:
    """95% Wilson score interval of a binomial proportion (well-behaved at 0 and 1)."""
    centre = (rate + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * ((rate * (1 - rate) / n + z**2 / (4 * n**2)) ** 0.5) / (1 + z**2 / n)
    return centre - half, centre + half


def _save(fig, out_path: str | Path) -> None:
    final, tmp = tables.atomic_target(out_path)
    try:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
        os.replace(tmp, final)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


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
            low, high = wilson_interval(rows["refusal_rate"], rows["n"])
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
    _save(fig, out_path)
