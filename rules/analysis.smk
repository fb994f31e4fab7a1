rule summary:
    input:
        manifests=all_manifests,
        refusal_evals=all_refusal_evals,
    output:
        "results/{model}/summary/trajectory.parquet",
    log:
        "logs/summary/{model}.log",
    benchmark:
        "results/benchmarks/summary/{model}.tsv",
    params:
        settings=settings_json("summary", {}),
    threads: resource("summary", "threads")
    resources:
        **rule_resources("summary"),
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
    benchmark:
        "results/benchmarks/plot_refusal/{model}.tsv",
    params:
        settings=settings_json("plot_refusal", {}),
    threads: resource("plot_refusal", "threads")
    resources:
        **rule_resources("plot_refusal"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib plot_refusal --trajectory {input} --settings {params.settings:q} --out {output} > {log} 2>&1"


# ---- cross-checkpoint analyses (workflow_lib/analysis.py, susceptibility_alignment.py) ----

localrules:
    summary,
    plot_refusal,
    trajectories,
    llc_asr_correlation,
    direction_emergence,
    technique_comparison,
    susceptibility_alignment,
    plot_trajectories,
    plot_llc_vs_asr,
    plot_drift,
    plot_component_alignment,
    plot_technique_comparison,


rule trajectories:
    input:
        unpack(trajectories_inputs),
    output:
        "results/{model}/analysis/trajectories.parquet",
    log:
        "logs/trajectories/{model}.log",
    benchmark:
        "results/benchmarks/trajectories/{model}.tsv",
    params:
        settings=settings_json("trajectories", {}),
        optional=optional_args,
    threads: resource("trajectories", "threads")
    resources:
        **rule_resources("trajectories"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib trajectories --refusal {input.refusal} {params.optional} "
        "--settings {params.settings:q} --out {output} > {log} 2>&1"


rule llc_asr_correlation:
    input:
        "results/{model}/analysis/trajectories.parquet",
    output:
        "results/{model}/analysis/llc_asr_correlation.parquet",
    log:
        "logs/llc_asr_correlation/{model}.log",
    benchmark:
        "results/benchmarks/llc_asr_correlation/{model}.tsv",
    params:
        settings=analysis_settings("llc_asr_correlation"),
    threads: resource("llc_asr_correlation", "threads")
    resources:
        **rule_resources("llc_asr_correlation"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib llc_asr_correlation --trajectories {input} --settings {params.settings:q} "
        "--out {output} > {log} 2>&1"


rule direction_emergence:
    input:
        "results/{model}/summary/refusal_direction.parquet",
    output:
        "results/{model}/analysis/direction_emergence.parquet",
    log:
        "logs/direction_emergence/{model}.log",
    benchmark:
        "results/benchmarks/direction_emergence/{model}.tsv",
    params:
        settings=settings_json("direction_emergence", {}),
    threads: resource("direction_emergence", "threads")
    resources:
        **rule_resources("direction_emergence"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib direction_emergence --directions {input} --settings {params.settings:q} "
        "--out {output} > {log} 2>&1"


rule technique_comparison:
    input:
        "results/{model}/analysis/trajectories.parquet",
    output:
        "results/{model}/analysis/technique_comparison.parquet",
    log:
        "logs/technique_comparison/{model}.log",
    benchmark:
        "results/benchmarks/technique_comparison/{model}.tsv",
    params:
        settings=analysis_settings("technique_comparison"),
    threads: resource("technique_comparison", "threads")
    resources:
        **rule_resources("technique_comparison"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib technique_comparison --trajectories {input} --settings {params.settings:q} "
        "--out {output} > {log} 2>&1"


rule component_alignment:
    input:
        unpack(component_alignment_shared),
        model=model_dir,
        checkpoint="results/{model}/{technique}/step-{step}/checkpoint",
        direction="results/{model}/{technique}/step-{step}/refusal/refusal_direction.safetensors",
    output:
        "results/{model}/{technique}/step-{step}/refusal/component_alignment.parquet",
    log:
        "logs/component_alignment/{model}/{technique}/step-{step}.log",
    benchmark:
        "results/benchmarks/component_alignment/{model}/{technique}/step-{step}.tsv",
    params:
        settings=settings_json("component_alignment", {}, runtime=True),
        same_as=same_as_args,
    threads: resource("component_alignment", "threads")
    resources:
        **rule_resources("component_alignment"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib component_alignment --model {wildcards.model} --technique {wildcards.technique} "
        "--step {wildcards.step} --model-dir {input.model} --checkpoint {input.checkpoint} "
        "--direction {input.direction} --settings {params.settings:q} --threads {threads} --out {output} "
        "{params.same_as} > {log} 2>&1"


rule susceptibility_alignment:
    input:
        unpack(susceptibility_alignment_inputs),
    output:
        alignment="results/{model}/analysis/component_alignment.parquet",
        correlation="results/{model}/analysis/susceptibility_alignment.parquet",
        rotation="results/{model}/analysis/susceptibility_rotation.parquet",
    log:
        "logs/susceptibility_alignment/{model}.log",
    benchmark:
        "results/benchmarks/susceptibility_alignment/{model}.tsv",
    params:
        settings=analysis_settings("susceptibility_alignment"),
        optional=optional_args,
    threads: resource("susceptibility_alignment", "threads")
    resources:
        **rule_resources("susceptibility_alignment"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib susceptibility_alignment --alignments {input.alignments} {params.optional} "
        "--settings {params.settings:q} --alignment-out {output.alignment} --out {output.correlation} "
        "--rotation-out {output.rotation} > {log} 2>&1"


rule plot_trajectories:
    input:
        "results/{model}/analysis/trajectories.parquet",
    output:
        report(
            "results/{model}/plots/analysis/trajectories.png",
            caption="../report/analysis_trajectories.rst",
            category="1. Trajectories",
            subcategory="{model}",
        ),
    log:
        "logs/plot_trajectories/{model}.log",
    benchmark:
        "results/benchmarks/plot_trajectories/{model}.tsv",
    params:
        settings=analysis_settings("plot_analysis"),
    threads: resource("plot_trajectories", "threads")
    resources:
        **rule_resources("plot_trajectories"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib plot_trajectories --trajectories {input} --settings {params.settings:q} "
        "--out {output} > {log} 2>&1"


rule plot_llc_vs_asr:
    input:
        trajectories="results/{model}/analysis/trajectories.parquet",
        correlation="results/{model}/analysis/llc_asr_correlation.parquet",
    output:
        report(
            "results/{model}/plots/analysis/llc_vs_asr.png",
            caption="../report/analysis_llc_vs_asr.rst",
            category="2. LLC vs jailbreak susceptibility",
            subcategory="{model}",
        ),
    log:
        "logs/plot_llc_vs_asr/{model}.log",
    benchmark:
        "results/benchmarks/plot_llc_vs_asr/{model}.tsv",
    params:
        settings=analysis_settings("plot_analysis"),
    threads: resource("plot_llc_vs_asr", "threads")
    resources:
        **rule_resources("plot_llc_vs_asr"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib plot_llc_vs_asr --trajectories {input.trajectories} "
        "--correlation {input.correlation} --settings {params.settings:q} --out {output} > {log} 2>&1"


rule plot_drift:
    input:
        drift="results/{model}/summary/refusal_drift.parquet",
        directions="results/{model}/summary/refusal_direction.parquet",
        emergence="results/{model}/analysis/direction_emergence.parquet",
    output:
        report(
            "results/{model}/plots/analysis/drift/{technique}.png",
            caption="../report/analysis_drift.rst",
            category="3. Refusal-direction drift",
            subcategory="{model}: {technique}",
        ),
    log:
        "logs/plot_drift/{model}/{technique}.log",
    benchmark:
        "results/benchmarks/plot_drift/{model}/{technique}.tsv",
    params:
        settings=analysis_settings("plot_analysis"),
    threads: resource("plot_drift", "threads")
    resources:
        **rule_resources("plot_drift"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib plot_drift --drift {input.drift} --directions {input.directions} "
        "--emergence {input.emergence} --technique {wildcards.technique} --settings {params.settings:q} "
        "--out {output} > {log} 2>&1"


rule plot_component_alignment:
    input:
        alignment="results/{model}/analysis/component_alignment.parquet",
        correlation="results/{model}/analysis/susceptibility_alignment.parquet",
        rotation="results/{model}/analysis/susceptibility_rotation.parquet",
    output:
        report(
            "results/{model}/plots/analysis/component_alignment.png",
            caption="../report/analysis_component_alignment.rst",
            category="4. Susceptibility structure vs refusal",
            subcategory="{model}",
        ),
    log:
        "logs/plot_component_alignment/{model}.log",
    benchmark:
        "results/benchmarks/plot_component_alignment/{model}.tsv",
    params:
        settings=analysis_settings("plot_analysis"),
    threads: resource("plot_component_alignment", "threads")
    resources:
        **rule_resources("plot_component_alignment"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib plot_component_alignment --alignment {input.alignment} "
        "--correlation {input.correlation} --rotation {input.rotation} --settings {params.settings:q} "
        "--out {output} > {log} 2>&1"


rule plot_technique_comparison:
    input:
        "results/{model}/analysis/technique_comparison.parquet",
    output:
        report(
            "results/{model}/plots/analysis/technique_comparison.png",
            caption="../report/analysis_technique_comparison.rst",
            category="5. Technique comparison",
            subcategory="{model}",
        ),
    log:
        "logs/plot_technique_comparison/{model}.log",
    benchmark:
        "results/benchmarks/plot_technique_comparison/{model}.tsv",
    params:
        settings=analysis_settings("plot_analysis"),
    threads: resource("plot_technique_comparison", "threads")
    resources:
        **rule_resources("plot_technique_comparison"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        "python -m workflow_lib plot_technique_comparison --comparison {input} --settings {params.settings:q} "
        "--out {output} > {log} 2>&1"


rule analyses:
    input:
        expand("results/{model}/analysis/{table}.parquet", model=MODELS,
               table=["trajectories", "llc_asr_correlation", "technique_comparison"]),
        [target for model in MODELS for target in analysis_targets(model)],
