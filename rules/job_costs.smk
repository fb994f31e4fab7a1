# Where the time and memory went: every job's Snakemake benchmark file, per job and summed per stage.
# Not part of `all` (it reads the benchmark files of a finished run): `bin/run-default` runs it after
# `all` and puts it in the report; `snakemake job_costs` refreshes it at any time.


localrules:
    job_costs,


rule job_costs:
    input:
        benchmarks=benchmark_files,
    output:
        jobs="results/job_costs.parquet",
        stages="results/job_costs_by_stage.parquet",
        plot=report(
            "results/plots/job_costs.png",
            caption="../report/job_costs.rst",
            category="6. Cost of the run",
        ),
    log:
        "logs/job_costs.log",
    params:
        settings=job_costs_settings,
        job=stage_job(root="results/benchmarks"),
    threads: resource("job_costs", "threads")
    resources:
        **rule_resources("job_costs"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("job_costs")
