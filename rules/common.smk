import functools
import glob
import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)

from workflow_lib.config_checks import (  # noqa: E402
    ConfigError, check_config, explain_schema_error, schema_error_of)
from workflow_lib.evaluation import generation_plan  # noqa: E402
from workflow_lib import preflight  # noqa: E402
from workflow_lib.stages import STAGES  # noqa: E402
from workflow_lib.core.replicates import expand_names, expand_replicates, replicate_of  # noqa: E402


try:
    validate(config, schema="../config/schema.yaml", set_default=True)
except WorkflowError as err:  # a short message with the key and the fix, not the schema and config dumps
    cause = schema_error_of(err)
    if cause is None or os.environ.get("SLT_SAFETY_VERBOSE"):
        raise
    raise WorkflowError(explain_schema_error(cause)) from None
try:
    check_config(config)
    preflight.check_models(config)  # the config against each model's architecture (workflow_lib/preflight.py)
    preflight.check_template_names(config)
except (ConfigError, preflight.PreflightError) as err:
    raise WorkflowError(f"Invalid config: {err}")


wildcard_constraints:
    model="[^/]+",
    # not a results folder of the model (config_checks.RESERVED_TECHNIQUE_NAMES rejects such names)
    technique="(?!(?:analysis|base|plots|summary|susceptibility_seed_check)/)[^/]+",
    step="[0-9]+",
    set="[a-z_]+",
    space="[A-Za-z0-9_]+",
    dataset="[A-Za-z0-9_]+",
    seed="[0-9]+",
    kind="plain|directed",


MODELS = list(config["models"])
# trajectories: one per technique and replicate seed (workflow_lib/core/replicates.py); the config is not modified
TECHNIQUES = expand_replicates(config["techniques"])
REPLICATE_OF = replicate_of(config["techniques"])
PROMPT_SETS = [name for name in ("harmful", "harmless", "harmless_lookalike") if name in config["prompts"]]
CACHE = config["cache_dir"]
RUNTIME = config["runtime"]

# The one call that runs a stage: the job's named inputs, outputs, wildcards and params as one JSON
# (`stage_job`), its settings and threads. The stage's declaration (workflow_lib/stages.py) says which
# names it takes and which modules it runs; the stage is named like the rule that calls it.
def stage_call(stage):
    """The shell command of the rule of the same name as `stage`."""
    if stage not in STAGES:
        raise WorkflowError(f"no stage {stage!r} is declared in workflow_lib/stages.py")
    return (f"python -m workflow_lib {stage} --job {{params.job:q}} --settings {{params.settings:q}} "
            "--threads {threads} > {log} 2>&1")


def _plain(value):
    return value if value is None or isinstance(value, (str, int, float, bool)) else [str(v) for v in value]


def stage_job(**params):
    """Params function: the job's JSON. `params` are its non-path values (a constant or a function of the
    wildcards), declared with the stage like its inputs and outputs."""

    def job(wildcards, input, output):
        return json.dumps({
            "input": {name: _plain(value) for name, value in input.items()},
            "output": {name: _plain(value) for name, value in output.items()},
            "wildcards": dict(wildcards.items()),
            "params": {name: value(wildcards) if callable(value) else value for name, value in params.items()},
        }, sort_keys=True)

    return job


def settings_json(stage, subtree, modules=None, runtime=False):
    """The params of a rule: its config subtree, the runtime if it uses one, and its code digest (the
    modules its stage declares, or `modules`, and the stage's adapter)."""
    payload = {"config": subtree, "code": STAGES[stage].code_digest(modules)}
    if runtime:
        payload["runtime"] = RUNTIME
    return json.dumps(payload, sort_keys=True)


def benchmark_files(wildcards):
    """Every job's Snakemake benchmark file that exists now (the `job_costs` stage runs after `all`)."""
    return sorted(glob.glob("results/benchmarks/**/*.tsv", recursive=True))


def stage_of_rules():
    """Rule name -> its stage: the rules file that declares it (`rules/<stage>.smk`)."""
    return {rule.name: Path(rule.snakefile).stem for rule in workflow.rules}


def job_costs_settings(wildcards):
    return settings_json("job_costs", {"stage_of": stage_of_rules()})


