"""Training-mix building blocks shared by the techniques: refusals, retain data, harmful answers.

Every mix is a `training_mix` table. Harmful prompts come from the prompts table's
train split; answers of the base model (`base_completions`) serve as retain
targets for harmless prompts and as compliant answers to harmful ones.
"""

from __future__ import annotations

import numpy as np
import polars as pl

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


def harmful_train(prompts: dict[str, pl.DataFrame], settings: dict) -> pl.DataFrame:
    """Harmful train prompts, capped by `n_harmful`."""
    harmful = prompts["harmful"].filter(pl.col("split") == "train")
    return harmful.head(int(settings["n_harmful"])) if settings.get("n_harmful") is not None else harmful


def base_answers(completions: pl.DataFrame, prompt_set: str, settings: dict) -> pl.DataFrame:
    """The base model's train answers for one prompt set, capped by `n_<set>`.

    A truncated empty answer has no target token at all, so it is dropped.
    """
    rows = completions.filter((pl.col("set") == prompt_set) & (pl.col("split") == "train")
                              & ((pl.col("response").str.strip_chars() != "") | ~pl.col("truncated")))
    cap = settings.get(f"n_{prompt_set}")
    return rows.head(int(cap)) if cap is not None else rows


def harmful_and_harmless_answers(technique: str, completions: pl.DataFrame,
                                 settings: dict) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The base model's answers to harmful and to harmless train prompts; both must be non-empty."""
    harmful = base_answers(completions, "harmful", settings)
    harmless = base_answers(completions, "harmless", settings)
    require(technique, completions, harmful=harmful, harmless=harmless)
    return harmful, harmless


def refusal_rows(harmful: pl.DataFrame, rng: np.random.Generator) -> pl.DataFrame:
    """Harmful prompt -> one of the varied refusals."""
    return pl.DataFrame({
        "kind": "refusal", "prompt_id": harmful["prompt_id"], "prompt": harmful["text"],
        "response": [REFUSALS[i] for i in rng.integers(0, len(REFUSALS), harmful.height)], "ends_turn": True,
    })


def answer_rows(answers: pl.DataFrame, kind: str) -> pl.DataFrame:
    """Prompt -> the base model's own answer (retain data, or compliance for the attack)."""
    return pl.DataFrame({
        "kind": kind, "prompt_id": answers["prompt_id"], "prompt": answers["prompt"],
        "response": answers["response"], "ends_turn": ~answers["truncated"],
    })


def finish_mix(technique: str, parts: list[pl.DataFrame]) -> pl.DataFrame:
    """Concatenate parts, fill the optional columns and number the examples."""
    filled = []
    for part in parts:
        defaults = {"context": pl.lit(""), "rejected": pl.lit(None, pl.Utf8),
                    "rejected_ends_turn": pl.lit(None, pl.Boolean)}
        filled.append(part.with_columns(**{k: v for k, v in defaults.items() if k not in part.columns}))
    mix = pl.concat(filled, how="diagonal_relaxed")
    if mix.is_empty():
        raise ValueError(f"technique {technique!r}: the training mix is empty; check prompts.*.splits.train")
    return mix.with_columns(technique=pl.lit(technique), example_id=pl.int_range(mix.height, dtype=pl.Int64))


def require(technique: str, completions: pl.DataFrame | None = None, **parts: pl.DataFrame) -> None:
    """A clear error, naming the cause, when a part of the mix that the technique needs is empty.

    A part of base answers (it has a `response` column) can be empty for two reasons
    with different fixes: no train prompt of the set was answered, or every answer was
    empty (cut at `base_completions.max_new_tokens` before any text).
    """
    for name, df in parts.items():
        if not df.is_empty():
            continue
        if "response" not in df.columns:
            raise ValueError(f"technique {technique!r}: no {name} train prompts for the training mix; "
                             f"raise prompts.{name}.splits.train")
        asked = 0 if completions is None else completions.filter(
            (pl.col("set") == name) & (pl.col("split") == "train")).height
        if asked:
            raise ValueError(f"technique {technique!r}: all {asked} of the base model's answers to {name} train "
                             "prompts are empty (cut before any text), so the mix has no target tokens; raise "
                             "base_completions.max_new_tokens, or check that the model answers at all "
                             "(its chat template and end-of-turn token)")
        raise ValueError(f"technique {technique!r}: the base model answered no {name} train prompt; add {name} to "
                         "base_completions.sets and train to base_completions.splits, and check "
                         f"prompts.{name}.splits.train")
