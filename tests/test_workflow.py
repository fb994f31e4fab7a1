"""End-to-end Snakemake run on tests/config/tiny.yaml, then cache invalidation by dry runs.

The workflow is copied to a temporary folder (like a fresh checkout) and run for
real on a tiny random model with the real prompt data, once per session
(tests/conftest.py: tiny_run, which the SLURM test also reads); then its config and
code are edited, and restored, to check that exactly the expected jobs would rerun.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from conftest import REPO, WHEEL_CACHE, snakemake

from workflow_lib.core import tables


def planned_jobs(workdir: Path) -> dict[str, int]:
    """Rules and job counts a dry run would execute."""
    out = snakemake(workdir, "--dry-run", "--quiet", "rules").stdout
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.fixture(scope="module")
def workflow(tiny_run) -> Path:
    """The session's tiny end-to-end run (tests/conftest.py: tiny_run)."""
    return tiny_run


def test_every_job_has_a_benchmark_and_the_report_shows_the_costs(workflow):
    """Each job that ran (each log but job_costs' own) left a benchmark file, and job_costs has its row."""
    logs = {str(p.relative_to(workflow / "logs").with_suffix("")) for p in (workflow / "logs").rglob("*.log")}
    logs.discard("job_costs")
    bench = workflow / "results" / "benchmarks"
    assert {str(p.relative_to(bench).with_suffix("")) for p in bench.rglob("*.tsv")} == logs
    jobs = tables.read_table(workflow / "results" / "job_costs.parquet", "job_costs")
    assert {str(Path(r) / j) for r, j in jobs.select("rule", "job").rows()} == logs
    assert (jobs["wall_s"] > 0).all()
    assert set(jobs.filter(pl.col("rule") == "llc")["stage"]) == {"llc"}
    assert set(jobs.filter(pl.col("rule") == "finetune_segment")["stage"]) == {"finetune"}
    stages = tables.read_table(workflow / "results" / "job_costs_by_stage.parquet", "job_costs_by_stage")
    assert stages["jobs"].sum() == jobs.height and stages["wall_share"].sum() == pytest.approx(1.0)
    assert stages["wall_s"].to_list() == sorted(stages["wall_s"].to_list(), reverse=True)
    assert "job_costs.png" in (workflow / "results" / "report.html").read_text()


