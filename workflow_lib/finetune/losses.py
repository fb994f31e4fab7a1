"""Building blocks shared by the technique modules: encoding, batching and log-likelihoods.

A technique module exposes `encode(tokenizer, row, settings)`, `collate(examples,
pad_id, device)` and `loss(model, batch, settings, step)`; the supervised ones use
the functions here directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workflow_lib.core import chat


def encode_sft(tokenizer, row: dict, settings: dict) -> tuple[list[int], list[int]]:
    """Prompt (+ optional untrained response context) + trained response, as ids and labels."""
    return chat.encode_example(tokenizer, row["prompt"], row["response"], ends_turn=row["ends_turn"],
                               max_length=int(settings["max_length"]), context=row.get("context") or "")


def collate_sft(examples: list[tuple[list[int], list[int]]], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-padded batch; padding is masked out of attention and loss."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(examples):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, :len(labs)] = torch.tensor(labs)
        mask[row, :len(ids)] = 1
    return {"input_ids": input_ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


def token_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token negative log-likelihood of the labels (batch, seq-1) and the label mask."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                          reduction="none").view(labels.shape)
    return nll * mask, mask


def cross_entropy(model, batch: dict[str, torch.Tensor], normalisation: str = "token") -> tuple[torch.Tensor, int]:
    """Cross-entropy on the response tokens, and how many there were.

    `token` averages over all response tokens of the batch (the usual causal-LM
    loss); `example` averages each example's tokens first, so a short refusal
    weighs as much as a long retain answer.
    """
    nll, mask = token_nll(model, batch)
    n_tokens = int(mask.sum())
    if normalisation == "example":
        per_example = nll.sum(1) / mask.sum(1).clamp(min=1)
        return per_example[mask.any(1)].mean(), n_tokens
    return nll.sum() / mask.sum(), n_tokens


def sequence_logprob(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probability of each example's labelled tokens, shape (batch,)."""
    nll, _ = token_nll(model, batch)
    return -nll.sum(1)
