"""The refusal direction file (`refusal_direction.safetensors`): one reader and one writer for every stage.

Written by `refusal_direction` (Arditi et al. 2024, section 2.3: the selected difference-in-means
direction, its raw vector and the candidates' mean differences) and read by the generation,
drift, abliteration and alignment stages. Kept apart from the extraction code so that a stage
that only reads a direction does not depend on (or rerun with) that code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from workflow_lib.core import tables

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
    """safetensors, written to a temp file and renamed into place, byte-identical for identical contents."""
    final, tmp = tables.atomic_target(path)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        canonical_header(tmp)
        tmp.replace(final)
    finally:
        tmp.unlink(missing_ok=True)


def canonical_header(path) -> None:
    """Rewrite a safetensors file's JSON header with sorted keys, in place.

    The library writes the metadata map in hash order, which differs from run to run, so two
    identical runs gave files that differed in bytes (issue 20). The format is an 8-byte
    little-endian header length, the JSON header (space-padded to 8 bytes), then the tensor data,
    whose offsets count from the end of the header: a new header leaves them valid.
    """
    raw = Path(path).read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    Path(path).write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + size:])
