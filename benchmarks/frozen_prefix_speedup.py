"""Observable-evaluation time of a susceptibility chain, full forward vs. `FrozenPrefixLoss` from layer k.

A susceptibility draw evaluates every observable sequence with the chain's loss
function, and that evaluation dominates the stage on CPU. A chain restricted to
decoder layers >= k can start its forward passes at layer k (`frozen_prefix.py`).
This measures, on the embedded model, the no-grad loss over one draw's worth of
sequences (default 28 of 64 tokens: the default sampling task plus five
observables of four prompts) for the full forward and for the shortcut at each
chosen layer, alternating the two so machine load affects them alike, and checks
that the losses agree.

Usage (after bin/run-default or bin/setup, from the repository root):
    .venv/bin/python benchmarks/frozen_prefix_speedup.py [--threads 1] [--layers 0 15 29]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_lib.slt import frozen_prefix, sampling  # noqa: E402
from workflow_lib.core import models


def seconds(loss_fn, model, batches, repeats: int) -> float:
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            for batch in batches:
                loss_fn(model, batch)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="resources/models/smollm2-135m")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 15, 29])
    parser.add_argument("--sequences", type=int, default=28)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = models.load_base(args.model_dir)
    sampling.select_parameters(model, "full")
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (args.sequences, args.seq_len),
                        generator=torch.Generator().manual_seed(0))
    batches = list(ids.split(args.batch_size))
    n_layers = model.config.num_hidden_layers
    print(f"{args.sequences} x {args.seq_len} tokens, batch {args.batch_size}, {args.threads} thread(s)")
    for layer in args.layers:
        names = [n for n, _ in model.named_parameters() if f"layers.{layer}.self_attn." in n]
        loss, first = frozen_prefix.loss_for_chain(model, names, ids, args.batch_size, sampling.causal_lm_loss)
        full = shortcut = 0.0
        for _ in range(2):  # alternate, so that load changes hit both
            full += seconds(sampling.causal_lm_loss, model, batches, args.repeats)
            shortcut += seconds(loss, model, batches, args.repeats)
        with torch.no_grad():
            gap = (loss(model, ids[:2]) - sampling.causal_lm_loss(model, ids[:2])).abs().max().item()
        print(f"layer {layer:>2} of {n_layers}: starts at {first:>2}; full {full / 2:.2f} s, "
              f"shortcut {shortcut / 2:.2f} s, ratio {shortcut / full:.2f}; max loss difference {gap:.1e}")


if __name__ == "__main__":
    main()