# Rules that load no model (tables, figures, small files) have their own defaults: one thread, 10 minutes,
# and 1 or 2 GB. `resources.<rule>` overrides them; every other rule starts from `resources.default`.
# This is the one place a rule's resource defaults are written (config/README.md#resourcesrule).
LIGHT_RULES_1GB = [
    "direction_emergence", "jailbreak_summary", "job_costs", "llc_asr_correlation", "llc_differences",
    "llc_summary", "manifest", "plot_jailbreak", "plot_refusal", "plot_refusal_direction",
    "prepare_jailbreak_templates", "refusal_direction_summary", "summary", "susceptibility_alignment",
    "susceptibility_reliability_summary", "susceptibility_seed_agreement", "susceptibility_summary",
    "technique_comparison", "trajectories",
]
LIGHT_RULES_2GB = [
    "plot_component_alignment", "plot_drift", "plot_llc", "plot_llc_vs_asr", "plot_susceptibility",
    "plot_technique_comparison", "plot_trajectories", "prepare_attacks", "refusal_drift",
    "susceptibility_linear_structure", "susceptibility_reliability", "susceptibility_structure",
]
RULE_DEFAULTS = ({rule: {"threads": 1, "mem_mb": 1000, "runtime": 10, "gpu": 0} for rule in LIGHT_RULES_1GB}
                 | {rule: {"threads": 1, "mem_mb": 2000, "runtime": 10, "gpu": 0} for rule in LIGHT_RULES_2GB}
                 | {"component_alignment": {"threads": 1, "runtime": 10, "gpu": 0}})  # one pass over the weights


def resource(rule_name, key):
    """A rule's resource: `resources.<rule>`, else the rule's own default, else `resources.default`."""
    base = {"threads": 1, "mem_mb": 4000, "runtime": 60, "gpu": 0}
    merged = (base | config["resources"].get("default", {}) | RULE_DEFAULTS.get(rule_name, {})
              | config["resources"].get(rule_name, {}))
    return merged[key]


def rule_resources(rule_name):
    """The `resources:` of a rule (mem_mb growing with the attempt, runtime, gpu), from `resource`."""
    return {"mem_mb": mem_mb(rule_name), "runtime": resource(rule_name, "runtime"), "gpu": gpu(rule_name)}


# Rules that load a model and run it many times: on a cluster they ask for a GPU.
GPU_RULES = {"base_completions", "finetune_segment", "generate", "llc", "llc_calibrate", "susceptibility",
             "susceptibility_linear", "refusal_direction"}


def mem_mb(rule_name):
    """The rule's mem_mb times the attempt: a job retried (profile `retries`) gets more memory."""
    base = resource(rule_name, "mem_mb")

    def grows_with_attempt(wildcards, attempt):
        return base * attempt

    return grows_with_attempt


def gpu(rule_name):
    """`gpu` from config `resources` when set there; otherwise 1 for a GPU rule submitted to a
    cluster (non-local executor) with runtime.device cuda or auto, else 0."""
    configured = config["resources"].get(rule_name, {}).get(
        "gpu", RULE_DEFAULTS.get(rule_name, {}).get("gpu", config["resources"].get("default", {}).get("gpu")))
    if configured is not None:
        return configured
    wants_gpu = rule_name in GPU_RULES and config["runtime"]["device"] != "cpu"

    def on_cluster(wildcards):
        return int(wants_gpu and workflow.non_local_exec)

    return on_cluster


# ---- paths -------------------------------------------------------------------


def model_dir(wildcards):
    return f"resources/models/{wildcards.model}"


def prompt_path(name):
    return f"resources/prompts/{name}.parquet"


def checkpoint_path(model, technique, step):
    return f"results/{model}/{technique}/step-{step}/checkpoint"


def technique_steps_of(wildcards):
    return technique_steps(wildcards.technique)


def technique_steps(technique):
    if technique not in TECHNIQUES:
        raise WorkflowError(f"unknown technique {technique!r}; configured: {list(TECHNIQUES)}")
    return TECHNIQUES[technique]["steps"]


# ---- checkpoints that are one model share their measurements -------------------

