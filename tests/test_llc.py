"""LLC through devinterp: a validity check against a known learning coefficient, diagnostics, tables."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from torch import nn

from workflow_lib.slt import llc, llc_calibration, sampling
from workflow_lib.core import models, statistics, tables

TINY_SAMPLER = {"lr": 1e-4, "n_beta": 10.0, "localization": 100.0, "chains": 2, "draws": 8, "burn_in": 2,
                "batch_size": 2, "seq_len": 16, "n_sequences": 8, "seed": 0}


def _regression(d: int, n: int, sigma: float, offset: float = 0.0):
    """(model at the least-squares solution + offset, its per-sample Gaussian NLL loss_fn, the dataset of row ids).

    Each "sequence" is [i, i]: one token position carrying sample i's loss.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, generator=g) + sigma * torch.randn(n, generator=g)
    model = nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y[:, None]).solution.T + offset)

    def gaussian_nll(m, ids):
        i = ids[:, 0]
        return ((y[i] - m(x[i])[:, 0]) ** 2 / (2 * sigma ** 2))[:, None]

    return model, gaussian_nll, Dataset.from_dict({"input_ids": [[i, i] for i in range(n)]}).with_format("torch")


def test_linear_regression_llc_is_half_the_dimension():
    """Validity check on the same code path (sampling.estimate_llc -> devinterp): lambda = d/2 for a regular model.

    y = w.x + N(0, sigma^2), loss = per-sample Gaussian NLL, sampled at the least-squares
    solution with n_beta = n (beta = 1). The step size is small enough for the SGLD
    discretisation bias to stay at a few per cent.
    """
    d, n = 10, 1000
    model, gaussian_nll, data = _regression(d, n, 0.5)
    sampler = {"lr": 4e-5, "n_beta": float(n), "localization": 0.0, "chains": 4, "draws": 4000, "burn_in": 200,
               "batch_size": n, "seed": 0}
    chains, trace, summary = sampling.estimate_llc(model, data, {"weight": None}, sampler, {}, loss_fn=gaussian_nll)
    assert summary["status"] == "ok" and summary["n_ok"] == 4, summary
    assert summary["llc_mean"] == pytest.approx(d / 2, rel=0.10)
    assert trace.trace.shape == (4, 4200)


def test_diagnostics_flag_each_failure_mode():
    """Excess-loss traces (loss minus the checkpoint's loss on the same batch), post burn-in."""
    rng = np.random.default_rng(0)
    flat = 0.5 + 0.01 * rng.standard_normal(40)
    assert sampling.diagnose_chain(flat, 15.0, False, {})[0] == sampling.OK
    assert sampling.diagnose_chain(flat, 15.0, True, {})[0] == sampling.DIVERGED
    assert sampling.diagnose_chain(np.r_[flat[:-1], np.nan], 15.0, False, {})[0] == sampling.DIVERGED
    assert sampling.diagnose_chain(flat + 3.0, 105.0, False, {})[0] == sampling.DIVERGED  # left the basin
    rising = np.linspace(0.0, 1.0, 40) + 0.01 * rng.standard_normal(40)
    status, reason, drift = sampling.diagnose_chain(rising, 10.0, False, {})
    assert status == sampling.NOT_CONVERGED and drift == pytest.approx(0.5, abs=0.05) and "drifts" in reason
    below = -0.1 + 0.01 * rng.standard_normal(40)
    assert sampling.diagnose_chain(below, -3.0, False, {})[0] == sampling.NEGATIVE


def test_summary_leaves_flagged_chains_out_of_the_mean():
    chains = [sampling.ChainResult(0, 10.0, 2.0, sampling.OK, "", 0.0), sampling.ChainResult(1, 12.0, 2.0, sampling.OK, "", 0.0),
              sampling.ChainResult(2, 1e9, 2.0, sampling.DIVERGED, "x", math.nan)]
    summary = sampling.summarise(chains, sampling.DIAGNOSTIC_DEFAULTS)
    assert summary["llc_mean"] == 11.0 and summary["n_ok"] == 2 and "chain 2: diverged" in summary["reason"]
    failed = sampling.summarise(chains[2:], sampling.DIAGNOSTIC_DEFAULTS)
    assert failed["status"] == "failed" and math.isnan(failed["llc_mean"])


