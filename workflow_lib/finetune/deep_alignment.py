"""`deep_alignment`: safety-recovery data augmentation (Qi et al. 2024, "Safety Alignment Should
Be Made More Than Just a Few Tokens Deep", section 3, "Data augmentation with safety recovery
examples").

Shallow alignment only changes the first few response tokens, so a response that
starts harmfully (prefilling, a harmful fine-tune) carries on. The remedy trains
refusals that follow a random-length prefix of a harmful answer: the example is
(harmful prompt, first k units of a compliant answer, refusal), with the loss on
the refusal only. Plain refusals (k = 0) and harmless retain examples (the base
model's own answers) are mixed in, as in the paper. Each harmful train prompt
gives a recovery example with probability `recovery_fraction` and a plain refusal
otherwise (1.0 would double the refusal data against the retain data).

Deviation, stated: the paper samples k in tokens; the training mix is built
without a tokenizer, so k counts whitespace-separated words here (about 1.3
tokens per word on this model).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from workflow_lib.finetune import losses, mixes


def harmful_prefix(answer: str, k: int) -> str:
    """The first k words of an answer, with the whitespace that followed them."""
    words = answer.split()
    return " ".join(words[:k]) + " " if k > 0 else ""


def build_training_mix(technique: str, prompts: dict[str, pl.DataFrame], completions: pl.DataFrame,
                       settings: dict, seed: int) -> pl.DataFrame:
    """Refusals, refusals after a harmful prefix of random length, and harmless retain data."""
    rng = np.random.default_rng(seed)
    harmful_answers, harmless = mixes.harmful_and_harmless_answers(technique, completions, settings)
    max_k = int(settings.get("max_prefix_words", 40))
    lengths = [len(a.split()) for a in harmful_answers["response"]]
    ks = [int(rng.integers(1, max(2, min(max_k, n)) + 1)) if n else 0 for n in lengths]
    recovery = pl.DataFrame({
        "kind": "recovery", "prompt_id": harmful_answers["prompt_id"], "prompt": harmful_answers["prompt"],
        "context": [harmful_prefix(a, k) for a, k in zip(harmful_answers["response"], ks)],
        "response": [mixes.REFUSALS[i] for i in rng.integers(0, len(mixes.REFUSALS), harmful_answers.height)],
        "ends_turn": True,
    })
    as_recovery = rng.random(recovery.height) < float(settings.get("recovery_fraction", 0.5))
    recovery = recovery.filter(pl.Series(as_recovery))
    plain = mixes.refusal_rows(mixes.harmful_train(prompts, settings), rng)
    plain = plain.filter(~pl.col("prompt_id").is_in(recovery["prompt_id"].implode()))
    return mixes.finish_mix(technique, [plain, recovery, mixes.answer_rows(harmless, "retain")])


encode = losses.encode_sft
collate = losses.collate_sft


def loss(model, batch: dict[str, torch.Tensor], settings: dict, step: int) -> tuple[torch.Tensor, int]:
    """Cross-entropy on the refusal (and retain answer) tokens; prefixes are context only."""
    return losses.cross_entropy(model, batch, settings.get("loss_normalisation", "token"))
