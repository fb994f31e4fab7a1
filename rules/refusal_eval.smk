rule refusal_eval:
    input:
        unpack(refusal_eval_prompts),
        unpack(refusal_eval_shared),
        model=model_dir,
        checkpoint="results/{model}/{technique}/step-{step}/checkpoint",
    output:
        table="results/{model}/{technique}/step-{step}/refusal_eval.parquet",
        generations="results/{model}/{technique}/step-{step}/refusal_generations.parquet",
    log:
        "logs/refusal_eval/{model}/{technique}/step-{step}.log",
    benchmark:
        "results/benchmarks/refusal_eval/{model}/{technique}/step-{step}.tsv",
    params:
        settings=settings_json("refusal_eval", config["refusal_eval"], runtime=True),
        prompts=refusal_eval_prompt_args,
        same_as=same_as_args,
    threads: resource("refusal_eval", "threads")
    resources:
        mem_mb=mem_mb("refusal_eval"),
        runtime=resource("refusal_eval", "runtime"),
        gpu=gpu("refusal_eval"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib refusal_eval --model {wildcards.model} --technique {wildcards.technique} "
        "--step {wildcards.step} --model-dir {input.model} --checkpoint {input.checkpoint} --prompts {params.prompts} "
        "--settings {params.settings:q} --threads {threads} --out {output.table} "
        "--generations {output.generations} {params.same_as} > {log} 2>&1"
