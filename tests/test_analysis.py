"""Analyses across checkpoints: statistics with known answers, joins that mark gaps, alignment, rotation."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

import tiny
from workflow_lib.analysis import questions, susceptibility_alignment
from workflow_lib.refusal import component_alignment
from workflow_lib.core import interventions
from workflow_lib.core import statistics, tables

SETTINGS = {"bootstrap_resamples": 500, "permutations": 500, "seed": 0, "judge": "substring", "llc_detail": None,
            "alignment_observable": "harmful_refusal"}


# ---- statistics ------------------------------------------------------------------


def test_a_perfect_monotone_relation_has_rho_one():
    x = np.array([0.1, 0.4, 0.5, 2.0, 3.5, 9.0])
    result = statistics.correlate(x, np.exp(x), "spearman", n_resamples=500)
    assert result.status == "ok" and result.estimate == pytest.approx(1.0)
    assert result.ci_low == pytest.approx(1.0) and result.ci_high == pytest.approx(1.0)
    # 2 of the 720 permutations (identity and reverse) reach |rho| = 1
    assert result.p_value == pytest.approx(2 / 720)
    assert statistics.correlate(x, -3 * x + 1, "pearson").estimate == pytest.approx(-1.0)


def test_independent_data_gives_an_interval_covering_zero():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=40), rng.normal(size=40)
    for method in ("spearman", "pearson"):
        result = statistics.correlate(x, y, method, n_resamples=1000, n_permutations=1000)
        assert result.ci_low < 0 < result.ci_high
        assert result.p_value > 0.05


def test_three_points_cannot_be_significant():
    result = statistics.correlate([1, 2, 3], [0.1, 0.5, 0.9], "spearman")
    assert result.estimate == pytest.approx(1.0) and result.p_value == pytest.approx(1 / 3)


def test_ties_share_average_ranks():
    assert statistics.ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_too_few_and_constant_inputs_are_flagged_not_computed():
    few = statistics.correlate([1.0, 2.0], [1.0, 2.0], "spearman")
    assert few.status == "too_few_points" and math.isnan(few.estimate)
    constant = statistics.correlate([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], "pearson")
    assert constant.status == "constant" and "attack success rate" in constant.reason


def test_subspace_angles():
    basis = np.eye(4)
    assert np.allclose(statistics.subspace_angles(basis[:, :2], basis[:, [1, 0]]), 0.0, atol=1e-7)
    assert np.allclose(np.degrees(statistics.subspace_angles(basis[:, :2], basis[:, 2:])), 90.0)
    tilted = np.stack([[1, 0, 0, 0], [0, np.cos(0.3), np.sin(0.3), 0]], axis=1)
    assert np.allclose(statistics.subspace_angles(basis[:, :2], tilted), [0.0, 0.3])


# ---- synthetic per-model summaries ------------------------------------------------

STEPS = {"sft": [0, 10, 20, 30], "attack": [0, 10, 20]}
KEYS = ["model", "technique", "step"]


def _checkpoints():
    return [{"model": "m", "technique": t, "step": s} for t, steps in STEPS.items() for s in steps]


def write_summaries(tmp_path, *, failed_llc=("sft", 20), no_direction=()):
    """Synthetic summary tables where LLC rises with step in sft and ASR falls, and the reverse in attack."""
    refusal, llc, jail, directions, drift = [], [], [], [], []
    for c in _checkpoints():
        t, s = c["technique"], c["step"]
        level = s / 30 if t == "sft" else 1 - s / 20
        for prompt_set, rate in (("harmful", level), ("harmless", 0.05)):
            refusal.append(c | {"prompt_set": prompt_set, "refusal_rate": rate, "refusal_score_logodds": rate - 0.5,
                                "n": 20, "status": "ok", "train_loss": None, "tokens_seen": s * 100})
        ok = (t, s) != failed_llc
        llc.append(c | {"parameter_space": "lora", "dataset": "training_mix", "seed": 0, "row": "summary",
                        "llc_mean": 10 + 5 * level if ok else math.nan, "llc_std": 0.5, "llc_se": 0.2, "init_loss": 1.0,
                        "n_ok_chains": 2 if ok else 0, "status": "ok" if ok else "failed",
                        "reason": "" if ok else "chain 0 diverged"})
        for attack in ("none", "prefill", "direction_ablation"):
            asr = 1 - level if attack != "prefill" else min(1.0, 1.2 - level)
            status = "no_direction" if attack == "direction_ablation" and (t, s) in no_direction else "ok"
            jail.append(c | {"attack": attack, "prompt_set": "harmful", "judge": "substring", "category": "all",
                             "asr": asr if status == "ok" else None, "refusal_rate": None, "n": 20,
                             "ci_low": 0.0, "ci_high": 1.0, "status": status})
        jail.append(c | {"attack": "none", "prompt_set": "harmless", "judge": "substring", "category": "all",
                         "asr": 0.9, "refusal_rate": 0.1, "n": 20, "ci_low": 0.7, "ci_high": 0.97, "status": "ok"})
        has = level > 0.4 and (t, s) not in no_direction
        directions.append(c | {"status": "ok" if has else "no_direction",
                               "reason": None if has else "no candidate passed", "layer": 2 if has else None,
                               "position": -1 if has else None, "kl": 0.1 if has else None,
                               "bypass_score": -2.0 if has else None})
        for layer in range(3):
            drift.append(c | {"layer": layer, "position": -1, "mean_diff_norm": 1.0, "cos_to_final": level,
                              "cos_to_base": 1 - level})
    paths = {}
    for name, rows, schema in (("refusal", refusal, "trajectory"), ("llc", llc, "llc"),
                               ("jailbreak", jail, "jailbreak"), ("directions", directions, "refusal_direction"),
                               ("drift", drift, "refusal_drift")):
        paths[name] = tmp_path / f"{name}.parquet"
        tables.write_table(tables.fill_missing(pl.DataFrame(rows, infer_schema_length=None), schema), paths[name],
                           schema)
    return paths


@pytest.fixture
def summaries(tmp_path):
    paths = write_summaries(tmp_path)
    traj = questions.trajectories(refusal_path=paths["refusal"], llc_path=paths["llc"],
                                 jailbreak_path=paths["jailbreak"], directions_path=paths["directions"],
                                 drift_path=paths["drift"], out_path=tmp_path / "trajectories.parquet")
    return paths, traj


def test_trajectories_mark_a_failed_llc_and_the_first_step(summaries):
    _, traj = summaries
    failed = traj.filter((pl.col("measure") == "llc") & (pl.col("technique") == "sft") & (pl.col("step") == 20))
    assert failed["status"].to_list() == ["failed"] and failed["reason"][0] == "chain 0 diverged"
    change = traj.filter((pl.col("measure") == "llc_change") & (pl.col("technique") == "sft")).sort("step")
    assert change["status"].to_list() == ["no_previous_step", "ok", "failed", "failed"]
    assert change["value"][1] == pytest.approx(5 * 10 / 30)
    assert change["value"][2] is None and change["value"][3] is None  # never zero-filled
    pooled = traj.filter((pl.col("measure") == "asr") & (pl.col("detail") == "pooled"))
    assert pooled.height == len(_checkpoints())  # none and prefill, not the white-box attack


def test_trajectories_mark_drift_without_a_final_direction(tmp_path):
    paths = write_summaries(tmp_path, no_direction={("attack", 20)})
    traj = questions.trajectories(refusal_path=paths["refusal"], directions_path=paths["directions"],
                                 drift_path=paths["drift"], out_path=tmp_path / "t.parquet")
    attack = traj.filter((pl.col("measure") == "drift_cos_to_final") & (pl.col("technique") == "attack"))
    assert attack.height == 3 and set(attack["status"]) == {"no_direction"} and attack["value"].null_count() == 3
    sft = traj.filter((pl.col("measure") == "drift_cos_to_final") & (pl.col("technique") == "sft"))
    assert set(sft["detail"]) == {"layer 2 position -1"} and sft.sort("step")["value"][-1] == pytest.approx(1.0)
    assert not traj.filter(pl.col("measure").str.starts_with("llc")).height  # no LLC stage, no LLC rows


def test_correlation_recovers_the_built_in_relation_and_names_excluded_checkpoints(summaries, tmp_path):
    _, _ = summaries
    corr = questions.llc_asr_correlation(trajectories_path=tmp_path / "trajectories.parquet", settings=SETTINGS,
                                        out_path=tmp_path / "corr.parquet")
    row = corr.filter((pl.col("technique") == "pooled") & (pl.col("attack") == "none")
                      & (pl.col("llc_measure") == "llc") & (pl.col("method") == "spearman")).row(0, named=True)
    # LLC = 10 + 5 level and ASR = 1 - level at every checkpoint: a perfect negative relation
    assert row["status"] == "ok" and row["estimate"] == pytest.approx(-1.0)
    assert row["n_checkpoints"] == 6 and row["n_excluded"] == 1 and "sft@20: LLC failed" in row["reason"]
    sft = corr.filter((pl.col("technique") == "sft") & (pl.col("attack") == "none")
                      & (pl.col("llc_measure") == "llc") & (pl.col("method") == "spearman")).row(0, named=True)
    assert sft["n_checkpoints"] == 3 and sft["p_value"] == pytest.approx(1 / 3)
    change = corr.filter((pl.col("technique") == "attack") & (pl.col("llc_measure") == "llc_change")
                         & (pl.col("attack") == "none") & (pl.col("method") == "spearman")).row(0, named=True)
    assert change["status"] == "too_few_points" and change["n_checkpoints"] == 2


def test_correlation_without_llc_is_one_marked_row(tmp_path):
    paths = write_summaries(tmp_path)
    questions.trajectories(refusal_path=paths["refusal"], jailbreak_path=paths["jailbreak"],
                          out_path=tmp_path / "t.parquet")
    corr = questions.llc_asr_correlation(trajectories_path=tmp_path / "t.parquet", settings=SETTINGS,
                                        out_path=tmp_path / "c.parquet")
    assert corr["status"].to_list() == ["missing_input"] and "no LLC" in corr["reason"][0]


def test_emergence_and_comparison(summaries, tmp_path):
    paths, _ = summaries
    emergence = questions.direction_emergence(directions_path=paths["directions"], out_path=tmp_path / "e.parquet")
    sft = emergence.filter(pl.col("technique") == "sft").row(0, named=True)
    assert sft["status"] == "emerged" and sft["emergence_step"] == 20 and sft["layer"] == 2
    attack = emergence.filter(pl.col("technique") == "attack").row(0, named=True)
    assert attack["status"] == "present_at_start" and attack["emergence_step"] == 0
    comparison = questions.technique_comparison(trajectories_path=tmp_path / "trajectories.parquet",
                                               settings=SETTINGS, out_path=tmp_path / "cmp.parquet")
    sft = comparison.filter(pl.col("technique") == "sft").row(0, named=True)
    assert sft["final_step"] == 30 and sft["refusal_rate"] == pytest.approx(1.0)
    assert sft["llc_change_from_base"] == pytest.approx(5.0) and sft["asr_templates"] is None
    attack = comparison.filter(pl.col("technique") == "attack").row(0, named=True)
    assert attack["direction_status"] == "no_direction" and attack["direction_kl"] is None
    assert attack["status"] == "ok"


# ---- component alignment ---------------------------------------------------------


@pytest.fixture(scope="module")
def lm():
    tokenizer = tiny.build_tokenizer()
    return tiny.build_model(tokenizer, "llama", seed=3, n_layers=2).eval()


def test_alignment_ratio_is_chance_for_random_and_zero_after_orthogonalisation(lm):
    d = lm.config.hidden_size
    rows = component_alignment.alignments(lm, torch.randn(d, generator=torch.Generator().manual_seed(0)))
    by_name = {r["component"]: r for r in rows}
    n_heads, n_groups = lm.config.num_attention_heads, lm.config.num_key_value_heads
    assert len(rows) == 2 * (3 + n_heads + n_groups)
    assert set(by_name) >= {"l0 attn", "l1 mlp", "l0", "l1h0", "l0g0"}
    assert all(r["status"] == "ok" and 0.2 < r["alignment_ratio"] < 3 for r in rows)
    # the top left singular vector of layer 1's down_proj: its alignment is the largest singular value
    _, down_proj = interventions.output_projections(lm.model.layers[1])
    left, sigma, _ = torch.linalg.svd(down_proj.weight.detach().double())
    u = left[:, 0].float()
    top = {r["component"]: r for r in component_alignment.alignments(lm, u)}
    assert top["l1 mlp"]["alignment"] == pytest.approx(float(sigma[0]), rel=1e-5)
    assert top["l1 mlp"]["alignment_ratio"] > top["l0 mlp"]["alignment_ratio"]
    import copy

    ortho = interventions.orthogonalise(copy.deepcopy(lm), u)
    assert all(r["alignment"] < 1e-5 for r in component_alignment.alignments(ortho, u))
    missing = component_alignment.alignments(lm, None)
    assert {r["status"] for r in missing} == {"no_direction"} and all(r["alignment"] is None for r in missing)


def _alignment_table(rows_by_step: dict[int, list[dict]]) -> pl.DataFrame:
    frames = [pl.DataFrame(rows, infer_schema_length=None).with_columns(
        model=pl.lit("m"), technique=pl.lit("sft"), step=pl.lit(step)) for step, rows in rows_by_step.items()]
    return tables.conform(pl.concat(frames, how="diagonal_relaxed"), "component_alignment")


def test_alignment_against_susceptibility_and_its_gaps(lm):
    d = lm.config.hidden_size
    direction = torch.randn(d, generator=torch.Generator().manual_seed(1))
    table = _alignment_table({0: component_alignment.alignments(lm, None),
                              10: component_alignment.alignments(lm, direction)})
    no_sus = susceptibility_alignment.alignment_vs_susceptibility(table, None, SETTINGS)
    assert no_sus["status"].to_list() == ["no_susceptibility"] * 2 and "susceptibilities" in no_sus["reason"][0]
    components = table.filter((pl.col("step") == 10) & pl.col("component_kind").is_in(["head", "mlp"]))
    chi = components.select("model", "technique", "step", "component", "component_kind",
                            chi_mean=pl.col("alignment_ratio") * 3)
    sus_rows = pl.concat([chi, chi.with_columns(step=pl.lit(0, pl.Int64))]).with_columns(
        seed=pl.lit(0), observable=pl.lit("harmful_refusal"), status=pl.lit("ok"), estimator=pl.lit("linear_response"))
    sus = tables.fill_missing(sus_rows, "susceptibility")
    result = susceptibility_alignment.alignment_vs_susceptibility(table, sus, SETTINGS).sort("step")
    assert result.filter(pl.col("step") == 0)["status"].to_list() == ["no_direction"]
    measured = {r["component_kind"]: r for r in result.filter(pl.col("step") == 10).iter_rows(named=True)}
    # one correlation per family of components none of which contains another: heads, MLPs, and both together
    assert set(measured) == {"head", "mlp", "head+mlp"} and measured["head+mlp"]["status"] == "ok"
    assert {r["status"] for r in measured.values()} <= {"ok", "too_few_points"}  # a tiny model has few MLPs
    assert measured["head+mlp"]["spearman"] == pytest.approx(1.0)
    assert measured["head+mlp"]["n_components"] == components.height
    n_mlp = components.filter(pl.col("component_kind") == "mlp").height
    assert measured["mlp"]["n_components"] == n_mlp and measured["head"]["n_components"] == components.height - n_mlp


def test_rotation_angles_between_consecutive_checkpoints():
    rows = []
    basis = np.eye(3)
    loadings = {0: basis[:, :1], 10: basis[:, :1], 20: basis[:, 1:2]}
    for step, matrix in loadings.items():
        for i, component in enumerate(["a", "b", "c"]):
            rows.append({"model": "m", "technique": "sft", "step": step, "seed": 0, "quantity": "loading", "pc": 1,
                         "component": component, "value": float(matrix[i, 0])})
    structure = tables.fill_missing(pl.DataFrame(rows), "susceptibility_structure")
    checkpoints = pl.DataFrame({"model": ["m"] * 3, "technique": ["sft"] * 3, "step": [0, 10, 20]})
    rotation = susceptibility_alignment.rotation(checkpoints, structure).sort("step")
    assert rotation["status"].to_list() == ["no_previous_step", "ok", "ok"]
    assert rotation["angle_deg"][1:].to_list() == pytest.approx([0.0, 90.0], abs=1e-6)
    unmeasured = susceptibility_alignment.rotation(checkpoints, None)
    assert set(unmeasured["status"]) == {"no_susceptibility"}


def test_two_stage_bootstrap_keeps_its_coverage_when_replicates_share_noise():
    """Checkpoints of one replicate trajectory share that run's noise, so they are not independent points.

    x and y are independent (true correlation 0) but each trajectory shifts all its checkpoints
    together; resampling checkpoints as if independent gives intervals that miss 0 far too often,
    the two-stage bootstrap over replicates then checkpoints does not.
    """
    rng = np.random.default_rng(1)
    techniques, replicates, checkpoints, n_sims = 3, 3, 4, 60
    clusters = np.repeat(np.arange(techniques * replicates), checkpoints)
    strata = np.repeat(np.arange(techniques), replicates * checkpoints)
    covered_plain = covered_two_stage = 0
    for sim in range(n_sims):
        shape = (techniques, replicates, checkpoints)
        x = (rng.normal(size=shape[:2])[:, :, None] + 0.3 * rng.normal(size=shape)).ravel()
        y = (rng.normal(size=shape[:2])[:, :, None] + 0.3 * rng.normal(size=shape)).ravel()
        low, high, _ = statistics.bootstrap_interval(x, y, "pearson", n_resamples=200, seed=sim)
        covered_plain += low <= 0 <= high
        low, high, _ = statistics.bootstrap_interval(x, y, "pearson", n_resamples=200, seed=sim,
                                                     clusters=clusters, strata=strata)
        covered_two_stage += low <= 0 <= high
    assert covered_two_stage / n_sims >= 0.75
    assert covered_plain / n_sims <= covered_two_stage / n_sims - 0.1


def test_measurement_error_widens_the_interval():
    """An LLC known only to +-se cannot support a correlation sharper than that error allows."""
    x = np.arange(8.0)
    y = x + np.random.default_rng(0).normal(scale=0.5, size=8)
    exact = statistics.bootstrap_interval(x, y, "pearson", n_resamples=500, seed=0)
    noisy = statistics.bootstrap_interval(x, y, "pearson", n_resamples=500, seed=0, x_se=np.full(8, 3.0))
    assert noisy[1] - noisy[0] > 2 * (exact[1] - exact[0])


def test_job_costs_read_snakemake_benchmarks_and_sum_by_stage(tmp_path):
    """Benchmark TSVs as Snakemake writes them; `-` (a job too short to sample) is null, never 0."""
    from workflow_lib.analysis import job_costs

    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    files = {"llc/m/sft/step-0/adapted-reference.tsv": "200.5\t0:03:20\t2100.0\t9\t9\t9\t0\t0\t99\t198.0\n",
             "llc/m/sft/step-50/adapted-reference.tsv": "100.0\t0:01:40\t1900.0\t9\t9\t9\t0\t0\t99\t97.0\n",
             "summary/m.tsv": "0.4\t0:00:00\t-\t-\t-\t-\t-\t-\t-\t-\n",
             "prepare_prompts.tsv": "3.0\t0:00:03\t300.0\t9\t9\t9\t0\t0\t99\t2.5\n"}
    for name, row in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(header + row)
    jobs = job_costs.read_benchmarks([str(tmp_path / n) for n in files], tmp_path, {"llc": "llc", "summary": "analysis", "prepare_prompts": "data"})
    assert jobs.filter(pl.col("rule") == "summary").row(0, named=True) == {
        "rule": "summary", "stage": "analysis", "job": "m", "wall_s": 0.4, "cpu_s": None, "max_rss_mb": None}
    assert jobs.filter(pl.col("rule") == "prepare_prompts")["job"].to_list() == [""]  # a rule without wildcards
    stages = job_costs.by_stage(jobs)
    assert stages["stage"].to_list() == ["llc", "data", "analysis"]
    llc_row = stages.row(0, named=True)
    assert llc_row["jobs"] == 2 and llc_row["wall_s"] == pytest.approx(300.5) and llc_row["peak_rss_mb"] == 2100.0
    assert llc_row["wall_share"] == pytest.approx(300.5 / 303.9)


def test_chain_se_counts_a_slow_mode_that_batch_means_average_away():
    """Four chains, each a white-noise series around its own offset: batch means pool 32 blocks as if
    independent and understate the error of the grand mean; the chains' spread does not."""
    from workflow_lib.core import statistics

    rng = np.random.default_rng(0)
    offsets = np.array([-2.0, -1.0, 1.0, 2.0])
    chains = [o + 0.1 * rng.standard_normal(64) for o in offsets]
    assert statistics.batch_means_se(chains) < 0.5 * offsets.std(ddof=1) / 2
    assert statistics.chain_se(chains) == pytest.approx(np.std([c.mean() for c in chains], ddof=1) / 2)
    mixed = [0.1 * rng.standard_normal(64) for _ in range(4)]  # chains that agree: about the batch-means error
    assert statistics.batch_means_se(mixed) <= statistics.chain_se(mixed) < 2 * statistics.batch_means_se(mixed)


def test_the_analyses_code_digest_covers_only_the_code_they_run():
    """Editing the generation code must not rerun analyses: their digest closure holds no model code."""
    from workflow_lib.core.digest import closure

    analysis_code = set(closure(["workflow_lib.analysis.questions", "workflow_lib.analysis.plots"]))
    assert not analysis_code & {"workflow_lib.core.generation", "workflow_lib.core.models", "workflow_lib.data.prompts",
                                "workflow_lib.refusal.refusal_direction", "workflow_lib.evaluation.jailbreak"}, sorted(analysis_code)