def test_draws_must_cover_whole_passes_over_the_data():
    assert sampling.epoch_batches(8, {"batch_size": 2, "draws": 8, "steps_between_draws": 1}) == 4
    with pytest.raises(sampling.SamplerSettingsError, match="not a multiple of the 4 batches"):
        sampling.epoch_batches(8, {"batch_size": 2, "draws": 6, "steps_between_draws": 1})


def test_packed_dataset_has_uniform_real_tokens():
    streams = [[1, 2, 3], [4, 5, 6, 7], [8, 9]]
    data = sampling.packed_dataset(streams, seq_len=4, n_sequences=10, seed=0)
    rows = torch.stack([row["input_ids"] for row in data])
    assert rows.shape == (2, 4) and sorted(rows.flatten().tolist()) == sorted(set(rows.flatten().tolist()))
    with pytest.raises(ValueError, match="cannot fill one sequence"):
        sampling.packed_dataset([[1, 2]], seq_len=4, n_sequences=1, seed=0)


def _peft_model(tiny_model_dir):
    model, _ = models.load_base(tiny_model_dir)
    return get_peft_model(model, LoraConfig(r=2, lora_alpha=4, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]))


def test_parameter_spaces_select_and_unfreeze_exactly_their_weights(tiny_model_dir):
    peft_model = _peft_model(tiny_model_dir)
    masks = sampling.select_parameters(peft_model, "lora")
    assert masks and all(".lora_A." in n or ".lora_B." in n for n in masks)
    assert {n for n, p in peft_model.named_parameters() if p.requires_grad} == set(masks)
    assert all(m.p == 0.0 for m in peft_model.modules() if isinstance(m, nn.Dropout))
    plain, _ = models.load_base(tiny_model_dir)
    assert set(sampling.select_parameters(plain, "full")) == {n for n, _ in plain.named_parameters()}
    attn0 = sampling.select_parameters(plain, "attn0", ["model.layers.0.self_attn.*"])
    assert attn0 and all(n.startswith("model.layers.0.self_attn.") for n in attn0)
    assert {n for n, p in plain.named_parameters() if p.requires_grad} == set(attn0)
    with pytest.raises(sampling.ParameterSpaceError, match="selects no parameter"):
        sampling.select_parameters(plain, "none", ["model.layers.99.*"])


def test_the_adapted_space_is_the_merged_weights_of_the_modules_lora_adapts(checkpoint, tiny_model_dir):
    """`adapted` follows the checkpoint's own adapter config (q_proj and v_proj here), on any architecture."""
    model, _, masks = llc.load_in_space(tiny_model_dir, checkpoint / "step-3", "adapted", None, "cpu")
    n_layers = model.config.num_hidden_layers
    assert sorted(masks) == sorted(f"model.layers.{i}.self_attn.{m}.weight" for i in range(n_layers)
                                   for m in ("q_proj", "v_proj"))
    assert not any(".lora_" in n for n, _ in model.named_parameters())  # merged: one plain weight per module


def _run(checkpoint, tiny_model_dir, step, space="lora", dataset="training_mix", **sampler):
    out = checkpoint / f"llc-{step}-{space}-{dataset}-{len(sampler)}"
    out.mkdir(exist_ok=True)
    table = llc.run_llc(model="tiny", technique="sft", step=step, model_dir=tiny_model_dir,
                        checkpoint_dir=checkpoint / f"step-{step}", space=space, dataset=dataset,
                        mix_path=checkpoint / "mix.parquet", completions_path=checkpoint / "completions.parquet",
                        settings={"sampler": TINY_SAMPLER | sampler,
                                  "custom_spaces": {"attn0": ["model.layers.0.self_attn.*"]}},
                        out_path=out / "llc.parquet", trace_path=out / "llc_trace.parquet")
    return table, tables.read_table(out / "llc_trace.parquet", "llc_trace")


@pytest.mark.parametrize("step, space, dataset", [(0, "lora", "training_mix"), (3, "adapted", "harmful"),
                                                  (3, "full", "training_mix"), (3, "attn0", "harmless")])
