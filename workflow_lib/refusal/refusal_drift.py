"""`refusal_drift`: how the harmful - harmless mean difference moves along one trajectory.

Per checkpoint, layer and post-instruction position: the cosine of this checkpoint's
mean difference to the previous checkpoint's, to the trajectory's final one and to
the base model's; its norm; and the mean projections of harmful and harmless
activations onto one fixed reference direction (the final checkpoint's selected
direction), so that the separation can be followed on a common axis.

Drift uses the *unfiltered* mean differences (all train prompts). The Arditi train
filter keeps the prompts a checkpoint refuses, so filtered differences would mix a
change of data with a change of model, and at a checkpoint that never refuses they
do not exist.
"""

from __future__ import annotations

import polars as pl
import torch

from workflow_lib.core import direction_file
from workflow_lib.core import tables


def _cos(a: torch.Tensor, b: torch.Tensor) -> list[float | None]:
    """Cosine per (layer, position); None where either difference is zero (block 0 at template tokens)."""
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    zero = lambda x: x.norm(dim=-1) <= 1e-6 * float(x.norm(dim=-1).max())  # noqa: E731
    return [None if z else float(c) for c, z in zip(cos.flatten(), (zero(a) | zero(b)).flatten())]


def drift(*, model: str, technique: str, steps: list[int], direction_paths: list[str], base_path: str,
          out_path) -> pl.DataFrame:
    """One table for the whole trajectory (`steps` ascending, `direction_paths` in the same order)."""
    if len(steps) != len(direction_paths):
        raise ValueError("drift needs one direction file per step")
    files = [direction_file.read_direction(p) for p in direction_paths]
    base = direction_file.read_direction(base_path)["tensors"]["mean_diff_unfiltered"]
    final = files[-1]
    final_diff = final["tensors"]["mean_diff_unfiltered"]
    reference = final["tensors"].get("direction")
    reference_name = f"{technique}@{steps[-1]}" if reference is not None else None
    positions = final["positions"]
    frames = []
    previous = None
    for step, f in zip(steps, files):
        diff = f["tensors"]["mean_diff_unfiltered"]
        if diff.shape != final_diff.shape or diff.shape != base.shape:
            raise ValueError("mean differences of different shapes along one trajectory: were the checkpoints "
                             "measured with different models or chat templates?")
        n_layers, n_pos, _ = diff.shape
        layer = torch.arange(n_layers).repeat_interleave(n_pos)
        pos = torch.tensor(positions).repeat(n_layers)
        cols = {
            "layer": layer.tolist(), "position": pos.tolist(),
            "mean_diff_norm": diff.norm(dim=-1).flatten().tolist(),
            "cos_to_previous": _cos(diff, previous) if previous is not None else [None] * (n_layers * n_pos),
            "cos_to_final": _cos(diff, final_diff),
            "cos_to_base": _cos(diff, base),
        }
        if reference is not None:
            r = reference.to(torch.float64)
            cols["proj_harmful"] = (f["tensors"]["mean_harmful"] @ r).flatten().tolist()
            cols["proj_harmless"] = (f["tensors"]["mean_harmless"] @ r).flatten().tolist()
        else:
            cols["proj_harmful"] = cols["proj_harmless"] = [None] * (n_layers * n_pos)
        selected = [f["status"] == "ok" and l == f["layer"] and p == f["position"] for l, p in zip(cols["layer"],
                                                                                                 cols["position"])]
        frames.append(pl.DataFrame(cols, schema_overrides={"cos_to_previous": pl.Float64, "cos_to_final": pl.Float64,
                                                           "cos_to_base": pl.Float64, "proj_harmful": pl.Float64,
                                                           "proj_harmless": pl.Float64})
                      .with_columns(model=pl.lit(model), technique=pl.lit(technique), step=pl.lit(step),
                                    reference=pl.lit(reference_name, dtype=pl.Utf8),
                                    selected_here=pl.Series(selected, dtype=pl.Boolean)))
        previous = diff
    return tables.write_table(pl.concat(frames, how="diagonal_relaxed"), out_path, "refusal_drift")
