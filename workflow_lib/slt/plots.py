"""Figures of the LLC and susceptibilities: trajectories, traces, calibration grids, heatmaps."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from workflow_lib.core import tables
from workflow_lib.core.figures import plt, save_figure


def llc_trajectory(llc_path: str | Path, out_path: str | Path, differences_path: str | Path | None = None) -> None:
    """LLC (mean +- 2 standard errors) against fine-tuning step, one column per technique.

    One line per (parameter space, dataset): a solid segment joins two
    consecutive checkpoints whose difference is resolved (|delta| > 2 delta_se,
    `llc_differences`), a dotted one a difference that is not. Crosses mark checkpoints whose
    summary status is not ok (no value is drawn for them); "k/n chains" marks an
    estimate that rests on fewer chains than were run (the rest were flagged).
    """
    full = tables.read_table(llc_path, "llc")
    n_chains = full.filter(pl.col("row") == "chain").group_by(["technique", "step", "parameter_space", "dataset"]).len()
    table = full.filter(pl.col("row") == "summary").join(n_chains, on=["technique", "step", "parameter_space",
                                                                          "dataset"], how="left")
    techniques = table["technique"].unique().sort().to_list()
    diffs = (tables.read_table(differences_path, "llc_differences").filter(pl.col("kind") == "consecutive")
             if differences_path else None)
    fig, axes = plt.subplots(1, len(techniques), figsize=(3.2 * len(techniques) + 0.6, 3.4), squeeze=False,
                             sharey=True)
    for col, technique in enumerate(techniques):
        ax = axes[0, col]
        rows = table.filter(pl.col("technique") == technique)
        for (space, dataset), group in rows.group_by(["parameter_space", "dataset"], maintain_order=True):
            group = group.sort("step")
            ok = group.filter(pl.col("status") == "ok")
            bars = ax.errorbar(ok["step"], ok["llc_mean"], yerr=2 * ok["llc_se"].fill_null(0.0).fill_nan(0.0),
                               marker="o", capsize=3, linestyle="none", label=f"{space} / {dataset}")
            points = dict(zip(ok["step"].to_list(), ok["llc_mean"].to_list()))
            steps = ok["step"].to_list()
            for a, b in zip(steps, steps[1:]):
                resolved = False
                if diffs is not None:
                    hit = diffs.filter((pl.col("technique") == technique) & (pl.col("parameter_space") == space)
                                       & (pl.col("dataset") == dataset) & (pl.col("step") == b)
                                       & (pl.col("reference_step") == a))
                    resolved = bool(hit.height and hit["resolved"][0])
                ax.plot([a, b], [points[a], points[b]], color=bars[0].get_color(),
                        linestyle="-" if resolved else ":", linewidth=1.5 if resolved else 1.0)
            for point in ok.filter(pl.col("n_ok_chains") < pl.col("len")).iter_rows(named=True):
                ax.annotate(f"{point['n_ok_chains']}/{point['len']} chains", (point["step"], point["llc_mean"]),
                            textcoords="offset points", xytext=(4, 4), fontsize=7, color="firebrick")
            bad = group.filter(pl.col("status") != "ok")
            if not bad.is_empty():
                ax.plot(bad["step"], [0.0] * bad.height, "x", color="red", label="failed")
        ax.set(title=technique, xlabel="fine-tuning step")
    axes[0, 0].set_ylabel("LLC (n_beta-scaled)")
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.suptitle(f"Local learning coefficient along each trajectory (model: {table['model'][0]})", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_path)


def llc_traces(trace_paths: list[str], out_path: str | Path) -> None:
    """SGLD loss rise per chain against SGLD step: one panel per checkpoint.

    The rise is each step's loss minus the checkpoint's loss on the same batch,
    so batch-to-batch differences do not show.

    Rows are techniques, columns their checkpoints; the shaded span is burn-in. A
    healthy trace rises and then flattens.
    """
    traces = pl.concat([tables.read_table(p, "llc_trace") for p in trace_paths])
    techniques = traces["technique"].unique().sort().to_list()
    n_cols = max(traces.filter(pl.col("technique") == t)["step"].n_unique() for t in techniques)
    fig, axes = plt.subplots(len(techniques), n_cols, figsize=(2.6 * n_cols + 0.6, 2.2 * len(techniques) + 0.6),
                             squeeze=False, sharey=True)
    for row, technique in enumerate(techniques):
        steps = sorted(traces.filter(pl.col("technique") == technique)["step"].unique().to_list())
        for col in range(n_cols):
            ax = axes[row, col]
            if col >= len(steps):
                ax.axis("off")
                continue
            group = traces.filter((pl.col("technique") == technique) & (pl.col("step") == steps[col]))
            for (space, dataset, chain), chain_rows in group.group_by(["parameter_space", "dataset", "chain"],
                                                                      maintain_order=True):
                chain_rows = chain_rows.sort("sgld_step")
                ax.plot(chain_rows["sgld_step"], chain_rows["loss"] - chain_rows["batch_init_loss"], linewidth=0.8,
                        label=f"{space}/{dataset} c{chain}")
            burn = group.filter(pl.col("burn_in"))["sgld_step"]
            if burn.len():
                ax.axvspan(0, burn.max(), color="grey", alpha=0.12, linewidth=0)
            ax.axhline(0.0, color="grey", linewidth=0.6)
            ax.set_title(f"{technique} @ {steps[col]}", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[row, 0].set_ylabel("loss rise (nats/token)", fontsize=7)
    axes[0, 0].legend(fontsize=6, loc="best")
    fig.suptitle("SGLD traces of the LLC estimates (grey: burn-in)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_path)


def llc_calibration(trace_path: str | Path, grid_path: str | Path, out_path: str | Path) -> None:
    """Calibration traces: rows (n_beta, localization), columns step size; n_beta * batch-matched rise per chain.

    Titles give the grid point's LLC and status; the recommended point is marked.
    """
    traces = tables.read_table(trace_path, "llc_calibration_trace")
    grid = tables.read_table(grid_path, "llc_calibration")
    rows_keys = sorted(grid.select("n_beta", "localization").unique().rows())
    lrs = sorted(grid["lr"].unique().to_list())
    fig, axes = plt.subplots(len(rows_keys), len(lrs), figsize=(2.8 * len(lrs) + 0.6, 2.3 * len(rows_keys) + 0.6),
                             squeeze=False)
    for r, (n_beta, gamma) in enumerate(rows_keys):
        for c, lr in enumerate(lrs):
            ax = axes[r, c]
            select = (pl.col("n_beta") == n_beta) & (pl.col("localization") == gamma) & (pl.col("lr") == lr)
            point = grid.filter(select).row(0, named=True)
            for _, chain_rows in traces.filter(select).group_by("chain", maintain_order=True):
                chain_rows = chain_rows.sort("sgld_step")
                ax.plot(chain_rows["sgld_step"], n_beta * (chain_rows["loss"] - chain_rows["batch_init_loss"]),
                        linewidth=0.8)
            ax.axhline(0.0, color="grey", linewidth=0.6)
            mark = " (recommended)" if point["recommended"] else ""
            ax.set_title(f"lr {lr:.0e}, n_beta {n_beta:g}, gamma {gamma:g}\nLLC {point['llc_mean']:.3g}, "
                         f"{point['status']}{mark}", fontsize=7, color="green" if point["recommended"] else "black")
            ax.tick_params(labelsize=6)
    fig.supxlabel("SGLD step")
    fig.supylabel("n_beta * (loss - loss at the checkpoint, same batch)")
    fig.tight_layout()
    save_figure(fig, out_path)


def _component_order(table: pl.DataFrame) -> list[str]:
    """Components in model order: by layer, then kind and head; custom ones last."""
    facts = table.select("component", "layer", "head", "component_kind").unique()
    return facts.sort(["layer", "component_kind", "head", "component"], nulls_last=True)["component"].to_list()


HEATMAP_MAX_COMPONENTS = 64


def _heatmap_rows(table: pl.DataFrame, estimator: str | None) -> tuple[pl.DataFrame, str]:
    """One estimator's rows (the first in the table unless named), and of many components only attn and mlp."""
    estimator = estimator or table["estimator"][0]
    table = table.filter(pl.col("estimator") == estimator)
    note = estimator
    if table["component"].n_unique() > HEATMAP_MAX_COMPONENTS:
        table = table.filter(pl.col("component_kind").is_in(["attn", "mlp", "custom"]))
        note += "; attn and mlp of every layer (heads and layers in the table)"
    return table, note


