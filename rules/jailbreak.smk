# Jailbreak susceptibility per checkpoint: attacks judged by each judge, summary and figure
# (the attack templates: rules/data.smk, prepare_attacks).


# Light rules (tables, figures, small files) run on the submitting machine, not as cluster jobs.
localrules:
    jailbreak_summary,
    plot_jailbreak,


rule jailbreak:
    """Judge every attack's answers (plain and directed generations) with each configured judge."""
    input:
        unpack(jailbreak_inputs),
        model=model_dir,
        templates="resources/attacks/{model}/templates.parquet",
    output:
        table="results/{model}/{technique}/step-{step}/jailbreak/jailbreak.parquet",
        judged="results/{model}/{technique}/step-{step}/jailbreak/generations.parquet",
    log:
        "logs/jailbreak/{model}/{technique}/step-{step}.log",
    benchmark:
        "results/benchmarks/jailbreak/{model}/{technique}/step-{step}.tsv",
    params:
        settings=jailbreak_settings,
        job=stage_job(),
    threads: resource("jailbreak", "threads")
    resources:
        **rule_resources("jailbreak"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("jailbreak")


rule jailbreak_summary:
    input:
        tables=all_jailbreak_tables,
    output:
        table="results/{model}/summary/jailbreak.parquet",
    log:
        "logs/jailbreak_summary/{model}.log",
    benchmark:
        "results/benchmarks/jailbreak_summary/{model}.tsv",
    params:
        settings=settings_json("jailbreak_summary", {}),
        job=stage_job(),
    threads: resource("jailbreak_summary", "threads")
    resources:
        **rule_resources("jailbreak_summary"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("jailbreak_summary")


rule plot_jailbreak:
    input:
        table="results/{model}/summary/jailbreak.parquet",
    output:
        plot=report(
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
        job=stage_job(),
    threads: resource("plot_jailbreak", "threads")
    resources:
        **rule_resources("plot_jailbreak"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("plot_jailbreak")


rule jailbreaks:
    """Target: every checkpoint's jailbreak tables and the ASR figure, whether or not `all` includes them."""
    input:
        expand("results/{model}/plots/jailbreak_asr.png", model=MODELS),
    default_target: False
