"""A tiny GPT-NeoX through the whole DAG with the default LoRA settings (issue 20).

GPT-NeoX names its attention projection `query_key_value`, so a config that names
Llama's `q_proj`/`v_proj` cannot fit it; with `target_modules` unset, PEFT's default
for the architecture applies and every stage runs. (Llama runs in test_workflow;
Qwen2 and Gemma go through the pre-flight in test_preflight and the stages' unit tests.)
"""

from __future__ import annotations

import polars as pl
import yaml

import tiny
from conftest import copy_workflow
from test_workflow import snakemake


def neox_config(config: dict) -> dict:
    """tests/config/tiny.yaml cut to one technique of two checkpoints, with the default LoRA targets."""
    technique = config["techniques"]["sft_refusal"]
    technique["steps"] = [0, 2]
    technique["lora"].pop("target_modules")
    config["techniques"] = {"sft_refusal": technique}
    config["llc"]["spaces"] = ["adapted"]
    config["llc"]["calibration"].update(step=2, space="adapted")
    return config


def test_gpt_neox_runs_the_whole_dag_with_peft_default_targets(tmp_path, wheel_cache):
    work = copy_workflow(tmp_path)
    tiny.save_tiny_model(work / "resources" / "tiny-src", "gpt_neox")
    path = work / "tests" / "config" / "tiny.yaml"
    path.write_text(yaml.safe_dump(neox_config(yaml.safe_load(path.read_text()))))
    snakemake(work)
    log = (work / "logs" / "finetune_segment" / "tiny" / "sft_refusal" / "step-0.log").read_text()
    assert "LoRA adapts ['query_key_value']: PEFT's default for gpt_neox (lora.target_modules unset)" in log
    results = work / "results" / "tiny"
    llc = pl.read_parquet(results / "sft_refusal" / "step-2" / "llc" / "adapted" / "reference" / "llc.parquet")
    assert llc["n_parameters"][0] == 2 * 32 * 96  # query_key_value of both layers: 32 x 96 weights each
    for table in ("llc", "refusal_direction", "jailbreak", "susceptibility"):
        assert pl.read_parquet(results / "summary" / f"{table}.parquet").height > 0, table
    assert (results / "plots" / "llc_trajectory.png").stat().st_size > 0