def shared_source(technique, step, measured):
    """(technique, step) of a checkpoint that is this one's model by construction, measured by the same
    stage (`measured`: the stage's techniques), or None.

    Step 0 of a technique that starts from the base model is the first such technique's step 0 (a
    B = 0 adapter); step 0 of a `start_from` technique is its start checkpoint (its adapter is a copy).
    Not `abliterate`, whose weights are rewritten. The job still compares the two adapters before it
    copies anything, and measures when they differ (workflow_lib/core/shared_checkpoints.py).
    """
    spec = TECHNIQUES[technique]
    if int(step) != 0 or spec["kind"] == "abliterate":
        return None
    if "start_from" in spec:
        source = (spec["start_from"]["technique"], int(spec["start_from"]["step"]))
    else:
        from_base = [t for t in measured if "start_from" not in TECHNIQUES[t] and TECHNIQUES[t]["kind"] != "abliterate"]
        if not from_base or from_base[0] == technique:
            return None
        source = (from_base[0], 0)
    source = shared_source(*source, measured) or source
    return source if source[0] in measured else None


def shared_inputs(measured, outputs):
    """Input function: the source checkpoint and its outputs (`outputs`: name -> path template) when shared."""

    def inputs(wildcards):
        source = shared_source(wildcards.technique, wildcards.step, measured())
        if source is None:
            return {}
        keys = {"model": wildcards.model, "technique": source[0], "step": source[1]}
        return {"same_as_checkpoint": checkpoint_path(**keys)} | {
            f"same_as_{name}": template.format(**keys) for name, template in outputs.items()}

    return inputs


REFUSAL_DIRECTION_OUTPUTS = {"candidates": "results/{model}/{technique}/step-{step}/refusal/refusal_candidates.parquet",
                             "direction": "results/{model}/{technique}/step-{step}/refusal/refusal_direction.safetensors",
                             "summary": "results/{model}/{technique}/step-{step}/refusal/refusal_direction.parquet"}


def all_techniques():
    return list(TECHNIQUES)


# ---- input functions and params ----------------------------------------------


def base_completion_prompts(wildcards):
    return [prompt_path(name) for name in config["base_completions"]["sets"]]


def training_mix_prompts(wildcards):
    return {f"prompts_{name}": prompt_path(name) for name in ("harmful", "harmless")}


def model_settings(wildcards):
    return settings_json("prepare_model", config["models"][wildcards.model])


def technique_modules(technique):
    return ["workflow_lib.finetune.loop", f"workflow_lib.finetune.{TECHNIQUES[technique]['kind']}"]


def technique_settings(technique):
    """A technique's config without its step list: appending a step must not rerun earlier segments."""
    return {k: v for k, v in TECHNIQUES[technique].items() if k != "steps"}


def training_mix_settings(wildcards):
    return settings_json("training_mix", technique_settings(wildcards.technique), technique_modules(wildcards.technique))


def previous_step(wildcards):
    steps = technique_steps(wildcards.technique)
    step = int(wildcards.step)
    if step not in steps:
        raise WorkflowError(f"step {step} is not in techniques.{wildcards.technique}.steps {steps}")
    index = steps.index(step)
    return steps[index - 1] if index > 0 else None


def segment_inputs(wildcards):
    inputs = {
        "model": model_dir(wildcards),
        "mix": f"results/{wildcards.model}/{wildcards.technique}/training_mix.parquet",
    }
    prev = previous_step(wildcards)
    if prev is not None:
        inputs["prev"] = checkpoint_path(wildcards.model, wildcards.technique, prev)
        if TECHNIQUES[wildcards.technique].get("reference") == "start":
            inputs["reference"] = checkpoint_path(wildcards.model, wildcards.technique, 0)
    elif "start_from" in TECHNIQUES[wildcards.technique]:
        parent = TECHNIQUES[wildcards.technique]["start_from"]
        inputs["start"] = checkpoint_path(wildcards.model, parent["technique"], parent["step"])
        if TECHNIQUES[wildcards.technique]["kind"] == "abliterate":
            source = TECHNIQUES[wildcards.technique].get("direction_from", parent)
            inputs["direction"] = refusal_path(wildcards.model, source["technique"], source["step"],
                                               "refusal_direction.safetensors")
    return inputs


