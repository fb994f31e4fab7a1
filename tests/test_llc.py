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

from workflow_lib import llc, llc_calibration, models, slt, tables

TINY_SAMPLER = {"lr": 1e-4, "n_beta": 10.0, "localization": 100.0, "chains": 2, "draws": 8, "burn_in": 2,
                "batch_size": 2, "seq_len": 16, "n_sequences": 8, "seed": 0}


def test_linear_regression_llc_is_half_the_dimension():
    """Validity check on the same code path (slt.estimate_llc -> devinterp): lambda = d/2 for a regular model.

    y = w.x + N(0, sigma^2), loss = per-sample Gaussian NLL, sampled at the least-squares
    solution with n_beta = n (beta = 1). The step size is small enough for the SGLD
    discretisation bias to stay at a few per cent.
    """
    d, n, sigma = 10, 1000, 0.5
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, generator=g) + sigma * torch.randn(n, generator=g)
    model = nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y[:, None]).solution.T)

    def gaussian_nll(m, ids):  # each "sequence" is [i, i]: one token position carrying sample i's loss
        i = ids[:, 0]
        return ((y[i] - m(x[i])[:, 0]) ** 2 / (2 * sigma**2))[:, None]

    data = Dataset.from_dict({"input_ids": [[i, i] for i in range(n)]}).with_format("torch")
    sampler = {"lr": 4e-5, "n_beta": float(n), "localization": 0.0, "chains": 4, "draws": 4000, "burn_in": 200,
               "batch_size": n, "seed": 0}
    chains, trace, summary = slt.estimate_llc(model, data, {"weight": None}, sampler, {}, loss_fn=gaussian_nll)
    assert summary["status"] == "ok" and summary["n_ok"] == 4, summary
    assert summary["llc_mean"] == pytest.approx(d / 2, rel=0.10)
    assert trace.trace.shape == (4, 4200)


def test_diagnostics_flag_each_failure_mode():
    """Excess-loss traces (loss minus the checkpoint's loss on the same batch), post burn-in."""
    rng = np.random.default_rng(0)
    flat = 0.5 + 0.01 * rng.standard_normal(40)
    assert slt.diagnose_chain(flat, 15.0, False, {})[0] == slt.OK
    assert slt.diagnose_chain(flat, 15.0, True, {})[0] == slt.DIVERGED
    assert slt.diagnose_chain(np.r_[flat[:-1], np.nan], 15.0, False, {})[0] == slt.DIVERGED
    assert slt.diagnose_chain(flat + 3.0, 105.0, False, {})[0] == slt.DIVERGED  # left the basin
    rising = np.linspace(0.0, 1.0, 40) + 0.01 * rng.standard_normal(40)
    status, reason, drift = slt.diagnose_chain(rising, 10.0, False, {})
    assert status == slt.NOT_CONVERGED and drift == pytest.approx(0.5, abs=0.05) and "drifts" in reason
    below = -0.1 + 0.01 * rng.standard_normal(40)
    assert slt.diagnose_chain(below, -3.0, False, {})[0] == slt.NEGATIVE


def test_summary_leaves_flagged_chains_out_of_the_mean():
    chains = [slt.ChainResult(0, 10.0, 2.0, slt.OK, "", 0.0), slt.ChainResult(1, 12.0, 2.0, slt.OK, "", 0.0),
              slt.ChainResult(2, 1e9, 2.0, slt.DIVERGED, "x", math.nan)]
    summary = slt.summarise(chains, slt.DIAGNOSTIC_DEFAULTS)
    assert summary["llc_mean"] == 11.0 and summary["n_ok"] == 2 and "chain 2: diverged" in summary["reason"]
    failed = slt.summarise(chains[2:], slt.DIAGNOSTIC_DEFAULTS)
    assert failed["status"] == "failed" and math.isnan(failed["llc_mean"])


