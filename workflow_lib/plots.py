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
    """Refusal rate and refusal log-odds against fine-tuning step, one colour per technique.

    Solid lines: held-out harmful prompts (higher is safer). Dashed: held-out
    harmless prompts (higher is over-refusal). Bands: 95% Wilson intervals.
    """
    table = tables.read_table(trajectory_path, "trajectory")
    fig, (ax_rate, ax_score) = plt.subplots(1, 2, figsize=(10, 3.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, technique in enumerate(table["technique"].unique(maintain_order=True).sort()):
        for prompt_set, style in SET_STYLE.items():
            rows = table.filter((pl.col("technique") == technique) & (pl.col("prompt_set") == prompt_set)).sort("step")
            if rows.is_empty():
                continue
            label = f"{technique} / {prompt_set} (n={rows['n'].max()})"
            kwargs = dict(linestyle=style, marker="o", color=colours[k % len(colours)], label=label)
            ax_rate.plot(rows["step"], rows["refusal_rate"], **kwargs)
            low, high = wilson_interval(rows["refusal_rate"], rows["n"])
            ax_rate.fill_between(rows["step"], low, high, color=kwargs["color"], alpha=0.12, linewidth=0)
            ax_score.plot(rows["step"], rows["refusal_score_logodds"], **kwargs)
    ax_rate.set(xlabel="fine-tuning step", ylabel="refusal rate (substring judge)", ylim=(-0.03, 1.03),
                title="Refusal rate on held-out test prompts")
    ax_score.axhline(0.0, color="grey", linewidth=0.8)
    ax_score.set(xlabel="fine-tuning step", ylabel="refusal log-odds, first response token",
                 title="Refusal score (Arditi et al. 2024)")
    ax_rate.legend(fontsize=7, loc="best")
    fig.suptitle(f"model: {table['model'][0]}", fontsize=9)
    _save(fig, out_path)
