"""Reliability and the alignment question at one checkpoint with more observable prompts (run by hand).

Runs the linear-response stage on sft_refusal@50 with `linear_response.n_prompts` 32 into /tmp/p32, then
prints the split-half reliabilities and Spearman(refusal alignment, chi) per component family, for the
harmful + refusal observable and for the refusal-minus-harmless contrast. Its outputs of 2026-12-01 are in
docs/measurements/sft_refusal50_linear32_*.parquet. Usage: .venv/bin/python benchmarks/susceptibility_prompts_check.py
"""
import sys
import time

import polars as pl
import torch
sys.path.insert(0, ".")
from benchmarks.susceptibility_cost import settings_from_config, inputs_paths
from workflow_lib.slt import susceptibility_linear_stage as stage
from workflow_lib.core import tables
from workflow_lib.analysis import susceptibility_alignment as sa
torch.set_num_threads(2)
settings = settings_from_config("config/config.yaml")
settings["linear_response"] = {"n_prompts": 32, "restrictions": {"layers": "all", "per_layer": ["attn","mlp","heads","layer"]}, "per_token": {"layers": []}}
ck = "results/smollm2-135m/sft_refusal/step-50/checkpoint"
paths = inputs_paths(settings, __import__("pathlib").Path(ck))
t=time.time()
stage.run_linear_susceptibility(model="smollm2-135m", technique="sft_refusal", step=50, model_dir="resources/models/smollm2-135m", checkpoint_dir=ck, mix_path=paths[3], prompt_paths=paths[0], completions_path=paths[1], templates_path=paths[2], settings=settings, sequences_out="/tmp/p32/seq.parquet", tokens_out="/tmp/p32/tok.parquet", table_out="/tmp/p32/sus.parquet")
print("seconds", time.time()-t)
rel = stage.write_reliability(sequences_path="/tmp/p32/seq.parquet", settings={"contrasts": settings["structure"]["contrasts"], "split_half_resamples": 200, "seed": 0}, out_path="/tmp/p32/rel.parquet")
pl.Config.set_tbl_rows(40); pl.Config.set_tbl_width_chars(200)
print(rel.filter(pl.col("component_kind").is_in(["head","mlp"]) & (pl.col("source")=="observable_prompt_halves")).select("component_kind","name","reliability","ci_low","ci_high").sort("component_kind","name"))
sus = tables.read_table("/tmp/p32/sus.parquet", "susceptibility")
print(sus.group_by("observable").agg(pl.col("n_prompts").first()))
al = tables.read_table("results/smollm2-135m/sft_refusal/step-50/refusal/component_alignment.parquet", "component_alignment")
st = {"alignment_observable": "harmful_refusal", "bootstrap_resamples": 2000, "permutations": 5000, "seed": 0}
print(sa.alignment_vs_susceptibility(al, sus, st).select("component_kind","n_components","spearman","ci_low","ci_high","p_value"))
w = sus.pivot(on="observable", index=["component","component_kind","layer","head","model","technique","step","seed","estimator"], values="chi_mean")
con = w.with_columns(chi_mean=pl.col("harmful_refusal")-pl.col("harmless_answer"), observable=pl.lit("refusal_vs_harmless"), status=pl.lit("ok"))
con = tables.fill_missing(con.select("component","component_kind","layer","head","model","technique","step","seed","estimator","chi_mean","observable","status"), "susceptibility")
print(sa.alignment_vs_susceptibility(al, con, st | {"alignment_observable": "refusal_vs_harmless"}).select("component_kind","n_components","spearman","ci_low","ci_high","p_value"))
