"""Stein control variates for the SGLD susceptibility: exact mean zero for the discrete chain, same mean, less variance."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from datasets import Dataset

import tiny
from workflow_lib.slt import sampling, susceptibility
from workflow_lib.slt import susceptibility_control as variance
from workflow_lib.slt.observables import ObservableRow


def test_the_discrete_stein_identities_have_mean_zero_where_the_continuous_ones_do_not():
    """SGLD on a Gaussian target with minibatch noise at lr * gamma = 1.5 (the default's coefficient 0.25).

    The identities hold for the discrete chain; the continuous-time version (no lr/4 term) is biased there, which
    shows the test can fail.
    """
    rng = np.random.default_rng(0)
    dim, lr, gamma, n_beta, steps = 6, 1.5e-4, 1e4, 30.0, 200_000
    curvature = rng.uniform(1.0, 50.0, dim)          # loss Hessian (diagonal)
    g, h = rng.normal(size=dim), rng.normal(size=dim)
    delta = np.zeros(dim)
    record = np.zeros((steps, 2, 2))
    for k in range(steps):
        batch_grad = g + curvature * delta + rng.normal(scale=3.0, size=dim)  # unbiased minibatch gradient
        record[k, 0] = [g @ delta, h @ delta]
        record[k, 1] = [g @ batch_grad, h @ batch_grad]
        delta = delta - lr / 2 * (n_beta * batch_grad + gamma * delta) + np.sqrt(lr) * rng.normal(size=dim)
    record = record[1000:]
    sampler = {"lr": lr, "n_beta": n_beta, "localization": gamma}
    z = variance.control_variates(record, sampler, float(g @ g), float(g @ h))
    se = np.array([variance.batch_means_se([z[:, j]], 50) for j in range(3)])
    assert np.all(np.abs(z.mean(axis=0)) < 4 * se), (z.mean(axis=0), se)
    continuous = variance.control_variates(record, sampler | {"lr": 0.0}, float(g @ g), float(g @ h))
    assert abs(continuous[:, 1].mean()) > 10 * se[1]


def _tiny_problem():
    torch.manual_seed(0)
    model = tiny.build_model(tiny.build_tokenizer(), n_layers=2)
    sampling.select_parameters(model, "full")
    model.eval()
    gen = torch.Generator().manual_seed(0)
    data = Dataset.from_dict({"input_ids": torch.randint(5, 500, (8, 16), generator=gen).tolist()}).with_format("torch")
    probe_ids = torch.randint(5, 500, (4, 16), generator=gen)
    probes = {"obs": [ObservableRow(f"p{i}", tuple(probe_ids[i].tolist()), 16, 6) for i in range(4)]}
    masks = susceptibility.component_masks(model, {"l1 attn": "l1 attn"})
    return model, data, probes, masks


@pytest.fixture(scope="module")
def seeds_run():
    model, data, probes, masks = _tiny_problem()
    gamma, out = 1e5, []
    for seed in range(10):
        sampler = {"lr": 1.5 / gamma, "n_beta": 30.0, "localization": gamma, "chains": 1, "draws": 48, "burn_in": 16,
                   "steps_between_draws": 1, "batch_size": 4, "seq_len": 16, "n_sequences": 8, "seed": seed}
        sus, context, *_, controlled = susceptibility.sample_susceptibilities(
            model, data, probes, masks, sampler, control=True, frozen_prefix=False)
        devinterp_mean = (susceptibility.token_frame(sus, context, probes).filter(pl.col("segment") == "answer")
                          ["chi"].mean())
        out.append(controlled.row(0, named=True) | {"devinterp_mean": devinterp_mean})
    return pl.DataFrame(out)


def test_the_control_variate_estimate_has_the_plain_mean_and_far_less_variance(seeds_run):
    plain, cv = seeds_run["chi_plain"].to_numpy(), seeds_run["chi_cv"].to_numpy()
    n = len(plain)
    diff = plain - cv
    assert abs(diff.mean()) < 4 * diff.std(ddof=1) / np.sqrt(n)          # same mean over seeds
    assert cv.var(ddof=1) < plain.var(ddof=1) / 4                          # and a much smaller variance
    # The reported standard errors describe the spread over seeds (within a factor of 2.5).
    assert 0.4 < seeds_run["chi_cv_se"].mean() / cv.std(ddof=1) < 2.5
    assert 0.4 < seeds_run["chi_plain_se"].mean() / plain.std(ddof=1) < 2.5
    # At this strong localization the chain is near Gaussian: SGLD agrees with the exact linear response.
    linear = seeds_run["chi_linear"][0]
    assert abs(cv.mean() - linear) < 4 * cv.std(ddof=1) / np.sqrt(n)


def test_the_draw_values_reproduce_devinterps_answer_token_mean(seeds_run):
    """The mean of y over the paired draws differs from devinterp's (all draws) by one draw of noise at most."""
    gap = (seeds_run["chi_plain"] - seeds_run["devinterp_mean"]).abs().to_numpy()
    assert np.all(gap < 3 * seeds_run["chi_plain_se"].to_numpy())


def test_draw_values_over_all_draws_equal_devinterp_exactly():
    model, data, probes, masks = _tiny_problem()
    sampler = {"lr": 1e-5, "n_beta": 30.0, "localization": 1e5, "chains": 2, "draws": 8, "burn_in": 2,
               "steps_between_draws": 1, "batch_size": 4, "seq_len": 16, "n_sequences": 8, "seed": 3}
    from devinterp.slt.sampling import sample

    obs = {susceptibility.SAMPLING_TASK: (data, 2), "obs": (Dataset.from_dict(
        {"input_ids": [list(r.input_ids) for r in probes["obs"]]}).with_format("torch"), 1)}
    trees = {key: sample(model=model, dataset=data, observables=obs, param_masks=m, lr=sampler["lr"],
                         n_beta=30.0, num_chains=2, num_draws=8, num_burnin_steps=2, batch_size=4,
                         num_init_loss_batches=2, init_seed=3, localization=1e5)
             for key, m in {"full": {n: None for n, _ in model.named_parameters()}, "c0": masks["l1 attn"]}.items()}
    from devinterp.slt.susceptibilities import compute_susceptibilities

    sus = compute_susceptibilities(trees, susceptibility.SAMPLING_TASK)
    ids = trees["full"].dataset["input_ids_obs"].values
    while ids.ndim > 2:
        ids = ids[0]
    mask = variance.answer_mask(ids, probes["obs"])
    y, _ = variance.draw_values(trees["c0"].dataset, trees["full"].dataset, "sampling_task", "obs", mask)
    flat = sus["susceptibilities"].dataset
    per_token = np.zeros(mask.shape)
    per_token[flat.batch.values, flat.target_position.values - 1] = flat.sus.sel(wr="c0").values
    assert np.isclose(y.mean(), (per_token * mask).sum() / mask.sum(), rtol=1e-3, atol=1e-12)  # devinterp sums in float32
