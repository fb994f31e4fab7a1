rule summary:
    input:
        manifests=all_manifests,
        refusal_evals=all_refusal_evals,
    output:
        "results/{model}/summary/trajectory.parquet",
    log:
        "logs/summary/{model}.log",
    params:
        settings=settings_json("summary", {}),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib summary --manifests {input.manifests} --refusal-evals {input.refusal_evals} "
        "--settings {params.settings:q} --out {output} > {log} 2>&1"


rule plot_refusal:
    input:
        "results/{model}/summary/trajectory.parquet",
    output:
        report(
            "results/{model}/plots/refusal_trajectory.png",
            caption="../report/refusal_trajectory.rst",
            category="Refusal",
            subcategory="{model}",
        ),
    log:
        "logs/plot_refusal/{model}.log",
    params:
        settings=settings_json("plot_refusal", {}),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib plot_refusal --trajectory {input} --settings {params.settings:q} --out {output} > {log} 2>&1"
