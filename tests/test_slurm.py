"""The tiny workflow on a real one-node SLURM cluster, through profiles/slurm.

tests/slurm/start.sh starts munged, slurmctld and slurmd on this machine (installing Debian's
slurm-wlm and munge first when they are missing and we are root), with two fake GPUs that
SLURM schedules but torch cannot see. The workflow then runs as README.md's cluster section
says: `snakemake --profile profiles/slurm --default-resources slurm_partition=<partition>`,
with `runtime.device: auto`, so the model stages ask SLURM for a GPU and fall back to the CPU
inside the job. The session's local tiny run (tests/conftest.py: tiny_run, the run tests/test_workflow.py
checks) is the reference: every table the SLURM run writes must equal its table there.

The target is one trajectory of the tiny config to its last checkpoint with every per-checkpoint
stage there (base completions, three fine-tuning segments, refusal eval, LLC, refusal
direction, susceptibility, jailbreak), not the whole tiny DAG: through SLURM each job costs an
inner Snakemake start and a status poll, and the whole DAG (81 jobs) would take many minutes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from safetensors import safe_open

from conftest import REPO, WHEEL_CACHE, copy_workflow

SCRIPTS = REPO / "tests" / "slurm"
DAEMONS = ("munged", "slurmctld", "slurmd")
PARTITION = "local"  # the test cluster's one partition (tests/slurm/start.sh)

TARGETS = [
    "results/tiny/sft_refusal/manifest.parquet",
    "results/tiny/sft_refusal/step-4/refusal_eval.parquet",
    "results/tiny/sft_refusal/step-4/llc/lora/reference/llc.parquet",
    "results/tiny/sft_refusal/step-4/refusal/refusal_direction.parquet",
    "results/tiny/sft_refusal/step-4/susceptibility/seed-0/susceptibility.parquet",
    "results/tiny/sft_refusal/step-4/jailbreak/jailbreak.parquet",
]
# Jobs of TARGETS: SLURM runs the model stages (each with a GPU) and the judging stages (without one: they
# read the generate jobs' answers), the light rules run on the submitting machine.
SUBMITTED = {"base_completions": 1, "finetune_segment": 3, "generate": 2, "refusal_eval": 1, "llc": 1,
             "refusal_direction": 1, "susceptibility": 1, "jailbreak": 1}
JUDGING = {"refusal_eval", "jailbreak"}
LOCAL = {"prepare_model", "prepare_prompts", "training_mix", "manifest", "prepare_attacks",
         "prepare_jailbreak_templates"}
# Columns that measure the machine, not the result.
TIMING_COLUMNS = {"wall_s"}


def _have_slurm() -> bool:
    return all(shutil.which(d) or Path("/usr/sbin", d).exists() for d in DAEMONS)


pytestmark = pytest.mark.skipif(
    not _have_slurm() and os.geteuid() != 0,
    reason="needs SLURM (slurmctld, slurmd, munged from Debian's slurm-wlm and munge) or root to install it",
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").is_file() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    start = subprocess.run([str(SCRIPTS / "start.sh"), str(root)], capture_output=True, text=True, timeout=600)
    try:
        assert start.returncode == 0, f"SLURM did not start:\n{start.stdout}\n{start.stderr}"
        yield root
    finally:
        subprocess.run([str(SCRIPTS / "stop.sh"), str(root)], timeout=120)
        pids = [int(p) for p in (root / "pids").read_text().split()] if (root / "pids").exists() else []
        left = [p for p in pids if _alive(p)]
        assert not left, f"daemons still running after stop.sh: {left}"


def _command(work: Path, args: list[str], config: list[str], path_prefix: str = "") -> dict:
    env = dict(os.environ, PATH=f"{path_prefix}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", *args, "--configfile", "tests/config/tiny.yaml",
           "--config", f"cache_dir={WHEEL_CACHE.parent}", *config]
    return {"args": cmd, "cwd": work, "env": env, "text": True}


def _snakemake(work: Path, args: list[str], config: list[str], path_prefix: str = "",
               timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(**_command(work, args, config, path_prefix), capture_output=True, timeout=timeout)


def _on_cluster(cluster: Path, work: Path, targets: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    """README.md's cluster command, with the test cluster's partition. The two extra flags keep
    the SLURM logs of successful jobs (to check them) and poll after 5 s instead of 40 s."""
    args = [*targets, "--profile", "profiles/slurm", "--default-resources", f"slurm_partition={PARTITION}",
            "--slurm-keep-successful-logs", "--slurm-init-seconds-before-status-checks", "5"]
    return _snakemake(work, args, ["runtime={device: auto, dtype: float32}"], f"{cluster / 'bin'}{os.pathsep}",
                      timeout=timeout)


def _slurm_jobs(work: Path, cluster: Path) -> list[dict]:
    """Every SLURM job of the run, from the executor's per-job log files and `scontrol show job`."""
    jobs = []
    for log in sorted((work / ".snakemake" / "slurm_logs").rglob("*.log")):
        rule = log.relative_to(work / ".snakemake" / "slurm_logs").parts[0].removeprefix("rule_")
        shown = subprocess.run([str(cluster / "bin" / "scontrol"), "show", "job", log.stem],
                               capture_output=True, text=True).stdout
        fields = dict(re.findall(r"(\w+(?:/\w+)?)=(\S*)", shown))
        jobs.append({"rule": rule, "jobid": log.stem, "log": log, **fields})
    return jobs


