# slt-safety: safety fine-tuning trajectories measured with SLT, refusal directions and jailbreaks.
from snakemake.utils import min_version

min_version("9.0")


# The embedded default, unless --configfile names another file: that file then
# replaces it (Snakemake would otherwise deep-merge the two).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"



report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/finetune.smk"
include: "rules/generation.smk"
include: "rules/refusal_eval.smk"
include: "rules/llc.smk"
include: "rules/susceptibility.smk"
include: "rules/refusal_direction.smk"
include: "rules/jailbreak.smk"
include: "rules/analysis.smk"
include: "rules/job_costs.smk"


rule all:
    input:
        final_targets(),
    default_target: True
