"""Each stage is declared once (workflow_lib/stages.py) and every rule calls it the same way.

The dry run's printed calls are the jobs' real calls, so checking each of them against its stage's
declaration checks every rule's named inputs, outputs, wildcards and params without running a job.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, WHEEL_CACHE, copy_workflow

from workflow_lib.stages import STAGES, JobError, make_job


def rules_with_jobs() -> dict[str, str]:
    """Rule name -> its text, for every rule that runs a job (targets have no `shell:`)."""
    rules = {}
    for path in (REPO / "rules").glob("*.smk"):
        for block in re.split(r"^(?=rule \w+:)", path.read_text(), flags=re.M):
            if (m := re.match(r"rule (\w+):", block)) and "    shell:" in block:
                rules[m.group(1)] = block
    return rules


def test_every_rule_runs_its_own_stage_and_every_stage_has_a_rule():
    rules = rules_with_jobs()
    assert set(rules) == set(STAGES)
    for name, block in rules.items():
        assert f'    shell:\n        stage_call("{name}")\n' in block, f"rule {name} does not call its own stage"
        # the rule writes its log and benchmark under its own name, so a user finds them by the rule's name
        for directive in ("log", "benchmark"):
            body = block.split(f"    {directive}:\n")[1].split("\n")[0] if f"    {directive}:\n" in block else ""
            assert name == "job_costs" and directive == "benchmark" or f"/{name}/" in body or f"/{name}." in body, (
                name, directive, body)


@pytest.fixture(scope="module")
def dry_run_calls(tmp_path_factory, wheel_cache) -> list[list[str]]:
    """Every job's printed call in a dry run of everything the tiny config can build."""
    work = copy_workflow(tmp_path_factory.mktemp("stages"))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--dry-run", "--printshellcmds", "all", "job_costs",
           "llc_calibration", "susceptibility_seed_check", "--configfile", "tests/config/tiny.yaml",
           "--config", f"cache_dir={WHEEL_CACHE.parent}"]
    result = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, check=True)
    calls = [line[line.index("python -m workflow_lib "):] for line in result.stdout.splitlines()
             if "python -m workflow_lib " in line]
    return [shlex.split(call.split(" > logs/")[0]) for call in calls]


def test_every_job_of_the_dry_run_matches_its_stage_declaration(dry_run_calls):
    seen = set()
    for argv in dry_run_calls:
        stage = STAGES[argv[3]]
        options = dict(zip(argv[4::2], argv[5::2]))
        job = make_job(stage, json.loads(options["--job"]), json.loads(options["--settings"]))
        assert job.settings["code"] == stage.code_digest(None) or stage.name in ("training_mix", "finetune_segment")
        seen.add(stage.name)
    assert seen == set(STAGES), set(STAGES) - seen


def test_a_job_that_does_not_match_its_declaration_names_the_stage_and_the_fix():
    stage = STAGES["llc_summary"]
    with pytest.raises(JobError, match=r"stage llc_summary: .*workflow_lib/stages.py \(missing \['llc'\], "
                                       r"not declared \['tables'\]\)"):
        make_job(stage, {"input": {"tables": ["a.parquet"]}, "output": {"table": "b.parquet"},
                         "wildcards": {"model": "m"}}, {})


def test_a_stage_runs_by_hand_from_its_help_and_a_job_json(tmp_path, wheel_cache):
    """`--help` shows the declaration; the same call a rule makes runs the stage outside Snakemake."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "workflow_lib", "llc", "--help"], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert "input: model, checkpoint, completions, mix?, same_as_*" in out and "wildcards: model, technique" in out
    out = subprocess.run([sys.executable, "-m", "workflow_lib", "--help"], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert all(name in out for name in STAGES)

    from workflow_lib.core import tables

    job = {"output": {"templates": str(tmp_path / "templates.parquet")}, "params": {"cache": str(wheel_cache)}}
    subprocess.run([sys.executable, "-m", "workflow_lib", "prepare_jailbreak_templates", "--job", json.dumps(job)],
                   env=env, check=True, capture_output=True)
    templates = tables.read_table(tmp_path / "templates.parquet", "jailbreak_templates")
    assert templates.height > 10 and templates["family"].n_unique() >= 2


def test_workflow_lib_has_no_import_cycles():
    """Imports anywhere in a module (lazy ones too) form no cycle, so every stage's code closure is a DAG."""
    from workflow_lib.core import digest

    modules = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
               for p in (REPO / "workflow_lib").rglob("*.py") if p.name != "__main__.py"}
    graph = {m: {d for d in digest.imported_modules(m) if d in modules and d != m} for m in modules}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            assert state.get(dep) != 1, f"import cycle: {' -> '.join(path + [module, dep])}"
            if dep not in state:
                visit(dep, path + [module])
        state[module] = 2

    for module in sorted(modules):
        if module not in state:
            visit(module, [])
    assert len(modules) > 50


# The parts of workflow_lib in the DAG's order (CONTRIBUTING.md, "Where code lives").
PARTS = ["core", "data", "finetune", "evaluation", "refusal", "slt", "analysis"]


def test_each_part_imports_only_core_and_the_parts_before_it():
    """A part's modules import `core` and parts earlier in the DAG, never a later one, and `core` imports no
    part: what spans every part (stages, preflight, config checks) sits at the package's top level."""
    from workflow_lib.core import digest

    found = sorted(p.parent.name for p in (REPO / "workflow_lib").glob("*/__init__.py"))
    assert found == sorted(PARTS)
    wrong = []
    for path in (REPO / "workflow_lib").glob("*/*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        part = path.parent.name
        for dep in digest.imported_modules(module):
            dep_part = dep.split(".")[1]
            if dep_part in PARTS and PARTS.index(dep_part) > PARTS.index(part):
                wrong.append(f"{module} imports {dep}")
    assert not wrong, wrong


def test_a_stage_digest_covers_its_own_parts_schemas_only():
    """Each part declares its tables in its schemas.py, imported with the part: a stage's code digest covers the
    schemas of the parts it runs, so editing the LLC tables' schema reruns no refusal judging."""
    from workflow_lib.core import tables
    from workflow_lib.core.digest import closure
    from workflow_lib.stages import STAGES

    llc_code = set(closure(list(STAGES["llc"].modules)))
    judging_code = set(closure(list(STAGES["refusal_eval"].modules)))
    assert "workflow_lib.slt.schemas" in llc_code and "workflow_lib.slt.schemas" not in judging_code
    assert "workflow_lib.evaluation.schemas" in judging_code
    declared = tables.all_schemas()
    assert tables.schema("llc") is declared["llc"] and len(declared) == 36
    with pytest.raises(KeyError, match="no table schema 'llcs'"):
        tables.schema("llcs")
