"""Jailbreak prompt templates from PyRIT's template library, read from the wheel.

`pyrit==1.1.0` ships several hundred templates as YAML files under
`pyrit/datasets/jailbreak/templates/`; each has a `value` with a Jinja
placeholder `{{ prompt }}` where the harmful request goes. We keep the templates
whose only parameter is `prompt`, store them in one table, and wrap prompts by
plain substitution (no Jinja, nothing from PyRIT is imported or executed).
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import yaml

from workflow_lib import wheels
from workflow_lib.prompts import PYRIT

TEMPLATE_DIR = "pyrit/datasets/jailbreak/templates/"
PLACEHOLDER = re.compile(r"\{\{\s*prompt\s*\}\}")


class TemplateError(ValueError):
    """A template name is unknown or its text has no prompt placeholder."""


def read_templates(cache_dir: str | Path) -> pl.DataFrame:
    """Every single-parameter PyRIT template, as a `jailbreak_templates` table sorted by name."""
    wheel = wheels.wheel_path(*PYRIT, cache_dir)
    rows = []
    for member in wheels.list_members(wheel, TEMPLATE_DIR, ".yaml"):
        doc = yaml.safe_load(wheels.read_member(wheel, member))
        text = (doc or {}).get("value") or ""
        if (doc.get("parameters") or []) != ["prompt"] or not PLACEHOLDER.search(text):
            continue
        name = Path(member).stem
        rows.append({"template_id": f"pyrit/{name}", "source": "pyrit", "name": name, "text": text.strip(),
                     "n_chars": len(text.strip())})
    if not rows:
        raise TemplateError(f"found no single-prompt templates under {TEMPLATE_DIR} in {wheel.name}")
    return pl.DataFrame(rows).sort("template_id")


def prepare_templates(*, cache_dir: str | Path, out_path: str | Path) -> pl.DataFrame:
    from workflow_lib import tables

    return tables.write_table(read_templates(cache_dir), out_path, "jailbreak_templates")


def wrap(template_text: str, prompt: str) -> str:
    """The template with every `{{ prompt }}` replaced by `prompt`."""
    if not PLACEHOLDER.search(template_text):
        raise TemplateError("template has no {{ prompt }} placeholder")
    return PLACEHOLDER.sub(lambda _: prompt, template_text)


def pick(templates: pl.DataFrame, names: list[str]) -> list[str]:
    """Template texts by name (`name` or `source/name`), in the order given; unknown names fail clearly."""
    by_name = {r["name"]: r["text"] for r in templates.iter_rows(named=True)}
    by_id = {r["template_id"]: r["text"] for r in templates.iter_rows(named=True)}
    unknown = [n for n in names if n not in by_name and n not in by_id]
    if unknown:
        shortest = templates.sort("n_chars").head(8)["name"].to_list()
        raise TemplateError(f"unknown jailbreak templates {unknown}; names come from "
                            f"resources/prompts/jailbreak_templates.parquet (short ones: {shortest})")
    return [by_id.get(n) or by_name[n] for n in names]
