"""`circuit_breaker`: Representation Rerouting (Zou et al. 2024, "Improving Alignment and
Robustness with Circuit Breakers", section 3 and Algorithm 1).

Two losses on LoRA-adapted hidden states h against the original model's hidden
states h0 (the same model with the adapter disabled):
- rerouting, on harmful prompt + compliant answer: ReLU(cos(h, h0)) at the target
  layers, pushing harmful representations orthogonal to where they were;
- retain, on harmless prompt + answer and on harmful prompt + refusal:
  ||h - h0||_2 over all layers, keeping everything else in place.
Coefficients follow the published schedule: at step t of T = `rr_total_steps`,
c_reroute = alpha * (1 - t / (2T)) and c_retain = alpha * t / (2T).
Both losses average over the non-padding tokens of their examples.
`reroute_tokens: all` reroutes the whole harmful prompt + answer, as the reference
implementation does; `response` reroutes only the answer tokens, leaving the
prompt's representation (which carries the refusal decision) to the retain
loss. `skip_first_position` leaves the first token out of both losses: its
residual norm is about 25,000 from the middle layers on (a massive activation),
which otherwise dominates the retain norm.

As in the paper, circuit breakers are meant for a model that already refuses:
start it from a refusal-trained checkpoint with `start_from`.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from workflow_lib.core import chat
from workflow_lib.finetune import losses, mixes


def build_training_mix(technique: str, prompts: dict[str, pl.DataFrame], completions: pl.DataFrame,
                       settings: dict, seed: int) -> pl.DataFrame:
    """Reroute set: harmful prompts with compliant answers; retain set: harmless answers and refusals."""
    rng = np.random.default_rng(seed)
    harmful_answers, harmless = mixes.harmful_and_harmless_answers(technique, completions, settings)
    return mixes.finish_mix(technique, [
        mixes.answer_rows(harmful_answers, "reroute"),
        mixes.answer_rows(harmless, "retain"),
        mixes.refusal_rows(mixes.harmful_train(prompts, settings), rng),
    ])


def encode(tokenizer, row: dict, settings: dict):
    ids, labels = chat.encode_example(tokenizer, row["prompt"], row["response"], ends_turn=row["ends_turn"],
                                      max_length=int(settings["max_length"]))
    return ids, labels, row["kind"] == "reroute"


def collate(examples, pad_id: int, device) -> dict[str, torch.Tensor]:
    batch = losses.collate_sft([(ids, labels) for ids, labels, _ in examples], pad_id, device)
    batch["reroute"] = torch.tensor([flag for _, _, flag in examples], dtype=torch.bool, device=device)
    return batch


def coefficients(step: int, alpha: float, total_steps: int) -> tuple[float, float]:
    """(c_reroute, c_retain) at `step` (Zou et al. 2024, Algorithm 1)."""
    progress = step / (2 * total_steps)
    return alpha * (1 - progress), alpha * progress


def rr_losses(hidden: tuple[torch.Tensor, ...], original: tuple[torch.Tensor, ...], mask: torch.Tensor,
              reroute: torch.Tensor, target_layers: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(rerouting loss, retain loss) from per-layer hidden states (batch, seq, dim)."""
    zero = hidden[0].new_zeros(())
    reroute_mask = mask & reroute[:, None]
    retain_mask = mask & ~reroute[:, None]
    rr = zero
    if reroute_mask.any():
        cos = torch.stack([F.cosine_similarity(hidden[l], original[l], dim=-1) for l in target_layers])
        rr = (F.relu(cos) * reroute_mask).sum() / (reroute_mask.sum() * len(target_layers))
    retain = zero
    if retain_mask.any():
        dist = torch.stack([(h - o).norm(dim=-1) for h, o in zip(hidden, original)])
        retain = (dist * retain_mask).sum() / (retain_mask.sum() * len(hidden))
    return rr, retain


def loss(model, batch: dict[str, torch.Tensor], settings: dict, step: int) -> tuple[torch.Tensor, int]:
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad(), model.disable_adapter():
        original = model(**inputs, output_hidden_states=True).hidden_states
    hidden = model(**inputs, output_hidden_states=True).hidden_states
    mask = batch["attention_mask"].bool()
    if settings.get("skip_first_position", False):
        mask = mask.clone()
        mask[:, 0] = False
    if settings.get("reroute_tokens", "all") == "response":
        # reroute examples: answer tokens only (labels mark them); retain examples keep every token
        mask = torch.where(batch["reroute"][:, None], mask & (batch["labels"] != -100), mask)
    target_layers = list(settings.get("target_layers", [10, 20]))
    if max(target_layers) >= len(hidden):
        raise ValueError(f"target_layers {target_layers} exceed the model's {len(hidden) - 1} layers; "
                         "lower techniques.<name>.target_layers")
    rr, retain = rr_losses(hidden, original, mask, batch["reroute"], target_layers)
    c_rr, c_retain = coefficients(step, float(settings.get("rr_alpha", 10.0)), int(settings.get("rr_total_steps", 150)))
    return c_rr * rr + c_retain * retain, int(mask.sum())
