"""Cost of the linear-response susceptibility estimator next to devinterp's SGLD estimator, on one checkpoint.

Measured on the embedded model, one process, the same checkpoint, sampling task
and observables (the default config's `susceptibility` block):

- the unit: one no-grad forward of one SGLD batch (`sampler.batch_size` x
  `seq_len` tokens of the sampling task), so costs read as batch-forward
  equivalents and compare across machines;
- linear response: the two half gradients of the sampling task, one backward
  per observable sequence for every component of `linear_response.restrictions`,
  and the per-token JVP of `--jvp-components` components (seconds each);
- SGLD: `sample_susceptibilities` on the SGLD stage's restrictions with
  `--sgld-draws` draws and no burn-in, timed and scaled linearly to the configured
  burn-in + draws (said so in the output: it is an extrapolation of a measured
  per-step cost, and the per-step cost is constant along a chain);
- peak RSS of the process (linear part first, so its peak is read before SGLD).

Usage (from the repository root, after the checkpoint exists):
    .venv/bin/python benchmarks/susceptibility_cost.py [--threads 1] \
        [--checkpoint results/smollm2-135m/sft_refusal/step-50/checkpoint]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_lib.core import models  # noqa: E402
from workflow_lib.slt import sampling, susceptibility
from workflow_lib.slt import susceptibility_linear as linear  # noqa: E402
from workflow_lib.slt import susceptibility_linear_stage as stage  # noqa: E402

MODEL = "smollm2-135m"


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def settings_from_config(path: str) -> dict:
    config = yaml.safe_load(Path(path).read_text())
    sus = config["susceptibility"]
    return sus | {"sampler": sampling.SAMPLER_DEFAULTS | config["llc"]["sampler"] | sus["sampler"]}


def inputs_paths(settings: dict, checkpoint: Path):
    """(prompt paths, completions, templates, training mix) of the checkpoint's run, as the rules pass them."""
    technique = checkpoint.parents[1].name
    root = Path("results") / MODEL
    prompt_sets = sorted({o["prompt_set"] for o in settings["observables"].values()})
    return ({s: f"resources/prompts/{s}.parquet" for s in prompt_sets}, root / "base/completions.parquet",
            "resources/prompts/jailbreak_templates.parquet", root / technique / "training_mix.parquet")


def inputs(settings: dict, checkpoint: Path, tokenizer):
    return stage.build_inputs(tokenizer, settings, *inputs_paths(settings, checkpoint))


def unit_seconds(lm, rows: torch.Tensor, batch_size: int, repeats: int = 5) -> float:
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            sampling.causal_lm_loss(lm, rows[:batch_size])
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--model-dir", default=f"resources/models/{MODEL}")
    parser.add_argument("--checkpoint", default=f"results/{MODEL}/sft_refusal/step-50/checkpoint")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jvp-components", nargs="+", default=["l0 attn", "l15 mlp", "l29 attn"])
    parser.add_argument("--sgld-draws", type=int, default=4)
    parser.add_argument("--skip-sgld", action="store_true")
    parser.add_argument("--out", default="benchmarks/out/susceptibility_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = settings_from_config(args.config)
    sampler, lin = settings["sampler"], stage.linear_settings(settings)
    checkpoint = Path(args.checkpoint)
    lm, tokenizer = models.load_checkpoint(args.model_dir, checkpoint, dtype="float32", merge=True)
    probes, rows = inputs(settings, checkpoint, tokenizer)
    sampling.select_parameters(lm, "full")
    lm.eval()
    batch = int(sampler["batch_size"])
    unit = unit_seconds(lm, rows, batch)
    patterns = susceptibility.component_patterns(lm.config, lin["restrictions"])
    index = linear.ComponentIndex(lm, susceptibility.component_masks(lm, patterns | {c: c for c in args.jvp_components}))
    n_sequences = sum(len(r) for r in probes.values())
    report = {"threads": args.threads, "checkpoint": str(checkpoint), "unit_batch_forward_s": unit,
              "unit": f"{batch} x {rows.shape[1]} tokens", "components": len(patterns),
              "observable_sequences": n_sequences}

    start = time.perf_counter()
    grads = linear.half_gradients(lm, rows, index, batch, "cpu")
    report["linear_half_gradients_s"] = time.perf_counter() - start
    start = time.perf_counter()
    linear.observable_products(lm, probes, grads, index, "cpu")
    report["linear_sequence_backward_s"] = time.perf_counter() - start
    g_full = grads.full()
    del grads
    sequences = torch.tensor([list(r.input_ids) for rows_ in probes.values() for r in rows_])
    per_jvp = {}
    for name in args.jvp_components:
        start = time.perf_counter()
        linear.token_directional_derivatives(lm, sequences, index.restricted(g_full, index.names.index(name)), batch,
                                             "cpu")
        per_jvp[name] = time.perf_counter() - start
    report["linear_jvp_s_per_component"] = per_jvp
    report["linear_peak_rss_gib"] = peak_rss_gib()
    report["linear_per_sequence_total_s"] = report["linear_half_gradients_s"] + report["linear_sequence_backward_s"]
    report["linear_per_sequence_batch_forwards"] = report["linear_per_sequence_total_s"] / unit

    if not args.skip_sgld:
        sgld_patterns = susceptibility.component_patterns(lm.config, settings["restrictions"])
        masks = susceptibility.component_masks(lm, sgld_patterns)
        sgld_probes, data = susceptibility.stage_inputs(tokenizer, settings, *inputs_paths(settings, checkpoint),
                                                        batch_size=batch, n_prompts=int(settings["n_prompts"]))
        short = sampler | {"draws": args.sgld_draws, "burn_in": 0, "steps_between_draws": 1}
        epoch = sampling.epoch_batches(len(data), sampler)
        short["draws"] = max(args.sgld_draws // epoch, 1) * epoch
        start = time.perf_counter()
        susceptibility.sample_susceptibilities(lm, data, sgld_probes, masks, short, device="cpu",
                                               work_dir="benchmarks/out")
        measured = time.perf_counter() - start
        steps = int(sampler["burn_in"]) + int(sampler["draws"]) * int(sampler["steps_between_draws"])
        report["sgld_measured_s"] = measured
        report["sgld_measured_draws"] = short["draws"]
        report["sgld_restrictions"] = len(masks) + 1
        report["sgld_extrapolated_s"] = measured / short["draws"] * steps
        report["sgld_extrapolated_batch_forwards"] = report["sgld_extrapolated_s"] / unit
        report["speedup_per_sequence_all_components_vs_sgld_six"] = (report["sgld_extrapolated_s"]
                                                                     / report["linear_per_sequence_total_s"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
