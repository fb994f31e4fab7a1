# A checkpoint's greedy answers, made once for every stage that judges them (workflow_lib/evaluation/generation_plan.py).
# plain: no hook, needs no direction; directed: refusal-direction hooks, after the directions.


rule generate:
    input:
        unpack(generate_inputs),
        model=model_dir,
        checkpoint="results/{model}/{technique}/step-{step}/checkpoint",
    output:
        generations="results/{model}/{technique}/step-{step}/generations/{kind}.parquet",
    log:
        "logs/generate/{model}/{technique}/step-{step}/{kind}.log",
    benchmark:
        "results/benchmarks/generate/{model}/{technique}/step-{step}/{kind}.tsv",
    params:
        settings=generate_settings,
        job=stage_job(final_step=generate_final_step),
    threads: resource("generate", "threads")
    resources:
        **rule_resources("generate"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("generate")
