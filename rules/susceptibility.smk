# Per-token susceptibilities per checkpoint (devinterp), their structure, summary, figures and seed check.


# Light rules (tables, figures, small files) run on the submitting machine, not as cluster jobs.
localrules:
    prepare_jailbreak_templates,
    susceptibility_structure,
    susceptibility_linear_structure,
    susceptibility_reliability,
    susceptibility_summary,
    susceptibility_reliability_summary,
    plot_susceptibility,
    susceptibility_seed_agreement,


rule prepare_jailbreak_templates:
    output:
        "resources/prompts/jailbreak_templates.parquet",
    log:
        "logs/prepare_jailbreak_templates.log",
    benchmark:
        "results/benchmarks/prepare_jailbreak_templates.tsv",
    params:
        settings=settings_json("prepare_jailbreak_templates", {}),
        cache=f"{CACHE}/wheels",
    threads: resource("prepare_jailbreak_templates", "threads")
    resources:
        **rule_resources("prepare_jailbreak_templates"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib prepare_jailbreak_templates --settings {params.settings:q} "
        "--cache {params.cache} --out {output} > {log} 2>&1"


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
        data=susceptibility_data_args,
    threads: resource("susceptibility", "threads")
    resources:
        **rule_resources("susceptibility"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib susceptibility --model {wildcards.model} --technique {wildcards.technique} "
        "--step {wildcards.step} --model-dir {input.model} --checkpoint {input.checkpoint} {params.data} "
        "--completions {input.completions} --settings {params.settings:q} --threads {threads} "
        "--tokens-out {output.tokens} --reliability-out {output.reliability} --out {output.table} > {log} 2>&1"


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
        data=susceptibility_data_args,
    threads: resource("susceptibility_linear", "threads")
    resources:
        **rule_resources("susceptibility_linear"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib susceptibility_linear --model {wildcards.model} --technique {wildcards.technique} "
        "--step {wildcards.step} --model-dir {input.model} --checkpoint {input.checkpoint} {params.data} "
        "--completions {input.completions} --settings {params.settings:q} --threads {threads} "
        "--sequences-out {output.sequences} --tokens-out {output.tokens} --out {output.table} > {log} 2>&1"


rule susceptibility_linear_structure:
    input:
        sequences="results/{model}/{technique}/step-{step}/susceptibility/linear/susceptibility_sequences.parquet",
        table="results/{model}/{technique}/step-{step}/susceptibility/linear/susceptibility.parquet",
    output:
        "results/{model}/{technique}/step-{step}/susceptibility/linear/susceptibility_structure.parquet",
    log:
        "logs/susceptibility_linear_structure/{model}/{technique}/step-{step}.log",
    benchmark:
        "results/benchmarks/susceptibility_linear_structure/{model}/{technique}/step-{step}.tsv",
    params:
        settings=linear_structure_settings,
    threads: resource("susceptibility_linear_structure", "threads")
    resources:
        **rule_resources("susceptibility_linear_structure"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib susceptibility_structure --sequences {input.sequences} --table {input.table} "
        "--settings {params.settings:q} --out {output} > {log} 2>&1"


rule susceptibility_reliability:
    input:
        "results/{model}/{technique}/step-{step}/susceptibility/linear/susceptibility_sequences.parquet",
    output:
        "results/{model}/{technique}/step-{step}/susceptibility/linear/susceptibility_reliability.parquet",
    log:
        "logs/susceptibility_reliability/{model}/{technique}/step-{step}.log",
    benchmark:
        "results/benchmarks/susceptibility_reliability/{model}/{technique}/step-{step}.tsv",
    params:
        settings=linear_reliability_settings,
    threads: resource("susceptibility_reliability", "threads")
    resources:
        **rule_resources("susceptibility_reliability"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib susceptibility_reliability --sequences {input} --settings {params.settings:q} "
        "--out {output} > {log} 2>&1"


rule susceptibility_structure:
    input:
        tokens="results/{model}/{technique}/step-{step}/susceptibility/seed-{seed}/susceptibility_tokens.parquet",
        table="results/{model}/{technique}/step-{step}/susceptibility/seed-{seed}/susceptibility.parquet",
    output:
        "results/{model}/{technique}/step-{step}/susceptibility/seed-{seed}/susceptibility_structure.parquet",
    log:
        "logs/susceptibility_structure/{model}/{technique}/step-{step}/seed-{seed}.log",
    benchmark:
        "results/benchmarks/susceptibility_structure/{model}/{technique}/step-{step}/seed-{seed}.tsv",
    params:
        settings=settings_json("susceptibility_structure", SUSCEPTIBILITY["structure"]),
    threads: resource("susceptibility_structure", "threads")
    resources:
        **rule_resources("susceptibility_structure"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib susceptibility_structure --tokens {input.tokens} --table {input.table} "
        "--settings {params.settings:q} --out {output} > {log} 2>&1"


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
    threads: resource("susceptibility_summary", "threads")
    resources:
        **rule_resources("susceptibility_summary"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib susceptibility_summary --tables {input.tables} --structures {input.structures} "
        "--settings {params.settings:q} --out {output.table} --structure-out {output.structure} > {log} 2>&1"


rule susceptibility_reliability_summary:
    input:
        all_susceptibility_reliabilities,
    output:
        "results/{model}/summary/susceptibility_reliability.parquet",
    log:
        "logs/susceptibility_reliability_summary/{model}.log",
    benchmark:
        "results/benchmarks/susceptibility_reliability_summary/{model}.tsv",
    params:
        settings=settings_json("susceptibility_summary", {}),
    threads: resource("susceptibility_reliability_summary", "threads")
    resources:
        **rule_resources("susceptibility_reliability_summary"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib susceptibility_reliability_summary --tables {input} --settings {params.settings:q} "
        "--out {output} > {log} 2>&1"


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
    threads: resource("plot_susceptibility", "threads")
    resources:
        **rule_resources("plot_susceptibility"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib plot_susceptibility --table {input.table} --structure {input.structure} "
        "--reliability {input.reliability} --settings {params.settings:q} --heatmaps-out {output.heatmaps} "
        "--contrasts-out {output.contrasts} --reliability-out {output.reliability} > {log} 2>&1"


rule susceptibility_seed_agreement:
    input:
        seed_check_tables,
    output:
        "results/{model}/susceptibility_seed_check/agreement.parquet",
    log:
        "logs/susceptibility_seed_check/{model}.log",
    benchmark:
        "results/benchmarks/susceptibility_seed_check/{model}.tsv",
    params:
        settings=seed_check_settings,
    threads: resource("susceptibility_seed_agreement", "threads")
    resources:
        **rule_resources("susceptibility_seed_agreement"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib susceptibility_seed_check --tables {input} --settings {params.settings:q} "
        "--out {output} > {log} 2>&1"


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