def susceptibility_heatmaps(table_path: str | Path, out_path: str | Path, estimator: str | None = None) -> None:
    """Component x observable heatmap of mean answer-token chi, one panel per checkpoint.

    Rows: techniques; columns: that technique's steps. Each panel has its own
    symmetric colour scale (printed values carry the magnitude), so the pattern
    within a checkpoint stays visible when checkpoints differ in scale. Cells of
    components whose chains were flagged are hatched. One estimator per figure;
    with more than 64 components, the attn and mlp rows.
    """
    import numpy as np

    table, note = _heatmap_rows(tables.read_table(table_path, "susceptibility"), estimator)
    components = _component_order(table)
    observables = table["observable"].unique(maintain_order=True).to_list()
    techniques = table["technique"].unique(maintain_order=True).sort().to_list()
    n_cols = max(table.filter(pl.col("technique") == t)["step"].n_unique() for t in techniques)
    width = 1.0 + 0.55 * len(observables)
    height = 0.8 + 0.28 * len(components)
    fig, axes = plt.subplots(len(techniques), n_cols, figsize=(width * n_cols + 0.5, height * len(techniques) + 0.6),
                             squeeze=False)
    for row, technique in enumerate(techniques):
        steps = table.filter(pl.col("technique") == technique)["step"].unique().sort().to_list()
        for col in range(n_cols):
            ax = axes[row, col]
            if col >= len(steps):
                ax.axis("off")
                continue
            panel = table.filter((pl.col("technique") == technique) & (pl.col("step") == steps[col]))
            grid = np.full((len(components), len(observables)), np.nan)
            flagged = np.zeros_like(grid, dtype=bool)
            for r in panel.iter_rows(named=True):
                i, j = components.index(r["component"]), observables.index(r["observable"])
                grid[i, j] = r["chi_mean"]
                flagged[i, j] = r["status"] != "ok"
            limit = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
            image = ax.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
            for i, j in zip(*np.nonzero(flagged)):
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="grey"))
            if len(components) <= 24:
                for i, j in zip(*np.nonzero(np.isfinite(grid))):
                    ax.text(j, i, f"{grid[i, j]:.2g}", ha="center", va="center", fontsize=6)
            ax.set_xticks(range(len(observables)), observables, rotation=60, ha="right", fontsize=7)
            ax.set_yticks(range(len(components)), components if col == 0 else [""] * len(components), fontsize=7)
            ax.set_title(f"{technique} @ {steps[col]}", fontsize=8)
            fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02).ax.tick_params(labelsize=6)
    fig.suptitle(f"Susceptibility (mean chi over answer tokens, nats²) per component and observable "
                 f"(model: {table['model'][0]}; {note})", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_path)