def test_llc_stage_writes_its_tables(checkpoint, tiny_model_dir, step, space, dataset):
    table, trace = _run(checkpoint, tiny_model_dir, step, space, dataset)
    assert table.columns == [c.name for c in tables.schema("llc")]
    assert table["row"].to_list() == ["chain", "chain", "summary"]
    chains = table.filter(pl.col("row") == "chain")
    assert chains["llc_mean"].is_finite().all() and chains["init_loss"].is_finite().all()
    assert set(chains["status"]) <= {"ok", "diverged", "not_converged", "negative"}
    summary = table.filter(pl.col("row") == "summary").row(0, named=True)
    ok = chains.filter(pl.col("status") == "ok")["llc_mean"]
    if summary["status"] == "ok":
        assert summary["llc_mean"] == pytest.approx(ok.mean()) and summary["n_ok_chains"] == ok.len()
    assert trace.height == 2 * 10 and trace["burn_in"].sum() == 4 and trace["loss"].is_finite().all()
    assert trace["batch_init_loss"].is_finite().all()
    # the draws cover whole passes over the data, so devinterp's estimate is the mean batch-matched rise
    for c, row in enumerate(chains.iter_rows(named=True)):
        draws = trace.filter((pl.col("chain") == c) & ~pl.col("burn_in"))
        matched = TINY_SAMPLER["n_beta"] * (draws["loss"] - draws["batch_init_loss"]).mean()
        assert row["llc_mean"] == pytest.approx(matched, rel=1e-3, abs=1e-3)
    n_lora = sum(p.numel() for n, p in _peft_model(tiny_model_dir).named_parameters() if "lora_" in n)
    if space == "lora":
        assert (table["n_parameters"] == n_lora).all()
    left = [p.name for p in (checkpoint / f"llc-{step}-{space}-{dataset}-0").iterdir() if p.name.startswith(".")]
    assert left == []  # the sampler's zarr folder sat beside the table and is gone


def test_a_huge_step_size_gives_diverged_rows_not_a_crash(checkpoint, tiny_model_dir):
    table, trace = _run(checkpoint, tiny_model_dir, 3, lr=1e4, n_beta=1e4)
    chains = table.filter(pl.col("row") == "chain")
    assert (chains["status"] == "diverged").all(), chains.select("status", "reason").rows()
    summary = table.filter(pl.col("row") == "summary").row(0, named=True)
    assert summary["status"] == "failed" and math.isnan(summary["llc_mean"]) and summary["n_ok_chains"] == 0


def test_calibration_recommends_the_largest_step_on_the_plateau():
    grid = pl.DataFrame({
        "n_beta": [10.0] * 4 + [30.0] * 2,
        "lr": [1e-5, 3e-5, 1e-4, 3e-4, 1e-5, 3e-5],
        "llc_mean": [5.0, 9.0, 10.0, float("nan"), 20.0, 30.0],
        "status": ["ok", "ok", "ok", "unstable", "ok", "ok"],
    })
    out = llc_calibration.recommend(grid.with_columns(localization=pl.lit(100.0)), tolerance=0.2)
    assert out.filter(pl.col("recommended"))[["n_beta", "lr"]].rows() == [(10.0, 1e-4)]
    assert out.filter((pl.col("n_beta") == 10.0) & (pl.col("lr") == 1e-4))["relative_change"][0] == pytest.approx(0.1)


def test_calibration_relative_change_carries_its_standard_error():
    grid = pl.DataFrame({"n_beta": [10.0, 10.0], "lr": [1e-5, 3e-5], "llc_mean": [8.0, 10.0],
                         "llc_se": [0.4, 0.5], "status": ["ok", "ok"], "localization": [100.0, 100.0]})
    row = llc_calibration.recommend(grid, tolerance=0.1).filter(pl.col("lr") == 3e-5).row(0, named=True)
    # ratio 0.8, relative errors 0.05 and 0.05 in quadrature: 0.8 * sqrt(0.005)
    assert row["relative_change"] == pytest.approx(0.2)
    assert row["relative_change_se"] == pytest.approx(0.8 * math.sqrt(0.005))


def test_calibration_burns_in_for_the_priors_relaxation_time():
    sampler = {"burn_in": 8, "n_sequences": 32, "batch_size": 4}
    assert llc_calibration.relaxed_burn_in(sampler, 1e-3, 100.0, 5) == 104   # 5 x 2/(0.1) = 100 -> 13 passes of 8
    assert llc_calibration.relaxed_burn_in(sampler, 1e-1, 100.0, 5) == 8     # the configured burn-in is a floor


