# Per-token susceptibilities per checkpoint (devinterp), their structure, summary, figures and seed check.


# Light rules (tables, figures, small files) run on the submitting machine, not as cluster jobs.
localrules:
    susceptibility_structure,
    susceptibility_linear_structure,
    susceptibility_reliability,
    susceptibility_summary,
    susceptibility_reliability_summary,
    plot_susceptibility,
    susceptibility_seed_agreement,


rule susceptibility:
    input:
        unpack(susceptibility_inputs),
        model=model_dir,
        checkpoint="results/{model}/{technique}/step-{step}/checkpoint",
        completions="results/{model}/base/completions.parquet",
    output:
        tokens="results/{model}/{technique}/step-{step}/susceptibility/seed-{seed}/susceptibility_tokens.parquet",
        table="results/{model}/{technique}/step-{step}/susceptibility/seed-{seed}/susceptibility.parquet",
        reliability="results/{model}/{technique}/step-{step}/susceptibility/seed-{seed}/susceptibility_reliability.parquet",
    log:
        "logs/susceptibility/{model}/{technique}/step-{step}/seed-{seed}.log",
    benchmark:
        "results/benchmarks/susceptibility/{model}/{technique}/step-{step}/seed-{seed}.tsv",
    params:
        settings=susceptibility_settings,
        job=stage_job(),
    threads: resource("susceptibility", "threads")
    resources:
        **rule_resources("susceptibility"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("susceptibility")


rule susceptibility_linear:
    input:
        unpack(susceptibility_inputs),
        model=model_dir,
        checkpoint="results/{model}/{technique}/step-{step}/checkpoint",
        completions="results/{model}/base/completions.parquet",
    output:
        sequences="results/{model}/{technique}/step-{step}/susceptibility/linear/susceptibility_sequences.parquet",
        tokens="results/{model}/{technique}/step-{step}/susceptibility/linear/susceptibility_tokens.parquet",
        table="results/{model}/{technique}/step-{step}/susceptibility/linear/susceptibility.parquet",
    log:
        "logs/susceptibility_linear/{model}/{technique}/step-{step}.log",
    benchmark:
        "results/benchmarks/susceptibility_linear/{model}/{technique}/step-{step}.tsv",
    params:
        settings=linear_susceptibility_settings,
        job=stage_job(),
    threads: resource("susceptibility_linear", "threads")
    resources:
        **rule_resources("susceptibility_linear"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("susceptibility_linear")


rule susceptibility_linear_structure:
    input:
        sequences="results/{model}/{technique}/step-{step}/susceptibility/linear/susceptibility_sequences.parquet",
        table="results/{model}/{technique}/step-{step}/susceptibility/linear/susceptibility.parquet",
    output:
        structure="results/{model}/{technique}/step-{step}/susceptibility/linear/susceptibility_structure.parquet",
    log:
        "logs/susceptibility_linear_structure/{model}/{technique}/step-{step}.log",
    benchmark:
        "results/benchmarks/susceptibility_linear_structure/{model}/{technique}/step-{step}.tsv",
    params:
        settings=linear_structure_settings,
        job=stage_job(),
    threads: resource("susceptibility_linear_structure", "threads")
    resources:
        **rule_resources("susceptibility_linear_structure"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("susceptibility_linear_structure")


rule susceptibility_reliability:
    input:
        sequences="results/{model}/{technique}/step-{step}/susceptibility/linear/susceptibility_sequences.parquet",
    output:
        reliability="results/{model}/{technique}/step-{step}/susceptibility/linear/susceptibility_reliability.parquet",
    log:
        "logs/susceptibility_reliability/{model}/{technique}/step-{step}.log",
    benchmark:
        "results/benchmarks/susceptibility_reliability/{model}/{technique}/step-{step}.tsv",
    params:
        settings=linear_reliability_settings,
        job=stage_job(),
    threads: resource("susceptibility_reliability", "threads")
    resources:
        **rule_resources("susceptibility_reliability"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("susceptibility_reliability")


rule susceptibility_structure:
    input:
        tokens="results/{model}/{technique}/step-{step}/susceptibility/seed-{seed}/susceptibility_tokens.parquet",
        table="results/{model}/{technique}/step-{step}/susceptibility/seed-{seed}/susceptibility.parquet",
    output:
        structure="results/{model}/{technique}/step-{step}/susceptibility/seed-{seed}/susceptibility_structure.parquet",
    log:
        "logs/susceptibility_structure/{model}/{technique}/step-{step}/seed-{seed}.log",
    benchmark:
        "results/benchmarks/susceptibility_structure/{model}/{technique}/step-{step}/seed-{seed}.tsv",
    params:
        settings=settings_json("susceptibility_structure", SUSCEPTIBILITY["structure"]),
        job=stage_job(),
    threads: resource("susceptibility_structure", "threads")
    resources:
        **rule_resources("susceptibility_structure"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("susceptibility_structure")


rule susceptibility_summary:
    input:
        tables=all_susceptibility_tables,
        structures=all_susceptibility_structures,
    output:
        table="results/{model}/summary/susceptibility.parquet",
        structure="results/{model}/summary/susceptibility_structure.parquet",
    log:
        "logs/susceptibility_summary/{model}.log",
    benchmark:
        "results/benchmarks/susceptibility_summary/{model}.tsv",
    params:
        settings=settings_json("susceptibility_summary", {}),
        job=stage_job(),
    threads: resource("susceptibility_summary", "threads")
    resources:
        **rule_resources("susceptibility_summary"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("susceptibility_summary")


rule susceptibility_reliability_summary:
    input:
        tables=all_susceptibility_reliabilities,
    output:
        table="results/{model}/summary/susceptibility_reliability.parquet",
    log:
        "logs/susceptibility_reliability_summary/{model}.log",
    benchmark:
        "results/benchmarks/susceptibility_reliability_summary/{model}.tsv",
    params:
        settings=settings_json("susceptibility_reliability_summary", {}),
        job=stage_job(),
    threads: resource("susceptibility_reliability_summary", "threads")
    resources:
        **rule_resources("susceptibility_reliability_summary"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("susceptibility_reliability_summary")


rule plot_susceptibility:
    input:
        table="results/{model}/summary/susceptibility.parquet",
        structure="results/{model}/summary/susceptibility_structure.parquet",
        reliability="results/{model}/summary/susceptibility_reliability.parquet",
    output:
        heatmaps=report(
            "results/{model}/plots/susceptibility_heatmaps.png",
            caption="../report/susceptibility_heatmaps.rst",
            category="Susceptibilities",
            subcategory="{model}",
        ),
        contrasts=report(
            "results/{model}/plots/susceptibility_contrasts.png",
            caption="../report/susceptibility_contrasts.rst",
            category="Susceptibilities",
            subcategory="{model}",
        ),
        reliability=report(
            "results/{model}/plots/susceptibility_reliability.png",
            caption="../report/susceptibility_reliability.rst",
            category="Susceptibilities",
            subcategory="{model}",
        ),
    log:
        "logs/plot_susceptibility/{model}.log",
    benchmark:
        "results/benchmarks/plot_susceptibility/{model}.tsv",
    params:
        settings=settings_json("plot_susceptibility", {"estimator": SUSCEPTIBILITY["estimators"][0]}),
        job=stage_job(),
    threads: resource("plot_susceptibility", "threads")
    resources:
        **rule_resources("plot_susceptibility"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("plot_susceptibility")


rule susceptibility_seed_agreement:
    input:
        tables=seed_check_tables,
    output:
        agreement="results/{model}/susceptibility_seed_check/agreement.parquet",
    log:
        "logs/susceptibility_seed_agreement/{model}.log",
    benchmark:
        "results/benchmarks/susceptibility_seed_agreement/{model}.tsv",
    params:
        settings=seed_check_settings,
        job=stage_job(),
    threads: resource("susceptibility_seed_agreement", "threads")
    resources:
        **rule_resources("susceptibility_seed_agreement"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("susceptibility_seed_agreement")


rule susceptibility_seed_check:
    """Target: the same checkpoint with two or more sampler seeds, and their ranking agreement (not in `all`)."""
    input:
        expand("results/{model}/susceptibility_seed_check/agreement.parquet", model=MODELS),
    default_target: False


rule susceptibilities:
    """Target: every checkpoint's susceptibilities and their figures, whether or not `all` includes them."""
    input:
        expand("results/{model}/plots/susceptibility_heatmaps.png", model=MODELS),
    default_target: False
