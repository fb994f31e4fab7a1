"""The refusal direction file (`refusal_direction.safetensors`): one reader and one writer for every stage.

Written by `refusal_direction` (Arditi et al. 2024, section 2.3: the selected difference-in-means
direction, its raw vector and the candidates' mean differences) and read by the generation,
drift, abliteration and alignment stages. Kept apart from the extraction code so that a stage
that only reads a direction does not depend on (or rerun with) that code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from workflow_lib import tables

STATUS_OK = "ok"
NO_DIRECTION = "no_direction"


def read_direction(path: str | Path) -> dict:
    """The file's metadata and tensors (`direction`, `direction_raw` only when status is ok)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    layer = None if meta.get("layer") in (None, "None") else int(meta["layer"])
    position = None if meta.get("position") in (None, "None") else int(meta["position"])
    return {"status": meta["status"], "layer": layer, "position": position, "tensors": tensors,
            "positions": [int(p) for p in meta["positions"].split(",")]}


def write_tensors(tensors: dict[str, torch.Tensor], path, metadata: dict[str, str]) -> None:
    """safetensors, written to a temp file and renamed into place."""
    final, tmp = tables.atomic_target(path)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(final)
    finally:
        tmp.unlink(missing_ok=True)
