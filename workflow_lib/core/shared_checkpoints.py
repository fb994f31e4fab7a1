"""Checkpoints that are the same model share their measurements instead of repeating them.

Two configured checkpoints are often one model by construction: step 0 of every technique that
starts from the base model (a LoRA adapter with B = 0, same seed and shape), and step 0 of a
technique with `start_from`, whose adapter is a copy of the start checkpoint's. The workflow
points such a checkpoint's jobs at the other one's outputs (`rules/common.smk: shared_source`);
here the job checks that the two checkpoints really are the same model (identical adapter
files and no checkpoint-specific base weights) and then copies the other's tables under its
own keys. If they differ (e.g. another LoRA seed), the job measures as usual: sharing never
changes a number, it only skips recomputing it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import polars as pl

from workflow_lib.core import tables
from workflow_lib.core.models import CHECKPOINT_BASE

log = logging.getLogger(__name__)

# peft writes these module sets as JSON lists in no fixed order
UNORDERED_CONFIG_KEYS = ("target_modules", "modules_to_save")


def _canonical_config(path: Path) -> bytes:
    config = json.loads(path.read_text())
    for key in UNORDERED_CONFIG_KEYS:
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    return json.dumps(config, sort_keys=True).encode()


def fingerprint(checkpoint_dir: str | Path) -> str | None:
    """sha256 over the adapter's weights and config; None when the checkpoint carries its own base weights."""
    root = Path(checkpoint_dir)
    if (root / CHECKPOINT_BASE).exists():
        return None  # rewritten weights (e.g. abliterate): never assumed equal to another checkpoint
    digest = hashlib.sha256((root / "adapter" / "adapter_model.safetensors").read_bytes())
    digest.update(_canonical_config(root / "adapter" / "adapter_config.json"))
    return digest.hexdigest()


def same_model(checkpoint_dir: str | Path, source_checkpoint_dir: str | Path) -> bool:
    a, b = fingerprint(checkpoint_dir), fingerprint(source_checkpoint_dir)
    return a is not None and a == b


def _copy_file(src: str | Path, dst: str | Path) -> None:
    final, tmp = tables.atomic_target(dst)
    try:
        shutil.copyfile(src, tmp)
        tmp.replace(final)
    finally:
        tmp.unlink(missing_ok=True)


def reuse(*, checkpoint_dir, source: dict[str, str], outputs: dict[str, tuple[str, str | None]], technique: str,
          step: int) -> bool:
    """Copy the source checkpoint's outputs when both checkpoints are the same model.

    `source` maps `checkpoint` to the source checkpoint folder and every output name to the source's
    file; `outputs` maps each output name to (this job's path, table schema or None for a plain file).
    Returns False, copying nothing, when the models differ: the caller then measures.
    """
    if not same_model(checkpoint_dir, source["checkpoint"]):
        log.info("%s differs from %s: measuring instead of sharing", checkpoint_dir, source["checkpoint"])
        return False
    for name, (path, schema) in outputs.items():
        if schema is None:
            _copy_file(source[name], path)
        else:
            table = tables.read_table(source[name], schema)
            tables.write_table(table.with_columns(technique=pl.lit(technique), step=pl.lit(step, pl.Int64)), path,
                               schema)
    log.info("%s is the same model as %s: shared its %s", checkpoint_dir, source["checkpoint"], sorted(outputs))
    return True