def susceptibility_reliability(reliability_path: str | Path, out_path: str | Path) -> None:
    """Split-half reliability of each component ranking at every checkpoint, one panel per source x kind.

    x: checkpoints (technique@step); y: Spearman-Brown reliability with its 2.5-97.5% range over random
    prompt halvings; one marker per ranking (observable or contrast).
    """
    table = tables.read_table(reliability_path, "susceptibility_reliability").filter(
        pl.col("reliability").is_not_null())
    sources = table["source"].unique(maintain_order=True).to_list() or ["(no reliability rows)"]
    kinds = [k for k in ("head", "mlp", "attn", "layer", "group") if k in set(table["component_kind"])] or ["-"]
    fig, axes = plt.subplots(len(sources), len(kinds), figsize=(3.6 * len(kinds) + 1.5, 2.6 * len(sources) + 0.8),
                             squeeze=False, sharey=True)
    checkpoints = table.select("technique", "step").unique().sort("technique", "step").rows()
    labels = [f"{t}@{s}" for t, s in checkpoints]
    names = table["name"].unique(maintain_order=True).to_list()
    for r, source in enumerate(sources):
        for c, kind in enumerate(kinds):
            ax = axes[r, c]
            panel = table.filter((pl.col("source") == source) & (pl.col("component_kind") == kind))
            for k, name in enumerate(names):
                rows = panel.filter(pl.col("name") == name)
                x = [labels.index(f"{t}@{s}") + 0.08 * (k - len(names) / 2) for t, s in
                     zip(rows["technique"], rows["step"])]
                if rows.height:
                    # the range holds the estimate up to float rounding (-1e-17 when every halving agrees)
                    below = (rows["reliability"] - rows["ci_low"]).clip(lower_bound=0.0)
                    above = (rows["ci_high"] - rows["reliability"]).clip(lower_bound=0.0)
                    ax.errorbar(x, rows["reliability"], yerr=[below, above], fmt="o", markersize=3, capsize=2,
                                label=name)
            ax.axhline(0.0, color="grey", linewidth=0.8)
            ax.axhline(0.8, color="grey", linewidth=0.6, linestyle=":")
            ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=6)
            n = panel["n_components"].max() if panel.height else 0
            ax.set_title(f"{source}: {kind} ({n} components)", fontsize=8)
            ax.set_ylim(-1.05, 1.05)
        axes[r, 0].set_ylabel("split-half reliability")
    handles, legend = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, legend, fontsize=7, loc="upper right")
    fig.suptitle("How far each component ranking holds: split-half reliability (Spearman-Brown)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    save_figure(fig, out_path)


CONTRAST_LINES = 8


def susceptibility_contrasts(structure_path: str | Path, out_path: str | Path, estimator: str | None = None) -> None:
    """Each signed contrast per component against fine-tuning step: one row per contrast, one column per technique.

    One estimator per figure; with many components, the `CONTRAST_LINES` with
    the largest mean |contrast| in each panel (whole layers left out: they
    contain their attn and mlp).
    """
    table = tables.read_table(structure_path, "susceptibility_structure").filter(pl.col("quantity") == "contrast")
    if not table.is_empty():
        table = table.filter(pl.col("estimator") == (estimator or table["estimator"][0]))
    fig_rows = table["contrast"].unique(maintain_order=True).to_list() or ["(no contrasts configured)"]
    techniques = table["technique"].unique().sort().to_list() or ["-"]
    fig, axes = plt.subplots(len(fig_rows), len(techniques), figsize=(3.4 * len(techniques) + 1.5,
                                                                      2.8 * len(fig_rows)), squeeze=False,
                             sharey="row")
    for r, contrast in enumerate(fig_rows):
        for c, technique in enumerate(techniques):
            ax = axes[r, c]
            rows = table.filter((pl.col("contrast") == contrast) & (pl.col("technique") == technique))
            if rows["component"].n_unique() > CONTRAST_LINES:
                top = (rows.filter(~pl.col("component").str.contains(r"^l\d+$"))
                       .group_by("component").agg(size=pl.col("value").abs().mean())
                       .sort("size", descending=True).head(CONTRAST_LINES)["component"])
                rows = rows.filter(pl.col("component").is_in(top))
            for (component,), group in rows.group_by(["component"], maintain_order=True):
                group = group.sort("step")
                ax.plot(group["step"], group["value"], marker="o", markersize=3, linewidth=1, label=component)
            ax.axhline(0.0, color="grey", linewidth=0.8)
            ax.set(title=f"{technique}: {contrast}", xlabel="fine-tuning step")
            ax.title.set_fontsize(8)
        axes[r, 0].set_ylabel("chi difference (nats²)")
    for ax in axes.flat:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=5, loc="best")
    fig.suptitle("Signed susceptibility contrasts per component along each trajectory", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_path)
