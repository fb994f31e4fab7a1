"""Batched greedy generation with left padding, returning the first-position logits too.

Prompts are sorted by length so each batch carries little padding; results come
back in the caller's order. Greedy decoding with left padding gives the same text
as unbatched decoding (checked in the tests). The logits of the first generated
position are kept, so judges that score the first response token need no extra
forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workflow_lib import chat


@dataclass
class Generation:
    response: str
    n_tokens: int
    truncated: bool
    first_logits: torch.Tensor  # (vocab,) float32 on CPU


def end_of_turn_ids(model, tokenizer) -> list[int]:
    """Token ids that end an assistant turn: the generation config's EOS plus the tokenizer's."""
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


@torch.no_grad()
def generate(model, tokenizer, instructions: list[str], *, max_new_tokens: int, batch_size: int,
             response_prefix: str = "") -> list[Generation]:
    """Greedy answers to `instructions`, each formatted with the chat template.

    `response_prefix` is appended after the generation prompt (a prefill attack);
    it is not part of the returned response text.
    """
    tokenizer.padding_side = "left"
    texts = [chat.prompt_text(tokenizer, inst) + response_prefix for inst in instructions]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    stop_ids = end_of_turn_ids(model, tokenizer)
    device = next(model.parameters()).device
    results: list[Generation | None] = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        out = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids,
            pad_token_id=tokenizer.pad_token_id, return_dict_in_generate=True, output_logits=True,
        )
        new_tokens = out.sequences[:, batch["input_ids"].shape[1]:].cpu()
        first_logits = out.logits[0].float().cpu()
        for row, i in enumerate(idx):
            tokens = new_tokens[row].tolist()
            stops = [k for k, tok in enumerate(tokens) if tok in stop_ids]
            n = stops[0] + 1 if stops else len(tokens)
            results[i] = Generation(
                response=tokenizer.decode(tokens[:n], skip_special_tokens=True).strip(),
                n_tokens=n, truncated=not stops, first_logits=first_logits[row],
            )
    return results  # type: ignore[return-value]
