"""`refusal_direction`: extract, score and select the refusal direction of one checkpoint.

Arditi et al. 2024 ("Refusal in Language Models Is Mediated by a Single Direction",
section 2.3, appendix C; reference code andyrdt/refusal_direction):

1. **Candidates.** For every decoder layer l and post-instruction position i (the
   chat-template tokens after the instruction), the difference of mean `resid_pre`
   activations (the input of block l), harmful minus harmless, on the train splits,
   accumulated in float64. Like the reference, the train prompts are first filtered by
   this checkpoint's refusal score: harmful prompts that score > 0, harmless ones < 0.
2. **Scores** on the val splits, per candidate r = mean_diff[i, l]:
   - `bypass_score`: mean refusal log-odds on harmful prompts with r/|r| ablated from
     every residual-stream write (`interventions.ablation`);
   - `induce_score`: mean refusal log-odds on harmless prompts with r added at the input
     of block l (`interventions.addition`);
   - `kl`: KL(baseline || ablated) of the next-token distribution at the last position,
     mean over harmless prompts.
3. **Selection.** Candidates with kl > `kl_max`, induce <= `induce_min` or
   layer >= int(`max_layer_fraction` x n_layers) are filtered; the lowest bypass score
   among the rest is the direction. No survivor is a valid outcome (`no_direction`).

Cost: activations come from pre-hooks during one forward pass per train prompt batch,
with the unembedding on the last position only. Candidates are scored several at a
time, one candidate per copy of the val batch; activation addition at block l reuses
the cached baseline inputs of block l and runs only blocks l..L-1.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch

from workflow_lib.core import chat, models, tables
from workflow_lib.core import direction_file, interventions
from workflow_lib.evaluation import judges
from workflow_lib.core.progress import Progress

log = logging.getLogger(__name__)

STATUS_OK = direction_file.STATUS_OK
NO_DIRECTION = direction_file.NO_DIRECTION
MARKER = "Name three colours."


@dataclass
class Encoded:
    """A left-padded batch of chat prompts with generation-consistent position ids."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor

    def inputs(self, copies: int = 1) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids.repeat(copies, 1), "attention_mask": self.attention_mask.repeat(copies, 1),
                "position_ids": self.position_ids.repeat(copies, 1)}

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def post_instruction_tokens(tokenizer) -> list[str]:
    """The chat-template tokens between the end of the instruction and the response."""
    text = chat.prompt_text(tokenizer, MARKER)
    suffix = text[text.index(MARKER) + len(MARKER):]
    ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    full = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids or full[-len(ids):] != ids:
        raise ValueError("the chat template's post-instruction text does not tokenize on its own the same way as "
                         "inside a prompt; cannot locate the post-instruction positions")
    return tokenizer.convert_ids_to_tokens(ids)


def encode(tokenizer, instructions: list[str], device: torch.device, n_suffix: int) -> Encoded:
    tokenizer.padding_side = "left"
    enc = tokenizer([chat.prompt_text(tokenizer, text) for text in instructions], return_tensors="pt", padding=True,
                    add_special_tokens=False)
    suffix = tokenizer(chat.prompt_text(tokenizer, MARKER), add_special_tokens=False)["input_ids"][-n_suffix:]
    if (enc["input_ids"][:, -n_suffix:] != torch.tensor(suffix)).any():
        raise ValueError("a prompt does not end with the chat template's post-instruction tokens")
    mask = enc["attention_mask"]
    return Encoded(enc["input_ids"].to(device), mask.to(device), (mask.cumsum(-1) - 1).clamp(min=0).to(device))


def batches(tokenizer, instructions: list[str], device, n_suffix: int, batch_size: int) -> list[Encoded]:
    return [encode(tokenizer, instructions[i:i + batch_size], device, n_suffix)
            for i in range(0, len(instructions), batch_size)]


@torch.no_grad()
def last_logits(model, batch: Encoded, copies: int = 1) -> torch.Tensor:
    return model(**batch.inputs(copies), use_cache=False, logits_to_keep=1).logits[:, -1, :].float()


@torch.no_grad()
def capture(model, batches_: list[Encoded], n_positions: int, refusal_ids: list[int]):
    """resid_pre at the last `n_positions` tokens of every block, and the refusal score, per prompt.

    Returns activations (prompts, layers, positions, d) in float32 and scores (prompts,).
    """
    blocks = models.decoder_layers(model)
    store: list[torch.Tensor] = [None] * len(blocks)  # type: ignore[list-item]

    def keep(index):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            store[index] = hidden[:, -n_positions:, :].float().cpu()
        return hook

    handles = [block.register_forward_pre_hook(keep(i), with_kwargs=True) for i, block in enumerate(blocks)]
    acts, scores = [], []
    try:
        for batch in batches_:
            logits = last_logits(model, batch)
            acts.append(torch.stack(store, dim=1))
            scores.append(judges.refusal_logodds(logits, refusal_ids).cpu())
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(acts), torch.cat(scores)


