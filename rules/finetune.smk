# Light rules (tables, figures, small files) run on the submitting machine, not as cluster jobs.
localrules:
    training_mix,
    manifest,


rule training_mix:
    input:
        unpack(training_mix_prompts),
        completions="results/{model}/base/completions.parquet",
    output:
        "results/{model}/{technique}/training_mix.parquet",
    log:
        "logs/training_mix/{model}/{technique}.log",
    benchmark:
        "results/benchmarks/training_mix/{model}/{technique}.tsv",
    params:
        settings=training_mix_settings,
        prompts=training_mix_prompt_args,
    threads: resource("training_mix", "threads")
    resources:
        **rule_resources("training_mix"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib training_mix --technique {wildcards.technique} --prompts {params.prompts} "
        "--completions {input.completions} --settings {params.settings:q} --out {output} > {log} 2>&1"


rule finetune_segment:
    input:
        unpack(segment_inputs),
    output:
        directory("results/{model}/{technique}/step-{step}/checkpoint"),
    log:
        "logs/finetune_segment/{model}/{technique}/step-{step}.log",
    benchmark:
        "results/benchmarks/finetune_segment/{model}/{technique}/step-{step}.tsv",
    params:
        settings=segment_settings,
        prev=segment_prev_args,
    threads: resource("finetune_segment", "threads")
    resources:
        **rule_resources("finetune_segment"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib finetune_segment --model {wildcards.model} --technique {wildcards.technique} "
        "--model-dir {input.model} --mix {input.mix} {params.prev} --step {wildcards.step} "
        "--settings {params.settings:q} --threads {threads} --out {output} > {log} 2>&1"


rule manifest:
    input:
        trajectory_checkpoints,
    output:
        "results/{model}/{technique}/manifest.parquet",
    log:
        "logs/manifest/{model}/{technique}.log",
    benchmark:
        "results/benchmarks/manifest/{model}/{technique}.tsv",
    params:
        settings=settings_json("manifest", {}),
    threads: resource("manifest", "threads")
    resources:
        **rule_resources("manifest"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib manifest --checkpoints {input} --settings {params.settings:q} --out {output} > {log} 2>&1"
