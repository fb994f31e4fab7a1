"""Cost of the refusal-direction stage as ratios to bare forward passes, on the same model and prompts.

Two figures (issue goals in brackets):
1. **capture / bare forward** (<= 1.05): `refusal_direction.capture` (pre-hooks that keep
   every block's input at the post-instruction positions, plus the refusal score) over
   the harmful train prompts, against a bare batched forward over the same batches.
   The bare forward is measured twice: with the unembedding on the last position only
   (what capture computes, so the ratio isolates the hooks) and with full logits (a
   plain `model(**batch)`).
2. **selection / required forward passes** (<= 3): `refusal_direction.score_candidates`
   for C candidates, against C x (one bare forward over the harmful val prompts + two
   over the harmless val prompts), the passes a candidate's bypass, KL and induce
   scores need when each is computed by a plain forward.

Both are measured alternately in one run so machine load affects them alike.

Usage (after bin/run-default, from the repository root):
    .venv/bin/python benchmarks/refusal_direction_cost.py [--threads 2] [--checkpoint results/.../checkpoint]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_lib.evaluation import judges  # noqa: E402
from workflow_lib.core import models
from workflow_lib.refusal import refusal_direction as rd

PHRASES = ["I'm sorry", "I cannot", "I can't", "Sorry", "Unfortunately", "As an AI", "I apologize", "I won't",
           "I must decline"]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.no_grad()
def bare(model, batches, logits_to_keep: int) -> None:
    for batch in batches:
        model(**batch.inputs(), use_cache=False, logits_to_keep=logits_to_keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="resources/models/smollm2-135m")
    parser.add_argument("--checkpoint", default="results/smollm2-135m/sft_refusal/step-50/checkpoint")
    parser.add_argument("--prompts", default="resources/prompts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-val", type=int, default=16)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--candidate-batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    models.configure_threads(args.threads)
    model, tokenizer = models.load_checkpoint(args.model_dir, args.checkpoint)
    refusal_ids = judges.refusal_token_ids(tokenizer, PHRASES)
    n_suffix = len(rd.post_instruction_tokens(tokenizer))
    device = torch.device("cpu")

    def prompts(name, split, limit=None):
        return rd.read_prompts(Path(args.prompts) / f"{name}.parquet", split, limit)

    train = rd.batches(tokenizer, prompts("harmful", "train"), device, n_suffix, 16)
    capture_t, bare_last_t, bare_full_t = [], [], []
    for _ in range(args.rounds):
        capture_t.append(timed(lambda: rd.capture(model, train, n_suffix, refusal_ids)))
        bare_last_t.append(timed(lambda: bare(model, train, 1)))
        bare_full_t.append(timed(lambda: bare(model, train, 0)))
    print(f"capture: {statistics.median(capture_t):.2f} s; bare forward (last-position logits) "
          f"{statistics.median(bare_last_t):.2f} s -> ratio {statistics.median(capture_t) / statistics.median(bare_last_t):.3f}; "
          f"bare forward (full logits) {statistics.median(bare_full_t):.2f} s -> ratio "
          f"{statistics.median(capture_t) / statistics.median(bare_full_t):.3f}")

    harmful_val = rd.batches(tokenizer, prompts("harmful", "val", args.n_val), device, n_suffix, 16)
    harmless_val = rd.batches(tokenizer, prompts("harmless", "val", args.n_val), device, n_suffix, 16)
    acts = {name: rd.capture(model, train if name == "harmful" else
                             rd.batches(tokenizer, prompts("harmless", "train"), device, n_suffix, 16),
                             n_suffix, refusal_ids)[0] for name in ("harmful", "harmless")}
    diffs = rd.mean_diff(acts["harmful"], acts["harmless"])
    n_layers = diffs.shape[0]
    layers = torch.linspace(1, int(0.8 * n_layers) - 1, args.candidates).round().int().tolist()
    candidates = [rd.Candidate(layer, -1) for layer in layers]
    select_t, required_t = [], []
    for _ in range(args.rounds):
        select_t.append(timed(lambda: rd.score_candidates(model, candidates, diffs, list(range(-n_suffix, 0)),
                                                          harmful_val, harmless_val, refusal_ids,
                                                          args.candidate_batch)))
        per_candidate = timed(lambda: bare(model, harmful_val, 0)) + 2 * timed(lambda: bare(model, harmless_val, 0))
        required_t.append(len(candidates) * per_candidate)
    ratio = statistics.median(select_t) / statistics.median(required_t)
    print(f"selection of {len(candidates)} candidates (layers {layers}): {statistics.median(select_t):.2f} s; "
          f"required bare forwards {statistics.median(required_t):.2f} s -> ratio {ratio:.3f}")


if __name__ == "__main__":
    main()
