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
        same_as=same_as_args,
    threads: resource("refusal_direction", "threads")
    resources:
        **rule_resources("refusal_direction"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib refusal_direction --model {wildcards.model} --technique {wildcards.technique} "
        "--step {wildcards.step} --model-dir {input.model} --checkpoint {input.checkpoint} "
        "--prompts harmful={input.harmful} harmless={input.harmless} --settings {params.settings:q} "
        "--threads {threads} --candidates-out {output.candidates} --direction-out {output.direction} "
        "--out {output.summary} {params.same_as} > {log} 2>&1"


rule refusal_interventions:
    """Judge the answers with the direction ablated or added, against the baseline."""
    input:
        unpack(refusal_direction_prompts),
        unpack(generation_inputs),
        model=model_dir,
        direction="results/{model}/{technique}/step-{step}/refusal/refusal_direction.safetensors",
    output:
        "results/{model}/{technique}/step-{step}/refusal/refusal_interventions.parquet",
    log:
        "logs/refusal_interventions/{model}/{technique}/step-{step}.log",
    benchmark:
        "results/benchmarks/refusal_interventions/{model}/{technique}/step-{step}.tsv",
    params:
        settings=refusal_interventions_settings,
        generations=generation_args,
    threads: resource("refusal_interventions", "threads")
    resources:
        **rule_resources("refusal_interventions"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib refusal_interventions --model {wildcards.model} --technique {wildcards.technique} "
        "--step {wildcards.step} --model-dir {input.model} --direction {input.direction} "
        "--prompts harmful={input.harmful} harmless={input.harmless} --generations {params.generations} "
        "--settings {params.settings:q} --threads {threads} --out {output} > {log} 2>&1"


rule refusal_drift:
    input:
        unpack(refusal_drift_inputs),
    output:
        "results/{model}/{technique}/refusal_drift.parquet",
    log:
        "logs/refusal_drift/{model}/{technique}.log",
    benchmark:
        "results/benchmarks/refusal_drift/{model}/{technique}.tsv",
    params:
        settings=settings_json("refusal_drift", {}),
        steps=lambda wildcards: " ".join(str(s) for s in technique_steps(wildcards.technique)),
    threads: resource("refusal_drift", "threads")
    resources:
        **rule_resources("refusal_drift"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib refusal_drift --model {wildcards.model} --technique {wildcards.technique} "
        "--steps {params.steps} --directions {input.directions} --base {input.base} "
        "--settings {params.settings:q} --out {output} > {log} 2>&1"


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
    threads: resource("refusal_direction_summary", "threads")
    resources:
        **rule_resources("refusal_direction_summary"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib refusal_direction_summary --directions {input.directions} "
        "--interventions {input.interventions} --drifts {input.drifts} --settings {params.settings:q} "
        "--out {output.directions} --interventions-out {output.interventions} --drift-out {output.drift} > {log} 2>&1"


rule plot_refusal_direction:
    input:
        directions="results/{model}/summary/refusal_direction.parquet",
        interventions="results/{model}/summary/refusal_interventions.parquet",
    output:
        report(
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
    threads: resource("plot_refusal_direction", "threads")
    resources:
        **rule_resources("plot_refusal_direction"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib plot_refusal_direction --directions {input.directions} "
        "--interventions {input.interventions} --settings {params.settings:q} --out {output} > {log} 2>&1"
