"""Semantic config checks that a JSON schema cannot express.

Run by the Snakefile right after schema validation, before any job starts, so a
bad config fails in seconds with a message that names the key and the fix.
"""

from __future__ import annotations

from workflow_lib import models
from workflow_lib.finetune import known_kinds


class ConfigError(ValueError):
    """The config is well-formed but cannot be run."""


def check_steps(name: str, steps: list[int]) -> None:
    if not steps or steps[0] != 0:
        raise ConfigError(f"techniques.{name}.steps must start at 0 (the base model); got {steps}")
    for a, b in zip(steps, steps[1:]):
        if b <= a:
            raise ConfigError(f"techniques.{name}.steps must be strictly increasing; got {steps} ({a} then {b})")


def check_config(config: dict) -> None:
    for name, entry in config["models"].items():
        try:
            models.check_model_entry(name, entry)
        except models.ModelSourceError as err:
            raise ConfigError(str(err)) from None
    kinds = known_kinds()
    for name, technique in config["techniques"].items():
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
    check_start_from(config["techniques"])


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
        if technique.get("lora") != parent_lora:
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