def test_run_produces_every_table(workflow):
    results = workflow / "results" / "tiny"
    completions = tables.read_table(results / "base" / "completions.parquet", "completions")
    assert completions.height == 16 and (completions["n_response_tokens"] <= 8).all()
    manifest = tables.read_table(results / "sft_refusal" / "manifest.parquet", "checkpoint")
    assert manifest["step"].to_list() == [0, 2, 4]
    assert manifest["tokens_seen"][0] == 0 and manifest["tokens_seen"][2] > manifest["tokens_seen"][1] > 0
    assert manifest["sha256"].n_unique() == 3
    child = tables.read_table(results / "harmful_finetune" / "manifest.parquet", "checkpoint")
    assert child["step"].to_list() == [0, 2, 4]
    assert child["sha256"][0] == manifest["sha256"][2]  # the attack starts from sft_refusal's step 4
    trajectory = tables.read_table(results / "summary" / "trajectory.parquet", "trajectory")
    assert trajectory.height == 14  # (3 + 3 + 1) checkpoints x {harmful, harmless}
    assert set(trajectory["prompt_set"]) == {"harmful", "harmless"}
    assert (trajectory["n"] == 6).all() and (trajectory["status"] == "ok").all()
    assert trajectory["refusal_rate"].is_between(0, 1).all()
    assert trajectory["refusal_score_logodds"].is_finite().all()
    for step in (0, 2, 4):
        gens = tables.read_table(results / "harmful_finetune" / f"step-{step}" / "refusal_generations.parquet",
                                 "refusal_generations")
        assert gens.height == 12 and (gens["step"] == step).all()
    png = results / "plots" / "refusal_trajectory.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    llc = tables.read_table(results / "summary" / "llc.parquet", "llc")
    summaries = llc.filter(pl.col("row") == "summary")
    assert summaries.height == 7 and set(summaries["parameter_space"]) == {"lora"}  # 7 checkpoints
    assert llc.filter(pl.col("row") == "chain").height == 14
    assert set(llc["status"]) <= {"ok", "diverged", "not_converged", "negative", "failed"}
    assert llc.filter(pl.col("status") == "ok")["llc_mean"].is_finite().all()
    trace = tables.read_table(results / "sft_refusal" / "step-2" / "llc" / "lora" / "reference" / "llc_trace.parquet",
                              "llc_trace")
    assert trace.height == 2 * 10
    for name in ("llc_trajectory.png", "llc_traces.png"):
        assert (results / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    both = tables.read_table(results / "summary" / "susceptibility.parquet", "susceptibility")
    sus = both.filter(pl.col("estimator") == "sgld")
    assert sus.height == 7 * 4 * 3  # checkpoints x components x observables
    assert set(sus["component"]) == {"l0 attn", "l0 mlp", "l1 attn", "l1 mlp"} and (sus["seed"] == 0).all()
    assert sus["chi_mean"].is_finite().all() and set(sus["status"]) <= {"ok", "diverged", "not_converged"}
    tokens = tables.read_table(results / "sft_refusal" / "step-4" / "susceptibility" / "seed-0" /
                               "susceptibility_tokens.parquet", "susceptibility_tokens")
    assert set(tokens["observable"]) == {"harmful_refusal", "harmless_answer", "jailbreak_refusal"}
    assert tokens.filter(pl.col("observable") == "jailbreak_refusal")["prompt_id"].str.ends_with("@prefix_injection").all()
    structure = tables.read_table(results / "summary" / "susceptibility_structure.parquet", "susceptibility_structure")
    assert structure.filter((pl.col("quantity") == "contrast") & (pl.col("estimator") == "sgld")).height == 7 * 4
    # the linear-response estimate: every attn, mlp, head and layer of both layers, at every checkpoint
    lin = both.filter(pl.col("estimator") == "linear_response")
    assert lin.height == 7 * (2 * 7) * 3 and lin["chi_mean"].is_finite().all() and (lin["chi_se"] >= 0).all()
    assert lin.filter(pl.col("component") == "l1 attn")["chi_std"].is_not_null().all()  # per-token component
    lin_tokens = tables.read_table(results / "sft_refusal" / "step-4" / "susceptibility" / "linear" /
                                   "susceptibility_tokens.parquet", "susceptibility_tokens")
    assert set(lin_tokens["component"]) == {"l1 attn", "l1 mlp"}
    lin_structure = structure.filter(pl.col("estimator") == "linear_response")
    assert set(lin_structure.filter(pl.col("quantity") == "loading")["component"]) == {
        "l0 mlp", "l1 mlp"} | {f"l{layer}h{h}" for layer in (0, 1) for h in range(4)}  # linear_response.pca_kinds
    reliability = tables.read_table(results / "summary" / "susceptibility_reliability.parquet",
                                    "susceptibility_reliability")
    assert reliability.select("technique", "step").unique().height == 7
    assert set(reliability["source"]) == {"sampling_data_halves", "observable_prompt_halves"}
    for name in ("susceptibility_heatmaps.png", "susceptibility_contrasts.png", "susceptibility_reliability.png"):
        assert (results / "plots" / name).read_bytes()[:4] == b"\x89PNG"


def test_every_table_keeps_its_shape_across_the_refactor(workflow):
    """Every table of the run has the columns, types and rows that the code before the one-declaration
    refactor (issue 21) wrote on this config (tests/expected/fingerprint.py)."""
    from expected.fingerprint import EXPECTED, fingerprint

    want, got = json.loads(EXPECTED.read_text()), fingerprint(workflow)
    assert sorted(got) == sorted(want)
    for path, shape in want.items():
        assert got[path] == shape, path


def test_a_checkpoint_that_is_another_shares_its_measurements(workflow):
    """harmful_finetune@0 is sft_refusal@4 (its adapter is a copy): measured once, copied under its keys.

    The answers the judging stages read are reused from sft_refusal@4's generation cache, so its judged
    tables equal that checkpoint's too."""
    results, logs = workflow / "results" / "tiny", workflow / "logs"
    for kind in ("plain", "directed"):
        log = (logs / "generate" / "tiny" / "harmful_finetune" / "step-0" / f"{kind}.log").read_text()
        assert "is the same model as" in log and "0 to generate" in log
    for stage, path, schema in (("refusal_eval", "refusal_eval.parquet", "refusal_eval"),
                                ("refusal_direction", "refusal/refusal_candidates.parquet", "refusal_candidates"),
                                ("refusal_interventions", "refusal/refusal_interventions.parquet",
                                 "refusal_interventions"),
                                ("component_alignment", "refusal/component_alignment.parquet", "component_alignment"),
                                ("jailbreak", "jailbreak/jailbreak.parquet", "jailbreak")):
        if stage in ("refusal_direction", "component_alignment"):
            assert "is the same model as" in (logs / stage / "tiny" / "harmful_finetune" / "step-0.log").read_text()
        copy = tables.read_table(results / "harmful_finetune" / "step-0" / path, schema)
        measured = tables.read_table(results / "sft_refusal" / "step-4" / path, schema)
        assert copy.select("technique", "step").unique().rows() == [("harmful_finetune", 0)]
        columns = [c for c in copy.columns if c not in ("technique", "step")]
        assert copy.select(columns).sort(columns, nulls_last=True).equals(
            measured.select(columns).sort(columns, nulls_last=True))
    # abliterated starts from the same checkpoint but rewrites its weights: measured, never shared
    assert "same model" not in (logs / "generate" / "tiny" / "abliterated" / "step-0" / "plain.log").read_text()


def test_refusal_direction_tables_and_the_abliterated_checkpoint(workflow):
    import torch

    from workflow_lib.core import direction_file
    from workflow_lib.core import models

    results = workflow / "results" / "tiny"
    directions = tables.read_table(results / "summary" / "refusal_direction.parquet", "refusal_direction")
    assert directions.height == 7 and (directions["status"] == "ok").all()  # the tiny config disables the filters
    candidates = tables.read_table(results / "sft_refusal" / "step-4" / "refusal" / "refusal_candidates.parquet",
                                   "refusal_candidates")
    assert candidates["selected"].sum() == 1 and set(candidates["layer"]) == {0, 1}
    interventions = tables.read_table(results / "summary" / "refusal_interventions.parquet", "refusal_interventions")
    assert interventions.height == 7 * 3 * 2 and (interventions["status"] == "ok").all()
    assert interventions["refusal_rate"].is_between(0, 1).all()
    drift = tables.read_table(results / "summary" / "refusal_drift.parquet", "refusal_drift")
    n_positions = candidates["position"].n_unique()
    assert drift.height == 7 * 2 * n_positions
    assert drift.filter((pl.col("technique") == "harmful_finetune") & (pl.col("step") == 0)
                        & (pl.col("layer") == 1))["cos_to_base"].is_not_null().all()
    assert (results / "plots" / "refusal_interventions.png").read_bytes()[:4] == b"\x89PNG"
    # the abliterated checkpoint: sft_refusal@4 with its own direction projected out of the weights
    checkpoint = results / "abliterated" / "step-0" / "checkpoint"
    assert (checkpoint / "base_model" / "config.json").is_file()
    # every adapter names a base that exists (from the workflow's root), the abliterated one its own weights
    for config in results.glob("*/step-*/checkpoint/adapter/adapter_config.json"):
        assert (workflow / json.loads(config.read_text())["base_model_name_or_path"]).is_dir(), config
    base = json.loads((checkpoint / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == "results/tiny/abliterated/step-0/checkpoint/base_model"
    direction = direction_file.read_direction(results / "sft_refusal" / "step-4" / "refusal" /
                                                     "refusal_direction.safetensors")["tensors"]["direction"]
    lm, _ = models.load_checkpoint(workflow / "resources" / "models" / "tiny", checkpoint)
    assert float((lm.get_input_embeddings().weight.double() @ direction).abs().max()) < 1e-5
    assert float((lm.get_output_embeddings().weight.double() @ direction).abs().max()) > 1e-3  # untied
    for block in models.decoder_layers(lm):
        assert float((direction.float() @ block.mlp.down_proj.weight).abs().max()) < 1e-5
    assert (results / "abliterated" / "step-0" / "refusal_eval.parquet").is_file()


def test_each_answer_is_generated_once_per_checkpoint(workflow):
    """The generation plan: per checkpoint, one row per prompt and condition (issue 19, item 1).

    The stages alone would generate 54 answers per checkpoint (refusal_eval 2 x 6, the jailbreak 3 x 5
    attacks + 3 x 3 over-refusal, the interventions 3 conditions x 2 sets x 3); the plan makes 39:
    the jailbreak's and the baseline's direct answers are refusal_eval's (cut from 6 tokens), and the
    jailbreak's direction ablation is the interventions' ablation."""
    results = workflow / "results" / "tiny"
    condition = ["prompt_set", "split", "wrapper", "hook", "direction_source"]
    checkpoints = sorted(results.glob("*/step-*/generations"))
    assert len(checkpoints) == 7
    for folder in checkpoints:
        stored = pl.concat([tables.read_table(folder / f"{kind}.parquet", "generations")
                            for kind in ("plain", "directed")])
        assert stored.select(condition + ["prompt_id"]).is_unique().all(), folder
        rows = {(r[0], r[2], r[3]): r[-1] for r in stored.group_by(condition).len().rows()}
        assert rows == {("harmful", "none", "none"): 6, ("harmless", "none", "none"): 6,
                        ("harmful", "template:pyrit/prefix_injection", "none"): 3,
                        ("harmful", "template:garak/STAN", "none"): 3, ("harmful", "prefill", "none"): 3,
                        ("harmless", "template:pyrit/prefix_injection", "none"): 3,
                        ("harmless", "template:garak/STAN", "none"): 3,
                        ("harmful", "none", "ablation"): 3, ("harmless", "none", "ablation"): 3,
                        ("harmful", "none", "actadd"): 3, ("harmless", "none", "actadd"): 3}, folder
        assert (stored["n_tokens"] <= stored["max_new_tokens"]).all()


def test_jailbreak_tables(workflow):
    results = workflow / "results" / "tiny"
    table = tables.read_table(results / "summary" / "jailbreak.parquet", "jailbreak")
    overall = table.filter((pl.col("category") == "all") & (pl.col("judge") == "substring"))
    harmful = overall.filter(pl.col("prompt_set") == "harmful")
    assert harmful.height == 7 * 5  # checkpoints x (none, 2 templates, prefill, direction_ablation)
    assert (harmful["status"] == "ok").all() and harmful["asr"].is_between(0, 1).all()
    assert set(harmful.filter(pl.col("attack") == "direction_ablation")["direction_source"]) == {"own"}
    assert overall.filter(pl.col("prompt_set") == "harmless").height == 7 * 3
    gens = tables.read_table(results / "sft_refusal" / "step-4" / "jailbreak" / "generations.parquet",
                             "jailbreak_generations")
    assert gens.height == 3 * 5 + 3 * 3
    assert (results / "plots" / "jailbreak_asr.png").read_bytes()[:4] == b"\x89PNG"
    templates = tables.read_table(workflow / "resources" / "attacks" / "tiny" / "templates.parquet", "attack_templates")
    assert {"pyrit/prefix_injection", "garak/STAN"} <= set(templates["template_id"])


def test_analysis_tables_and_figures(workflow):
    results = workflow / "results" / "tiny"
    traj = tables.read_table(results / "analysis" / "trajectories.parquet", "trajectories")
    assert traj.select("technique", "step").unique().height == N_CHECKPOINTS
    measures = set(traj["measure"])
    assert {"llc", "llc_change", "refusal_rate", "asr", "over_refusal", "direction_kl", "drift_cos_to_final"} <= measures
    assert traj.filter(pl.col("status") == "ok")["value"].is_not_null().all()
    assert traj.filter(pl.col("status") != "ok")["reason"].str.len_chars().min() > 0  # every gap says why
    corr = tables.read_table(results / "analysis" / "llc_asr_correlation.parquet", "llc_asr_correlation")
    pooled = corr.filter((pl.col("technique") == "pooled") & (pl.col("llc_measure") == "llc"))
    assert pooled.height == 2 * 2 * 6  # {spearman, pearson} x {substring, logodds} x (5 attacks + pooled)
    assert (pooled["n_checkpoints"] + pooled["n_excluded"] == N_CHECKPOINTS).all()
    assert set(corr["status"]) <= {"ok", "too_few_points", "constant"}
    ok = corr.filter(pl.col("status") == "ok")
    assert ((ok["ci_low"] <= ok["estimate"] + 1e-9) & (ok["estimate"] <= ok["ci_high"] + 1e-9)).all()
    comparison = tables.read_table(results / "analysis" / "technique_comparison.parquet", "technique_comparison")
    assert comparison["technique"].to_list() == ["abliterated", "harmful_finetune", "sft_refusal"]
    assert comparison["final_step"].to_list() == [0, 4, 4]
    # the comparison carries each final checkpoint's LLC exactly when that estimate is ok (a tilted LoRA-space
    # chain may find lower loss: config/README.md#llc), and a failed one stays null, never a number
    final_llc = (tables.read_table(results / "summary" / "llc.parquet", "llc")
                 .filter(pl.col("row") == "summary").join(comparison.select("technique", step="final_step"),
                                                         on=["technique", "step"]).sort("technique"))
    assert (comparison["llc"].is_not_null().to_list() == (final_llc["status"] == "ok").to_list())
    assert comparison["llc"].is_not_null().any()
    emergence = tables.read_table(results / "analysis" / "direction_emergence.parquet", "direction_emergence")
    assert emergence.height == 3 and set(emergence["status"]) <= {"emerged", "present_at_start", "never"}
    alignment = tables.read_table(results / "analysis" / "component_alignment.parquet", "component_alignment")
    # 2 layers x (attn, mlp, layer, 4 heads, 2 groups) per checkpoint, every one with a direction here
    assert alignment.height == N_CHECKPOINTS * 2 * 9 and (alignment["status"] == "ok").all()
    sus = tables.read_table(results / "analysis" / "susceptibility_alignment.parquet", "susceptibility_alignment")
    # per checkpoint: sgld attn, mlp, attn+mlp; linear response those and head, layer, head+mlp
    assert sus.height == N_CHECKPOINTS * 9
    n = dict(sus.filter(pl.col("step") == 4).group_by("estimator", "component_kind").agg(pl.col("n_components").first())
             .select(pl.concat_str("estimator", "component_kind", separator="/"), "n_components").rows())
    assert n["sgld/attn+mlp"] == 4 and n["linear_response/head+mlp"] == 10 and n["linear_response/head"] == 8
    assert set(sus["status"]) <= {"ok", "constant", "too_few_points"}
    assert sus.filter(pl.col("status") == "ok")["spearman"].is_between(-1, 1).all()
    rotation = tables.read_table(results / "analysis" / "susceptibility_rotation.parquet", "susceptibility_rotation")
    angles = rotation.filter(pl.col("status") == "ok")
    # 2 estimators x 2 trajectories x 2 pairs x 2 PCs
    assert angles.height == 2 * 2 * 2 * 2 and angles["angle_deg"].is_between(0, 90).all()
    plots = results / "plots" / "analysis"
    for name in ("trajectories", "llc_vs_asr", "component_alignment", "technique_comparison", "drift/sft_refusal",
                 "drift/harmful_finetune", "drift/abliterated"):
        assert (plots / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_calibration_target_runs_on_the_named_checkpoint(workflow):
    snakemake(workflow, "llc_calibration")
    grid = tables.read_table(workflow / "results" / "tiny" / "llc_calibration" / "calibration.parquet",
                             "llc_calibration")
    assert grid["lr"].to_list() == [1e-4, 3e-4] and (grid["step"] == 4).all()
    assert (workflow / "results" / "tiny" / "llc_calibration" / "calibration.png").is_file()


def test_seed_check_target_adds_one_seed_and_measures_agreement(workflow):
    snakemake(workflow, "susceptibility_seed_check")
    check = tables.read_table(workflow / "results" / "tiny" / "susceptibility_seed_check" / "agreement.parquet",
                              "susceptibility_seed_check")
    assert check.height == 3 + 1 and check["primary"].sum() == 1  # one pair of seeds x (3 observables + 1 contrast)
    assert check.filter(pl.col("ranked_by") == "contrast")["name"].to_list() == ["refusal_vs_harmless"]
    assert (check["technique"] == "sft_refusal").all() and (check["step"] == 4).all()
    assert check["spearman"].is_between(-1, 1).all() and (check["n_components"] == 4).all()
    assert (workflow / "results" / "tiny" / "sft_refusal" / "step-4" / "susceptibility" / "seed-1").is_dir()


def test_results_page_is_written_from_the_run_tables(workflow, tmp_path):
    """docs/results.md is generated, never typed: each number on the page is the table's."""
    out = tmp_path / "results.md"
    subprocess.run([sys.executable, "-m", "workflow_lib.analysis.results_doc", "--out", str(out)], cwd=workflow, check=True)
    page = out.read_text()
    for title in ("Cost of the run", "Refusal", "Local learning coefficient", "Techniques compared",
                  "LLC and jailbreak success", "Susceptibility rankings", "Refusal direction"):
        assert f"### {title}" in page, title
    llc = pl.read_parquet(workflow / "results" / "tiny" / "summary" / "llc.parquet").filter(
        (pl.col("row") == "summary") & (pl.col("status") == "ok")).row(0, named=True)
    assert f"| {llc['technique']} | {llc['step']} | {llc['llc_mean']:.4g} +- {llc['llc_se']:.2g} |" in page
    assert "## Model `benchmarks`" not in page


def test_report_embeds_the_plot(workflow):
    html = (workflow / "results" / "report.html").read_text()
    assert "refusal_trajectory.png" in html and "llc_traces.png" in html and "susceptibility_heatmaps.png" in html
    assert "refusal_interventions.png" in html and "jailbreak_asr.png" in html
    assert "data:image/png;base64" in html or "image/png" in html


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (bin/test installs Debian's chromium when "
                    "run as root): the report's rendering is not checked here")
def test_report_renders_every_plot_in_headless_chromium(workflow, tmp_path):
    """The report's own navigation, driven in Chromium, shows every figure as a decoded image."""
    report = (workflow / "results" / "report.html").read_text()
    end = report.rfind("</body>")
    page = tmp_path / "report.html"
    page.write_text(report[:end] + f"<script>{(REPO / 'tests' / 'report_harness.js').read_text()}</script>"
                    + report[end:])
    dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          "--virtual-time-budget=60000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=300).stdout
    found = re.search(r'<pre id="report-check">(.*?)</pre>', dom, re.S)
    assert found, f"the report's page never finished the walk; DOM tail: {dom[-2000:]}"
    check = json.loads(html.unescape(found.group(1)))
    assert check["errors"] == []
    shown = {entry["path"]: entry for entry in check["shown"]}
    assert set(shown) == set(check["expected"]) and len(shown) == 16  # 15 figures of the run + its job costs
    assert all(entry["width"] > 300 and entry["height"] > 150 for entry in shown.values()), shown
    categories = {(entry["category"], entry["subcategory"]) for entry in check["shown"]}
    assert {("1. Trajectories", "tiny"), ("2. LLC vs jailbreak susceptibility", "tiny"),
            ("4. Susceptibility structure vs refusal", "tiny"), ("5. Technique comparison", "tiny"),
            ("6. Cost of the run", "Other")} <= categories
    assert {sub for cat, sub in categories if cat == "3. Refusal-direction drift"} == {
        "tiny: sft_refusal", "tiny: harmful_finetune", "tiny: abliterated"}


def test_every_log_written(workflow):
    logs = list((workflow / "logs").rglob("*.log"))
    assert len(logs) >= 12


@pytest.mark.parametrize("rule,unit", [("base_completions", "sequences"), ("finetune_segment", "steps"),
                                       ("llc", "loss evaluations"), ("generate", "sequences"),
                                       ("susceptibility", "loss evaluations"),
                                       ("refusal_direction", "candidate batches")])
def test_long_jobs_log_their_progress(workflow, rule, unit):
    """Every long stage says in its log how far it got, at what rate, and its ETA (issue 19, item 5)."""
    lines = [line for log in (workflow / "logs" / rule).rglob("*.log") for line in log.read_text().splitlines()
             if "workflow_lib.core.progress" in line]
    finished = [line for line in lines if line.endswith("(finished)")]
    assert finished, f"no progress line in logs/{rule}"
    assert all(re.search(rf": (\d+)/\1 {unit} in \d+ s, [\d.]+ [a-z ]+/s, ETA 0 s", line) for line in finished)


def test_second_run_has_nothing_to_do(workflow):
    assert planned_jobs(workflow) == {}


def _edit_config(workflow: Path, edit) -> str:
    path = workflow / "tests" / "config" / "tiny.yaml"
    original = path.read_text()
    config = yaml.safe_load(original)
    edit(config)
    path.write_text(yaml.safe_dump(config))
    return original


# The analyses that read the trajectories table, and those that read the susceptibility summaries.
TRAJECTORY_ANALYSES = {"trajectories": 1, "llc_asr_correlation": 1, "technique_comparison": 1, "plot_trajectories": 1,
                       "plot_llc_vs_asr": 1, "plot_technique_comparison": 1}
ALIGNMENT_ANALYSES = {"susceptibility_alignment": 1, "plot_component_alignment": 1}
DOWNSTREAM = {"summary": 1, "plot_refusal": 1, "all": 1} | TRAJECTORY_ANALYSES
LLC_DOWNSTREAM = {"llc_summary": 1, "llc_differences": 1, "plot_llc": 1} | TRAJECTORY_ANALYSES
SUS_DOWNSTREAM = {"susceptibility_summary": 1, "plot_susceptibility": 1} | ALIGNMENT_ANALYSES
DIRECTION_DOWNSTREAM = ({"refusal_direction_summary": 1, "plot_refusal_direction": 1, "direction_emergence": 1,
                         "plot_drift": 3} | TRAJECTORY_ANALYSES)
JAILBREAK_DOWNSTREAM = {"jailbreak_summary": 1, "plot_jailbreak": 1} | TRAJECTORY_ANALYSES
EVERY_SUMMARY = DOWNSTREAM | LLC_DOWNSTREAM | SUS_DOWNSTREAM | DIRECTION_DOWNSTREAM | JAILBREAK_DOWNSTREAM
N_CHECKPOINTS = 7  # sft_refusal 3, harmful_finetune 3, abliterated 1


def per_checkpoint(n: int) -> dict[str, int]:
    """The measurement jobs of n checkpoints."""
    return {"generate": 2 * n, "refusal_eval": n, "llc": n, "susceptibility": n, "susceptibility_structure": n,
            "refusal_direction": n, "refusal_interventions": n, "jailbreak": n, "component_alignment": n} | LINEAR(n)


def LINEAR(n: int) -> dict[str, int]:  # noqa: N802 (reads like the other job sets)
    """The linear-response susceptibility jobs of n checkpoints."""
    return {"susceptibility_linear": n, "susceptibility_linear_structure": n, "susceptibility_reliability": n,
            "susceptibility_reliability_summary": 1}


# A new sft_refusal@4 direction: its own jobs, every drift, every directed generation, and the abliterated
# checkpoint made from it (its plain generation too).
NEW_DIRECTION = ({"finetune_segment": 1, "manifest": 1, "refusal_drift": 3} | per_checkpoint(1) | EVERY_SUMMARY
                 | {"refusal_direction": N_CHECKPOINTS, "refusal_interventions": N_CHECKPOINTS,
                    "jailbreak": N_CHECKPOINTS, "component_alignment": N_CHECKPOINTS, "generate": N_CHECKPOINTS + 1})
# Every stage that judges a checkpoint's generations, and what reads them.
JUDGES = ({"refusal_eval": N_CHECKPOINTS, "jailbreak": N_CHECKPOINTS, "refusal_interventions": N_CHECKPOINTS,
           "all": 1} | DOWNSTREAM | JAILBREAK_DOWNSTREAM | DIRECTION_DOWNSTREAM)


@pytest.mark.parametrize(
    "edit, expected",
    [
        pytest.param(lambda c: c["refusal_eval"].update(max_new_tokens=7),
                     {"generate": N_CHECKPOINTS} | JUDGES, id="refusal-eval-budget-reruns-the-plain-generations"),
        pytest.param(lambda c: c["techniques"]["sft_refusal"].update(steps=[0, 2, 4, 6]),
                     {"finetune_segment": 1, "manifest": 1, "refusal_drift": 1} | per_checkpoint(1) | EVERY_SUMMARY
                     | {"generate": 2 + 4, "jailbreak": 5, "refusal_interventions": 5},
                     id="append-a-step-reruns-its-trajectory's-directed-generations-(new-final-direction)"),
        pytest.param(lambda c: c["techniques"]["sft_refusal"]["optimizer"].update(lr=5e-3),
                     {"training_mix": 1, "finetune_segment": 7, "manifest": 3, "refusal_drift": 3}
                     | per_checkpoint(7) | EVERY_SUMMARY, id="parent-setting-reruns-its-start_from-children"),
        pytest.param(lambda c: c["techniques"]["harmful_finetune"]["optimizer"].update(lr=5e-3),
                     {"training_mix": 1, "finetune_segment": 3, "manifest": 1, "refusal_drift": 1} | per_checkpoint(3)
                     | EVERY_SUMMARY, id="child-setting-reruns-the-child-only"),
        pytest.param(lambda c: c["llc"]["sampler"].update(draws=12),
                     {"llc": N_CHECKPOINTS, "all": 1} | LLC_DOWNSTREAM, id="llc-setting-reruns-only-llc"),
        pytest.param(lambda c: c.update(analysis={"bootstrap_resamples": 300}),
                     {"llc_asr_correlation": 1, "plot_llc_vs_asr": 1, "all": 1} | ALIGNMENT_ANALYSES,
                     id="statistics-setting-reruns-only-the-statistics"),
        pytest.param(lambda c: c["susceptibility"]["sampler"].update(draws=8),
                     {"susceptibility": N_CHECKPOINTS, "susceptibility_structure": N_CHECKPOINTS,
                      "susceptibility_reliability_summary": 1, "all": 1}
                     | SUS_DOWNSTREAM, id="susceptibility-sampler-reruns-only-susceptibility"),
        pytest.param(lambda c: c["susceptibility"]["structure"].update(n_pcs=3),
                     {"susceptibility_structure": N_CHECKPOINTS, "susceptibility_linear_structure": N_CHECKPOINTS,
                      "all": 1} | SUS_DOWNSTREAM, id="structure-setting-keeps-the-sampling"),
        pytest.param(lambda c: c["susceptibility"]["linear_response"].update(split_half_resamples=30),
                     {"susceptibility_reliability": N_CHECKPOINTS, "susceptibility_reliability_summary": 1,
                      "plot_susceptibility": 1, "all": 1},
                     id="reliability-setting-reruns-only-the-reliability"),
        pytest.param(lambda c: c["susceptibility"]["linear_response"].update(n_prompts=2),
                     LINEAR(N_CHECKPOINTS) | {"all": 1} | SUS_DOWNSTREAM,
                     id="linear-response-setting-keeps-the-sgld-sampling"),
        pytest.param(lambda c: c["refusal_direction"]["interventions"].update(max_new_tokens=5),
                     {"generate": N_CHECKPOINTS, "jailbreak": N_CHECKPOINTS, "refusal_interventions": N_CHECKPOINTS,
                      "all": 1} | JAILBREAK_DOWNSTREAM | DIRECTION_DOWNSTREAM,
                     id="a-shorter-interventions-budget-reruns-only-the-directed-generations"),
        pytest.param(lambda c: c["jailbreak"].update(max_new_tokens=7),
                     {"generate": 2 * N_CHECKPOINTS} | JUDGES, id="jailbreak-budget-reruns-both-generations"),
        pytest.param(lambda c: c["jailbreak"].update(templates=["prefix_injection", "garak/STAN", "garak/DUDE"]),
                     {"generate": N_CHECKPOINTS} | JUDGES, id="a-new-template-reruns-the-plain-generations-only"),
        pytest.param(lambda c: c["jailbreak"].update(judges={"classifier": {"refusal_label": "safe"}}),
                     {"jailbreak": N_CHECKPOINTS, "all": 1} | JAILBREAK_DOWNSTREAM,
                     id="a-judge-setting-reruns-only-the-judging"),
        pytest.param(lambda c: c["refusal_direction"].update(n_val=1), NEW_DIRECTION,
                     id="direction-setting-reruns-directions-and-the-abliterated-checkpoint"),
        pytest.param(lambda c: c["susceptibility"]["seed_check"].update(seeds=[0, 2]), {},
                     id="seed-check-setting-not-in-all"),
        pytest.param(lambda c: c["llc"]["calibration"].update(lrs=[1e-5]), {}, id="calibration-setting-not-in-all"),
    ],
)
def test_config_change_reruns_exactly_its_jobs(workflow, edit, expected):
    original = _edit_config(workflow, edit)
    try:
        assert planned_jobs(workflow) == expected
    finally:
        (workflow / "tests" / "config" / "tiny.yaml").write_text(original)


def test_editing_the_refusal_eval_module_reruns_only_its_jobs(workflow):
    module = workflow / "workflow_lib" / "evaluation" / "refusal_eval.py"
    original = module.read_text()
    module.write_text(original + "\n# an edit\n")
    try:
        assert planned_jobs(workflow) == {"refusal_eval": N_CHECKPOINTS} | DOWNSTREAM
    finally:
        module.write_text(original)


def test_editing_the_analysis_module_reruns_only_the_analyses(workflow):
    module = workflow / "workflow_lib" / "analysis" / "questions.py"
    original = module.read_text()
    module.write_text(original + "\n# an edit\n")
    try:
        assert planned_jobs(workflow) == TRAJECTORY_ANALYSES | {"direction_emergence": 1, "plot_drift": 3, "all": 1}
    finally:
        module.write_text(original)


def test_editing_the_sampling_module_reruns_both_sampling_stages_only(workflow):
    module = workflow / "workflow_lib" / "slt" / "sampling.py"  # LLC and susceptibilities both sample through it
    original = module.read_text()
    module.write_text(original + "\n# an edit\n")
    try:
        assert planned_jobs(workflow) == ({"llc": N_CHECKPOINTS, "susceptibility": N_CHECKPOINTS,
                                           "susceptibility_structure": N_CHECKPOINTS, "all": 1}
                                          | LINEAR(N_CHECKPOINTS) | LLC_DOWNSTREAM | SUS_DOWNSTREAM)
    finally:
        module.write_text(original)


def test_editing_the_structure_module_keeps_the_sampling(workflow):
    module = workflow / "workflow_lib" / "slt" / "susceptibility_structure.py"
    original = module.read_text()
    module.write_text(original + "\n# an edit\n")
    try:
        assert planned_jobs(workflow) == ({"susceptibility_structure": N_CHECKPOINTS,
                                           "susceptibility_linear_structure": N_CHECKPOINTS, "all": 1}
                                          | SUS_DOWNSTREAM)
    finally:
        module.write_text(original)


def test_a_killed_run_resumes_with_the_readme_command(workflow, tmp_path):
    """SIGKILL the whole run (Snakemake and its jobs) while an LLC chain samples; the README's command
    (bin/unlock-if-stale, then the same snakemake call) resumes it, nothing temporary is left, and every
    table equals the uninterrupted run's."""
    import signal
    import time

    # The finished run, less the three LLC tables: the resumed run then redoes only those jobs, and what
    # it computes is compared with the uninterrupted run's. copytree keeps the mtimes, and Snakemake's
    # metadata comes along, so nothing upstream reruns.
    work = tmp_path / "workflow"
    shutil.copytree(workflow, work, symlinks=True, ignore=shutil.ignore_patterns("locks", "incomplete"))
    shutil.copytree(REPO / "bin", work / "bin", dirs_exist_ok=True)
    targets = [f"results/tiny/sft_refusal/step-{s}/llc/lora/reference/llc.parquet" for s in (0, 2, 4)]
    for target in targets:
        for name in ("llc.parquet", "llc_trace.parquet"):
            (work / target).with_name(name).unlink()
    args = ["--configfile", "tests/config/tiny.yaml", "--config", f"cache_dir={WHEEL_CACHE.parent}"]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    run = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", *targets, *args], cwd=work, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while not list((work / "results").glob("tiny/sft_refusal/step-*/llc/lora/reference/.llc.parquet.sgld-*")):
        assert run.poll() is None and time.monotonic() < deadline, "no LLC job started sampling"
        time.sleep(0.1)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert any((work / ".snakemake" / "locks").iterdir())  # what used to need a manual --unlock
    assert list((work / "results").rglob(".llc.parquet.sgld-*"))  # and the sampler's folder stays, for now

    subprocess.run(["bash", "bin/unlock-if-stale", *args], cwd=work, env=env, check=True)
    resumed = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *targets, *args], cwd=work,
                             env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", resumed.stdout + resumed.stderr) == ["llc"] * 3
    leftovers = [p for p in (work / "results").rglob(".*") if ".tmp" in p.name or ".sgld-" in p.name]
    assert leftovers == []
    tables_here = sorted((work / "results").rglob("*.parquet"))
    assert len(tables_here) >= 10
    for path in tables_here:
        rel = path.relative_to(work)
        want, got = pl.read_parquet(workflow / rel), pl.read_parquet(path)
        drop = sorted({"wall_s"} & set(want.columns))
        assert want.drop(drop).equals(got.drop(drop)), rel


def test_replicates_expand_into_trajectories_in_a_dry_run(workflow):
    """Each replicate seed is its own trajectory; a replicated child starts from the parent's replicate."""
    def edit(c):
        c["techniques"]["sft_refusal"]["replicates"] = [0, 3]
        c["techniques"]["harmful_finetune"]["replicates"] = [0, 3]
    original = _edit_config(workflow, edit)
    try:
        jobs = planned_jobs(workflow)
        result = snakemake(workflow, "--dry-run", "--printshellcmds", "results/tiny/harmful_finetune-seed3/step-0/checkpoint",
                           "results/tiny/analysis/llc_asr_correlation.parquet")
    finally:
        (workflow / "tests" / "config" / "tiny.yaml").write_text(original)
    assert jobs["finetune_segment"] == 6  # steps 0, 2, 4 of sft_refusal-seed3 and harmful_finetune-seed3
    assert jobs["llc"] >= 5 and jobs["refusal_eval"] >= 5 and jobs["llc_asr_correlation"] == 1
    out = result.stdout
    # each job's call, printed by -p, carries its named inputs and wildcards (the job JSON) and its settings
    assert '"start": "results/tiny/sft_refusal-seed3/step-4/checkpoint"' in out, out[-3000:]
    assert '"seed": 3' in out and '"technique": "sft_refusal-seed3"' in out
    assert '"replicate_of": {' in out and '"harmful_finetune-seed3": "harmful_finetune"' in out