def kept_by_score(model, tokenizer, texts: list[str], device, n_suffix: int, batch_size: int,
                  refusal_ids: list[int], *, refuses: bool) -> list[str]:
    """The reference's data filter: harmful prompts the checkpoint refuses (score > 0), harmless ones it
    does not (score < 0)."""
    scores = torch.cat([judges.refusal_logodds(last_logits(model, b), refusal_ids).cpu()
                        for b in batches(tokenizer, texts, device, n_suffix, batch_size)]) if texts else torch.zeros(0)
    return [t for t, s in zip(texts, scores.tolist()) if (s > 0 if refuses else s < 0)]


def mean_diff(harmful: torch.Tensor, harmless: torch.Tensor) -> torch.Tensor:
    """Difference of means over prompts (dim 0), in float64: (layers, positions, d)."""
    return harmful.to(torch.float64).mean(0) - harmless.to(torch.float64).mean(0)


class BlockSuffix:
    """Run blocks l..L-1 from cached block inputs: activation addition at block l needs no earlier block.

    The keyword arguments every block received (mask, rotary embeddings, positions)
    are recorded during a baseline forward pass and reused, so the suffix computes
    exactly what the full model computes (tested).
    """

    FINAL_NORMS = ("norm", "final_layer_norm", "ln_f")

    def __init__(self, model, batch: Encoded):
        self.model = model
        self.blocks = models.decoder_layers(model)
        self.inputs: list[torch.Tensor] = [None] * len(self.blocks)  # type: ignore[list-item]
        self.kwargs: list[dict] = [None] * len(self.blocks)  # type: ignore[list-item]
        self.n = len(batch)

        def record(index):
            def hook(module, args, kwargs):
                self.inputs[index] = (args[0] if args else kwargs["hidden_states"]).detach()
                self.kwargs[index] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            return hook

        handles = [b.register_forward_pre_hook(record(i), with_kwargs=True) for i, b in enumerate(self.blocks)]
        try:
            self.baseline_logits = last_logits(model, batch)
        finally:
            for handle in handles:
                handle.remove()
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
        norms = [getattr(decoder, name) for name in self.FINAL_NORMS if isinstance(getattr(decoder, name, None),
                                                                                     torch.nn.Module)]
        if not norms:
            raise ValueError(f"{type(decoder).__name__} has no final norm (looked for {list(self.FINAL_NORMS)})")
        self.final_norm = norms[0]

    def _expand(self, value, copies: int):
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == self.n and self.n > 1:
            return value.repeat(copies, *([1] * (value.dim() - 1)))
        if isinstance(value, tuple):
            return tuple(self._expand(v, copies) for v in value)
        return value

    @torch.no_grad()
    def logits_with_addition(self, layer: int, vectors: torch.Tensor) -> torch.Tensor:
        """Last-position logits with `vectors[c]` added at block `layer`, for every copy c of the batch."""
        copies = vectors.shape[0]
        hidden = self.inputs[layer].repeat(copies, 1, 1)
        hidden = hidden + vectors.repeat_interleave(self.n, dim=0)[:, None, :].to(hidden.dtype)
        for index in range(layer, len(self.blocks)):
            kwargs = {k: self._expand(v, copies) for k, v in self.kwargs[index].items()}
            out = self.blocks[index](hidden, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        head = self.model.get_output_embeddings()
        return head(self.final_norm(hidden[:, -1:, :]))[:, -1, :].float()


def kl_divergence(baseline: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """KL(baseline || other) per row, from logits, in float64."""
    p = torch.log_softmax(baseline.to(torch.float64), -1)
    q = torch.log_softmax(other.to(torch.float64), -1)
    return (p.exp() * (p - q)).sum(-1)


@dataclass
class Candidate:
    layer: int
    position: int  # index into the post-instruction positions (negative offset from the end)


def score_candidates(model, candidates: list[Candidate], diffs: torch.Tensor, positions: list[int],
                     harmful_val: list[Encoded], harmless_val: list[Encoded], refusal_ids: list[int],
                     candidate_batch: int, skip_first_token: bool = False) -> list[dict]:
    """bypass, induce and KL scores of every candidate (Arditi et al. 2024, appendix C)."""
    if not candidates:
        return []
    device = next(model.parameters()).device
    col = {p: j for j, p in enumerate(positions)}
    raw = torch.stack([diffs[c.layer, col[c.position]] for c in candidates]).to(torch.float32)
    directions = interventions.unit(raw).to(device)
    bypass = torch.zeros(len(candidates), dtype=torch.float64)
    induce = torch.zeros(len(candidates), dtype=torch.float64)
    kl = torch.zeros(len(candidates), dtype=torch.float64)
    n_harmful = sum(len(b) for b in harmful_val)
    n_harmless = sum(len(b) for b in harmless_val)
    n_chunks = math.ceil(len(candidates) / candidate_batch)
    n_induce = sum(math.ceil(sum(c.layer == layer for c in candidates) / candidate_batch)
                   for layer in {c.layer for c in candidates})
    chunks = Progress("direction scoring", len(harmful_val) * n_chunks + len(harmless_val) * (n_chunks + n_induce),
                      "candidate batches")
    for batch in harmful_val:
        for start in range(0, len(candidates), candidate_batch):
            chunk = directions[start:start + candidate_batch]
            with interventions.ablation(model, chunk.repeat_interleave(len(batch), dim=0), skip_first_token):
                logits = last_logits(model, batch, copies=len(chunk))
            score = judges.refusal_logodds(logits, refusal_ids).cpu().view(len(chunk), len(batch))
            bypass[start:start + len(chunk)] += score.sum(1)
            chunks.update()
    for batch in harmless_val:
        suffix = BlockSuffix(model, batch)
        for start in range(0, len(candidates), candidate_batch):
            chunk = directions[start:start + candidate_batch]
            with interventions.ablation(model, chunk.repeat_interleave(len(batch), dim=0), skip_first_token):
                logits = last_logits(model, batch, copies=len(chunk))
            div = kl_divergence(suffix.baseline_logits.repeat(len(chunk), 1), logits).cpu()
            kl[start:start + len(chunk)] += div.view(len(chunk), len(batch)).sum(1)
            chunks.update()
        for layer in sorted({c.layer for c in candidates}):
            idx = [k for k, c in enumerate(candidates) if c.layer == layer]
            for start in range(0, len(idx), candidate_batch):
                part = idx[start:start + candidate_batch]
                logits = suffix.logits_with_addition(layer, raw[part].to(device))
                score = judges.refusal_logodds(logits, refusal_ids).cpu().view(len(part), len(batch))
                induce[part] += score.sum(1)
                chunks.update()
    chunks.finish()
    return [{"bypass_score": float(bypass[k] / n_harmful), "induce_score": float(induce[k] / n_harmless),
             "kl": float(kl[k] / n_harmless)} for k in range(len(candidates))]


def layer_cutoff(n_layers: int, max_layer_fraction: float) -> int:
    """First layer that the selection prunes (as in the reference: layer >= int(L x fraction))."""
    return int(n_layers * max_layer_fraction)


def filter_reasons(row: dict, *, n_layers: int, selection: dict) -> str | None:
    """Why a candidate cannot be selected ('; '-joined), or None when it passes every filter."""
    reasons = []
    if row["layer"] >= layer_cutoff(n_layers, float(selection["max_layer_fraction"])):
        reasons.append(f"layer >= {layer_cutoff(n_layers, float(selection['max_layer_fraction']))}")
    scores = [row.get("bypass_score"), row.get("induce_score"), row.get("kl")]
    if any(s is None for s in scores):
        return "; ".join(reasons or [row.get("unscored_reason", "not scored")])
    if not all(math.isfinite(s) for s in scores):
        reasons.append("non-finite score")
    else:
        if row["kl"] > float(selection["kl_max"]):
            reasons.append(f"kl > {selection['kl_max']}")
        if row["induce_score"] <= float(selection["induce_min"]):
            reasons.append(f"induce <= {selection['induce_min']}")
    return "; ".join(reasons) or None


def select(rows: list[dict], *, n_layers: int, selection: dict) -> tuple[list[dict], dict | None]:
    """Mark filtered candidates and select the lowest bypass score among the rest (None if none passes)."""
    for row in rows:
        row["filtered_reason"] = filter_reasons(row, n_layers=n_layers, selection=selection)
        row["selected"] = False
    passing = [r for r in rows if r["filtered_reason"] is None]
    if not passing:
        return rows, None
    best = min(passing, key=lambda r: (r["bypass_score"], r["layer"], r["position"]))
    best["selected"] = True
    return rows, best


def candidate_grid(n_layers: int, positions: list[int], settings: dict) -> tuple[list[Candidate], list[Candidate]]:
    """(scored, unscored) candidates: layer stride and positions from config; pruned layers unscored unless asked."""
    stride = int(settings.get("layer_stride", 1))
    cutoff = layer_cutoff(n_layers, float(settings["selection"]["max_layer_fraction"]))
    score_pruned = bool(settings["selection"].get("score_pruned_layers", False))
    scored, unscored = [], []
    for layer in range(0, n_layers, stride):
        for position in positions:
            target = scored if (layer < cutoff or score_pruned) else unscored
            target.append(Candidate(layer, position))
    return scored, unscored


def chosen_positions(n_suffix: int, configured) -> list[int]:
    """Negative offsets of the candidate positions: all post-instruction tokens, or the configured ones."""
    available = list(range(-n_suffix, 0))
    if configured in (None, "all"):
        return available
    bad = [p for p in configured if p not in available]
    if bad:
        raise ValueError(f"refusal_direction.positions {bad} are not post-instruction positions of this chat "
                         f"template, which has {n_suffix} ({available}); use 'all' or a subset")
    return sorted(set(int(p) for p in configured))


def read_prompts(path: str | Path, split: str, limit: int | None) -> list[str]:
    df = tables.read_table(path, "prompts").filter(pl.col("split") == split)
    return (df.head(int(limit)) if limit is not None else df)["text"].to_list()


def _keys(model: str, technique: str, step: int) -> dict:
    return {"model": model, "technique": technique, "step": step}


def _empty_rows(candidates: list[Candidate], reason: str | None = None) -> list[dict]:
    rows = [{"layer": c.layer, "position": c.position, "bypass_score": None, "induce_score": None, "kl": None}
            for c in candidates]
    if reason:
        for row in rows:
            row["unscored_reason"] = reason
    return rows


def _val_batches(lm, tokenizer, prompt_paths, settings, dev, n_suffix, refusal_ids, counts) -> dict:
    bs = int(settings["batch_size"])
    val = {}
    for name in ("harmful", "harmless"):
        texts = read_prompts(prompt_paths[name], settings["val_split"], settings.get("n_val"))
        if settings.get("filter_val", True):
            texts = kept_by_score(lm, tokenizer, texts, dev, n_suffix, bs, refusal_ids, refuses=name == "harmful")
        counts[f"n_{name}_val"] = len(texts)
        val[name] = batches(tokenizer, texts, dev, n_suffix, bs)
    return val


def _candidate_frame(rows: list[dict], suffix_tokens: list[str], norms: torch.Tensor, keys: dict) -> pl.DataFrame:
    grid = list(range(-len(suffix_tokens), 0))
    for row in rows:
        row.pop("unscored_reason", None)
    frame = pl.DataFrame(rows, schema_overrides={"bypass_score": pl.Float64, "induce_score": pl.Float64,
                                                 "kl": pl.Float64, "filtered_reason": pl.Utf8})
    return frame.with_columns(
        position_token=pl.Series([suffix_tokens[grid.index(p)] for p in frame["position"]], dtype=pl.Utf8),
        mean_diff_norm=pl.Series([float(norms[l, grid.index(p)]) for l, p in zip(frame["layer"], frame["position"])],
                                 dtype=pl.Float64),
        **{k: pl.lit(v) for k, v in keys.items()},
    ).sort("layer", "position")


def extract(*, model: str, technique: str, step: int, model_dir, checkpoint_dir, prompt_paths: dict[str, str],
            settings: dict, refusal_phrases: list[str], candidates_out, direction_out, summary_out,
            device: str = "cpu", dtype: str = "float32") -> dict:
    """Run extraction, scoring and selection for one checkpoint and write its three outputs."""
    lm, tokenizer = models.load_checkpoint(model_dir, checkpoint_dir, dtype=dtype, device=device)
    dev = next(lm.parameters()).device
    refusal_ids = judges.refusal_token_ids(tokenizer, refusal_phrases)
    suffix_tokens = post_instruction_tokens(tokenizer)
    n_suffix = len(suffix_tokens)
    grid = list(range(-n_suffix, 0))
    positions = chosen_positions(n_suffix, settings.get("positions", "all"))
    n_layers = len(models.decoder_layers(lm))
    train = {name: read_prompts(prompt_paths[name], settings["train_split"], settings.get("n_train"))
             for name in ("harmful", "harmless")}
    acts, scores = {}, {}
    for name, texts in train.items():
        acts[name], scores[name] = capture(lm, batches(tokenizer, texts, dev, n_suffix, int(settings["batch_size"])),
                                           n_suffix, refusal_ids)
    log.info("captured %d + %d train prompts", len(train["harmful"]), len(train["harmless"]))
    filtering = bool(settings["filter_train"])
    keep_harmful = scores["harmful"] > 0 if filtering else torch.ones_like(scores["harmful"], dtype=torch.bool)
    keep_harmless = scores["harmless"] < 0 if filtering else torch.ones_like(scores["harmless"], dtype=torch.bool)
    counts = {"n_harmful_train": len(train["harmful"]), "n_harmless_train": len(train["harmless"]),
              "n_harmful_kept": int(keep_harmful.sum()), "n_harmless_kept": int(keep_harmless.sum()),
              "n_harmful_val": None, "n_harmless_val": None}
    tensors = {"mean_harmful": acts["harmful"].to(torch.float64).mean(0),
               "mean_harmless": acts["harmless"].to(torch.float64).mean(0)}
    tensors["mean_diff_unfiltered"] = tensors["mean_harmful"] - tensors["mean_harmless"]
    minimum = int(settings["min_filtered_prompts"])
    reason, best = None, None
    scored, unscored = candidate_grid(n_layers, positions, settings)
    if min(counts["n_harmful_kept"], counts["n_harmless_kept"]) < minimum:
        reason = (f"the train filter kept {counts['n_harmful_kept']} harmful prompts with refusal score > 0 and "
                  f"{counts['n_harmless_kept']} harmless with score < 0; at least {minimum} of each are needed "
                  "(refusal_direction.min_filtered_prompts): this checkpoint does not refuse")
        rows = _empty_rows(scored + unscored)
        for row in rows:
            row["filtered_reason"], row["selected"] = "train filter", False
    else:
        diffs = tensors["mean_diff"] = mean_diff(acts["harmful"][keep_harmful], acts["harmless"][keep_harmless])
        # Where both sets see the same token through the same computation (the embeddings of the
        # template tokens at block 0), the difference is exactly zero: no direction to score.
        norms = diffs.norm(dim=-1)
        degenerate = [c for c in scored if norms[c.layer, c.position] <= 1e-6 * float(norms.max())]
        scored = [c for c in scored if c not in degenerate]
        rows = _empty_rows(scored + unscored) + _empty_rows(degenerate, "zero mean difference")
        val = _val_batches(lm, tokenizer, prompt_paths, settings, dev, n_suffix, refusal_ids, counts)
        if min(counts["n_harmful_val"], counts["n_harmless_val"]) == 0:
            scored = []
            reason = (f"the val filter kept {counts['n_harmful_val']} harmful and {counts['n_harmless_val']} "
                      "harmless prompts; nothing to score on (raise n_val or set filter_val: false)")
        results = score_candidates(lm, scored, diffs, grid, val["harmful"], val["harmless"], refusal_ids,
                                   int(settings["candidate_batch"]), bool(settings.get("skip_first_token", False)))
        for row, result in zip(rows, results):
            row.update(result)
        rows, best = select(rows, n_layers=n_layers, selection=settings["selection"])
        if best is None:
            reason = reason or "no candidate passed the selection filters (see refusal_candidates.filtered_reason)"
        else:
            raw = diffs[best["layer"], grid.index(best["position"])].clone()
            tensors["direction"], tensors["direction_raw"] = interventions.unit(raw), raw
    keys = _keys(model, technique, step)
    norms = tensors.get("mean_diff", tensors["mean_diff_unfiltered"]).norm(dim=-1)
    tables.write_table(_candidate_frame(rows, suffix_tokens, norms, keys), candidates_out, "refusal_candidates")
    status = STATUS_OK if best else NO_DIRECTION
    summary = {**keys, "status": status, "reason": reason,
               **{k: (best[k] if best else None) for k in ("layer", "position", "bypass_score", "induce_score", "kl")},
               "n_layers": n_layers, "n_candidates": len(rows),
               "n_scored": int(sum(r["bypass_score"] is not None for r in rows)),
               "n_passing": int(sum(r["filtered_reason"] is None for r in rows)), **counts}
    tables.write_table(pl.DataFrame([summary]), summary_out, "refusal_direction")
    metadata = {"status": status, "layer": str(summary["layer"]), "position": str(summary["position"]),
                "positions": ",".join(str(p) for p in grid), "position_tokens": "\u241f".join(suffix_tokens)}
    direction_file.write_tensors({k: v.contiguous() for k, v in tensors.items()}, direction_out, metadata)
    return summary