def test_calibration_grid_runs_and_writes_tables(checkpoint, tiny_model_dir, tmp_path):
    settings = {"sampler": TINY_SAMPLER | {"chains": 1},
                "calibration": {"lrs": [1e-5, 1e-4], "n_betas": [10.0], "localizations": [100.0, 300.0],
                                "space": "lora", "dataset": "training_mix", "relaxation_times": 1e-3}}
    grid = llc_calibration.calibrate(model="tiny", technique="sft", step=3, model_dir=tiny_model_dir,
                                     checkpoint_dir=checkpoint / "step-3", mix_path=checkpoint / "mix.parquet",
                                     completions_path=checkpoint / "completions.parquet", settings=settings,
                                     out_path=tmp_path / "cal.parquet", trace_path=tmp_path / "cal_trace.parquet")
    assert grid.height == 4 and grid["lr"].to_list() == [1e-5, 1e-4] * 2
    assert grid["localization"].to_list() == [100.0, 100.0, 300.0, 300.0]
    ok = grid.filter(pl.col("status") == "ok")
    assert (ok["llc_se"] > 0).all() and ok["llc_se"].is_finite().all()
    traces = tables.read_table(tmp_path / "cal_trace.parquet", "llc_calibration_trace")
    # burn-in 2, rounded up to a whole pass over the 8 / 2 = 4 batches
    assert traces.height == 4 * (4 + 8) and traces["batch_init_loss"].is_finite().all()
    from workflow_lib.slt import plots

    plots.llc_calibration(tmp_path / "cal_trace.parquet", tmp_path / "cal.parquet", tmp_path / "cal.png")
    assert (tmp_path / "cal.png").read_bytes()[:4] == b"\x89PNG"


# ---- issue 18: a common reference loss, paired differences, a singular known-lambda check ------------------


def rrr_learning_coefficient(m: int, n: int, h: int, r: int) -> float:
    """Aoyagi and Watanabe (2005), main theorem: lambda of reduced-rank regression y = B A x (A: h x m, B: n x h)
    at a true matrix of rank r."""
    if n + r <= m + h and m + r <= n + h and h + r <= m + n:
        odd = (m + h + n + r) % 2
        return (2 * (h + r) * (m + n) - (m - n) ** 2 - (h + r) ** 2 + odd) / 8
    if m + h < n + r:
        return (h * m - h * r + n * r) / 2
    if n + h < m + r:
        return (h * n - h * r + m * r) / 2
    return m * n / 2


def test_the_rrr_formula_matches_the_regular_and_the_product_cases():
    assert rrr_learning_coefficient(4, 4, 3, 3) == 3 * (4 + 4 - 3) / 2  # full model rank: half the manifold dimension
    assert rrr_learning_coefficient(1, 1, 1, 0) == 0.5                 # y = b a x at b a = 0: K = (ab)^2


