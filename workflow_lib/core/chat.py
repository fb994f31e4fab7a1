"""Chat formatting with the model's own template, for any tokenizer that carries one.

The prompt is the template's rendering of one user turn plus the generation
prompt. A training target is whatever the template appends after that for the
assistant's answer (so the end-of-turn tokens are learned exactly as the
template writes them). Template text already contains any BOS it needs, so it
is always tokenized without adding special tokens again.
"""

from __future__ import annotations


def prompt_text(tokenizer, instruction: str) -> str:
    """One user turn followed by the assistant generation prompt."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction}], add_generation_prompt=True, tokenize=False
    )


def answer_suffix(tokenizer, instruction: str, answer: str, *, ends_turn: bool = True) -> str:
    """The text the template puts after `prompt_text` for this answer.

    With `ends_turn=False` (a truncated answer) the end-of-turn marker is left out,
    so training never teaches the model to stop mid-sentence.
    """
    if not ends_turn:
        return answer
    prefix = prompt_text(tokenizer, instruction)
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction}, {"role": "assistant", "content": answer}], tokenize=False
    )
    if not full.startswith(prefix):
        raise ValueError("the chat template renders the assistant turn differently from its generation prompt; "
                         "cannot locate the answer tokens")
    return full[len(prefix):]


def encode_example(tokenizer, instruction: str, answer: str, *, ends_turn: bool = True,
                   max_length: int | None = None, context: str = "") -> tuple[list[int], list[int]]:
    """Token ids of prompt+answer and labels that are -100 on the prompt.

    `context` is the start of the assistant's response that is given, not trained
    (e.g. a harmful prefix before a refusal); it is masked like the prompt.
    Truncation keeps the whole prompt and cuts the answer; an example whose prompt
    alone exceeds `max_length` is cut from the left of the prompt instead.
    """
    suffix = answer_suffix(tokenizer, instruction, context + answer, ends_turn=ends_turn)
    if not suffix.startswith(context):
        raise ValueError("the chat template rewrites the response text; cannot separate context from answer")
    prompt_ids = tokenizer(prompt_text(tokenizer, instruction) + context, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(suffix[len(context):], add_special_tokens=False)["input_ids"]
    if max_length is not None and len(prompt_ids) + len(answer_ids) > max_length:
        room = max(max_length - len(prompt_ids), min(len(answer_ids), max_length // 2))
        answer_ids = answer_ids[:room]
        prompt_ids = prompt_ids[len(prompt_ids) - (max_length - len(answer_ids)):]
    ids = prompt_ids + answer_ids
    labels = [-100] * len(prompt_ids) + answer_ids
    return ids, labels


def first_answer_token(tokenizer, phrase: str) -> int:
    """The first token the model would emit to start its answer with `phrase`.

    Tokenizing the phrase in context (after a real generation prompt) gets the
    leading-space and merge behaviour of the model's tokenizer right.
    """
    prefix = prompt_text(tokenizer, "Hello")
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(prefix + phrase, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prefix_ids)] != prefix_ids or len(full_ids) == len(prefix_ids):
        raise ValueError(f"cannot isolate the first token of {phrase!r} after the generation prompt")
    return full_ids[len(prefix_ids)]
