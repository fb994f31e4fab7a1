"""`component_alignment`: how much each component writes along the refusal direction.

For a component C with output weights W_C (the columns of the attention output
projection o_proj that read head h, or of a GQA group's heads, the whole o_proj for
`l attn`, MLP down_proj for `l mlp`, both for a whole layer), its alignment with the
unit refusal direction r is ||r^T W_C||: the largest refusal-direction write per unit
of input the component can make. It is reported against a random direction's
expected value, ||W_C||_F / sqrt(d_model), so that 1 means "no more aligned than
chance" and components of different sizes compare.

Weights are those of the merged checkpoint, so an adapter (or the abliteration) on an
output projection shows up. Component names match the susceptibility components, so
the analysis can set alignment against susceptibility component by component.
"""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import torch

from workflow_lib.core import direction_file, interventions
from workflow_lib.core import models, tables


def _output_weights(block, n_heads: int, n_groups: int) -> dict[str, tuple[str, torch.Tensor, int | None]]:
    """kind suffix -> (weight name, output matrix (d_model x in), head index) for one decoder block."""
    o_proj, down_proj = (linear.weight for linear in interventions.output_projections(block))
    head_dim = o_proj.shape[1] // n_heads
    per_group = n_heads // n_groups
    out = {"attn": ("o_proj", o_proj, None), "mlp": ("down_proj", down_proj, None),
           "layer": ("o_proj+down_proj", torch.cat([o_proj, down_proj], dim=1), None)}
    for h in range(n_heads):
        out[f"h{h}"] = ("o_proj", o_proj[:, h * head_dim:(h + 1) * head_dim], h)
    for g in range(n_groups):
        out[f"g{g}"] = ("o_proj", o_proj[:, g * per_group * head_dim:(g + 1) * per_group * head_dim], g)
    return out


def _name(layer: int, suffix: str) -> tuple[str, str]:
    if suffix in ("attn", "mlp"):
        return f"l{layer} {suffix}", suffix
    if suffix == "layer":
        return f"l{layer}", "layer"
    return f"l{layer}{suffix}", "head" if suffix.startswith("h") else "group"


def alignments(model, direction: torch.Tensor | None) -> list[dict]:
    """One row per component of every layer; null values when there is no direction."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n_heads = int(config.num_attention_heads)
    n_groups = int(getattr(config, "num_key_value_heads", None) or n_heads)
    rows = []
    r = None if direction is None else interventions.unit(direction.double())
    with torch.no_grad():
        for layer, block in enumerate(models.decoder_layers(model)):
            for suffix, (weight, matrix, head) in _output_weights(block, n_heads, n_groups).items():
                name, kind = _name(layer, suffix)
                row = {"component": name, "layer": layer, "head": head, "component_kind": kind, "weight": weight,
                       "alignment": None, "alignment_ratio": None, "status": "no_direction"}
                if r is not None:
                    w = matrix.double().to(r.device)
                    along = float(torch.linalg.vector_norm(r @ w))
                    chance = float(torch.linalg.matrix_norm(w)) / math.sqrt(w.shape[0])
                    row |= {"alignment": along, "alignment_ratio": along / chance if chance > 0 else None,
                            "status": "ok"}
                rows.append(row)
    return rows


def run(*, model: str, technique: str, step: int, model_dir, checkpoint_dir, direction_path, out_path,
        device: str = "cpu") -> pl.DataFrame:
    """The alignment table of one checkpoint with its own selected refusal direction."""
    direction = direction_file.read_direction(direction_path)
    vector = direction["tensors"]["direction"] if direction["status"] == "ok" else None
    lm, _ = models.load_checkpoint(model_dir, checkpoint_dir, dtype="float32", device=device)
    rows = alignments(lm, vector)
    frame = pl.DataFrame(rows, schema_overrides={"head": pl.Int64, "alignment": pl.Float64,
                                                 "alignment_ratio": pl.Float64}, infer_schema_length=None)
    frame = frame.with_columns(model=pl.lit(model), technique=pl.lit(technique), step=pl.lit(step))
    return tables.write_table(tables.conform(frame, "component_alignment"), Path(out_path), "component_alignment")
