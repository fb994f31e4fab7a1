# The refusal direction per checkpoint (Arditi et al. 2024): extraction, scoring and selection,
# interventions on test prompts, drift along each trajectory, summaries and a figure.


# Light rules (tables, figures, small files) run on the submitting machine, not as cluster jobs.
localrules:
    refusal_drift,
    refusal_direction_summary,
    plot_refusal_direction,


rule refusal_direction:
    input:
        unpack(refusal_direction_prompts),
        unpack(refusal_direction_shared),
        model=model_dir,
        checkpoint="results/{model}/{technique}/step-{step}/checkpoint",
    output:
        candidates="results/{model}/{technique}/step-{step}/refusal/refusal_candidates.parquet",
        direction="results/{model}/{technique}/step-{step}/refusal/refusal_direction.safetensors",
        summary="results/{model}/{technique}/step-{step}/refusal/refusal_direction.parquet",
    log:
        "logs/refusal_direction/{model}/{technique}/step-{step}.log",
    benchmark:
        "results/benchmarks/refusal_direction/{model}/{technique}/step-{step}.tsv",
    params:
        settings=refusal_direction_settings,
        job=stage_job(),
    threads: resource("refusal_direction", "threads")
    resources:
        **rule_resources("refusal_direction"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("refusal_direction")


rule refusal_interventions:
    """Judge the answers with the direction ablated or added, against the baseline."""
    input:
        unpack(refusal_direction_prompts),
        unpack(generation_inputs),
        model=model_dir,
        direction="results/{model}/{technique}/step-{step}/refusal/refusal_direction.safetensors",
    output:
        table="results/{model}/{technique}/step-{step}/refusal/refusal_interventions.parquet",
    log:
        "logs/refusal_interventions/{model}/{technique}/step-{step}.log",
    benchmark:
        "results/benchmarks/refusal_interventions/{model}/{technique}/step-{step}.tsv",
    params:
        settings=refusal_interventions_settings,
        job=stage_job(),
    threads: resource("refusal_interventions", "threads")
    resources:
        **rule_resources("refusal_interventions"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("refusal_interventions")


rule refusal_drift:
    input:
        unpack(refusal_drift_inputs),
    output:
        drift="results/{model}/{technique}/refusal_drift.parquet",
    log:
        "logs/refusal_drift/{model}/{technique}.log",
    benchmark:
        "results/benchmarks/refusal_drift/{model}/{technique}.tsv",
    params:
        settings=settings_json("refusal_drift", {}),
        job=stage_job(steps=technique_steps_of),
    threads: resource("refusal_drift", "threads")
    resources:
        **rule_resources("refusal_drift"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("refusal_drift")


rule refusal_direction_summary:
    input:
        directions=all_refusal_direction_tables,
        interventions=all_refusal_interventions,
        drifts=all_refusal_drifts,
    output:
        directions="results/{model}/summary/refusal_direction.parquet",
        interventions="results/{model}/summary/refusal_interventions.parquet",
        drift="results/{model}/summary/refusal_drift.parquet",
    log:
        "logs/refusal_direction_summary/{model}.log",
    benchmark:
        "results/benchmarks/refusal_direction_summary/{model}.tsv",
    params:
        settings=settings_json("refusal_direction_summary", {}),
        job=stage_job(),
    threads: resource("refusal_direction_summary", "threads")
    resources:
        **rule_resources("refusal_direction_summary"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("refusal_direction_summary")


rule plot_refusal_direction:
    input:
        directions="results/{model}/summary/refusal_direction.parquet",
        interventions="results/{model}/summary/refusal_interventions.parquet",
    output:
        plot=report(
            "results/{model}/plots/refusal_interventions.png",
            caption="../report/refusal_interventions.rst",
            category="Refusal direction",
            subcategory="{model}",
        ),
    log:
        "logs/plot_refusal_direction/{model}.log",
    benchmark:
        "results/benchmarks/plot_refusal_direction/{model}.tsv",
    params:
        settings=settings_json("plot_refusal_direction", {}),
        job=stage_job(),
    threads: resource("plot_refusal_direction", "threads")
    resources:
        **rule_resources("plot_refusal_direction"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("plot_refusal_direction")


rule component_alignment:
    input:
        unpack(component_alignment_shared),
        model=model_dir,
        checkpoint="results/{model}/{technique}/step-{step}/checkpoint",
        direction="results/{model}/{technique}/step-{step}/refusal/refusal_direction.safetensors",
    output:
        table="results/{model}/{technique}/step-{step}/refusal/component_alignment.parquet",
    log:
        "logs/component_alignment/{model}/{technique}/step-{step}.log",
    benchmark:
        "results/benchmarks/component_alignment/{model}/{technique}/step-{step}.tsv",
    params:
        settings=settings_json("component_alignment", {}, runtime=True),
        job=stage_job(),
    threads: resource("component_alignment", "threads")
    resources:
        **rule_resources("component_alignment"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("component_alignment")
