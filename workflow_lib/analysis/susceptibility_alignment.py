"""Is refusal carried by high-susceptibility components, and do techniques reorganise them?

- `alignment_vs_susceptibility`: per checkpoint, the Spearman correlation over
  components of the alignment of each component's output weights with the refusal
  direction (`component_alignment`) and its mean answer-token susceptibility to one
  observable (default: harmful prompt + refusal), with a bootstrap interval over
  components and a permutation p-value;
- `rotation`: per trajectory, the principal angles between the top principal
  components (loadings over components) of the susceptibility response matrix at
  consecutive checkpoints. Small angles: the same components respond together;
  large ones: fine-tuning reorganised which components move with which tokens.

Checkpoints without a direction or without susceptibilities keep a row with that
status, so a reader sees the gap.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from workflow_lib.core import statistics, tables

KEYS = ["model", "technique", "step"]
# Families of component kinds correlated together: each a set of components none of which contains another.
FAMILIES = {"attn": ["attn"], "mlp": ["mlp"], "head": ["head"], "group": ["group"], "layer": ["layer"],
            "attn+mlp": ["attn", "mlp"], "head+mlp": ["head", "mlp"]}


def gather(paths: list[str], out_path) -> pl.DataFrame:
    """Every checkpoint's component_alignment rows in one table."""
    table = pl.concat([tables.read_table(p, "component_alignment") for p in paths])
    return tables.write_table(table.sort(KEYS + ["layer", "component_kind", "head"], nulls_last=True), out_path,
                              "component_alignment")


def alignment_vs_susceptibility(alignment: pl.DataFrame, susceptibility: pl.DataFrame | None,
                                settings: dict) -> pl.DataFrame:
    observable = settings["alignment_observable"]
    rows = []
    for keys, group in alignment.group_by(KEYS, maintain_order=True):
        base = dict(zip(KEYS, keys)) | {"observable": observable}
        if susceptibility is None:
            rows.append(base | {"status": "no_susceptibility", "reason": "susceptibilities are not part of this run "
                                "(susceptibility.in_all: false); run `snakemake susceptibilities` or set in_all"})
            continue
        chi = susceptibility.filter((pl.col("model") == keys[0]) & (pl.col("technique") == keys[1])
                                    & (pl.col("step") == keys[2]) & (pl.col("observable") == observable))
        if chi.is_empty():
            rows.append(base | {"status": "no_susceptibility",
                                "reason": f"no susceptibility rows for observable {observable!r} at this checkpoint"})
            continue
        if (group["status"] != "ok").all():
            for seed, estimator in chi.select("seed", "estimator").unique().sort("seed", "estimator").rows():
                rows.append(base | {"seed": seed, "estimator": estimator, "status": "no_direction",
                                    "reason": "this checkpoint has no selected refusal direction"})
            continue
        # One correlation per estimator and family of components that do not contain one another (a layer
        # contains its heads and MLP: ranked together, a component would be correlated with its own parts).
        for (seed, estimator), per_run in chi.group_by("seed", "estimator", maintain_order=True):
            for kind, kinds in FAMILIES.items():
                per_kind = per_run.filter(pl.col("component_kind").is_in(kinds))
                if not set(kinds) <= set(per_run["component_kind"]):
                    continue
                joined = per_kind.filter(pl.col("status") == "ok").join(
                    group.select("component", "alignment_ratio"), on="component", how="inner")
                result = statistics.correlate(joined["alignment_ratio"].to_numpy(), joined["chi_mean"].to_numpy(),
                                              "spearman", n_resamples=settings["bootstrap_resamples"],
                                              n_permutations=settings["permutations"], seed=settings["seed"])
                left_out = per_kind.filter(pl.col("status") != "ok")["component"].to_list()
                flagged = f"susceptibility not ok for {left_out}" if left_out else ""
                reason = "; ".join(r for r in (result.reason, flagged) if r)
                rows.append(base | {"seed": seed, "estimator": estimator, "component_kind": kind,
                                    "n_components": result.n, "spearman": result.estimate,
                                    "ci_low": result.ci_low, "ci_high": result.ci_high, "p_value": result.p_value,
                                    "status": result.status, "reason": reason})
    return tables.fill_missing(pl.DataFrame(rows, infer_schema_length=None), "susceptibility_alignment")


def _loadings(structure: pl.DataFrame) -> dict[tuple, tuple[list[str], np.ndarray]]:
    """(model, technique, step, seed, estimator) -> (components, loadings matrix components x pcs)."""
    loadings = structure.filter(pl.col("quantity") == "loading")
    out = {}
    for keys, group in loadings.group_by(KEYS + ["seed", "estimator"], maintain_order=True):
        wide = group.pivot(on="pc", index="component", values="value").sort("component")
        pcs = sorted(c for c in wide.columns if c != "component")
        out[tuple(keys)] = (wide["component"].to_list(), wide.select(pcs).to_numpy())
    return out


def rotation(checkpoints: pl.DataFrame, structure: pl.DataFrame | None) -> pl.DataFrame:
    """Principal angles between consecutive checkpoints' top-PC subspaces, per trajectory and seed."""
    rows = []
    if structure is None:
        for keys in checkpoints.select(KEYS).unique(maintain_order=True).rows():
            rows.append(dict(zip(KEYS, keys)) | {"status": "no_susceptibility",
                                                 "reason": "susceptibilities are not part of this run"})
        return tables.fill_missing(pl.DataFrame(rows, infer_schema_length=None), "susceptibility_rotation")
    spans = _loadings(structure)
    by_trajectory: dict[tuple, list[tuple]] = {}
    for model, technique, step, seed, estimator in sorted(spans):
        by_trajectory.setdefault((model, technique, seed, estimator), []).append(step)
    for (model, technique, seed, estimator), steps in by_trajectory.items():
        base = {"model": model, "technique": technique, "seed": seed, "estimator": estimator}
        rows.append(base | {"step": steps[0], "status": "no_previous_step",
                            "reason": "first checkpoint of the trajectory"})
        for previous, step in zip(steps, steps[1:]):
            (names_a, a), (names_b, b) = (spans[(model, technique, previous, seed, estimator)],
                                          spans[(model, technique, step, seed, estimator)])
            row = base | {"step": step, "previous_step": previous}
            if names_a != names_b:
                rows.append(row | {"status": "mismatch", "reason": "the two checkpoints have different components"})
                continue
            k = min(a.shape[1], b.shape[1])
            angles = statistics.subspace_angles(a[:, :k], b[:, :k])
            rows += [row | {"n_pcs": k, "angle_index": i + 1, "angle_deg": math.degrees(angle), "status": "ok",
                            "reason": ""} for i, angle in enumerate(angles)]
    return tables.fill_missing(pl.DataFrame(rows, infer_schema_length=None), "susceptibility_rotation")


def run(*, alignment_paths: list[str], susceptibility_path, structure_path, settings: dict, alignment_out,
        correlation_out, rotation_out) -> None:
    alignment = gather(alignment_paths, alignment_out)
    susceptibility = tables.read_table(susceptibility_path, "susceptibility") if susceptibility_path else None
    structure = tables.read_table(structure_path, "susceptibility_structure") if structure_path else None
    tables.write_table(alignment_vs_susceptibility(alignment, susceptibility, settings), correlation_out,
                       "susceptibility_alignment")
    tables.write_table(rotation(alignment, structure), rotation_out, "susceptibility_rotation")
