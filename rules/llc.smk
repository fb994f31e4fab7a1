# Local learning coefficient per checkpoint (devinterp SGLD), its summary, figures and calibration.


# Light rules (tables, figures, small files) run on the submitting machine, not as cluster jobs.
localrules:
    llc_summary,
    llc_differences,
    plot_llc,


rule llc:
    input:
        unpack(llc_inputs),
        unpack(llc_shared),
        model=model_dir,
        checkpoint="results/{model}/{technique}/step-{step}/checkpoint",
        completions="results/{model}/base/completions.parquet",
    output:
        table="results/{model}/{technique}/step-{step}/llc/{space}/{dataset}/llc.parquet",
        trace="results/{model}/{technique}/step-{step}/llc/{space}/{dataset}/llc_trace.parquet",
    log:
        "logs/llc/{model}/{technique}/step-{step}/{space}-{dataset}.log",
    benchmark:
        "results/benchmarks/llc/{model}/{technique}/step-{step}/{space}-{dataset}.tsv",
    params:
        settings=llc_settings,
        job=stage_job(),
    threads: resource("llc", "threads")
    resources:
        **rule_resources("llc"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("llc")


rule llc_differences:
    input:
        llc=all_llc_tables,
        traces=all_llc_traces,
    output:
        table="results/{model}/summary/llc_differences.parquet",
    log:
        "logs/llc_differences/{model}.log",
    benchmark:
        "results/benchmarks/llc_differences/{model}.tsv",
    params:
        settings=settings_json("llc_differences", {"n_beta": LLC["sampler"]["n_beta"]}),
        job=stage_job(),
    threads: resource("llc_differences", "threads")
    resources:
        **rule_resources("llc_differences"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("llc_differences")


rule llc_summary:
    input:
        llc=all_llc_tables,
    output:
        table="results/{model}/summary/llc.parquet",
    log:
        "logs/llc_summary/{model}.log",
    benchmark:
        "results/benchmarks/llc_summary/{model}.tsv",
    params:
        settings=settings_json("llc_summary", {}),
        job=stage_job(),
    threads: resource("llc_summary", "threads")
    resources:
        **rule_resources("llc_summary"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("llc_summary")


rule plot_llc:
    input:
        llc="results/{model}/summary/llc.parquet",
        differences="results/{model}/summary/llc_differences.parquet",
        traces=all_llc_traces,
    output:
        trajectory=report(
            "results/{model}/plots/llc_trajectory.png",
            caption="../report/llc_trajectory.rst",
            category="LLC",
            subcategory="{model}",
        ),
        traces=report(
            "results/{model}/plots/llc_traces.png",
            caption="../report/llc_traces.rst",
            category="LLC",
            subcategory="{model}",
        ),
    log:
        "logs/plot_llc/{model}.log",
    benchmark:
        "results/benchmarks/plot_llc/{model}.tsv",
    params:
        settings=settings_json("plot_llc", {}),
        job=stage_job(),
    threads: resource("plot_llc", "threads")
    resources:
        **rule_resources("plot_llc"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("plot_llc")


rule llc_calibrate:
    input:
        unpack(calibration_inputs),
        model=model_dir,
        completions="results/{model}/base/completions.parquet",
    output:
        table="results/{model}/llc_calibration/calibration.parquet",
        trace="results/{model}/llc_calibration/calibration_trace.parquet",
        plot=report(
            "results/{model}/llc_calibration/calibration.png",
            caption="../report/llc_calibration.rst",
            category="LLC",
            subcategory="{model}",
        ),
    log:
        "logs/llc_calibrate/{model}.log",
    benchmark:
        "results/benchmarks/llc_calibrate/{model}.tsv",
    params:
        settings=calibration_settings,
        job=stage_job(technique=CALIBRATION["technique"], step=CALIBRATION["step"]),
    threads: resource("llc_calibrate", "threads")
    resources:
        **rule_resources("llc_calibrate"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("llc_calibrate")


rule llc_calibration:
    """Target: the step size x n_beta calibration grid for every model (not part of `all`)."""
    input:
        expand("results/{model}/llc_calibration/calibration.png", model=MODELS),
    default_target: False