def _jobcomp(cluster: Path) -> dict[str, str]:
    """SLURM's own record of every finished job (jobcomp/filetxt): job id -> state."""
    text = (cluster / "log" / "jobcomp.log").read_text()
    return dict(re.findall(r"JobId=(\d+) .*?JobState=(\S+)", text))


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory, wheel_cache):
    """The SLURM run, in a fresh copy of the workflow."""
    remote = copy_workflow(tmp_path_factory.mktemp("slurm-run"))
    started = time.monotonic()
    result = _on_cluster(cluster, remote, TARGETS)
    print(f"SLURM run: {time.monotonic() - started:.0f} s")
    assert result.returncode == 0, f"SLURM run failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return remote, result


def test_model_stages_ran_as_slurm_jobs_with_a_gpu(runs, cluster):
    remote, result = runs
    jobs = _slurm_jobs(remote, cluster)
    counts = {rule: sum(j["rule"] == rule for j in jobs) for rule in {j["rule"] for j in jobs}}
    assert counts == SUBMITTED
    finished = _jobcomp(cluster)
    for job in jobs:
        assert job["JobState"] == "COMPLETED" and finished[job["jobid"]] == "COMPLETED", job
        assert job["Partition"] == PARTITION
        if job["rule"] in JUDGING:
            assert "gpu" not in job.get("TresPerJob", ""), job
        else:
            assert job["TresPerJob"] == "gres:gpu:1", job  # runtime.device auto on a cluster: one GPU per job
        assert job["Comment"].startswith(f"rule_{job['rule']}_wildcards_")
    for rule in LOCAL:  # localrules ran here, not as SLURM jobs
        assert re.search(rf"Finished jobid: \d+ \(Rule: {rule}\)", result.stderr), rule
    assert len(re.findall(r"submitted with SLURM jobid", result.stderr)) == sum(SUBMITTED.values())


def _tables(root: Path) -> dict[str, Path]:
    """Every result table; not the generation cache, whose entries are named by a digest that includes the
    runtime settings (`device: auto` there, `cpu` here): the generations tables it fills are compared."""
    return {str(p.relative_to(root)): p for p in sorted((root / "results").rglob("*.parquet"))
            if "generations/cache" not in str(p)}


def test_a_failing_job_is_reported_with_its_logs_and_retried_with_more_memory(runs, cluster):
    """A rule made to fail (no answer long enough for an observable: only the job can know) surfaces as FAILED SLURM jobs, one per attempt
    (the profile retries once, with mem_mb x 2), then Snakemake stops with the log paths."""
    remote, _ = runs
    config = remote / "tests" / "config" / "tiny.yaml"
    settings = yaml.safe_load(config.read_text())
    settings["susceptibility"]["min_answer_tokens"] = 500
    config.write_text(yaml.safe_dump(settings))
    target = "results/tiny/sft_refusal/step-0/susceptibility/seed-5/susceptibility.parquet"
    started = time.monotonic()
    result = _on_cluster(cluster, remote, [target], timeout=300)  # a hang fails here
    assert result.returncode != 0
    assert time.monotonic() - started < 300
    output = result.stdout + result.stderr
    log = "logs/susceptibility/tiny/sft_refusal/step-0/seed-5.log"
    assert "Error in rule susceptibility" in output and log in output, output[-4000:]
    assert "leave 500 answer tokens within seq_len" in (remote / log).read_text()
    failed = sorted((j for j in _slurm_jobs(remote, cluster) if j["log"].parent.name == "tiny_sft_refusal_0_5"),
                    key=lambda j: int(j["jobid"]))  # the executor's log folder: wildcards joined by "_"
    assert [j["JobState"] for j in failed] == ["FAILED", "FAILED"], failed
    assert [j["MinMemoryNode"] for j in failed] == ["4000M", "8000M"]  # memory grows with the attempt
    for job in failed:
        assert _jobcomp(cluster)[job["jobid"]] == "FAILED"
        assert str(job["log"]) in output  # the SLURM log of the failed job is named
    assert not (remote / target).exists()


def test_outputs_equal_the_local_run(runs, tiny_run):
    """Every table and binary of the SLURM run equals the local tiny run's (which also built the rest of the
    tiny DAG: the same jobs of the same config, so the same files). Last in this file, so that the tiny run,
    built on the other worker meanwhile, is usually ready by then."""
    remote, _ = runs
    local_tables, remote_tables = _tables(tiny_run), _tables(remote)
    assert set(remote_tables) <= set(local_tables) and len(remote_tables) >= 15, sorted(set(remote_tables) - set(local_tables))
    for name, path in remote_tables.items():
        want, got = pl.read_parquet(local_tables[name]), pl.read_parquet(path)
        drop = sorted(TIMING_COLUMNS & set(want.columns))
        assert want.drop(drop).equals(got.drop(drop)), name
    # Adapters and directions: equal tensors and metadata. (Not bytes: safetensors writes the
    # metadata map in no fixed order, so two identical local runs differ in bytes too.)
    binaries = sorted(p.relative_to(remote) for p in (remote / "results").rglob("*.safetensors"))
    assert len(binaries) >= 4
    for rel in binaries:
        want, got = safe_open(tiny_run / rel, "pt"), safe_open(remote / rel, "pt")
        assert want.metadata() == got.metadata() and set(want.keys()) == set(got.keys()), rel
        assert all(torch.equal(want.get_tensor(k), got.get_tensor(k)) for k in want.keys()), rel
