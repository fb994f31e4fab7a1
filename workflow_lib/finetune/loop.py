"""The shared segment loop: train a LoRA adapter from one configured step to the next.

A trajectory is cut into segments at the configured checkpoint steps. Each
segment loads the previous checkpoint (adapter + AdamW state) and trains on.
Everything random is a function of the seed and the global step: the batch at
step s is drawn from an epoch permutation seeded by (seed, epoch), and dropout is
seeded by (seed, s). Chained segments therefore give the same weights as one long
run, and appending a step never changes earlier checkpoints.

The learning-rate schedule is defined in absolute steps (`total_steps` is a config
key, never derived from the step list) for the same reason.

Step 0 is the base model: a freshly initialised adapter whose LoRA B matrices
are zero, so it computes exactly the base function while giving every later
stage the same parameter space along the whole trajectory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from workflow_lib.core import models, scratch, tables
from workflow_lib.core.progress import Progress
from workflow_lib.finetune import lora as lora_adapter
from workflow_lib.finetune import technique_module

log = logging.getLogger(__name__)

ADAPTER = "adapter"
OPTIMIZER = "optimizer.pt"
ROW = "checkpoint.parquet"


def derived_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of values (stable across runs and machines)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def batch_indices(n_examples: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Example ids of the batch at global `step`: sampling without replacement within epochs."""
    out = []
    for g in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(g, n_examples)
        perm = np.random.default_rng(derived_seed(seed, "epoch", epoch)).permutation(n_examples)
        out.append(int(perm[pos]))
    return out


def lr_at(step: int, optimizer: dict, schedule: dict) -> float:
    """Learning rate used for the update at global `step` (0-based)."""
    lr = float(optimizer["lr"])
    warmup = int(schedule.get("warmup_steps", 0))
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    name = schedule.get("name", "constant")
    if name == "constant":
        return lr
    total = int(schedule["total_steps"])
    floor = float(schedule.get("min_lr_ratio", 0.0))
    progress = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
    if name == "linear":
        return lr * (floor + (1 - floor) * (1 - progress))
    if name == "cosine":
        return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown schedule {name!r}; use constant, linear or cosine")


def _fresh_adapter(base, lora: dict, seed: int, technique: str):
    torch.manual_seed(derived_seed(seed, "lora-init"))
    peft_model, targeted = lora_adapter.attach(base, lora, technique)
    log.info(lora_adapter.describe(lora, targeted, getattr(base.config, "model_type", "?")))
    return peft_model


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _publish(tmp: Path, out: Path) -> None:
    """Move a finished checkpoint folder into place in one rename."""
    for f in tmp.rglob("*"):
        if f.is_file():
            f.chmod(0o644)  # peft writes adapter files 0600; shared clusters need them readable
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def run_segment(*, model: str, technique: str, settings: dict, model_dir: str | Path, mix_path: str | Path | None,
                prev_dir: str | Path | None, prev_step: int | None, step: int, out_dir: str | Path,
                device: str = "cpu", start_dir: str | Path | None = None,
                reference_dir: str | Path | None = None, direction_path: str | Path | None = None) -> pl.DataFrame:
    """Train from `prev_step` (checkpoint at `prev_dir`) to `step` and write the checkpoint to `out_dir`.

    Step 0 is a fresh zero-effect adapter, or, with `start_dir` (the technique's
    `start_from`), a copy of another trajectory's checkpoint with a fresh optimizer.
    `reference_dir` loads a checkpoint's adapter as a frozen second adapter named
    `reference`, for losses that compare against a reference policy (DPO).
    A kind that rewrites the weights instead of training them (`abliterate`, with
    `direction_path`) writes them as the checkpoint's own `base_model/`.

    The checkpoint is built in a temporary sibling folder and renamed into place
    only when complete; a failed segment leaves nothing behind.
    """
    out = Path(out_dir)
    tmp = scratch.fresh_folder(out)  # removes what a killed attempt left
    try:
        row = _train_segment(model=model, technique=technique, settings=settings, model_dir=model_dir,
                             mix_path=mix_path, prev_dir=prev_dir, prev_step=prev_step, step=step, tmp=tmp,
                             device=device, start_dir=start_dir, reference_dir=reference_dir,
                             direction_path=direction_path, final_dir=out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, out)
    return row


