rule summary:
    input:
        manifests=all_manifests,
        refusal_evals=all_refusal_evals,
    output:
        trajectory="results/{model}/summary/trajectory.parquet",
    log:
        "logs/summary/{model}.log",
    benchmark:
        "results/benchmarks/summary/{model}.tsv",
    params:
        settings=settings_json("summary", {}),
        job=stage_job(),
    threads: resource("summary", "threads")
    resources:
        **rule_resources("summary"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("summary")


rule plot_refusal:
    input:
        trajectory="results/{model}/summary/trajectory.parquet",
    output:
        plot=report(
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
        job=stage_job(),
    threads: resource("plot_refusal", "threads")
    resources:
        **rule_resources("plot_refusal"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("plot_refusal")


# ---- cross-checkpoint analyses (workflow_lib/analysis/questions.py, susceptibility_alignment.py) ----

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
        trajectories="results/{model}/analysis/trajectories.parquet",
    log:
        "logs/trajectories/{model}.log",
    benchmark:
        "results/benchmarks/trajectories/{model}.tsv",
    params:
        settings=settings_json("trajectories", {}),
        job=stage_job(),
    threads: resource("trajectories", "threads")
    resources:
        **rule_resources("trajectories"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("trajectories")


rule llc_asr_correlation:
    input:
        trajectories="results/{model}/analysis/trajectories.parquet",
    output:
        correlation="results/{model}/analysis/llc_asr_correlation.parquet",
    log:
        "logs/llc_asr_correlation/{model}.log",
    benchmark:
        "results/benchmarks/llc_asr_correlation/{model}.tsv",
    params:
        settings=analysis_settings("llc_asr_correlation"),
        job=stage_job(),
    threads: resource("llc_asr_correlation", "threads")
    resources:
        **rule_resources("llc_asr_correlation"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("llc_asr_correlation")


rule direction_emergence:
    input:
        directions="results/{model}/summary/refusal_direction.parquet",
    output:
        emergence="results/{model}/analysis/direction_emergence.parquet",
    log:
        "logs/direction_emergence/{model}.log",
    benchmark:
        "results/benchmarks/direction_emergence/{model}.tsv",
    params:
        settings=settings_json("direction_emergence", {}),
        job=stage_job(),
    threads: resource("direction_emergence", "threads")
    resources:
        **rule_resources("direction_emergence"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("direction_emergence")


rule technique_comparison:
    input:
        trajectories="results/{model}/analysis/trajectories.parquet",
    output:
        comparison="results/{model}/analysis/technique_comparison.parquet",
    log:
        "logs/technique_comparison/{model}.log",
    benchmark:
        "results/benchmarks/technique_comparison/{model}.tsv",
    params:
        settings=analysis_settings("technique_comparison"),
        job=stage_job(),
    threads: resource("technique_comparison", "threads")
    resources:
        **rule_resources("technique_comparison"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("technique_comparison")


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
        job=stage_job(),
    threads: resource("susceptibility_alignment", "threads")
    resources:
        **rule_resources("susceptibility_alignment"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("susceptibility_alignment")


rule plot_trajectories:
    input:
        trajectories="results/{model}/analysis/trajectories.parquet",
    output:
        plot=report(
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
        settings=analysis_settings("plot_trajectories"),
        job=stage_job(),
    threads: resource("plot_trajectories", "threads")
    resources:
        **rule_resources("plot_trajectories"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("plot_trajectories")


rule plot_llc_vs_asr:
    input:
        trajectories="results/{model}/analysis/trajectories.parquet",
        correlation="results/{model}/analysis/llc_asr_correlation.parquet",
    output:
        plot=report(
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
        settings=analysis_settings("plot_llc_vs_asr"),
        job=stage_job(),
    threads: resource("plot_llc_vs_asr", "threads")
    resources:
        **rule_resources("plot_llc_vs_asr"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("plot_llc_vs_asr")


rule plot_drift:
    input:
        drift="results/{model}/summary/refusal_drift.parquet",
        directions="results/{model}/summary/refusal_direction.parquet",
        emergence="results/{model}/analysis/direction_emergence.parquet",
    output:
        plot=report(
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
        settings=analysis_settings("plot_drift"),
        job=stage_job(),
    threads: resource("plot_drift", "threads")
    resources:
        **rule_resources("plot_drift"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("plot_drift")


rule plot_component_alignment:
    input:
        alignment="results/{model}/analysis/component_alignment.parquet",
        correlation="results/{model}/analysis/susceptibility_alignment.parquet",
        rotation="results/{model}/analysis/susceptibility_rotation.parquet",
    output:
        plot=report(
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
        settings=analysis_settings("plot_component_alignment"),
        job=stage_job(),
    threads: resource("plot_component_alignment", "threads")
    resources:
        **rule_resources("plot_component_alignment"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("plot_component_alignment")


rule plot_technique_comparison:
    input:
        comparison="results/{model}/analysis/technique_comparison.parquet",
    output:
        plot=report(
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
        settings=analysis_settings("plot_technique_comparison"),
        job=stage_job(),
    threads: resource("plot_technique_comparison", "threads")
    resources:
        **rule_resources("plot_technique_comparison"),
    conda:
        "../envs/slt-safety.yaml"
    shell:
        stage_call("plot_technique_comparison")


rule analyses:
    input:
        expand("results/{model}/analysis/{table}.parquet", model=MODELS,
               table=["trajectories", "llc_asr_correlation", "technique_comparison"]),
        [target for model in MODELS for target in analysis_targets(model)],
