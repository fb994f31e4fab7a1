"""`job_costs` stage: where the run's time and memory went, per job and per stage.

Every rule that does work declares Snakemake's `benchmark:` (a TSV of wall time,
CPU time and peak RSS, written by Snakemake itself around the job) at
`results/benchmarks/<rule>/<wildcards>.tsv`. This stage reads them all, maps each
rule to its stage (the `rules/<stage>.smk` file that declares it) and writes one
row per job, a per-stage sum and a figure, so that a user sizing a cluster sees
each job's cost and the report shows where the time goes. The per-stage wall time
is the sum over that stage's jobs: with several jobs at once it exceeds the run's
elapsed time, which `bin/run-default` prints.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from workflow_lib.core import tables


def _number(value: str) -> float | None:
    """Snakemake writes `-` where it could not measure (a job shorter than its sampling interval)."""
    try:
        return float(value)
    except ValueError:
        return None


def read_benchmarks(paths: list[str], root: str | Path, stage_of: dict[str, str]) -> pl.DataFrame:
    """One row per benchmark TSV, `<root>/<rule>/<job>.tsv` or `<root>/<rule>.tsv` (job ""): its first (only)
    measured repeat."""
    rows = []
    for path in sorted(paths):
        parts = Path(path).relative_to(root).with_suffix("").parts  # a rule without wildcards: <rule>.tsv
        rule, job = parts[0], "/".join(parts[1:])
        lines = Path(path).read_text().splitlines()
        if len(lines) < 2:
            continue
        record = dict(zip(lines[0].split("\t"), lines[1].split("\t"), strict=False))
        rows.append({"rule": rule, "stage": stage_of.get(rule, "other"),
                     "job": job,
                     "wall_s": _number(record.get("s", "-")), "cpu_s": _number(record.get("cpu_time", "-")),
                     "max_rss_mb": _number(record.get("max_rss", "-"))})
    return tables.conform(pl.DataFrame(rows, schema=tables.empty_frame("job_costs").schema), "job_costs")


def by_stage(jobs: pl.DataFrame) -> pl.DataFrame:
    """Sum of wall and CPU time and the largest peak RSS per stage, largest wall time first."""
    total = jobs["wall_s"].sum() or 0.0
    out = (jobs.group_by("stage")
           .agg(jobs=pl.len().cast(pl.Int64), wall_s=pl.col("wall_s").sum(), cpu_s=pl.col("cpu_s").sum(),
                peak_rss_mb=pl.col("max_rss_mb").max())
           .with_columns(wall_share=pl.col("wall_s") / total if total else pl.lit(None, pl.Float64))
           .sort("wall_s", descending=True))
    return tables.conform(out, "job_costs_by_stage")


def write_job_costs(*, paths: list[str], root: str, stage_of: dict[str, str], jobs_out, stages_out,
                    plot_out) -> pl.DataFrame:
    jobs = tables.write_table(read_benchmarks(paths, root, stage_of), jobs_out, "job_costs")
    stages = tables.write_table(by_stage(jobs), stages_out, "job_costs_by_stage")
    from workflow_lib.analysis import plots

    plots.job_costs(stages, plot_out)
    return stages
