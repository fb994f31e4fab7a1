# Jailbreak susceptibility per checkpoint: attack templates, attacks and judges, summary and figure.


# Light rules (tables, figures, small files) run on the submitting machine, not as cluster jobs.
localrules:
    prepare_attacks,
    jailbreak_summary,
    plot_jailbreak,


rule prepare_attacks:
    input:
        model=model_dir,
    output:
        "resources/attacks/{model}/templates.parquet",
    log:
        "logs/prepare_attacks/{model}.log",
    benchmark:
        "results/benchmarks/prepare_attacks/{model}.tsv",
    params:
        settings=settings_json("prepare_attacks", {}),
        cache=CACHE,
    threads: resource("prepare_attacks", "threads")
    resources:
        **rule_resources("prepare_attacks"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib prepare_attacks --cache {params.cache} --model-dir {input.model} "
        "--settings {params.settings:q} --out {output} > {log} 2>&1"


rule jailbreak:
    """Judge every attack's answers (plain and directed generations) with each configured judge."""
    input:
        unpack(jailbreak_inputs),
        model=model_dir,
        templates="resources/attacks/{model}/templates.parquet",
    output:
        table="results/{model}/{technique}/step-{step}/jailbreak/jailbreak.parquet",
        generations="results/{model}/{technique}/step-{step}/jailbreak/generations.parquet",
    log:
        "logs/jailbreak/{model}/{technique}/step-{step}.log",
    benchmark:
        "results/benchmarks/jailbreak/{model}/{technique}/step-{step}.tsv",
    params:
        settings=jailbreak_settings,
        generations=generation_args,
    threads: resource("jailbreak", "threads")
    resources:
        **rule_resources("jailbreak"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib jailbreak --model {wildcards.model} --technique {wildcards.technique} "
        "--step {wildcards.step} --model-dir {input.model} --prompts harmful={input.harmful} "
        "harmless={input.harmless} --templates {input.templates} --generations {params.generations} "
        "--settings {params.settings:q} --threads {threads} --out {output.table} "
        "--judged {output.generations} > {log} 2>&1"


rule jailbreak_summary:
    input:
        all_jailbreak_tables,
    output:
        "results/{model}/summary/jailbreak.parquet",
    log:
        "logs/jailbreak_summary/{model}.log",
    benchmark:
        "results/benchmarks/jailbreak_summary/{model}.tsv",
    params:
        settings=settings_json("jailbreak_summary", {}),
    threads: resource("jailbreak_summary", "threads")
    resources:
        **rule_resources("jailbreak_summary"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib jailbreak_summary --tables {input} --settings {params.settings:q} --out {output} "
        "> {log} 2>&1"


rule plot_jailbreak:
    input:
        "results/{model}/summary/jailbreak.parquet",
    output:
        report(
            "results/{model}/plots/jailbreak_asr.png",
            caption="../report/jailbreak_asr.rst",
            category="Jailbreaks",
            subcategory="{model}",
        ),
    log:
        "logs/plot_jailbreak/{model}.log",
    benchmark:
        "results/benchmarks/plot_jailbreak/{model}.tsv",
    params:
        settings=settings_json("plot_jailbreak", {}),
    threads: resource("plot_jailbreak", "threads")
    resources:
        **rule_resources("plot_jailbreak"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib plot_jailbreak --table {input} --settings {params.settings:q} --out {output} > {log} 2>&1"


rule jailbreaks:
    """Target: every checkpoint's jailbreak tables and the ASR figure, whether or not `all` includes them."""
    input:
        expand("results/{model}/plots/jailbreak_asr.png", model=MODELS),
    default_target: False