def segment_settings(wildcards):
    subtree = technique_settings(wildcards.technique) | {"segment": [previous_step(wildcards), int(wildcards.step)]}
    return settings_json("finetune_segment", subtree, technique_modules(wildcards.technique), runtime=True)


def trajectory_checkpoints(wildcards):
    return [checkpoint_path(wildcards.model, wildcards.technique, s) for s in technique_steps(wildcards.technique)]


def refusal_eval_judge_settings():
    """refusal_eval's judging keys; its generation keys (budget, batch, phrases) are the generate job's."""
    return {k: v for k, v in config["refusal_eval"].items() if k in ("prompt_sets", "split", "max_prompts",
                                                                      "max_new_tokens")}


def refusal_eval_prompts(wildcards):
    return {f"prompts_{name}": prompt_path(name) for name in config["refusal_eval"]["prompt_sets"]}


def all_manifests(wildcards):
    return [f"results/{wildcards.model}/{t}/manifest.parquet" for t in TECHNIQUES]


def all_refusal_evals(wildcards):
    return [
        f"results/{wildcards.model}/{t}/step-{s}/refusal_eval.parquet"
        for t in TECHNIQUES
        for s in technique_steps(t)
    ]


# ---- LLC -----------------------------------------------------------------------

LLC = config["llc"]
# derived, never written back into the validated config: an unset technique is the first one
CALIBRATION = LLC["calibration"] | {"technique": LLC["calibration"]["technique"] or next(iter(TECHNIQUES))}


def llc_techniques():
    return expand_names(LLC["techniques"], config["techniques"])


def llc_jobs(model):
    """(technique, step, space, dataset) of every llc job of a model."""
    return [
        (t, s, space, dataset)
        for t in llc_techniques()
        for s in technique_steps(t)
        for space in LLC["spaces"]
        for dataset in LLC["datasets"]
    ]


def llc_path(model, technique, step, space, dataset, name):
    return f"results/{model}/{technique}/step-{step}/llc/{space}/{dataset}/{name}.parquet"


def all_llc_tables(wildcards):
    return [llc_path(wildcards.model, *job, "llc") for job in llc_jobs(wildcards.model)]


def all_llc_traces(wildcards):
    return [llc_path(wildcards.model, *job, "llc_trace") for job in llc_jobs(wildcards.model)]


def llc_inputs(wildcards):
    if wildcards.get("dataset", CALIBRATION["dataset"]) == "training_mix":
        technique = wildcards.get("technique", CALIBRATION["technique"])
        return {"mix": f"results/{wildcards.model}/{technique}/training_mix.parquet"}
    return {}


def llc_shared(wildcards):
    """A checkpoint that is another's model shares its llc tables, where the loss does not depend on the
    technique (every dataset but training_mix)."""
    if wildcards.dataset == "training_mix":
        return {}
    outputs = {name: llc_path("{model}", "{technique}", "{step}", wildcards.space, wildcards.dataset, name)
               for name in ("llc", "llc_trace")}
    return shared_inputs(llc_techniques, {"table": outputs["llc"], "trace": outputs["llc_trace"]})(wildcards)


def llc_subtree(space, dataset=None):
    """What an llc job depends on: sampler, diagnostics, data seed, its own space's patterns (if custom)
    and, for the reference loss, its prompt sets."""
    subtree = {"sampler": LLC["sampler"], "diagnostics": LLC["diagnostics"], "data_seed": LLC["data_seed"],
               "tilt": LLC["tilt"]}
    if dataset == "reference":
        subtree["reference"] = LLC["reference"]
    if space in LLC["custom_spaces"]:
        subtree["custom_spaces"] = {space: LLC["custom_spaces"][space]}
    return subtree


def llc_settings(wildcards):
    return settings_json("llc", llc_subtree(wildcards.space, wildcards.dataset), runtime=True)


def calibration_inputs(wildcards):
    cal = CALIBRATION
    return llc_inputs(wildcards) | {"checkpoint": checkpoint_path(wildcards.model, cal["technique"], cal["step"])}


