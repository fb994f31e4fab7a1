"""SGLD step time / bare forward+backward time, on the same model, batch and parameters.

Measures the overhead our LLC code path (sampling.estimate_llc -> devinterp sample)
adds to the unavoidable work of one SGLD step: a forward and a backward pass over
one batch. Goal: <= 1.15. Both are measured in one run, alternating, so machine
load affects them alike.

- bare: `causal_lm_loss(model, batch).mean().backward()` on the LoRA-adapted
  model with exactly the sampled parameters trainable;
- SGLD: devinterp's `sample()` via `sampling.sample_llc`, one chain; the per-step time
  is the difference between a long and a short run divided by the difference in
  steps, so the fixed costs (model copy, initial loss, zarr setup) cancel.

Usage (after bin/run-default or bin/setup, from the repository root):
    .venv/bin/python benchmarks/sgld_overhead.py [--threads 1] [--space lora|full]
Needs resources/models/smollm2-135m (written by the prepare_model rule).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_lib.core import models  # noqa: E402
from workflow_lib.slt import sampling


def bare_step_seconds(model, batch: torch.Tensor, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sampling.causal_lm_loss(model, batch).mean().backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sgld_step_seconds(model, data, masks, sampler: dict, short: int, long: int) -> float:
    def run(draws):
        start = time.perf_counter()
        sampling.sample_llc(model, data, masks, sampler | {"draws": draws})
        return time.perf_counter() - start

    return (run(long) - run(short)) / (long - short)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="resources/models/smollm2-135m")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--space", default="lora", choices=["lora", "full"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    models.configure_threads(args.threads)

    model, _ = models.load_base(args.model_dir)
    if args.space == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    masks = sampling.select_parameters(model, args.space)
    model.train()
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, model.config.vocab_size, (4 * args.batch_size, args.seq_len), generator=g)
    from datasets import Dataset

    data = Dataset.from_dict({"input_ids": rows.tolist()}).with_format("torch")
    sampler = sampling.SAMPLER_DEFAULTS | {"chains": 1, "burn_in": 0, "batch_size": args.batch_size,
                                      "lr": 1e-5, "n_beta": 10.0}
    batch = rows[: args.batch_size]
    bare_step_seconds(model, batch, 2)  # warm-up
    ratios = []
    for round_ in range(args.rounds):
        bare = bare_step_seconds(model, batch, 10)
        sgld = sgld_step_seconds(model, data, masks, sampler, short=4, long=24)
        ratios.append(sgld / bare)
        print(f"round {round_}: bare fwd+bwd {bare:.3f} s, SGLD step {sgld:.3f} s, ratio {sgld / bare:.3f}",
              flush=True)
    print(f"space={args.space} threads={args.threads} batch={args.batch_size}x{args.seq_len}: "
          f"median ratio {statistics.median(ratios):.3f} (goal <= 1.15)")


if __name__ == "__main__":
    main()
