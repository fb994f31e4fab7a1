"""Schema errors become a few lines that name the key, the bad value and the fix (issue 20).

The real schema and the tiny config, validated as the Snakefile validates them; the Snakefile
path itself is covered by the bad-config dry runs in test_workflow.py.
"""

from __future__ import annotations

import copy

import jsonschema
import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from conftest import REPO
from workflow_lib.config_checks import explain_schema_error, schema_error_of

TINY = yaml.safe_load((REPO / "tests" / "config" / "tiny.yaml").read_text())


def message(edit) -> str:
    config = copy.deepcopy(TINY)
    edit(config)
    with pytest.raises(WorkflowError) as caught:
        validate(config, str(REPO / "config" / "schema.yaml"), set_default=True)
    cause = schema_error_of(caught.value)
    assert isinstance(cause, jsonschema.exceptions.ValidationError)
    return explain_schema_error(cause)


def test_a_misspelt_top_level_key_gets_a_suggestion_in_a_few_lines():
    text = message(lambda c: c.update(jailbrake={"max_prompts": 3}))
    assert "the top level" in text and "jailbrake: unknown key; did you mean 'jailbreak'?" in text
    assert len(text.splitlines()) <= 4 and "config/README.md" in text


def test_a_nested_key_is_named_by_its_path():
    text = message(lambda c: c["llc"]["sampler"].update(chians=2))
    assert "llc.sampler.chians: unknown key; did you mean 'chains'?" in text
    text = message(lambda c: c["refusal_eval"].update(batch_size=0))
    assert text.startswith("Invalid config at refusal_eval.batch_size: 0 is less than the minimum of 1")


def test_a_yaml_exponent_without_a_dot_is_explained():
    text = message(lambda c: c["techniques"]["sft_refusal"]["optimizer"].update(lr="5e-4"))
    assert "techniques.sft_refusal.optimizer.lr" in text
    assert "YAML reads 5e-4 (an exponent without a dot) as a string; write 5.0e-4" in text


def test_a_misspelt_rule_under_resources_gets_the_rule():
    text = message(lambda c: c.setdefault("resources", {}).update(finetune_segmnt={"threads": 2}))
    assert "did you mean 'finetune_segment'?" in text


def test_a_yaml_error_names_its_file_line_and_column(tmp_path):
    """bin/run-default parses the config files before Snakemake, whose message names neither."""
    import subprocess
    import sys

    from workflow_lib.core import config_files

    bad = tmp_path / "bad.yaml"
    bad.write_text("jailbreak:\n  max_prompts: 3\n   templates: [a]\n")
    tabbed = tmp_path / "tabbed.yaml"
    tabbed.write_text("llc:\n\tspaces: [full]\n")
    # --configfile takes one or more files in Snakemake too, so a target must come before it or after a flag
    assert config_files.named_files("config/config.yaml", ["all", "--configfile", str(bad), "--cores", "2"]) == [
        "config/config.yaml", str(bad)]
    assert config_files.named_files("d.yaml", ["--configfiles", "a.yaml", "b.yaml", "--cores", "2"]) == [
        "d.yaml", "a.yaml", "b.yaml"]
    assert config_files.named_files("d.yaml", ["--configfile=a.yaml", "all"]) == ["d.yaml", "a.yaml"]
    assert config_files.problem(str(bad)).startswith(f"{bad}:3:13: mapping values are not allowed here")
    assert config_files.problem(str(tabbed)).startswith(f"{tabbed}:2:1: found character '\\t'")
    assert config_files.problem(str(REPO / "config" / "config.yaml")) is None
    run = subprocess.run([sys.executable, "-m", "workflow_lib.core.config_files", "config/config.yaml", "--configfile",
                          str(bad)], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 1 and f"Invalid config file: {bad}:3:13" in run.stderr