def calibration_settings(wildcards):
    cal = CALIBRATION
    subtree = llc_subtree(cal["space"], cal["dataset"]) | {"calibration": cal}
    return settings_json("llc_calibrate", subtree, runtime=True)


# ---- susceptibilities ----------------------------------------------------------

SUSCEPTIBILITY = config["susceptibility"]


def susceptibility_techniques():
    return expand_names(SUSCEPTIBILITY["techniques"], config["techniques"])


def susceptibility_sampler():
    """The LLC sampler with the susceptibility overrides on top (shared defaults, as the config says)."""
    return LLC["sampler"] | SUSCEPTIBILITY["sampler"]


def susceptibility_path(model, technique, step, seed, name):
    return f"results/{model}/{technique}/step-{step}/susceptibility/seed-{seed}/{name}.parquet"


def susceptibility_jobs(model):
    return [(t, s) for t in susceptibility_techniques() for s in technique_steps(t)]


def linear_susceptibility_path(model, technique, step, name):
    return f"results/{model}/{technique}/step-{step}/susceptibility/linear/{name}.parquet"


def susceptibility_run_paths(model, name):
    """One table per checkpoint and configured estimator (SGLD at the configured sampler seed)."""
    seed = susceptibility_sampler()["seed"]
    paths = []
    for t, s in susceptibility_jobs(model):
        if "linear_response" in SUSCEPTIBILITY["estimators"]:
            paths.append(linear_susceptibility_path(model, t, s, name))
        if "sgld" in SUSCEPTIBILITY["estimators"]:
            paths.append(susceptibility_path(model, t, s, seed, name))
    return paths


def all_susceptibility_tables(wildcards):
    return susceptibility_run_paths(wildcards.model, "susceptibility")


def all_susceptibility_structures(wildcards):
    return susceptibility_run_paths(wildcards.model, "susceptibility_structure")


def all_susceptibility_reliabilities(wildcards):
    return susceptibility_run_paths(wildcards.model, "susceptibility_reliability")


def susceptibility_inputs(wildcards):
    observables = SUSCEPTIBILITY["observables"].values()
    inputs = {f"prompts_{name}": prompt_path(name) for name in sorted({o["prompt_set"] for o in observables})}
    if any(o.get("templates") for o in observables):
        inputs["templates"] = "resources/prompts/jailbreak_templates.parquet"
    if SUSCEPTIBILITY["sampling_task"] == "training_mix":
        inputs["mix"] = f"results/{wildcards.model}/{wildcards.technique}/training_mix.parquet"
    return inputs


def susceptibility_settings(wildcards):
    """Everything a susceptibility job depends on; the sampler seed comes from the path."""
    skip = ("techniques", "structure", "seed_check", "sampler", "in_all", "estimators", "linear_response")
    subtree = {k: v for k, v in SUSCEPTIBILITY.items() if k not in skip}
    subtree["sampler"] = susceptibility_sampler() | {"seed": int(wildcards.seed)}
    subtree["diagnostics"] = LLC["diagnostics"] | SUSCEPTIBILITY["diagnostics"]
    return settings_json("susceptibility", subtree, runtime=True)


LINEAR_RELIABILITY_KEYS = ("split_half_resamples", "seed")


def linear_susceptibility_settings(wildcards):
    """What the linear-response job reads: the data, the sampler's lr and localization (sigma^2), its own block
    less the light jobs' keys (structure and reliability have their own rules)."""
    skip = ("techniques", "structure", "seed_check", "sampler", "in_all", "estimators", "diagnostics",
            "restrictions", "frozen_prefix", "n_prompts")
    subtree = {k: v for k, v in SUSCEPTIBILITY.items() if k not in skip}
    subtree["linear_response"] = {k: v for k, v in SUSCEPTIBILITY["linear_response"].items()
                                  if k not in LINEAR_RELIABILITY_KEYS + ("pca_kinds",)}
    sampler = susceptibility_sampler()
    subtree["sampler"] = {k: sampler[k] for k in ("lr", "localization", "batch_size", "seq_len", "n_sequences",
                                                  "seed")}
    return settings_json("susceptibility_linear", subtree, runtime=True)


def linear_structure_settings(wildcards):
    return settings_json("susceptibility_linear_structure", SUSCEPTIBILITY["structure"]
                         | {"pca_kinds": SUSCEPTIBILITY["linear_response"]["pca_kinds"]})


