"""Does the linear-response estimator reproduce devinterp's SGLD susceptibilities where it should?

Reads one checkpoint's SGLD tables (the `susceptibility` stage's output at some
sampler seed), computes the linear-response estimate on the same checkpoint,
sampling sequences, observable prompts and components, at the same sampler (so
on the same scale, sigma^2 = lr / (1 - (1 - lr * gamma / 2)^2)), and reports
their agreement over component x observable: Pearson and Spearman of the mean
answer-token chi, of the contrasts, and of per-token chi; and the ratio of
scales (least-squares slope of SGLD on linear response).

Usage (from the repository root, after `snakemake` built the SGLD tables, e.g.
`snakemake --config 'susceptibility={"estimators": ["sgld"]}' <table>`):
    .venv/bin/python benchmarks/susceptibility_validation.py \
        --sgld results/smollm2-135m/sft_refusal/step-50/susceptibility/seed-0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.susceptibility_cost import inputs_paths, settings_from_config  # noqa: E402
from workflow_lib.core import models, tables  # noqa: E402
from workflow_lib.slt import sampling, susceptibility_structure
from workflow_lib.slt import susceptibility_linear as linear  # noqa: E402
from workflow_lib.slt import susceptibility_linear_stage as stage  # noqa: E402
from workflow_lib.slt import susceptibility_reliability as reliability  # noqa: E402


def pearson(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, float), np.asarray(b, float))[0, 1])


def agreement(x: np.ndarray, y: np.ndarray) -> dict:
    slope = float(np.dot(x, y) / np.dot(x, x))
    return {"n": int(len(x)), "pearson": pearson(x, y), "spearman": reliability.spearman(x, y),
            "slope_sgld_on_linear": slope}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--model-dir", default="resources/models/smollm2-135m")
    parser.add_argument("--sgld", default="results/smollm2-135m/sft_refusal/step-50/susceptibility/seed-0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/out/susceptibility_validation.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sgld_dir = Path(args.sgld)
    checkpoint = sgld_dir.parents[1] / "checkpoint"
    sgld = tables.read_table(sgld_dir / "susceptibility.parquet", "susceptibility")
    sgld_tokens = tables.read_table(sgld_dir / "susceptibility_tokens.parquet", "susceptibility_tokens")
    settings = settings_from_config(args.config)
    components = sgld["component"].unique(maintain_order=True).to_list()
    settings["linear_response"] = {"n_prompts": settings["n_prompts"]}
    lm, tokenizer = models.load_checkpoint(args.model_dir, checkpoint, dtype="float32", merge=True)
    probes, rows = stage.build_inputs(tokenizer, settings, *inputs_paths(settings, checkpoint))
    kept = {o: set(sgld_tokens.filter(pl.col("observable") == o)["prompt_id"].unique()) for o in probes}
    probes = {o: [r for r in rs if r.prompt_id in kept[o]] for o, rs in probes.items()}  # SGLD's exact prompts
    sampling.select_parameters(lm, "full")
    lm.eval()
    sigma2 = linear.stationary_variance(settings["sampler"])
    result = stage.estimate(lm, probes, rows, {c: c for c in components}, components, sigma2,
                            int(settings["sampler"]["batch_size"]), "cpu")
    tokens = stage.token_frame(result, probes)
    lin = stage.aggregate_frame(stage.sequence_frame(result, probes), tokens, 200, 0)
    pair = sgld.join(lin, on=["component", "observable"], suffix="_linear")
    report = {"checkpoint": str(checkpoint), "sigma2": sigma2, "components": components,
              "observables": list(probes), "prompts_per_observable": {o: len(r) for o, r in probes.items()},
              "chi_mean": agreement(pair["chi_mean_linear"].to_numpy(), pair["chi_mean"].to_numpy())}
    contrasts = settings["structure"]["contrasts"]
    c_sgld = susceptibility_structure.contrasts(sgld, contrasts)
    c_lin = susceptibility_structure.contrasts(lin, contrasts)
    cpair = c_sgld.join(c_lin, on=["component", "contrast"], suffix="_linear")
    report["contrasts"] = agreement(cpair["value_linear"].to_numpy(), cpair["value"].to_numpy())
    report["per_contrast_spearman"] = {
        name: reliability.spearman(g["value_linear"].to_numpy(), g["value"].to_numpy())
        for (name,), g in cpair.group_by(["contrast"], maintain_order=True)}
    report["per_observable_spearman"] = {
        name: reliability.spearman(g["chi_mean_linear"].to_numpy(), g["chi_mean"].to_numpy())
        for (name,), g in pair.group_by(["observable"], maintain_order=True)}
    tpair = sgld_tokens.join(tokens, on=["component", "observable", "prompt_id", "token_pos"], suffix="_linear")
    report["tokens"] = agreement(tpair["chi_linear"].to_numpy(), tpair["chi"].to_numpy())
    report["table"] = pair.select("component", "observable", sgld_chi="chi_mean", linear_chi="chi_mean_linear",
                                  linear_se="chi_se_linear").rows(named=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "table"}, indent=2))


if __name__ == "__main__":
    main()