def _train_segment(*, model, technique, settings, model_dir, mix_path, prev_dir, prev_step, step, tmp: Path,
                   device, start_dir, reference_dir, direction_path=None, final_dir: Path | None = None) -> pl.DataFrame:
    from peft import PeftModel

    start = time.time()
    seed = int(settings["seed"])
    module = technique_module(settings["kind"])
    if hasattr(module, "write_base_model"):
        if step != 0 or start_dir is None or direction_path is None:
            raise ValueError(f"{technique}: kind {settings['kind']} makes one checkpoint (steps: [0]) from start_from "
                             "and a refusal direction")
        module.write_base_model(model_dir=model_dir, start_dir=start_dir, direction_path=direction_path,
                                out_dir=tmp / models.CHECKPOINT_BASE, device=device)
        model_dir, start_dir = tmp / models.CHECKPOINT_BASE, None
    base, tokenizer = models.load_base(model_dir, dtype="float32", device=device)
    tokenizer.padding_side = "right"

    if prev_dir is None:
        if step != 0:
            raise ValueError(f"step {step} needs a previous checkpoint; only step 0 starts from the base model")
        if start_dir is not None:
            peft_model = PeftModel.from_pretrained(base, Path(start_dir) / ADAPTER, is_trainable=True)
        else:
            peft_model = _fresh_adapter(base, settings["lora"], seed, technique)
        losses, tokens, last_lr, tokens_before = [], 0, None, 0
    else:
        prev_dir = Path(prev_dir)
        peft_model = PeftModel.from_pretrained(base, prev_dir / ADAPTER, is_trainable=True)
        if reference_dir is not None:
            peft_model.load_adapter(Path(reference_dir) / ADAPTER, adapter_name="reference", is_trainable=False)
            peft_model.set_adapter("default")
        tokens_before = int(pl.read_parquet(prev_dir / ROW)["tokens_seen"][0])
        params = [p for p in peft_model.parameters() if p.requires_grad]
        opt_cfg = settings["optimizer"]
        optimizer = torch.optim.AdamW(params, lr=float(opt_cfg["lr"]), betas=tuple(opt_cfg.get("betas", (0.9, 0.999))),
                                      weight_decay=float(opt_cfg.get("weight_decay", 0.0)))
        if (prev_dir / OPTIMIZER).is_file():
            optimizer.load_state_dict(torch.load(prev_dir / OPTIMIZER, weights_only=True))
        mix = tables.read_table(mix_path, "training_mix")
        encoded = [module.encode(tokenizer, row, settings) for row in mix.iter_rows(named=True)]
        pad_id = tokenizer.pad_token_id
        peft_model.train()
        losses, tokens, last_lr = [], 0, None
        steps = Progress(f"{technique} steps {prev_step}->{step}", step - prev_step, "steps", rate_unit="tokens")
        for s in range(prev_step, step):
            last_lr = lr_at(s, opt_cfg, settings.get("schedule", {}))
            for group in optimizer.param_groups:
                group["lr"] = last_lr
            torch.manual_seed(derived_seed(seed, "step", s))
            ids = batch_indices(len(encoded), int(settings["batch_size"]), seed, s)
            batch = module.collate([encoded[i] for i in ids], pad_id, base.device)
            loss, n_tokens = module.loss(peft_model, batch, settings, s)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{technique}: training loss became {loss.item()} at step {s}; "
                                         "lower optimizer.lr or check the training mix")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, float(settings.get("max_grad_norm", 1.0)))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            tokens += n_tokens
            steps.update(counted=n_tokens)
        steps.finish()
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER)

    if model_dir == tmp / models.CHECKPOINT_BASE and final_dir is not None:
        # the adapter's base is the checkpoint's own weights where they will live, not the temporary folder,
        # so that PEFT's AutoPeftModelForCausalLM can load the checkpoint
        peft_model.peft_config["default"].base_model_name_or_path = str(final_dir / models.CHECKPOINT_BASE)
    peft_model.save_pretrained(tmp / ADAPTER, selected_adapters=["default"])
    if settings.get("export", {}).get("merged"):
        # Merged full weights: what a public release of this checkpoint would look like
        # once the adapter can no longer be stripped off.
        merged = peft_model.merge_and_unload()
        merged.save_pretrained(tmp / "merged", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "merged")
    (tmp / "state.json").write_text(json.dumps({"step": step, "prev_step": prev_step, "technique": technique}))
    row = pl.DataFrame({
        "model": [model], "technique": [technique], "step": [step],
        "train_loss": [float(np.mean(losses)) if losses else None], "lr": [last_lr],
        "tokens_seen": [tokens_before + tokens], "wall_s": [time.time() - start],
        "sha256": [_sha256(tmp / ADAPTER / "adapter_model.safetensors")],
    })
    return tables.write_table(row, tmp / ROW, "checkpoint")


def collect_manifest(checkpoint_dirs: list[str | Path], out_path: str | Path) -> pl.DataFrame:
    """One row per checkpoint of a trajectory, sorted by step."""
    rows = pl.concat([tables.read_table(Path(d) / ROW, "checkpoint") for d in checkpoint_dirs]).sort("step")
    return tables.write_table(rows, out_path, "checkpoint")


def write_training_mix(*, technique: str, settings: dict, prompt_paths: dict[str, str], completions_path: str,
                       out_path: str | Path) -> pl.DataFrame:
    """Build and write the technique's training mix (the data its loss is defined on)."""
    module = technique_module(settings["kind"])
    prompts = {name: tables.read_table(path, "prompts") for name, path in prompt_paths.items()}
    completions = tables.read_table(completions_path, "completions")
    mix = module.build_training_mix(technique, prompts, completions, settings, int(settings["seed"]))
    return tables.write_table(mix, out_path, "training_mix")
