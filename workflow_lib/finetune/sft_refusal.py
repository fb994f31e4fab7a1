"""`sft_refusal`: supervised refusal training with LoRA.

The simplest safety technique and the baseline for the others: harmful prompts
are mapped to varied refusals, harmless prompts to the base model's own answers
(retain data, so the model keeps answering benign requests instead of learning
to refuse everything). Cross-entropy on the response tokens only, with the
model's chat template; the standard recipe behind refusal SFT in, e.g.,
Bianchi et al. 2024 ("Safety-Tuned LLaMAs", section 3).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from workflow_lib.finetune import losses, mixes


def build_training_mix(technique: str, prompts: dict[str, pl.DataFrame], completions: pl.DataFrame,
                       settings: dict, seed: int) -> pl.DataFrame:
    """Harmful train prompts -> refusals, harmless train prompts -> base answers."""
    harmful = mixes.harmful_train(prompts, settings)
    harmless = mixes.base_answers(completions, "harmless", settings)
    mixes.require(technique, completions, harmful=harmful, harmless=harmless)
    rng = np.random.default_rng(seed)
    return mixes.finish_mix(technique, [mixes.refusal_rows(harmful, rng), mixes.answer_rows(harmless, "retain")])


encode = losses.encode_sft
collate = losses.collate_sft


def loss(model, batch: dict[str, torch.Tensor], settings: dict, step: int) -> tuple[torch.Tensor, int]:
    """Cross-entropy on the response tokens (`loss_normalisation`: token or example)."""
    return losses.cross_entropy(model, batch, settings.get("loss_normalisation", "token"))
