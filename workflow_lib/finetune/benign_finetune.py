"""`benign_finetune`: a control; supervised fine-tuning on harmless data only.

Continued from a safety-tuned checkpoint (`start_from`), it tests the known
effect that benign fine-tuning also erodes refusal (Qi et al. 2024, "Fine-tuning
Aligned Language Models Compromises Safety", section 4.4, benign fine-tuning).
The targets are the base model's own answers to harmless train prompts.
"""

from __future__ import annotations

import polars as pl
import torch

from workflow_lib.finetune import losses, mixes


def build_training_mix(technique: str, prompts: dict[str, pl.DataFrame], completions: pl.DataFrame,
                       settings: dict, seed: int) -> pl.DataFrame:
    """Harmless train prompts -> the base model's answers."""
    harmless = mixes.base_answers(completions, "harmless", settings)
    mixes.require(technique, completions, harmless=harmless)
    return mixes.finish_mix(technique, [mixes.answer_rows(harmless, "retain")])


encode = losses.encode_sft
collate = losses.collate_sft


def loss(model, batch: dict[str, torch.Tensor], settings: dict, step: int) -> tuple[torch.Tensor, int]:
    """Cross-entropy on the answers."""
    return losses.cross_entropy(model, batch, settings.get("loss_normalisation", "token"))
