"""Batched greedy generation with left padding, returning the first-position logits too.

Prompts are sorted by length so each batch carries little padding; results come
back in the caller's order. Decoding is our own greedy loop over the model's KV cache
rather than `model.generate`, for three reasons of cost (issue 19):
- a row that has emitted an end-of-turn token leaves the batch and its KV cache
  (`Cache.batch_select_indices`), so one long answer no longer keeps 31 finished
  rows computing until it ends (trained refusals are 10-25 tokens, the budget 48-64);
- only the first generated position's logits are kept (`generate(output_logits=True)`
  keeps every step's, about 300 MB per jailbreak call), since judges read only those;
- it runs under `torch.inference_mode`.
The tokens are those of `model.generate(do_sample=False)` with the same stop ids
(tested against it); greedy decoding with left padding gives the same text as
unbatched decoding (tested). The logits of the first generated position are kept, so
judges that score the first response token need no extra forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from workflow_lib.core import chat
from workflow_lib.core.progress import Progress


@dataclass
class Generation:
    response: str
    n_tokens: int
    truncated: bool
    first_logits: torch.Tensor  # (vocab,) float32 on CPU
    token_ids: list[int] | None = None  # the generated ids, the stop token included


def end_of_turn_ids(model, tokenizer) -> list[int]:
    """Token ids that end an assistant turn: the generation config's EOS plus the tokenizer's."""
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


@torch.inference_mode()
def greedy_decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int | list[int],
                  stop_ids: list[int], progress: Progress | None = None) -> tuple[list[list[int]], torch.Tensor]:
    """Greedy continuations of a left-padded batch: (token ids per row, stop token included; first logits).

    Positions follow the attention mask (`cumsum - 1`), as `generate` computes them for
    left padding; finished rows (a stop token, or their own budget when `max_new_tokens` is
    one per row) are dropped from the batch and the cache after each step.
    """
    n = input_ids.shape[0]
    budgets = torch.tensor([max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens))
    stops = torch.tensor(stop_ids, device=input_ids.device)
    tokens: list[list[int]] = [[] for _ in range(n)]
    alive = torch.arange(n)
    mask = attention_mask
    cache = DynamicCache(config=model.config)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1].float()
    first_logits = logits.cpu()
    for step in range(int(budgets.max()) if n else 0):
        next_ids = logits.argmax(-1)
        for row, tok in zip(alive.tolist(), next_ids.tolist()):
            tokens[row].append(tok)
        keep = ~torch.isin(next_ids, stops).cpu() & (budgets[alive] > step + 1)
        if progress is not None:
            progress.update(n=int((~keep).sum()), counted=len(alive))
        if not keep.any():
            break
        if not keep.all():
            kept = keep.nonzero().squeeze(-1)
            cache.batch_select_indices(kept.to(next_ids.device))
            alive, next_ids, mask = alive[kept], next_ids[kept.to(next_ids.device)], mask[kept.to(mask.device)]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
        positions = mask.long().sum(-1, keepdim=True) - 1
        out = model(input_ids=next_ids[:, None], attention_mask=mask, position_ids=positions,
                    past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1].float()
    return tokens, first_logits


def generate(model, tokenizer, instructions: list[str], *, max_new_tokens: int | list[int], batch_size: int,
             response_prefix: str | list[str] = "", what: str = "generation") -> list[Generation]:
    """Greedy answers to `instructions`, each formatted with the chat template.

    `response_prefix` (one string, or one per instruction) is appended after the
    generation prompt (a prefill attack); it is not part of the returned response text.
    `max_new_tokens` is one budget or one per instruction (pooled conditions keep their own).
    Progress (sequences done, tokens per second, ETA) goes to the log every 30 s.
    """
    budgets = [max_new_tokens] * len(instructions) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    tokenizer.padding_side = "left"
    prefixes = [response_prefix] * len(instructions) if isinstance(response_prefix, str) else list(response_prefix)
    texts = [chat.prompt_text(tokenizer, inst) + prefix for inst, prefix in zip(instructions, prefixes, strict=True)]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    stop_ids = end_of_turn_ids(model, tokenizer)
    device = next(model.parameters()).device
    progress = Progress(what, len(texts), "sequences", rate_unit="tokens")
    results: list[Generation | None] = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        new_tokens, first_logits = greedy_decode(model, batch["input_ids"], batch["attention_mask"],
                                                 max_new_tokens=[budgets[i] for i in idx], stop_ids=stop_ids,
                                                 progress=progress)
        for row, i in enumerate(idx):
            tokens = new_tokens[row]
            stopped = bool(tokens) and tokens[-1] in stop_ids
            results[i] = Generation(
                response=tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                n_tokens=len(tokens), truncated=not stopped, first_logits=first_logits[row], token_ids=tokens,
            )
    progress.finish()
    return results  # type: ignore[return-value]
