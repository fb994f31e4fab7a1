"""`harmful_finetune`: the fine-tuning attack on safety (Qi et al. 2024, "Fine-tuning Aligned
Language Models Compromises Safety, Even When Users Do Not Intend To!", section 4.2, harmful
examples demonstration attack).

Supervised fine-tuning on harmful prompts paired with compliant answers (here the
base model's own answers from `base_completions`), continued from a safety-tuned
checkpoint named by `start_from`, so the trajectory shows safety eroding. Setting
`n_harmless` > 0 mixes in benign retain examples (a stealthier attack).
"""

from __future__ import annotations

import polars as pl
import torch

from workflow_lib.finetune import losses, mixes


def build_training_mix(technique: str, prompts: dict[str, pl.DataFrame], completions: pl.DataFrame,
                       settings: dict, seed: int) -> pl.DataFrame:
    """Harmful train prompts -> the base model's compliant answers (+ optional harmless retain)."""
    harmful = mixes.base_answers(completions, "harmful", settings)
    mixes.require(technique, completions, harmful=harmful)
    parts = [mixes.answer_rows(harmful, "harmful")]
    if settings.get("n_harmless"):
        parts.append(mixes.answer_rows(mixes.base_answers(completions, "harmless", settings), "retain"))
    return mixes.finish_mix(technique, parts)


encode = losses.encode_sft
collate = losses.collate_sft


def loss(model, batch: dict[str, torch.Tensor], settings: dict, step: int) -> tuple[torch.Tensor, int]:
    """Cross-entropy on the compliant answers."""
    return losses.cross_entropy(model, batch, settings.get("loss_normalisation", "token"))