def linear_reliability_settings(wildcards):
    lin = SUSCEPTIBILITY["linear_response"]
    return settings_json("susceptibility_reliability", {"contrasts": SUSCEPTIBILITY["structure"]["contrasts"]}
                         | {k: lin[k] for k in LINEAR_RELIABILITY_KEYS})


def seed_check_checkpoint():
    check = SUSCEPTIBILITY["seed_check"]
    technique = check["technique"] or susceptibility_techniques()[0]
    step = check["step"] if check["step"] is not None else technique_steps(technique)[-1]
    return technique, step


def seed_check_tables(wildcards):
    technique, step = seed_check_checkpoint()
    return [susceptibility_path(wildcards.model, technique, step, seed, "susceptibility")
            for seed in SUSCEPTIBILITY["seed_check"]["seeds"]]


def seed_check_settings(wildcards):
    observable = SUSCEPTIBILITY["seed_check"]["observable"] or next(iter(SUSCEPTIBILITY["observables"]))
    return settings_json("susceptibility_seed_agreement", {"observable": observable,
                                                          "contrasts": SUSCEPTIBILITY["structure"]["contrasts"]})


# ---- refusal direction ---------------------------------------------------------

REFUSAL_DIRECTION = config["refusal_direction"]


def refusal_direction_techniques():
    return expand_names(REFUSAL_DIRECTION["techniques"], config["techniques"])


def refusal_path(model, technique, step, name):
    return f"results/{model}/{technique}/step-{step}/refusal/{name}"


def refusal_direction_prompts(wildcards):
    return {f"prompts_{name}": prompt_path(name) for name in ("harmful", "harmless")}


def refusal_phrases():
    """The refusal score's tokens come from refusal_eval's phrases, so both stages score alike."""
    return config["refusal_eval"]["refusal_start_phrases"]


def refusal_direction_settings(wildcards):
    skip = ("techniques", "interventions", "in_all")
    subtree = {k: v for k, v in REFUSAL_DIRECTION.items() if k not in skip}
    return settings_json("refusal_direction", subtree | {"refusal_start_phrases": refusal_phrases()}, runtime=True)


def refusal_interventions_settings(wildcards):
    subtree = {k: v for k, v in REFUSAL_DIRECTION["interventions"].items() if k != "batch_size"}
    return settings_json("refusal_interventions", subtree | {"skip_first_token": REFUSAL_DIRECTION["skip_first_token"]})


def trajectory_root(technique):
    """The technique at the start of a `start_from` chain: its first checkpoint is the base model."""
    while "start_from" in TECHNIQUES[technique]:
        technique = TECHNIQUES[technique]["start_from"]["technique"]
    return technique


def refusal_drift_inputs(wildcards):
    root = trajectory_root(wildcards.technique)
    return {
        "directions": [refusal_path(wildcards.model, wildcards.technique, s, "refusal_direction.safetensors")
                       for s in technique_steps(wildcards.technique)],
        "base": refusal_path(wildcards.model, root, technique_steps(root)[0], "refusal_direction.safetensors"),
    }


refusal_direction_shared = shared_inputs(refusal_direction_techniques, REFUSAL_DIRECTION_OUTPUTS)
component_alignment_shared = shared_inputs(refusal_direction_techniques,
                                           {"table": "results/{model}/{technique}/step-{step}/refusal/component_alignment.parquet"})


def refusal_direction_jobs():
    return [(t, s) for t in refusal_direction_techniques() for s in technique_steps(t)]


def all_refusal_direction_tables(wildcards):
    return [refusal_path(wildcards.model, t, s, "refusal_direction.parquet") for t, s in refusal_direction_jobs()]


def all_refusal_interventions(wildcards):
    return [refusal_path(wildcards.model, t, s, "refusal_interventions.parquet") for t, s in refusal_direction_jobs()]


def all_refusal_drifts(wildcards):
    return [f"results/{wildcards.model}/{t}/refusal_drift.parquet" for t in refusal_direction_techniques()]


# ---- jailbreaks -----------------------------------------------------------------

JAILBREAK = config["jailbreak"]