def test_draws_must_cover_whole_passes_over_the_data():
    assert slt.epoch_batches(8, {"batch_size": 2, "draws": 8, "steps_between_draws": 1}) == 4
    with pytest.raises(slt.SamplerSettingsError, match="not a multiple of the 4 batches"):
        slt.epoch_batches(8, {"batch_size": 2, "draws": 6, "steps_between_draws": 1})


def test_packed_dataset_has_uniform_real_tokens():
    streams = [[1, 2, 3], [4, 5, 6, 7], [8, 9]]
    data = slt.packed_dataset(streams, seq_len=4, n_sequences=10, seed=0)
    rows = torch.stack([row["input_ids"] for row in data])
    assert rows.shape == (2, 4) and sorted(rows.flatten().tolist()) == sorted(set(rows.flatten().tolist()))
    with pytest.raises(ValueError, match="cannot fill one sequence"):
        slt.packed_dataset([[1, 2]], seq_len=4, n_sequences=1, seed=0)


def _peft_model(tiny_model_dir):
    model, _ = models.load_base(tiny_model_dir)
    return get_peft_model(model, LoraConfig(r=2, lora_alpha=4, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]))


def test_parameter_spaces_select_and_unfreeze_exactly_their_weights(tiny_model_dir):
    peft_model = _peft_model(tiny_model_dir)
    masks = slt.select_parameters(peft_model, "lora")
    assert masks and all(".lora_A." in n or ".lora_B." in n for n in masks)
    assert {n for n, p in peft_model.named_parameters() if p.requires_grad} == set(masks)
    assert all(m.p == 0.0 for m in peft_model.modules() if isinstance(m, nn.Dropout))
    plain, _ = models.load_base(tiny_model_dir)
    assert set(slt.select_parameters(plain, "full")) == {n for n, _ in plain.named_parameters()}
    attn0 = slt.select_parameters(plain, "attn0", ["model.layers.0.self_attn.*"])
    assert attn0 and all(n.startswith("model.layers.0.self_attn.") for n in attn0)
    assert {n for n, p in plain.named_parameters() if p.requires_grad} == set(attn0)
    with pytest.raises(slt.ParameterSpaceError, match="selects no parameter"):
        slt.select_parameters(plain, "none", ["model.layers.99.*"])


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


@pytest.mark.parametrize("step, space, dataset", [(0, "lora", "training_mix"), (3, "lora", "harmful"),
                                                  (3, "full", "training_mix"), (3, "attn0", "harmless")])
def test_llc_stage_writes_its_tables(checkpoint, tiny_model_dir, step, space, dataset):
    table, trace = _run(checkpoint, tiny_model_dir, step, space, dataset)
    assert table.columns == [c.name for c in tables.SCHEMAS["llc"]]
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


def test_calibration_grid_runs_and_writes_tables(checkpoint, tiny_model_dir, tmp_path):
    settings = {"sampler": TINY_SAMPLER | {"chains": 1},
                "calibration": {"lrs": [1e-5, 1e-4], "n_betas": [10.0], "localizations": [100.0, 300.0],
                                "space": "lora", "dataset": "training_mix"}}
    grid = llc_calibration.calibrate(model="tiny", technique="sft", step=3, model_dir=tiny_model_dir,
                                     checkpoint_dir=checkpoint / "step-3", mix_path=checkpoint / "mix.parquet",
                                     completions_path=checkpoint / "completions.parquet", settings=settings,
                                     out_path=tmp_path / "cal.parquet", trace_path=tmp_path / "cal_trace.parquet")
    assert grid.height == 4 and grid["lr"].to_list() == [1e-5, 1e-4] * 2
    assert grid["localization"].to_list() == [100.0, 100.0, 300.0, 300.0]
    traces = tables.read_table(tmp_path / "cal_trace.parquet", "llc_calibration_trace")
    assert traces.height == 4 * 10 and traces["batch_init_loss"].is_finite().all()
    from workflow_lib import plots

    plots.llc_calibration(tmp_path / "cal_trace.parquet", tmp_path / "cal.parquet", tmp_path / "cal.png")
    assert (tmp_path / "cal.png").read_bytes()[:4] == b"\x89PNG"
