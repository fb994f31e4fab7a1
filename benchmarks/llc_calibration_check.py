"""An LLC calibration grid on one checkpoint of the embedded model, on the reference loss.

Runs `llc_calibration.calibrate` (the `llc_calibrate` stage's code: every grid
point burns in for `relaxation_times` prior relaxation times 2 / (lr gamma))
over the grid given on the command line, for one parameter space, and writes
the grid table and its traces to `docs/measurements/`. The sampled-weight scale
is reported next to each localization as the prior's per-weight standard
deviation relative to the RMS of the sampled weights, 1 / sqrt(gamma) / rms(w):
the scale that says whether the prior confines the chain to the checkpoint's
neighbourhood or lets it move further than training did.

Usage (from the repository root, after the checkpoint and base completions exist):
    .venv/bin/python benchmarks/llc_calibration_check.py --space lora --lrs 3e-4 1e-3 --localizations 100 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workflow_lib.slt import llc, llc_calibration, sampling  # noqa: E402

MODEL = "smollm2-135m"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--technique", default="sft_refusal")
    parser.add_argument("--step", type=int, default=50)
    parser.add_argument("--space", default="lora")
    parser.add_argument("--lrs", nargs="+", type=float, required=True)
    parser.add_argument("--localizations", nargs="+", type=float, required=True)
    parser.add_argument("--n-betas", nargs="+", type=float, default=[30.0])
    parser.add_argument("--chains", type=int, default=1)
    parser.add_argument("--draws", type=int, default=32)
    parser.add_argument("--relaxation-times", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tilt", action="store_true", help="sample the loss without its slope (llc.tilt)")
    parser.add_argument("--out", default="docs/measurements/llc_calibration")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = yaml.safe_load(Path(args.config).read_text())["llc"]
    custom = {"adapted": ["*.self_attn.q_proj.weight", "*.self_attn.v_proj.weight"]}
    settings = {"sampler": sampling.SAMPLER_DEFAULTS | config["sampler"], "data_seed": config.get("data_seed", 0),
                "reference": config.get("reference", {}), "custom_spaces": custom, "tilt": args.tilt,
                "calibration": {"space": args.space, "dataset": "reference", "lrs": args.lrs,
                                "n_betas": args.n_betas, "localizations": args.localizations,
                                "relaxation_times": args.relaxation_times,
                                "sampler": {"chains": args.chains, "draws": args.draws}}}
    root = Path("results") / MODEL
    checkpoint = root / args.technique / f"step-{args.step}" / "checkpoint"
    lm, _, masks = llc.load_in_space(f"resources/models/{MODEL}", checkpoint, args.space,
                                     custom.get(args.space), "cpu")
    params = dict(lm.named_parameters())
    weights = torch.cat([params[n].detach().reshape(-1) for n in masks])
    rms = float(weights.pow(2).mean().sqrt())
    del lm
    start = time.perf_counter()
    gammas = "_".join(f"{g:g}" for g in args.localizations)
    out = Path(f"{args.out}_{args.space}_{args.technique}{args.step}_gamma{gammas}{'_tilt' if args.tilt else ''}")
    out.parent.mkdir(parents=True, exist_ok=True)
    grid = llc_calibration.calibrate(model=MODEL, technique=args.technique, step=args.step,
                                     model_dir=f"resources/models/{MODEL}", checkpoint_dir=checkpoint,
                                     mix_path=root / args.technique / "training_mix.parquet",
                                     completions_path=root / "base" / "completions.parquet", settings=settings,
                                     out_path=f"{out}.parquet", trace_path=f"{out}_trace.parquet")
    report = {"space": args.space, "tilt": args.tilt, "checkpoint": f"{args.technique}@{args.step}", "n_weights": int(weights.numel()),
              "rms_weight": rms, "seconds": time.perf_counter() - start,
              "prior_sd_over_rms": {f"{g:g}": 1 / g ** 0.5 / rms for g in args.localizations},
              "grid": grid.select("lr", "n_beta", "localization", "llc_mean", "n_ok_chains", "status",
                                  "relative_change", "recommended", "reason").to_dicts()}
    Path(f"{out}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
