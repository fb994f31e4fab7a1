# LoRA fine-tuning per technique: its training mix, one job per checkpoint segment, and its manifest.


# Light rules (tables, figures, small files) run on the submitting machine, not as cluster jobs.
localrules:
    training_mix,
    manifest,


rule training_mix:
    input:
        unpack(training_mix_prompts),
        completions="results/{model}/base/completions.parquet",
    output:
        mix="results/{model}/{technique}/training_mix.parquet",
    log:
        "logs/training_mix/{model}/{technique}.log",
    benchmark:
        "results/benchmarks/training_mix/{model}/{technique}.tsv",
    params:
        settings=training_mix_settings,
        job=stage_job(),
    threads: resource("training_mix", "threads")
    resources:
        **rule_resources("training_mix"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("training_mix")


rule finetune_segment:
    input:
        unpack(segment_inputs),
    output:
        checkpoint=directory("results/{model}/{technique}/step-{step}/checkpoint"),
    log:
        "logs/finetune_segment/{model}/{technique}/step-{step}.log",
    benchmark:
        "results/benchmarks/finetune_segment/{model}/{technique}/step-{step}.tsv",
    params:
        settings=segment_settings,
        job=stage_job(prev_step=previous_step),
    threads: resource("finetune_segment", "threads")
    resources:
        **rule_resources("finetune_segment"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("finetune_segment")


rule manifest:
    input:
        checkpoints=trajectory_checkpoints,
    output:
        manifest="results/{model}/{technique}/manifest.parquet",
    log:
        "logs/manifest/{model}/{technique}.log",
    benchmark:
        "results/benchmarks/manifest/{model}/{technique}.tsv",
    params:
        settings=settings_json("manifest", {}),
        job=stage_job(),
    threads: resource("manifest", "threads")
    resources:
        **rule_resources("manifest"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("manifest")
