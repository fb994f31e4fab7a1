"""`abliterate`: weight orthogonalisation against a refusal direction (Arditi et al. 2024, section 4.1).

Not a training method: one checkpoint (step 0) made from the `start_from` checkpoint
by `W <- W - r r^T W` on every matrix that writes to the residual stream
(`interventions.orthogonalise`), with r the refusal direction selected at the
`direction_from` checkpoint (default: the `start_from` checkpoint itself). The
orthogonalised weights are saved as the checkpoint's own base model (`base_model/`)
under a fresh zero-effect LoRA adapter, so every stage loads and measures the
checkpoint like any other, and the LLC samples the same LoRA space as at any step 0.

Its training mix is `sft_refusal`'s (harmful -> refusals, harmless -> base answers):
the data the LLC of the abliterated model is measured on, comparable with the
safety-tuned checkpoint it came from.
"""

from __future__ import annotations

from pathlib import Path

import torch

from workflow_lib.core import interventions
from workflow_lib.core import models
from workflow_lib.finetune import sft_refusal

build_training_mix = sft_refusal.build_training_mix
encode = sft_refusal.encode
collate = sft_refusal.collate


def loss(model, batch, settings, step):
    raise ValueError("abliterate has no training loss: its only checkpoint is step 0 (set steps: [0])")


def write_base_model(*, model_dir, start_dir, direction_path, out_dir: Path, device: str = "cpu") -> dict:
    """Merge the start checkpoint, orthogonalise it against the direction and save it to `out_dir`."""
    from workflow_lib.core import direction_file

    direction = direction_file.read_direction(direction_path)
    if direction["status"] != "ok":
        raise ValueError(f"{direction_path} holds no refusal direction (status {direction['status']}); "
                         "abliterate needs a checkpoint where one was selected: point direction_from at a "
                         "checkpoint that refuses (see its refusal_direction.parquet)")
    lm, tokenizer = models.load_checkpoint(model_dir, start_dir, dtype="float32", device=device)
    interventions.orthogonalise(lm, direction["tensors"]["direction"].to(torch.float32))
    lm.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return {"layer": direction["layer"], "position": direction["position"]}