@pytest.mark.parametrize("h, r", [(3, 1), (3, 0)])
def test_reduced_rank_regression_llc_matches_aoyagi_watanabe(h, r):
    """Singular known-lambda check on the same code path (sampling.estimate_llc -> devinterp): a factorised linear
    model B A (4 -> h -> 4), the shape of a LoRA update, at its most singular true parameter (unused rank at 0).

    The loss is the population loss K(w) = |B A - W0|_F^2 / 2 (Gaussian inputs and noise, sigma 1), so the check
    measures the sampler and the estimator, not one dataset's fluctuation (about +-10% at n = 4000 through
    the empirical loss). lambda(4, 4, 3, r): 6 for r = 1, 5 for r = 0, against a regular count d/2 = 12.
    Measured here: 5.6 and 4.6 (-7% each); the step size keeps lr * n_beta * curvature small (at 3x the
    step, the regular r = 3 case reads 10% high).
    """
    m = n_out = 4
    g = torch.Generator().manual_seed(h * 10 + r)
    a_true, b_true = torch.zeros(h, m), torch.zeros(n_out, h)
    a_true[:r] = 0.6 * torch.randn(r, m, generator=g)
    b_true[:, :r] = 0.6 * torch.randn(n_out, r, generator=g)
    w0 = b_true @ a_true
    model = nn.Sequential(nn.Linear(m, h, bias=False), nn.Linear(h, n_out, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(a_true)
        model[1].weight.copy_(b_true)

    def population_loss(mdl, ids):  # the same K for every row: devinterp's batches see no data noise
        return (((mdl[1].weight @ mdl[0].weight - w0) ** 2).sum() / 2).expand(ids.shape[0], 1)

    data = Dataset.from_dict({"input_ids": [[i, i] for i in range(4)]}).with_format("torch")
    sampler = {"lr": 1.5e-5, "n_beta": 1000.0, "localization": 1.0, "chains": 2, "draws": 8000, "burn_in": 2000,
               "batch_size": 4, "seed": 0}
    chains, _, summary = sampling.estimate_llc(model, data, {"0.weight": None, "1.weight": None}, sampler, {},
                                          loss_fn=population_loss)
    expected = rrr_learning_coefficient(m, n_out, h, r)
    every_chain = float(np.mean([c.llc for c in chains]))
    assert summary["n_ok"] >= 1, summary
    assert summary["llc_mean"] == pytest.approx(expected, rel=0.15), (summary["llc_mean"], expected)
    assert every_chain == pytest.approx(expected, rel=0.15), (every_chain, expected)
    assert every_chain < 0.6 * h * (m + n_out) / 2  # far below the regular count d/2


def test_the_reference_loss_is_the_same_for_every_checkpoint_and_fails_by_name(checkpoint, tiny_model_dir):
    from workflow_lib.core import models as model_io

    _, tokenizer = model_io.load_checkpoint(tiny_model_dir, checkpoint / "step-3", dtype="float32", merge=True)
    settings = {"data_seed": 5, "reference": {"sets": ["harmful", "harmless"]}}
    sampler = TINY_SAMPLER | {"seed": 1}
    one = llc.loss_dataset(tokenizer, "reference", settings, sampler, None, checkpoint / "completions.parquet")
    other_seed = llc.loss_dataset(tokenizer, "reference", settings, sampler | {"seed": 7}, checkpoint / "mix.parquet",
                                  checkpoint / "completions.parquet")
    assert one["input_ids"][:].tolist() == other_seed["input_ids"][:].tolist()  # the sampler seed never moves the loss
    moved = llc.loss_dataset(tokenizer, "reference", settings | {"data_seed": 6}, sampler, None,
                             checkpoint / "completions.parquet")
    assert moved["input_ids"][:].tolist() != one["input_ids"][:].tolist()
    with pytest.raises(llc.ReferenceLossError, match=r"llc\.sampler\.n_sequences"):
        llc.loss_dataset(tokenizer, "reference", settings, sampler | {"n_sequences": 10_000}, None,
                         checkpoint / "completions.parquet")
    with pytest.raises(llc.ReferenceLossError, match=r"llc\.reference\.sets names \['harmless_lookalike'\]"):
        llc.loss_dataset(tokenizer, "reference", {"reference": {"sets": ["harmless_lookalike"]}}, sampler, None,
                         checkpoint / "completions.parquet")


def test_common_random_numbers_pair_the_draws_of_two_checkpoints():
    """Same seed and data at two nearby minima: chain c sees the same batches and noise at both, chains differ,
    and the paired per-draw difference is far less noisy than either checkpoint's draws (what delta_se uses)."""
    d, n = 6, 64
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, generator=g) + 0.5 * torch.randn(n, generator=g)
    data = Dataset.from_dict({"input_ids": [[i, i] for i in range(n)]}).with_format("torch")
    sampler = {"lr": 1e-4, "n_beta": 64.0, "localization": 10.0, "chains": 3, "draws": 64, "burn_in": 16,
               "batch_size": 8, "seed": 4}
    runs = {}
    for name, shift in (("a", 0.0), ("b", 0.05)):
        model = nn.Linear(d, 1, bias=False)
        with torch.no_grad():  # each checkpoint is the minimum of its own targets y + shift
            model.weight.copy_(torch.linalg.lstsq(x, (y + shift)[:, None]).solution.T)

        def nll(m, ids, shift=shift):
            i = ids[:, 0]
            return ((y[i] + shift - m(x[i])[:, 0]) ** 2 / 0.5)[:, None]

        runs[name] = sampling.sample_llc(model, data, {"weight": None}, sampler, loss_fn=nll)
    a, b = runs["a"], runs["b"]
    assert np.array_equal(a.batch_keys, b.batch_keys)                 # the same batches at both checkpoints
    assert not np.array_equal(a.batch_keys[0], a.batch_keys[1])       # each chain its own order
    rise = {k: 64.0 * (r.trace - r.batch_init)[:, 16:] for k, r in runs.items()}
    paired = statistics.batch_means_se(list(rise["a"] - rise["b"]))
    unpaired = math.hypot(statistics.batch_means_se(list(rise["a"])), statistics.batch_means_se(list(rise["b"])))
    assert paired < 0.5 * unpaired, (paired, unpaired)


def _synthetic_chain_tables(step: int, shift: float, noise: np.ndarray, n_beta: float):
    """llc and llc_trace tables of a synthetic checkpoint: excess loss = shift + shared noise per (chain, draw)."""
    n_chains, n_draws = noise.shape
    keys = {"model": "m", "technique": "t", "step": step, "parameter_space": "lora", "dataset": "reference", "seed": 0}
    excess = shift + noise
    trace = pl.DataFrame({**{k: [v] * (n_chains * n_draws) for k, v in keys.items()},
                          "chain": np.repeat(np.arange(n_chains), n_draws), "sgld_step": np.tile(np.arange(n_draws), n_chains),
                          "burn_in": [False] * (n_chains * n_draws), "loss": (1.0 + excess).reshape(-1),
                          "batch_init_loss": [1.0] * (n_chains * n_draws), "init_loss": [1.0] * (n_chains * n_draws),
                          "batch_key": np.tile(np.arange(n_draws), n_chains)})
    llc_rows = [keys | {"row": "chain", "chain": c, "llc_mean": float(n_beta * excess[c].mean()), "status": "ok"}
                for c in range(n_chains)]
    return pl.DataFrame(llc_rows), trace


def test_paired_differences_on_a_synthetic_sampler_have_the_right_error():
    """Two checkpoints share most of their draw noise (common random numbers): the paired SE sees only the
    independent part, and over many replications the 2-SE interval covers the true difference ~95% of the time."""
    from workflow_lib.slt import llc_differences

    rng = np.random.default_rng(0)
    n_beta, true_delta, covered, ses = 10.0, 0.02, 0, []
    for _ in range(200):
        shared = rng.normal(0, 0.1, (2, 64))
        a = _synthetic_chain_tables(1, 0.05 + true_delta, shared + rng.normal(0, 0.01, (2, 64)), n_beta)
        b = _synthetic_chain_tables(0, 0.05, shared + rng.normal(0, 0.01, (2, 64)), n_beta)
        d = llc_differences.difference(*a, *b, n_beta)
        assert d["paired"]
        covered += abs(d["delta"] - n_beta * true_delta) < 2 * d["delta_se"]
        ses.append(d["delta_se"])
    assert 0.88 < covered / 200 <= 1.0
    assert np.median(ses) == pytest.approx(n_beta * 0.01 * np.sqrt(2) / np.sqrt(128), rel=0.3)


def test_the_tilted_loss_gives_a_point_off_the_minimum_its_learning_coefficient():
    """At a point that is not the loss's minimum the plain estimate is dominated by the slope (hugely negative);
    with the tangent plane removed (llc.tilt) it returns the curvature count of the regular model, about d/2
    (n_beta h / (n_beta h + gamma) = 0.94 per direction here)."""
    from workflow_lib.slt import llc_tilt

    d, n = 6, 400
    model, gaussian_nll, data = _regression(d, n, 0.5, offset=0.3)
    sampler = {"lr": 1e-4, "n_beta": float(n), "localization": 100.0, "chains": 2, "draws": 1000, "burn_in": 200,
               "batch_size": n, "seed": 0}
    gradient = llc_tilt.mean_loss_gradient(model, torch.stack(list(data["input_ids"])), ["weight"], gaussian_nll,
                                           n, "cpu")
    _, _, plain = sampling.estimate_llc(model, data, {"weight": None}, sampler, {}, loss_fn=gaussian_nll)
    _, _, tilted = sampling.estimate_llc(model, data, {"weight": None}, sampler, {},
                                    loss_fn=llc_tilt.TiltedLoss(model, gradient, gaussian_nll))
    assert plain["status"] == "failed" and "negative" in plain["reason"]
    assert tilted["status"] == "ok" and tilted["llc_mean"] == pytest.approx(d / 2 * 0.94, rel=0.1)
