rule refusal_eval:
    """Judge the checkpoint's plain answers: refusal rate and refusal score per prompt set."""
    input:
        unpack(refusal_eval_prompts),
        model=model_dir,
        generations="results/{model}/{technique}/step-{step}/generations/plain.parquet",
    output:
        table="results/{model}/{technique}/step-{step}/refusal_eval.parquet",
        judged="results/{model}/{technique}/step-{step}/refusal_generations.parquet",
    log:
        "logs/refusal_eval/{model}/{technique}/step-{step}.log",
    benchmark:
        "results/benchmarks/refusal_eval/{model}/{technique}/step-{step}.tsv",
    params:
        settings=settings_json("refusal_eval", refusal_eval_judge_settings()),
        job=stage_job(),
    threads: resource("refusal_eval", "threads")
    resources:
        **rule_resources("refusal_eval"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("refusal_eval")
