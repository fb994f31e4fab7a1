"""A run's results as one Markdown page, written from its summary tables (never by hand).

The README used to carry measurements typed in from particular runs, which went stale
as the code moved (issue 21). This page is generated instead, from the tables a run
wrote under `results/`, with each number's uncertainty as the tables give it:

    python -m workflow_lib.analysis.results_doc [--results results] [--out results/results.md]

`bin/run-default` writes it after the report; `docs/results.md` is the page of the
run named in its header.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
from pathlib import Path

import polars as pl

from workflow_lib.core import statistics, tables


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 10 ** digits else f"{value:.{digits}g}"
    return str(value)


def _table(df: pl.DataFrame) -> str:
    header = "| " + " | ".join(df.columns) + " |\n|" + "---|" * df.width + "\n"
    return header + "".join("| " + " | ".join(_fmt(v) for v in row) + " |\n" for row in df.iter_rows())


def _read(path: Path) -> pl.DataFrame | None:
    return pl.read_parquet(path) if path.is_file() else None


def _interval(value, low, high, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f} [{_fmt(low, digits)}, {_fmt(high, digits)}]"


def job_costs(results: Path) -> str | None:
    stages = _read(results / "job_costs_by_stage.parquet")
    if stages is None:
        return None
    total = stages["wall_s"].sum()
    shown = stages.select("stage", "jobs", pl.col("wall_s").round(0), (100 * pl.col("wall_share")).round(0)
                          .alias("share_%"), pl.col("peak_rss_mb").round(0))
    return (f"Sum of job wall time {total:.0f} s (jobs run side by side, so the run's own wall time is "
            "shorter; `results/job_costs_by_stage.parquet`):\n\n" + _table(shown))


def refusal(summary: Path) -> str | None:
    trajectory = _read(summary / "trajectory.parquet")
    if trajectory is None:
        return None
    rows = trajectory.filter(pl.col("refusal_rate").is_not_null()).sort("technique", "step", "prompt_set")
    lows, highs = statistics.wilson_of_rates(rows["refusal_rate"], rows["n"])
    shown = rows.with_columns(pl.Series("low", lows, pl.Float64), pl.Series("high", highs, pl.Float64))
    cells = [{"technique": r["technique"], "step": r["step"], "prompt_set": r["prompt_set"], "n": r["n"],
              "refusal rate [95% Wilson]": _interval(r["refusal_rate"], r["low"], r["high"]),
              "refusal log-odds": _fmt(r["refusal_score_logodds"])} for r in shown.iter_rows(named=True)]
    return ("Refusal on held-out test prompts (substring judge; `summary/trajectory.parquet`):\n\n"
            + _table(pl.DataFrame(cells)))


def llc(summary: Path) -> str | None:
    levels = _read(summary / "llc.parquet")
    if levels is None:
        return None
    rows = levels.filter(pl.col("row") == "summary").sort("parameter_space", "dataset", "technique", "step")
    cells = [{"space": r["parameter_space"], "dataset": r["dataset"], "technique": r["technique"],
              "step": r["step"], "LLC +- SE": f"{_fmt(r['llc_mean'], 4)} +- {_fmt(r['llc_se'], 2)}",
              "ok chains": r["n_ok_chains"], "status": r["status"]} for r in rows.iter_rows(named=True)]
    text = "LLC per checkpoint (mean over ok chains +- its standard error; `summary/llc.parquet`):\n\n"
    text += _table(pl.DataFrame(cells))
    changes = _read(summary / "llc_differences.parquet")
    if changes is not None and changes.height:
        cells = [{"space": r["parameter_space"], "technique": r["technique"],
                  "step": f"{r['reference_step']} -> {r['step']}", "kind": r["kind"],
                  "change +- SE": f"{_fmt(r['delta'], 3)} +- {_fmt(r['delta_se'], 2)}",
                  "resolved (> 2 SE)": r["resolved"], "paired": r["paired"]}
                 for r in changes.sort("parameter_space", "technique", "step").iter_rows(named=True)]
        text += ("\nChanges along each trajectory (paired standard errors where the chains share noise and "
                 "batches; `summary/llc_differences.parquet`):\n\n" + _table(pl.DataFrame(cells)))
    return text


def techniques(analysis: Path) -> str | None:
    comparison = _read(analysis / "technique_comparison.parquet")
    if comparison is None:
        return None
    shown = comparison.select("technique", "final_step", "judge", "refusal_rate", "over_refusal_rate", "asr_none",
                              "asr_templates", "asr_prefill", "asr_direction_ablation", "llc",
                              "llc_change_from_base", "direction_status")
    return ("Each technique at its last checkpoint (`analysis/technique_comparison.parquet`; intervals are in "
            "the per-checkpoint tables):\n\n" + _table(shown))


def correlations(analysis: Path) -> str | None:
    table = _read(analysis / "llc_asr_correlation.parquet")
    if table is None:
        return None
    rows = table.filter(pl.col("status") == "ok").sort("p_value").head(12)
    if rows.is_empty():
        return ("No LLC-ASR correlation could be estimated (too few checkpoints with both measures; "
                "`analysis/llc_asr_correlation.parquet` gives each reason).\n")
    cells = [{"technique": r["technique"], "LLC": f"{r['llc_measure']} {r['llc_detail']}", "attack": r["attack"],
              "judge": r["judge"], "method": r["method"], "n": r["n_checkpoints"],
              "estimate [95% CI]": _interval(r["estimate"], r["ci_low"], r["ci_high"]),
              "p": _fmt(r["p_value"], 2)} for r in rows.iter_rows(named=True)]
    return ("LLC against attack success across checkpoints, the 12 smallest p-values of "
            f"{table.filter(pl.col('status') == 'ok').height} tests (bootstrap intervals, permutation p-values, "
            "not corrected for multiple comparisons; `analysis/llc_asr_correlation.parquet`):\n\n"
            + _table(pl.DataFrame(cells)))


def susceptibility_reliability(summary: Path) -> str | None:
    table = _read(summary / "susceptibility_reliability.parquet")
    if table is None:
        return None
    grouped = (table.filter(pl.col("reliability").is_not_null())
               .group_by("estimator", "source", "component_kind", "ranked_by", "name")
               .agg(pl.len().alias("checkpoints"), pl.col("reliability").median().alias("median"),
                    pl.col("reliability").min().alias("min"), pl.col("reliability").max().alias("max"))
               .sort("estimator", "source", "component_kind", "ranked_by", "name"))
    return ("How well the susceptibility rankings hold under resampling: split-half reliability "
            "(Spearman-Brown) over checkpoints (`summary/susceptibility_reliability.parquet`):\n\n"
            + _table(grouped))


def refusal_direction(summary: Path) -> str | None:
    table = _read(summary / "refusal_direction.parquet")
    if table is None:
        return None
    shown = table.sort("technique", "step").select("technique", "step", "status", "layer", "position",
                                                   "bypass_score", "induce_score", "kl")
    return "The selected refusal direction per checkpoint (`summary/refusal_direction.parquet`):\n\n" + _table(shown)


SECTIONS = [("Cost of the run", lambda r, m: job_costs(r)),
            ("Refusal", lambda r, m: refusal(r / m / "summary")),
            ("Local learning coefficient", lambda r, m: llc(r / m / "summary")),
            ("Techniques compared", lambda r, m: techniques(r / m / "analysis")),
            ("LLC and jailbreak success", lambda r, m: correlations(r / m / "analysis")),
            ("Susceptibility rankings", lambda r, m: susceptibility_reliability(r / m / "summary")),
            ("Refusal direction", lambda r, m: refusal_direction(r / m / "summary"))]


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def render(results: Path, header: str = "") -> str:
    """The page for every model under `results/` (a folder with a `summary/` subfolder)."""
    models = sorted(p.parent.name for p in results.glob("*/summary") if any(p.glob("*.parquet")))
    page = ["# Results\n", header or (
        f"Generated by `python -m workflow_lib.analysis.results_doc` from `{results}/` at commit {_commit()} on "
        f"{datetime.date.today()} ({platform.machine()}, {os.cpu_count()} CPUs). Every number is read from "
        "the run's tables; rerun the command after a run to refresh it.\n")]
    for model in models:
        page.append(f"\n## Model `{model}`\n")
        for title, section in SECTIONS:
            body = section(results, model)
            if body:
                page.append(f"\n### {title}\n\n{body}")
    return "".join(page)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--out", type=Path, default=Path("results/results.md"))
    args = parser.parse_args(argv)
    final, tmp = tables.atomic_target(args.out)
    tmp.write_text(render(args.results))
    tmp.replace(final)


if __name__ == "__main__":
    main()
