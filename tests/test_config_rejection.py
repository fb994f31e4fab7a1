"""The config is checked before any job: Snakemake dry runs on a fresh copy of the workflow (no results).

These need no finished run, so they are apart from tests/test_workflow.py's end-to-end run: on a
fresh copy each dry run plans the DAG without checking a finished run's files, and pytest-xdist
can run them beside it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_workflow
from test_workflow import _edit_config, snakemake


@pytest.fixture(scope="module")
def fresh_workflow(tmp_path_factory, wheel_cache) -> Path:
    """The workflow as a fresh checkout has it, with the tiny model; nothing run."""
    return copy_workflow(tmp_path_factory.mktemp("fresh"))


def test_a_restriction_naming_a_missing_layer_fails_before_any_job(fresh_workflow):
    """Layer indices are checked against the model's config.json when the DAG is built (workflow_lib/preflight.py)."""
    original = _edit_config(fresh_workflow, lambda c: c["susceptibility"]["restrictions"].update(layers=[0, 7]))
    target = "results/tiny/sft_refusal/step-0/susceptibility/seed-5/susceptibility.parquet"
    try:
        result = snakemake(fresh_workflow, target, check=False)
        output = result.stdout + result.stderr
        assert result.returncode != 0
        assert "susceptibility.restrictions.layers names layers [7], but the model has 2 layers (0 to 1)" in output
        assert "Select jobs to execute" not in output, output[-2000:]  # rejected before scheduling anything
    finally:
        (fresh_workflow / "tests" / "config" / "tiny.yaml").write_text(original)
    assert not (fresh_workflow / target).exists()


def test_lint_is_clean(fresh_workflow):
    result = snakemake(fresh_workflow, "--lint", check=False)
    output = result.stdout + result.stderr
    assert "Lints for" not in output and result.returncode == 0, output


def test_resources_accept_exactly_the_rules_that_run_jobs():
    """`resources.<rule>` keys are checked against the schema's list; that list is every rule with a job."""
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    allowed = set(schema["properties"]["resources"]["propertyNames"]["enum"]) - {"default"}
    with_jobs = {m.group(1) for f in (REPO / "rules").glob("*.smk")
                 for block in re.split(r"^(?=rule \w+:)", f.read_text(), flags=re.M)
                 if (m := re.match(r"rule (\w+):", block)) and "    shell:" in block}
    assert allowed == with_jobs


