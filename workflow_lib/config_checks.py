"""Semantic config checks that a JSON schema cannot express.

Run by the Snakefile right after schema validation, before any job starts, so a
bad config fails in seconds with a message that names the key and the fix.
"""

from __future__ import annotations

import difflib
import re

from workflow_lib.core import model_sources
from workflow_lib.finetune import known_kinds


class ConfigError(ValueError):
    """The config is well-formed but cannot be run."""


def check_steps(name: str, steps: list[int]) -> None:
    if not steps or steps[0] != 0:
        raise ConfigError(f"techniques.{name}.steps must start at 0 (the base model); got {steps}")
    for a, b in zip(steps, steps[1:]):
        if b <= a:
            raise ConfigError(f"techniques.{name}.steps must be strictly increasing; got {steps} ({a} then {b})")


# Folders under results/{model}/ that are not techniques: a technique of that name would collide.
RESERVED_TECHNIQUE_NAMES = ("analysis", "base", "plots", "summary", "susceptibility_seed_check")


def check_config(config: dict) -> None:
    for name, entry in config["models"].items():
        try:
            model_sources.check_model_entry(name, entry)
        except model_sources.ModelSourceError as err:
            raise ConfigError(str(err)) from None
    kinds = known_kinds()
    for name, technique in config["techniques"].items():
        if name in RESERVED_TECHNIQUE_NAMES:
            raise ConfigError(f"techniques.{name}: the name is reserved for a results folder "
                              f"({', '.join(RESERVED_TECHNIQUE_NAMES)}); rename the technique")
        if technique["kind"] not in kinds:
            raise ConfigError(f"techniques.{name}.kind is {technique['kind']!r}, an unknown technique; "
                              f"known kinds are {kinds}")
        check_steps(name, technique["steps"])
        schedule = technique.get("schedule", {})
        if schedule.get("name", "constant") != "constant" and "total_steps" not in schedule:
            raise ConfigError(f"techniques.{name}.schedule.total_steps is required for a "
                              f"{schedule['name']!r} schedule (it is never derived from the step list, "
                              "so that appending a step does not change earlier checkpoints)")
    configured_sets = set(config["prompts"])
    for prompt_set in config.get("refusal_eval", {}).get("prompt_sets", []):
        if prompt_set not in configured_sets:
            raise ConfigError(f"refusal_eval.prompt_sets names {prompt_set!r}, which has no entry under prompts; "
                              f"add prompts.{prompt_set}.splits or remove it")
    for prompt_set in completion_sets(config):
        if prompt_set not in configured_sets:
            raise ConfigError(f"base_completions.sets names {prompt_set!r}, which has no entry under prompts; "
                              f"add prompts.{prompt_set}.splits or remove it")
    check_start_from(config["techniques"])
    check_replicates(config["techniques"])
    check_abliterate(config["techniques"])
    for key in ("refusal_direction", "jailbreak"):
        check_named_techniques(key, config.get(key, {}), config["techniques"])
    check_llc(config)
    check_susceptibility(config)


LLC_BUILTIN_SPACES = ("lora", "full", "adapted")


def completion_sets(config: dict) -> list[str]:
    """Prompt sets the base model answers in `base_completions`."""
    return list(config.get("base_completions", {}).get("sets", ["harmful", "harmless"]))


