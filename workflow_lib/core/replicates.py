"""Replicate trajectories: one technique trained with several seeds, each its own trajectory.

One fine-tuning run per technique cannot separate the technique's effect from the
noise of that run, so `techniques.<name>.replicates: [s0, s1, ...]` trains the
technique once per seed. Each replicate is a separate trajectory through every
stage: the first keeps the technique's name (so a one-replicate config, the
default, is unchanged and its results stay cached) and the others are named
`<name>-seed<s>`. A technique that starts from another one's checkpoint
(`start_from`, `direction_from`) starts its replicate i from the parent's
replicate i when both have the same number of replicates, and from the parent's
first replicate otherwise. The analyses treat replicates as the unit of inference:
`replicate_of` maps every trajectory back to its technique (workflow_lib/analysis/questions.py).
"""

from __future__ import annotations

import copy


def trajectory_name(technique: str, seeds: list[int], index: int) -> str:
    """The first replicate keeps the technique's name; replicate i > 0 is `<name>-seed<seed>`."""
    return technique if index == 0 else f"{technique}-seed{seeds[index]}"


def replicate_seeds(spec: dict) -> list[int]:
    """The training seeds of a technique: `replicates`, or its one `seed`."""
    return list(spec["replicates"]) if spec.get("replicates") else [spec.get("seed", 0)]


def trajectories_of(techniques: dict) -> dict[str, list[str]]:
    """technique -> its trajectory names, in replicate order."""
    out = {}
    for name, spec in techniques.items():
        seeds = replicate_seeds(spec)
        out[name] = [trajectory_name(name, seeds, i) for i in range(len(seeds))]
    return out


def _parent_trajectory(parent: str, index: int, n_replicates: int, trajectories: dict[str, list[str]]) -> str:
    names = trajectories[parent]
    return names[index] if len(names) == n_replicates else names[0]


def expand_replicates(techniques: dict) -> dict[str, dict]:
    """trajectory -> its technique spec with that replicate's seed (and `replicates` removed).

    A technique without `replicates` is returned as it is, so its settings digest
    (and every cached result) does not change.
    """
    trajectories = trajectories_of(techniques)
    out = {}
    for name, spec in techniques.items():
        base = {k: v for k, v in spec.items() if k != "replicates"}
        if not spec.get("replicates"):
            out[name] = base
            continue
        seeds = replicate_seeds(spec)
        for index, seed in enumerate(seeds):
            replicate = copy.deepcopy(base) | {"seed": seed}
            for key in ("start_from", "direction_from"):
                if key in replicate:
                    parent = replicate[key]["technique"]
                    replicate[key]["technique"] = _parent_trajectory(parent, index, len(seeds), trajectories)
            out[trajectory_name(name, seeds, index)] = replicate
    return out


def replicate_of(techniques: dict) -> dict[str, str]:
    """trajectory -> technique."""
    return {trajectory: name for name, names in trajectories_of(techniques).items() for trajectory in names}


def expand_names(names: list[str] | None, techniques: dict) -> list[str]:
    """Every trajectory of the named techniques (all trajectories when `names` is None)."""
    trajectories = trajectories_of(techniques)
    chosen = list(techniques) if names is None else names
    return [t for name in chosen for t in trajectories.get(name, [name])]