def jailbreak_techniques():
    return expand_names(JAILBREAK["techniques"], config["techniques"])


def jailbreak_inputs(wildcards):
    return {f"prompts_{name}": prompt_path(name) for name in ("harmful", "harmless")} | generation_inputs(wildcards)


def jailbreak_settings(wildcards):
    """The judges' settings; the generation keys are the generate job's (an edit there reruns it, then this)."""
    subtree = {k: v for k, v in JAILBREAK.items() if k not in ("techniques", "in_all", "batch_size")}
    return settings_json("jailbreak", subtree, runtime=True)


def all_jailbreak_tables(wildcards):
    return [f"results/{wildcards.model}/{t}/step-{s}/jailbreak/jailbreak.parquet"
            for t in jailbreak_techniques() for s in technique_steps(t)]


# ---- the generation plan: a checkpoint's greedy answers, made once (workflow_lib/evaluation/generation_plan.py) ----


def generation_settings(technique):
    """The generation keys of every stage that judges this technique's answers."""
    return generation_plan.settings_for(config, jailbreak=technique in jailbreak_techniques(),
                                        interventions=technique in refusal_direction_techniques())


def generation_path(model, technique, step, kind):
    return f"results/{model}/{technique}/step-{step}/generations/{kind}.parquet"


def generation_kinds(technique):
    """plain always; directed when some stage reads answers under a refusal-direction hook."""
    return ["plain"] + (["directed"] if generation_plan.needs_directions(generation_settings(technique)) else [])


def generation_inputs(wildcards):
    """A judging job's generations, by kind."""
    return {f"generations_{kind}": generation_path(wildcards.model, wildcards.technique, wildcards.step, kind)
            for kind in generation_kinds(wildcards.technique)}


def generate_job(wildcards):
    """The generate job's settings: its merged conditions (workflow_lib/evaluation/generation_plan.py: job_settings)."""
    return _generate_job(wildcards.technique, wildcards.kind)


@functools.lru_cache(maxsize=None)  # the same for every checkpoint of a technique: merged once, not per job
def _generate_job(technique, kind):
    return generation_plan.job_settings(generation_settings(technique), kind)


def uses_final_direction(wildcards):
    """A directed condition uses the final checkpoint's direction where a step has none (`own_or_final`)."""
    return wildcards.kind == "directed" and any(c["direction"] == "own_or_final"
                                                for c in generate_job(wildcards)["conditions"])


def generate_inputs(wildcards):
    """Prompts, templates when a template attack is planned, directions for the directed kind, and the
    generations of a checkpoint that is this one's model (its cache entries are reused)."""
    job = generate_job(wildcards)
    inputs = {f"prompts_{name}": prompt_path(name) for name in sorted({c["prompt_set"] for c in job["conditions"]})}
    if any(c["wrapper"].startswith("template:") for c in job["conditions"]):
        inputs["templates"] = f"resources/attacks/{wildcards.model}/templates.parquet"
    if wildcards.kind == "directed":
        steps = technique_steps(wildcards.technique)
        inputs["direction"] = refusal_path(wildcards.model, wildcards.technique, wildcards.step,
                                           "refusal_direction.safetensors")
        if uses_final_direction(wildcards):
            inputs["final_direction"] = refusal_path(wildcards.model, wildcards.technique, steps[-1],
                                                     "refusal_direction.safetensors")
    measured = [t for t in TECHNIQUES if wildcards.kind in generation_kinds(t)]
    source = shared_source(wildcards.technique, wildcards.step, measured)
    if source is not None:
        keys = {"model": wildcards.model, "technique": source[0], "step": source[1]}
        inputs["same_as_checkpoint"] = checkpoint_path(**keys)
        inputs["same_as_generations"] = generation_path(**keys, kind=wildcards.kind)
    return inputs


def generate_final_step(wildcards):
    """The last step, when some condition uses the final checkpoint's direction (`own_or_final`)."""
    return technique_steps(wildcards.technique)[-1] if uses_final_direction(wildcards) else None


def generate_settings(wildcards):
    return settings_json("generate", generate_job(wildcards), runtime=True)


# ---- analysis --------------------------------------------------------------------

ANALYSIS = config["analysis"]