def test_every_rule_takes_its_resources_from_the_config(fresh_workflow):
    """A light rule (no model) honours resources.<rule> too; before, 26 of them hard-coded theirs."""
    original = _edit_config(fresh_workflow, lambda c: c.setdefault("resources", {}).update(
        plot_llc={"mem_mb": 3000, "runtime": 7}))
    try:
        out = snakemake(fresh_workflow, "--dry-run", "--forcerun", "plot_llc", "results/tiny/plots/llc_trajectory.png").stdout
    finally:
        (fresh_workflow / "tests" / "config" / "tiny.yaml").write_text(original)
    block = out.split("rule plot_llc:")[1].split("\n\n")[0]
    assert "runtime=7" in block and "mem_mb=3000" in block and "gpu=0" in block, block


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["models"]["tiny"].update(source="ftp"), r"'ftp' is not one of \['embedded', 'hf', 'path'\]"),
        (lambda c: c["refusal_eval"].update(max_new_tokens="many"), r"'many' is not of type 'integer'"),
        (lambda c: c["techniques"]["sft_refusal"].update(kind="magic"), r"techniques\.sft_refusal\.kind is 'magic'"),
        (lambda c: c["techniques"]["sft_refusal"].update(steps=[0, 4, 2]), "strictly increasing"),
        (lambda c: c["models"]["tiny"].update(path="resources/nowhere"), r"models\.tiny\.path .* not a model folder"),
        (lambda c: c.update(surprise=1), r"Additional properties are not allowed \('surprise' was unexpected\)"),
        (lambda c: c["techniques"]["harmful_finetune"].update(start_from={"technique": "nope", "step": 4}),
         r"start_from.technique is 'nope', which is not configured"),
        (lambda c: c["techniques"]["harmful_finetune"].update(start_from={"technique": "sft_refusal", "step": 3}),
         r"start_from.step 3 is not a checkpoint of 'sft_refusal'"),
        (lambda c: c["techniques"]["sft_refusal"].update(start_from={"technique": "harmful_finetune", "step": 2}),
         r"cycle"),
        (lambda c: c["llc"].update(spaces=["mlp9"]), r"llc\.spaces names 'mlp9'.*custom_spaces"),
        (lambda c: c["llc"].update(datasets=["jailbreaks"]), r"llc\.datasets names 'jailbreaks'"),
        (lambda c: c["llc"].update(techniques=["dpo"]), r"llc\.techniques names 'dpo'"),
        (lambda c: c["techniques"]["sft_refusal"].update(replicates=[0, 1, 0]),
         r"techniques\.sft_refusal\.replicates repeats seed\(s\) \[0\]"),
        (lambda c: c["llc"]["sampler"].update(chains=0), r"0 is less than the minimum of 1"),
        (lambda c: c["llc"]["sampler"].update(localization=0), r"0 is less than or equal to the minimum of 0"),
        (lambda c: c["llc"]["sampler"].update(lr=-1e-3), r"-0\.001 is less than or equal to the minimum of 0"),
        (lambda c: c["llc"].update(reference={"sets": ["harmless_lookalike"]}),
         r"llc\.reference\.sets names 'harmless_lookalike', which base_completions\.sets does not answer"),
        (lambda c: c["susceptibility"].update(techniques=["dpo"]), r"susceptibility\.techniques names 'dpo'"),
        (lambda c: c["susceptibility"]["observables"].update(lookalike={"prompt_set": "harmless_lookalike",
                                                                       "answer": "base"}),
         r"observables\.lookalike uses prompt set 'harmless_lookalike', which has no entry under prompts"),
        (lambda c: c["susceptibility"]["observables"].update(val_answers={"prompt_set": "harmless", "answer": "base"})
         or c["susceptibility"].update(observable_split="val"),
         r"base model's answers, which base_completions does not compute; add harmless to base_completions\.sets "
         r"and val to base_completions\.splits"),
        (lambda c: c["susceptibility"]["restrictions"].update(per_layer=["neurons"]), r"'neurons' is not one of"),
        (lambda c: c["susceptibility"]["sampler"].update(localization=0),
         r"susceptibility\.sampler\.localization is 0\.0; the linear-response estimator needs a localizing prior"),
        (lambda c: c["susceptibility"]["sampler"].update(lr=0.05),
         r"susceptibility\.sampler: lr x localization = 5 >= 4, where SGLD diverges"),
        (lambda c: c["susceptibility"].update(estimators=["bayes"]), r"'bayes' is not one of"),
        (lambda c: c["susceptibility"]["structure"]["contrasts"].update(x=["harmful_refusal", "nope"]),
         r"contrasts\.x names \['nope'\]"),
        (lambda c: c["techniques"]["abliterated"].pop("start_from"), r"abliterated \(kind abliterate\) needs start_from"),
        (lambda c: c["techniques"]["abliterated"].update(steps=[0, 2]), r"abliterated\.steps must be \[0\]"),
        (lambda c: c["techniques"]["harmful_finetune"].update(start_from={"technique": "abliterated", "step": 0}),
         r"continuing from an orthogonalised checkpoint is not supported"),
        (lambda c: c["techniques"]["abliterated"].update(direction_from={"technique": "sft_refusal", "step": 3}),
         r"direction_from .* is not a configured checkpoint"),
        (lambda c: c["jailbreak"].update(attacks=["none", "magic"]), r"'magic' is not one of"),
        (lambda c: c["jailbreak"].update(techniques=["dpo"]), r"jailbreak\.techniques names 'dpo'"),
        (lambda c: c.setdefault("resources", {}).update(finetune={"threads": 2}), r"'finetune' is not one of"),
        (lambda c: c.update(jailbrake={}), r"jailbrake: unknown key; did you mean 'jailbreak'\?"),
        (lambda c: c["techniques"]["sft_refusal"]["optimizer"].update(lr="5e-4"), r"write 5\.0e-4"),
        (lambda c: c["llc"]["calibration"].setdefault("sampler", {}).update(chians=2),
         r"Additional properties are not allowed \('chians' was unexpected\)"),
        (lambda c: c["refusal_direction"].update(positions=[0]), r"positions|is not valid under any of the given schemas"),
        (lambda c: [t["lora"].update(target_modules=["q_proj", "v_prj"]) for t in c["techniques"].values()],
         r"techniques\.\w+\.lora\.target_modules names \['v_prj'\], which the model \(llama\) does not have"),
        (lambda c: c["llc"].update(spaces=["attn9"], custom_spaces={"attn9": ["model.layers.9.*"]}),
         r"llc\.custom_spaces\.attn9 \['model\.layers\.9\.\*'\] selects no weight"),
        (lambda c: c["llc"].update(custom_spaces={"adapted": ["*"]}), r"`adapted` is built in now"),
        (lambda c: c["techniques"]["harmful_finetune"].pop("start_from")
         and c["techniques"]["harmful_finetune"]["lora"].update(target_modules="all-linear")
         or c["llc"].update(spaces=["adapted"]), r"llc\.spaces uses `adapted`, but the techniques adapt different"),
        (lambda c: c["susceptibility"]["restrictions"].update(extra={"nowhere": "no.such.module"}),
         r"restriction 'nowhere' \(pattern 'no\.such\.module'\)"),
        (lambda c: c["jailbreak"].update(templates=["prefix_injecton"]),
         r"jailbreak\.templates names 'prefix_injecton', which is not one of .*did you mean \['prefix_injection'"),
        (lambda c: c["susceptibility"]["observables"]["jailbreak_refusal"].update(templates=["garak/STAN"]),
         r"observables\.jailbreak_refusal\.templates names 'garak/STAN', which is not one of PyRIT's"),
        (lambda c: c["susceptibility"]["linear_response"]["per_token"].update(layers=[3]),
         r"susceptibility\.linear_response\.per_token\.layers names layers \[3\]"),
    ],
)
def test_bad_config_is_rejected_before_any_job(fresh_workflow, edit, message):
    original = _edit_config(fresh_workflow, edit)
    try:
        result = snakemake(fresh_workflow, "--dry-run", check=False)
        output = result.stdout + result.stderr
        assert result.returncode != 0
        assert re.search(message, output), output[-3000:]
    finally:
        (fresh_workflow / "tests" / "config" / "tiny.yaml").write_text(original)


def test_schema_error_names_the_key(fresh_workflow):
    original = _edit_config(fresh_workflow, lambda c: c["refusal_eval"].update(batch_size=0))
    try:
        result = snakemake(fresh_workflow, "--dry-run", check=False)
        output = result.stdout + result.stderr
        assert result.returncode != 0
        assert "Invalid config at refusal_eval.batch_size: 0 is less than the minimum of 1" in output
        assert "On instance" not in output and len(output.splitlines()) < 40  # not the schema and config dumps
    finally:
        (fresh_workflow / "tests" / "config" / "tiny.yaml").write_text(original)


def test_prompt_set_empty_after_filtering_fails_first(tmp_path, wheel_cache):
    """prepare_prompts is a first job: it fails with the fix in its log, before any model work."""
    work = copy_workflow(tmp_path)
    _edit_config(work, lambda c: c["prompts"].update(max_chars=3))
    result = snakemake(work, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "empty after filtering" in output and "raise prompts.max_chars" in output
    assert not (work / "results").exists() or not any((work / "results").rglob("*.parquet"))
