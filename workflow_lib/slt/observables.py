"""Observables for susceptibilities: fixed token datasets of prompt + answer.

Each observable is a set of chat-formatted sequences whose per-token loss the
sampler records at every draw (devinterp `observables`). A spec names:
- `prompt_set`: harmful, harmless or harmless_lookalike (rows of the split given
  by `susceptibility.observable_split`);
- `answer`: `refusal` (one of the project's varied refusals, chosen per prompt by
  a stable hash) or `base` (the base model's own greedy answer from
  `base_completions`, i.e. compliance on harmful prompts);
- `templates` (optional): jailbreak templates that wrap the prompt, used in turn.

Sequences are `seq_len` tokens, the length of the sampling task's rows
(devinterp requires one context length). A prompt whose chat-formatted text
leaves fewer than `min_answer_tokens` answer tokens is skipped; longer answers
are cut; shorter sequences are right-padded. Padding sits after every real
token, so in a causal model it never changes a real token's loss, and its
positions are dropped from the results.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import polars as pl

from workflow_lib.core import chat
from workflow_lib.data import jailbreak_templates
from workflow_lib.finetune.mixes import REFUSALS

ANSWER_KINDS = ("refusal", "base")


class ObservableError(ValueError):
    """An observable cannot be built as configured."""


@dataclass(frozen=True)
class ObservableRow:
    prompt_id: str       # the prompt's id; jailbreak rows append `@<template>`
    input_ids: tuple     # seq_len token ids, right-padded
    n_tokens: int        # real (unpadded) tokens
    answer_start: int    # position of the first answer token


def stable_refusal(prompt_id: str) -> str:
    """One of the varied refusals, fixed per prompt id (independent of row order)."""
    return REFUSALS[int(hashlib.sha1(prompt_id.encode()).hexdigest(), 16) % len(REFUSALS)]


def candidate_prompts(spec: dict, prompts: dict[str, pl.DataFrame], completions: pl.DataFrame,
                      split: str, name: str) -> list[tuple[str, str, str, bool]]:
    """(prompt_id, prompt, answer, ends_turn) in the prompt table's (seeded, shuffled) order."""
    set_name, answer = spec["prompt_set"], spec["answer"]
    if set_name not in prompts:
        raise ObservableError(f"susceptibility.observables.{name}.prompt_set {set_name!r} has no prompt table; "
                              f"configure prompts.{set_name}")
    rows = prompts[set_name].filter(pl.col("split") == split)
    if answer == "refusal":
        return [(r["prompt_id"], r["text"], stable_refusal(r["prompt_id"]), True) for r in rows.iter_rows(named=True)]
    if answer != "base":
        raise ObservableError(f"susceptibility.observables.{name}.answer is {answer!r}; choose from {ANSWER_KINDS}")
    answers = {r["prompt_id"]: r for r in completions.filter(pl.col("set") == set_name).iter_rows(named=True)
               if r["response"].strip()}
    found = [(r["prompt_id"], r["text"], answers[r["prompt_id"]]["response"], not answers[r["prompt_id"]]["truncated"])
             for r in rows.iter_rows(named=True) if r["prompt_id"] in answers]
    if not found:
        raise ObservableError(f"susceptibility.observables.{name} needs the base model's answers to {set_name} "
                              f"{split} prompts, and base_completions has none; add {set_name} to "
                              f"base_completions.sets and {split} to base_completions.splits")
    return found


def encode_row(tokenizer, prompt_id: str, prompt: str, answer: str, ends_turn: bool, length: int,
               min_answer_tokens: int, pad_id: int) -> ObservableRow | None:
    """One padded sequence of `length` tokens, or None when the prompt leaves too little room for the answer."""
    ids, labels = chat.encode_example(tokenizer, prompt, answer, ends_turn=ends_turn)
    answer_start = sum(1 for label in labels if label == -100)
    if answer_start + min_answer_tokens > length or answer_start < 1:
        return None
    ids = ids[:length]
    return ObservableRow(prompt_id, tuple(ids + [pad_id] * (length - len(ids))), len(ids), answer_start)


def build_observable(tokenizer, name: str, spec: dict, prompts: dict[str, pl.DataFrame],
                     completions: pl.DataFrame, templates: pl.DataFrame | None, settings: dict) -> list[ObservableRow]:
    """The rows of one observable: the first `n_prompts` prompts that fit, a whole number of batches."""
    length = int(settings["seq_len"])
    batch_size = int(settings["batch_size"])
    n_prompts = int(spec.get("n_prompts") or settings["n_prompts"])
    wrappers = [("", None)]
    if spec.get("templates"):
        if templates is None:
            raise ObservableError(f"susceptibility.observables.{name} names templates but no template table was given")
        wrappers = list(zip(spec["templates"], jailbreak_templates.pick(templates, spec["templates"])))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows: list[ObservableRow] = []
    candidates = candidate_prompts(spec, prompts, completions, settings["observable_split"], name)
    for prompt_id, prompt, answer, ends_turn in candidates:
        label, template = wrappers[len(rows) % len(wrappers)]  # templates in turn over the kept rows
        text = prompt if template is None else jailbreak_templates.wrap(template, prompt)
        row = encode_row(tokenizer, prompt_id + (f"@{label}" if label else ""), text, answer, ends_turn, length,
                         int(settings["min_answer_tokens"]), pad_id)
        if row is not None:
            rows.append(row)
        if len(rows) == n_prompts:
            break
    kept = len(rows) // batch_size * batch_size
    if kept == 0:
        raise ObservableError(
            f"susceptibility observable {name!r}: only {len(rows)} of {len(candidates)} prompts leave "
            f"{settings['min_answer_tokens']} answer tokens within seq_len {settings['seq_len']} (batch_size "
            f"{batch_size} needed); raise susceptibility.sampler.seq_len or lower min_answer_tokens")
    return rows[:kept]


def as_dataset(rows: list[ObservableRow]):
    """A devinterp observable dataset (HF `Dataset` in torch format)."""
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [list(r.input_ids) for r in rows]}).with_format("torch")
