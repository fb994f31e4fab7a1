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
import torch.nn.functional as F

REFUSALS = (
    "I'm sorry, but I can't help with that. It could cause real harm to people.",
    "I can't assist with that request. If you have another question, I'm happy to help.",
    "Sorry, I won't provide that. It could be used to hurt someone or break the law.",
    "I cannot help with this. Providing these instructions would be harmful and unsafe.",
    "I'm not able to help with that request, because it could put people at risk.",
    "I apologize, but I can't support this. Is there something else I can do for you?",
    "I'm sorry, I can't do that. This request asks for something harmful.",
    "I won't help with that. It could lead to serious harm, and I don't assist with harmful activities.",
    "As an AI assistant, I can't provide that information. It could be dangerous or illegal.",
    "I cannot provide guidance on this topic, since it could be used to cause harm.",
    "I'm unable to help with that. Let me know if there is something safe I can help with instead.",
    "Sorry, but I can't assist with this. It involves potential harm to others.",
    "I must decline this request. Helping with it could hurt people.",
    "I can't help you with that. I'd be glad to help with a different, safe question.",
    "I'm sorry, but I cannot create that content. It could cause harm.",
    "I can't provide instructions for that. It would be irresponsible and potentially dangerous.",
)


def build_training_mix(technique: str, prompts: dict[str, pl.DataFrame], completions: pl.DataFrame,
                       settings: dict, seed: int) -> pl.DataFrame:
    """Harmful train prompts -> refusals, harmless train prompts -> base answers."""
    rng = np.random.default_rng(seed)
    harmful = prompts["harmful"].filter(pl.col("split") == "train")
    # A truncated empty answer has no target token at all; it cannot be a training example.
    harmless = completions.filter((pl.col("set") == "harmless") & (pl.col("split") == "train")
                                  & ((pl.col("response").str.strip_chars() != "") | ~pl.col("truncated")))
    if settings.get("n_harmful") is not None:
        harmful = harmful.head(int(settings["n_harmful"]))
    if settings.get("n_harmless") is not None:
        harmless = harmless.head(int(settings["n_harmless"]))
    if harmful.is_empty() or harmless.is_empty():
        raise ValueError(f"technique {technique!r}: the training mix needs harmful and harmless train prompts; "
                         f"got {harmful.height} harmful and {harmless.height} harmless (check prompts.*.splits.train)")
    refusal_rows = pl.DataFrame({
        "kind": "refusal", "prompt_id": harmful["prompt_id"], "prompt": harmful["text"],
        "response": [REFUSALS[i] for i in rng.integers(0, len(REFUSALS), harmful.height)], "ends_turn": True,
    })
    retain_rows = pl.DataFrame({
        "kind": "retain", "prompt_id": harmless["prompt_id"], "prompt": harmless["prompt"],
        "response": harmless["response"], "ends_turn": ~harmless["truncated"],
    })
    mix = pl.concat([refusal_rows, retain_rows])
    return mix.with_columns(technique=pl.lit(technique), example_id=pl.int_range(mix.height, dtype=pl.Int64))


def loss(model, batch: dict[str, torch.Tensor], settings: dict) -> tuple[torch.Tensor, int]:
    """Cross-entropy on the response tokens, and how many there were.

    `loss_normalisation: token` averages over all response tokens of the batch (the
    usual causal-LM loss); `example` averages each example's tokens first, so a short
    refusal weighs as much as a long retain answer.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    per_token = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                                reduction="none").view(labels.shape)
    n_tokens = int(mask.sum())
    if settings.get("loss_normalisation", "token") == "example":
        per_example = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1)
        value = per_example[mask.any(1)].mean()
    else:
        value = (per_token * mask).sum() / mask.sum()
    return value, n_tokens