def check_epoch_alignment(key: str, sampler: dict) -> None:
    """draws cover whole passes over the packed data (see workflow_lib/slt/sampling.py, epoch alignment).

    `sampler` is validated, so the schema has filled in every key (it is the only source of defaults)."""
    batch, rows = sampler["batch_size"], sampler["n_sequences"]
    draws = sampler["draws"] * sampler["steps_between_draws"]
    if rows % batch or draws % (rows // batch):
        raise ConfigError(f"{key}: draws x steps_between_draws ({draws}) must be a multiple of the "
                          f"n_sequences / batch_size = {rows}/{batch} batches in one pass over the data, and "
                          "n_sequences a multiple of batch_size: the estimate then weighs every batch equally")


def check_named_techniques(key: str, section: dict, techniques: dict) -> None:
    """`<key>.techniques` lists only configured techniques."""
    for name in section.get("techniques") or []:
        if name not in techniques:
            raise ConfigError(f"{key}.techniques names {name!r}, which is not a configured technique; "
                              f"configured: {list(techniques)}")


def check_susceptibility(config: dict) -> None:
    """`susceptibility` names configured techniques, prompt sets with answers where needed, and its own observables."""
    sus = config.get("susceptibility", {})
    techniques = config["techniques"]
    check_named_techniques("susceptibility", sus, techniques)
    completed = completion_sets(config)
    completion_splits = config.get("base_completions", {}).get("splits", ["train"])
    task = sus.get("sampling_task", "training_mix")
    if task != "training_mix" and task not in completed:
        raise ConfigError(f"susceptibility.sampling_task is {task!r}: use training_mix or one of {completed}")
    split = sus.get("observable_split", "train")
    observables = sus.get("observables", {})
    for name, spec in observables.items():
        prompt_set = spec["prompt_set"]
        if prompt_set not in config["prompts"]:
            raise ConfigError(f"susceptibility.observables.{name} uses prompt set {prompt_set!r}, which has no "
                              f"entry under prompts; add prompts.{prompt_set}.splits")
        if spec["answer"] == "base" and (prompt_set not in completed or split not in completion_splits):
            raise ConfigError(f"susceptibility.observables.{name} pairs {prompt_set} {split} prompts with the base "
                              f"model's answers, which base_completions does not compute; add {prompt_set} to "
                              f"base_completions.sets and {split} to base_completions.splits")
    for name, pair in sus.get("structure", {}).get("contrasts", {}).items():
        unknown = [o for o in pair if o not in observables]
        if unknown:
            raise ConfigError(f"susceptibility.structure.contrasts.{name} names {unknown}, which are not "
                              f"observables; configured: {list(observables)}")
    merged = config.get("llc", {}).get("sampler", {}) | sus.get("sampler", {})
    if merged and "sgld" in sus.get("estimators", ["sgld"]):
        check_epoch_alignment("susceptibility.sampler (merged over llc.sampler)", merged)
    if "linear_response" in sus.get("estimators", []) and {"lr", "localization"} <= set(merged):
        from workflow_lib.slt.sgld_scale import LinearResponseError, stationary_variance

        try:  # the estimate's scale: defined only for a stable chain under a localizing prior
            stationary_variance(merged)
        except LinearResponseError as err:
            raise ConfigError(str(err)) from None
    check = sus.get("seed_check", {})
    if check.get("technique") is not None:
        technique = check["technique"]
        if technique not in techniques:
            raise ConfigError(f"susceptibility.seed_check.technique {technique!r} is not a configured technique")
        if check.get("step") is not None and check["step"] not in techniques[technique]["steps"]:
            raise ConfigError(f"susceptibility.seed_check.step {check['step']} is not a step of {technique!r} "
                              f"({techniques[technique]['steps']})")
    named = list(observables) + list(sus.get("structure", {}).get("contrasts", {}))
    if check.get("observable") is not None and check["observable"] not in named:
        raise ConfigError(f"susceptibility.seed_check.observable {check['observable']!r} is neither an observable "
                          f"nor a contrast; configured: {named}")


def check_llc(config: dict) -> None:
    """`llc` names only configured techniques, known parameter spaces and datasets with answers."""
    llc = config.get("llc", {})
    techniques = config["techniques"]
    check_named_techniques("llc", llc, techniques)
    custom = llc.get("custom_spaces", {})
    for name in custom:
        if name == "adapted":
            raise ConfigError("llc.custom_spaces.adapted: `adapted` is built in now (the merged weights of the "
                              "modules each checkpoint's LoRA adapts, on any architecture); delete this entry")
        if name in LLC_BUILTIN_SPACES:
            raise ConfigError(f"llc.custom_spaces.{name} shadows the built-in space {name!r}; rename it")
    for space in llc.get("spaces", []):
        if space not in LLC_BUILTIN_SPACES and space not in custom:
            raise ConfigError(f"llc.spaces names {space!r}: use adapted, lora, full, or define llc.custom_spaces.{space} "
                              "as a list of parameter-name globs")
    completed = completion_sets(config)
    for dataset in llc.get("datasets", []):
        if dataset not in ("training_mix", "reference") and dataset not in completed:
            raise ConfigError(f"llc.datasets names {dataset!r}: use reference, training_mix or one of {completed} "
                              "(prompt sets whose base-model answers base_completions computes)")
    uses_reference = "reference" in llc.get("datasets", []) or llc.get("calibration", {}).get("dataset") == "reference"
    for prompt_set in llc.get("reference", {}).get("sets", ["harmful", "harmless"]) if uses_reference else []:
        if prompt_set not in completed:
            raise ConfigError(f"llc.reference.sets names {prompt_set!r}, which base_completions.sets does not "
                              f"answer ({completed}); add it there or remove it from the reference loss")
    if llc.get("sampler"):
        check_epoch_alignment("llc.sampler", llc["sampler"])
    cal = llc.get("calibration", {})
    if cal.get("technique") is not None:
        technique, step = cal["technique"], cal.get("step", 0)
        if technique not in techniques or step not in techniques[technique]["steps"]:
            raise ConfigError(f"llc.calibration names checkpoint {technique}@{step}, which the config does not "
                              f"produce; pick a configured technique and one of its steps")


def check_abliterate(techniques: dict) -> None:
    """`abliterate` makes one checkpoint from a named one; nothing may continue from it (its base differs)."""
    for name, technique in techniques.items():
        parent = technique.get("start_from")
        if parent and techniques.get(parent["technique"], {}).get("kind") == "abliterate":
            raise ConfigError(f"techniques.{name}.start_from names {parent['technique']!r}, an abliterate "
                              "technique; continuing from an orthogonalised checkpoint is not supported. "
                              "Start from the checkpoint it was made from instead")
        if technique["kind"] != "abliterate":
            if "direction_from" in technique:
                raise ConfigError(f"techniques.{name}.direction_from is only used by kind abliterate")
            continue
        if parent is None:
            raise ConfigError(f"techniques.{name} (kind abliterate) needs start_from: the checkpoint to "
                              "orthogonalise, e.g. {technique: sft_refusal, step: 50}")
        if technique["steps"] != [0]:
            raise ConfigError(f"techniques.{name}.steps must be [0] for kind abliterate (it makes one checkpoint, "
                              f"no training); got {technique['steps']}")
        source = technique.get("direction_from", parent)
        if source["technique"] not in techniques or source["step"] not in techniques[source["technique"]]["steps"]:
            raise ConfigError(f"techniques.{name}.direction_from {source} is not a configured checkpoint; "
                              "name a technique and one of its steps")


def check_replicates(techniques: dict) -> None:
    """Replicate seeds are distinct, and no replicate's trajectory name is another technique's name."""
    from workflow_lib.core.replicates import trajectories_of

    for name, technique in techniques.items():
        seeds = technique.get("replicates") or []
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            raise ConfigError(f"techniques.{name}.replicates repeats seed(s) {repeated}: each replicate is a "
                              f"separate training run and needs its own seed; e.g. replicates: "
                              f"{list(range(len(seeds)))}")
    owners = {}
    for name, trajectories in trajectories_of(techniques).items():
        for trajectory in trajectories:
            if trajectory in owners or (trajectory != name and trajectory in techniques):
                other = owners.get(trajectory, trajectory)
                raise ConfigError(f"techniques.{name}.replicates: the replicate trajectory {trajectory!r} has "
                                  f"the name of technique {other!r}; rename one of the techniques")
            owners[trajectory] = name


def check_start_from(techniques: dict) -> None:
    """Every `start_from` names a configured technique and one of its steps, with no cycle."""
    for name, technique in techniques.items():
        parent = technique.get("start_from")
        if technique.get("reference") == "start" and parent is None:
            raise ConfigError(f"techniques.{name}.reference is 'start' but there is no start_from; "
                              "name the checkpoint to start from (and compare against), or use reference: base")
        if parent is None:
            continue
        if parent["technique"] not in techniques:
            raise ConfigError(f"techniques.{name}.start_from.technique is {parent['technique']!r}, which is not "
                              f"configured; configured techniques are {list(techniques)}")
        parent_steps = techniques[parent["technique"]]["steps"]
        if parent["step"] not in parent_steps:
            raise ConfigError(f"techniques.{name}.start_from.step {parent['step']} is not a checkpoint of "
                              f"{parent['technique']!r} (its steps are {parent_steps})")
        parent_lora = techniques[parent["technique"]].get("lora")
        if technique["kind"] != "abliterate" and technique.get("lora") != parent_lora:
            raise ConfigError(f"techniques.{name}.lora must equal the lora of its start_from technique "
                              f"{parent['technique']!r} ({parent_lora}): the child continues the same adapter")
    for name in techniques:
        chain, current = [name], name
        while techniques[current].get("start_from"):
            current = techniques[current]["start_from"]["technique"]
            if current in chain:
                cycle = " -> ".join(chain[chain.index(current):] + [current])
                raise ConfigError(f"techniques start_from form a cycle: {cycle}; one of them must start from the base")
            chain.append(current)


# A number YAML 1.1 reads as a string: an exponent without a dot (5e-4), which PyYAML does not parse as a float.
_EXPONENT_STRING = re.compile(r"^[+-]?\d+(\.\d*)?[eE][+-]?\d+$")


def key_path(parts) -> str:
    """`llc.sampler.chains` from a jsonschema path (list indices in brackets)."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def explain_schema_error(error) -> str:
    """A few lines a user can act on for a jsonschema `ValidationError`: the key, the bad value, the closest
    valid names, and where the keys are documented; not the schema and config dumps."""
    where = key_path(error.absolute_path)
    lines = [f"Invalid config at {where or 'the top level'}: {error.message}"]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        for key in (k for k in error.instance if k not in allowed):
            close = difflib.get_close_matches(key, allowed, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else f"valid keys: {allowed}"
            lines.append(f"  {key_path([*error.absolute_path, key])}: unknown key; {hint}")
    elif error.validator == "enum" and isinstance(error.instance, str):
        close = difflib.get_close_matches(error.instance, [str(v) for v in error.validator_value], n=3, cutoff=0.6)
        if close:
            lines.append(f"  did you mean {' or '.join(repr(c) for c in close)}?")
    elif error.validator == "type" and isinstance(error.instance, str) and _EXPONENT_STRING.match(error.instance):
        mantissa, _, exponent = error.instance.lower().partition("e")
        fixed = f"{mantissa if '.' in mantissa else mantissa + '.0'}e{exponent}"
        lines.append(f"  YAML reads {error.instance} (an exponent without a dot) as a string; write {fixed}")
    lines.append("Every key is documented in config/README.md; set SLT_SAFETY_VERBOSE=1 for the schema's full error.")
    return "\n".join(lines)


def schema_error_of(err: BaseException):
    """The jsonschema `ValidationError` behind an error Snakemake's `validate` raised (its context), or None."""
    seen = err
    while seen is not None:
        if hasattr(seen, "absolute_path") and hasattr(seen, "validator"):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
