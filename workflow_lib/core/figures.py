"""Shared figure plumbing: matplotlib on the Agg backend and atomic PNG writes (no figure lives here)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from workflow_lib.core import tables  # noqa: E402

__all__ = ["figure_legend", "plt", "save_figure"]


def save_figure(fig, out_path: str | Path) -> None:
    """Write `fig` as a PNG at `out_path` atomically, and close it."""
    final, tmp = tables.atomic_target(out_path)
    try:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
        os.replace(tmp, final)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def figure_legend(fig, axes) -> None:
    """One legend for the figure with every line once, whichever panel it first appears in."""
    legend = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), fontsize=7, loc="center right")
