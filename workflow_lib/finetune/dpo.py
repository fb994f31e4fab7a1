"""`dpo`: Direct Preference Optimisation (Rafailov et al. 2023, "Direct Preference
Optimization: Your Language Model is Secretly a Reward Model", section 4, eq. 7).

    L = -log sigmoid( beta * [ (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x)) ] )

with sequence log-probabilities summed over the response tokens. The policy is the
LoRA-adapted model. The reference is either the base model (`reference: base`,
the adapter disabled) or, following section 4 of the paper ("we initialize
pi_ref = pi_SFT"; without one, "by maximizing likelihood of preferred
completions"), the checkpoint the trajectory starts from (`reference: start`
with `start_from`, e.g. an early `sft_refusal` checkpoint, which maximised the
likelihood of exactly these preferred answers). The start checkpoint is loaded
as a second, frozen adapter, so no second copy of the base weights is held.

Pairs: for a harmful prompt, chosen = a refusal, rejected = the base model's own
compliant answer; for a harmless prompt, chosen = the base answer, rejected = a
refusal, which keeps the policy from learning to refuse everything.

`nll_weight` > 0 adds that weight times the chosen answers' per-token negative
log-likelihood (the DPO+NLL objective of Pang et al. 2024, "Iterative Reasoning
Preference Optimization", section 2); 0 is pure DPO.

`answer_tokens` = N scores only the first N tokens of each answer (chosen and
rejected, in both terms). Whether a model refuses is decided in the first few
answer tokens (Qi et al. 2024, "Safety alignment should be made more than a few
tokens deep", section 2); with whole answers, the margin on this model grew through
the later tokens of the long compliant answers while the openings stayed compliant
(measured in config/README.md).

`trl`'s DPOTrainer owns its training loop, data collator and checkpointing, which
does not fit the segment design (resume at any configured step with data order a
function of seed and step), so the loss is implemented here, exactly.
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
    """Preference pairs on harmful prompts (refuse > comply) and harmless prompts (answer > refuse)."""
    harmful, harmless = mixes.harmful_and_harmless_answers(technique, completions, settings)
    rng = np.random.default_rng(seed)
    refuse = lambda n: [mixes.REFUSALS[i] for i in rng.integers(0, len(mixes.REFUSALS), n)]  # noqa: E731
    harmful_pairs = pl.DataFrame({
        "kind": "preference", "prompt_id": harmful["prompt_id"], "prompt": harmful["prompt"],
        "response": refuse(harmful.height), "ends_turn": True,
        "rejected": harmful["response"], "rejected_ends_turn": ~harmful["truncated"],
    })
    harmless_pairs = pl.DataFrame({
        "kind": "preference", "prompt_id": harmless["prompt_id"], "prompt": harmless["prompt"],
        "response": harmless["response"], "ends_turn": ~harmless["truncated"],
        "rejected": refuse(harmless.height), "rejected_ends_turn": True,
    })
    return mixes.finish_mix(technique, [harmful_pairs, harmless_pairs])


def encode(tokenizer, row: dict, settings: dict):
    """Chosen and rejected (ids, labels); `answer_tokens` keeps only each answer's first tokens."""
    max_length, answer_tokens = int(settings["max_length"]), settings.get("answer_tokens")
    chosen = chat.encode_example(tokenizer, row["prompt"], row["response"], ends_turn=row["ends_turn"],
                                 max_length=max_length)
    rejected = chat.encode_example(tokenizer, row["prompt"], row["rejected"], ends_turn=row["rejected_ends_turn"],
                                   max_length=max_length)
    return keep_answer_start(chosen, answer_tokens), keep_answer_start(rejected, answer_tokens)


def keep_answer_start(example: tuple[list[int], list[int]], answer_tokens: int | None):
    """Cut an encoded example after its first `answer_tokens` labelled tokens (None: keep all)."""
    if answer_tokens is None:
        return example
    ids, labels = example
    n_prompt = sum(1 for label in labels if label == -100)
    return ids[: n_prompt + answer_tokens], labels[: n_prompt + answer_tokens]


def collate(examples, pad_id: int, device) -> dict[str, torch.Tensor]:
    """One padded batch: the chosen answers first, then the rejected ones in the same order."""
    return losses.collate_sft([c for c, _ in examples] + [r for _, r in examples], pad_id, device)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean DPO loss over pairs, from summed sequence log-probabilities."""
    logits = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * logits).mean()


def reference_logprob(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sequence log-probabilities under the reference: the frozen `reference` adapter if loaded, else the base."""
    with torch.no_grad():
        if "reference" in model.peft_config:
            model.set_adapter("reference", inference_mode=True)
            try:
                return losses.sequence_logprob(model, batch)
            finally:
                model.set_adapter("default")
        with model.disable_adapter():
            return losses.sequence_logprob(model, batch)


def loss(model, batch: dict[str, torch.Tensor], settings: dict, step: int) -> tuple[torch.Tensor, int]:
    n_pairs = batch["input_ids"].shape[0] // 2
    reference = reference_logprob(model, batch)  # first: switching adapters toggles requires_grad
    policy = losses.sequence_logprob(model, batch)
    value = dpo_loss(policy[:n_pairs], policy[n_pairs:], reference[:n_pairs], reference[n_pairs:],
                     float(settings.get("beta", 0.1)))
    nll_weight = float(settings.get("nll_weight", 0.0))
    if nll_weight:
        chosen_tokens = (batch["labels"][:n_pairs, 1:] != -100).sum()
        value = value - nll_weight * policy[:n_pairs].sum() / chosen_tokens
    return value, int((batch["labels"] != -100).sum())