def analysis_stages(model):
    """Which per-checkpoint stages are part of this run, so the analyses read only what is built."""
    return {
        "llc": bool(llc_jobs(model)),
        "jailbreak": JAILBREAK["in_all"] and bool(jailbreak_techniques()),
        "refusal_direction": REFUSAL_DIRECTION["in_all"] and bool(refusal_direction_jobs()),
        "susceptibility": SUSCEPTIBILITY["in_all"] and bool(susceptibility_jobs(model)),
    }


def trajectories_inputs(wildcards):
    stages = analysis_stages(wildcards.model)
    summary = f"results/{wildcards.model}/summary"
    inputs = {"refusal": f"{summary}/trajectory.parquet"}
    if stages["llc"]:
        inputs["llc"] = f"{summary}/llc.parquet"
        inputs["llc_differences"] = f"{summary}/llc_differences.parquet"
    if stages["jailbreak"]:
        inputs["jailbreak"] = f"{summary}/jailbreak.parquet"
    if stages["refusal_direction"]:
        inputs["directions"] = f"{summary}/refusal_direction.parquet"
        inputs["drift"] = f"{summary}/refusal_drift.parquet"
    return inputs


ANALYSIS_KEYS = {
    "llc_asr_correlation": ["bootstrap_resamples", "permutations", "seed"],
    "technique_comparison": ["judge", "llc_detail"],
    "susceptibility_alignment": ["alignment_observable", "bootstrap_resamples", "permutations", "seed"],
}
PLOT_ANALYSIS_KEYS = ["judge"]


def analysis_settings(stage):
    """The analysis keys one stage reads, so that a statistics setting does not redraw every figure."""
    subtree = {k: ANALYSIS[k] for k in ANALYSIS_KEYS.get(stage, PLOT_ANALYSIS_KEYS)}
    if "llc_detail" in subtree and subtree["llc_detail"] is None and LLC["spaces"] and LLC["datasets"]:
        subtree["llc_detail"] = f"{LLC['spaces'][0]}/{LLC['datasets'][0]}"
    if stage == "llc_asr_correlation":  # replicates are the unit of inference (workflow_lib/core/replicates.py)
        subtree["replicate_of"] = REPLICATE_OF
    return settings_json(stage, subtree)


def all_component_alignments(wildcards):
    return [refusal_path(wildcards.model, t, s, "component_alignment.parquet") for t, s in refusal_direction_jobs()]


def susceptibility_alignment_inputs(wildcards):
    inputs = {"alignments": all_component_alignments(wildcards)}
    if analysis_stages(wildcards.model)["susceptibility"]:
        inputs["susceptibility"] = f"results/{wildcards.model}/summary/susceptibility.parquet"
        inputs["structure"] = f"results/{wildcards.model}/summary/susceptibility_structure.parquet"
    return inputs


def analysis_targets(model):
    """The analysis figures of one model (each pulls in its tables)."""
    plots = f"results/{model}/plots/analysis"
    targets = [f"{plots}/trajectories.png", f"{plots}/llc_vs_asr.png", f"{plots}/technique_comparison.png"]
    if analysis_stages(model)["refusal_direction"]:
        targets.append(f"{plots}/component_alignment.png")
        targets += [f"{plots}/drift/{t}.png" for t in refusal_direction_techniques()]
    return targets


def final_targets():
    targets = []
    for model in MODELS:
        targets.append(f"results/{model}/summary/trajectory.parquet")
        targets.append(f"results/{model}/plots/refusal_trajectory.png")
        if llc_jobs(model):
            targets.append(f"results/{model}/plots/llc_trajectory.png")
        if SUSCEPTIBILITY["in_all"] and susceptibility_jobs(model):
            targets.append(f"results/{model}/plots/susceptibility_heatmaps.png")
        if REFUSAL_DIRECTION["in_all"] and refusal_direction_jobs():
            targets.append(f"results/{model}/plots/refusal_interventions.png")
        if JAILBREAK["in_all"] and jailbreak_techniques():
            targets.append(f"results/{model}/plots/jailbreak_asr.png")
        if ANALYSIS["in_all"]:
            targets += analysis_targets(model)
    return targets
