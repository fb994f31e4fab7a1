"""Where SGLD susceptibilities part from the linear response, and what the control variates save there.

On one checkpoint of the embedded model, the SGLD stage's observables and
sampling task are sampled at several localization strengths gamma, with
lr = `--lr-gamma` / gamma so that the prior's AR(1) coefficient 1 - lr gamma / 2
stays that of the default (0.25) and only the chain's reach changes
(sigma^2 ~ 1 / gamma). For every component x observable it reports the exact
linear response, the plain SGLD estimate and the control-variate one with
their batch-means standard errors (`susceptibility_control.py`), and per gamma:

- the variance ratio plain / control variates (how many times fewer draws the
  control variates need for the same standard error);
- how far SGLD is from the linear response, in standard errors and as a ratio:
  at strong localization the two agree; where curvature enters they part.

Components sit in the last layers by default so that their chains run forwards
from there (frozen prefix); the unrestricted chain, which every estimate
needs, runs the whole model and dominates the cost.

Usage (from the repository root, after the checkpoint exists):
    .venv/bin/python benchmarks/susceptibility_beyond_linear.py [--threads 1] [--gammas 1e6 1e5 1e4 3e3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.susceptibility_cost import MODEL, inputs_paths, settings_from_config  # noqa: E402
from workflow_lib.core import models  # noqa: E402
from workflow_lib.slt import sampling, susceptibility


def summary(frame: pl.DataFrame) -> dict:
    """Per-gamma figures over component x observable."""
    ok = frame.filter(pl.col("chi_cv").is_finite() & pl.col("chi_plain").is_finite())
    ratio = (ok["chi_plain_se"] / ok["chi_cv_se"]) ** 2
    z = (ok["chi_cv"] - ok["chi_linear"]) / ok["chi_cv_se"]
    return {"pairs": ok.height,
            "variance_ratio_median": float(ratio.median()),
            "variance_ratio_quartiles": [float(ratio.quantile(0.25)), float(ratio.quantile(0.75))],
            "residual_z_median_abs": float(z.abs().median()),
            "residual_beyond_3se": int((z.abs() > 3).sum()),
            "sgld_over_linear_median": float((ok["chi_cv"] / ok["chi_linear"]).median()),
            "pearson_cv_linear": float(np.corrcoef(ok["chi_cv"], ok["chi_linear"])[0, 1]),
            "pearson_plain_linear": float(np.corrcoef(ok["chi_plain"], ok["chi_linear"])[0, 1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--model-dir", default=f"resources/models/{MODEL}")
    parser.add_argument("--checkpoint", default=f"results/{MODEL}/sft_refusal/step-50/checkpoint")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--components", nargs="+", default=["l29 attn", "l29 mlp", "l27 attn", "l27 mlp"])
    parser.add_argument("--gammas", nargs="+", type=float, default=[1e6, 1e5, 1e4, 3e3])
    parser.add_argument("--lr-gamma", type=float, default=1.5)
    parser.add_argument("--draws", type=int, default=32)
    parser.add_argument("--burn-in", type=int, default=8)
    parser.add_argument("--out", default="docs/measurements/susceptibility_beyond_linear")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = settings_from_config(args.config)
    checkpoint = Path(args.checkpoint)
    lm, tokenizer = models.load_checkpoint(args.model_dir, checkpoint, dtype="float32", merge=True)
    sampler = settings["sampler"]
    probes, data = susceptibility.stage_inputs(tokenizer, settings, *inputs_paths(settings, checkpoint),
                                               batch_size=int(sampler["batch_size"]),
                                               n_prompts=int(settings["n_prompts"]))
    sampling.select_parameters(lm, "full")
    masks = susceptibility.component_masks(lm, {c: c for c in args.components})
    frames, report = [], {"checkpoint": str(checkpoint), "components": args.components, "draws": args.draws,
                          "burn_in": args.burn_in, "threads": args.threads, "by_gamma": {}}
    for gamma in args.gammas:
        run = sampler | {"localization": gamma, "lr": args.lr_gamma / gamma, "draws": args.draws,
                         "burn_in": args.burn_in, "chains": 1}
        start = time.perf_counter()
        *_, controlled = susceptibility.sample_susceptibilities(lm, data, probes, masks, run, control=True,
                                                                work_dir="benchmarks/out")
        frame = controlled.with_columns(gamma=pl.lit(gamma), lr=pl.lit(run["lr"]))
        frames.append(frame)
        report["by_gamma"][f"{gamma:g}"] = summary(frame) | {"seconds": time.perf_counter() - start}
        print(json.dumps({f"{gamma:g}": report["by_gamma"][f"{gamma:g}"]}), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pl.concat(frames).write_parquet(f"{args.out}.parquet")
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
