"""Defaults read from config/schema.yaml, the one place they are written (issue 21).

A validated config has every default filled in already (`snakemake.utils.validate`
with `set_default=True`); library code that also runs on a bare settings dict
(tests, benchmarks, a stage run by hand) takes its fallbacks from here, filled the
same way, so no second copy of a default can go stale.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

SCHEMA = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


@lru_cache(maxsize=1)
def _schema() -> dict:
    import yaml

    return yaml.safe_load(SCHEMA.read_text())


def _filled(node: dict) -> dict:
    """The defaults of an object schema's properties, nested objects filled recursively (as set_default does)."""
    out = {}
    for key, sub in node.get("properties", {}).items():
        if "default" not in sub:
            continue
        value = copy.deepcopy(sub["default"])
        out[key] = value | _filled(sub) if isinstance(value, dict) and "properties" in sub else value
    return out


def defaults(*path: str) -> dict:
    """Defaults of the config block at `path`, e.g. defaults("llc", "sampler")."""
    node = _schema()
    for key in path:
        node = node["properties"][key]
    return _filled(node)
