"""How long Snakemake takes to build the DAG of a cluster-sized config (issue 21: goal <= 15 s).

The config is config/all_techniques.yaml with five trained techniques of 50 checkpoints
each (steps 0, 10, ..., 490; the starts moved to step 490), written to a temporary
folder with a fresh copy of the workflow and no results, so `snakemake -n` plans
every job. Run alone on an idle machine:

    python benchmarks/dag_build.py [--profile]

Prints the job count and the wall time of `snakemake -n --quiet rules` (the mean of
--repeats runs; the pre-flight's stamp is written by an untimed first run), and with
--profile the 25 costliest functions (cProfile, cumulative) of one more run.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = 50
TRAINED = ["sft_refusal", "dpo", "harmful_finetune", "deep_alignment", "circuit_breaker"]


def cluster_config() -> dict:
    config = yaml.safe_load((REPO / "config" / "all_techniques.yaml").read_text())
    steps = list(range(0, 10 * CHECKPOINTS, 10))
    techniques = {}
    for name in TRAINED:
        spec = dict(config["techniques"][name], steps=steps)
        if "start_from" in spec:
            spec["start_from"] = dict(spec["start_from"], step=steps[-1])
        if spec.get("schedule", {}).get("name", "constant") != "constant":
            spec["schedule"] = dict(spec["schedule"], total_steps=steps[-1])
        techniques[name] = spec
    config["techniques"] = techniques
    llc = config.setdefault("llc", {})
    llc["calibration"] = dict(llc.get("calibration", {}), technique="sft_refusal", step=steps[-1])
    for section in ("llc", "susceptibility", "refusal_direction", "jailbreak"):
        if config.get(section, {}).get("techniques"):
            config[section]["techniques"] = [t for t in config[section]["techniques"] if t in techniques] or None
    seed_check = config.get("susceptibility", {}).get("seed_check", {})
    if seed_check.get("technique") is not None:
        seed_check.update(technique="sft_refusal", step=steps[-1])
    return config


def dry_run(work: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *extra, "-m", "snakemake", "-n", "--quiet", "rules", "--cores", "2",
           "--configfile", "cluster.yaml"]
    return subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        for name in ("Snakefile", "rules", "config", "report", "workflow_lib", "profiles", "envs"):
            src = REPO / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
        (work / "cluster.yaml").write_text(yaml.safe_dump(cluster_config()))
        first = dry_run(work)  # writes the pre-flight stamp; not timed
        jobs = int(re.search(r"^total\s+(\d+)$", first.stdout, re.M).group(1))
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            dry_run(work)
            times.append(time.perf_counter() - start)
        print(json.dumps({"jobs": jobs, "dry_run_s": [round(t, 2) for t in times],
                          "mean_s": round(sum(times) / len(times), 2)}))
        if args.profile:
            dry_run(work, "-m", "cProfile", "-o", str(work / "dag.prof"))
            import pstats

            pstats.Stats(str(work / "dag.prof")).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
