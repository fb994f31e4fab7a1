"""The linear-response susceptibility: its small-noise limit, its two computations, its reliability statistics."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

import tiny
from workflow_lib.slt import sampling, susceptibility, susceptibility_linear as linear, susceptibility_linear_stage as stage
from workflow_lib.slt import susceptibility_reliability as reliability
from workflow_lib.core import tables
from workflow_lib.slt.observables import ObservableRow


def _tiny_model(n_layers: int = 2):
    model = tiny.build_model(tiny.build_tokenizer(), n_layers=n_layers).double()
    sampling.select_parameters(model, "full")
    return model.eval()


def _sequences(n: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(5, 500, (n, length), generator=torch.Generator().manual_seed(seed))


def _setup(model, components):
    index = linear.ComponentIndex(model, susceptibility.component_masks(model, {c: c for c in components}))
    rows = _sequences(4, 16, 0)
    grads = linear.half_gradients(model, rows, index, 2, "cpu")
    probe = ObservableRow("p0", tuple(_sequences(1, 16, 1)[0].tolist()), 16, 6)
    return index, rows, grads, probe


def test_linear_response_equals_the_gaussian_perturbation_covariance_in_the_small_noise_limit():
    """chi = sigma^2 g_C.(g_C - h_t) is the covariance devinterp estimates, when w - w* ~ N(0, sigma^2 I_C) is small."""
    torch.manual_seed(0)
    model = _tiny_model()
    index, rows, grads, probe = _setup(model, ["l0 attn", "l1 mlp"])
    gg = linear.combine_gram(linear.half_gram(grads, index), grads.weights)
    g_full = grads.full()
    sigma, n_draws = 1e-3, 600
    probe_ids = torch.tensor([probe.input_ids])
    params = dict(model.named_parameters())
    with torch.no_grad():
        base_l = sampling.causal_lm_loss(model, rows).mean().item()
    for c, component in enumerate(index.names):
        derivative, _ = linear.token_directional_derivatives(model, probe_ids, index.restricted(g_full, c), 4, "cpu")
        chi_linear = linear.chi_from_products(sigma ** 2, gg[c], derivative[0].numpy())
        restricted = index.restricted({n: torch.ones_like(p) for n, p in params.items()}, c)
        phi, gap = [], []
        generator = torch.Generator().manual_seed(c)
        with torch.no_grad():
            for _ in range(n_draws):
                moved = {n: params[n] + sigma * torch.randn(params[n].shape, generator=generator,
                                                            dtype=params[n].dtype) * mask
                         for n, mask in restricted.items()}
                with torch.nn.utils.stateless._reparametrize_module(model, moved):
                    loss = sampling.causal_lm_loss(model, rows).mean()
                    tokens = sampling.causal_lm_loss(model, probe_ids)[0]
                phi.append(loss.item() - base_l)
                gap.append((loss - tokens).numpy())
        phi, gap = np.asarray(phi), np.stack(gap)
        centred = (phi - phi.mean())[:, None] * (gap - gap.mean(axis=0))
        chi_sampled = centred.mean(axis=0)  # Cov(phi, L - l_t): devinterp's estimator with E_full = E_C
        se = centred.std(axis=0) / np.sqrt(n_draws)
        z = (chi_sampled - chi_linear) / se
        assert np.abs(z).max() < 4.0, (component, z)  # every token within Monte Carlo error (15 tokens)
        # The test has power: the answer-token mean is far from 0 and from twice the linear value.
        mean_centred = centred.mean(axis=1)
        mean_se = mean_centred.std() / np.sqrt(n_draws)
        mean_linear = chi_linear.mean()
        assert abs(mean_centred.mean() - mean_linear) < 3.5 * mean_se
        assert abs(mean_linear) > 6 * mean_se


def test_per_token_jvp_and_per_sequence_backward_give_the_same_answer_mean():
    model = _tiny_model(3)
    index, _, grads, probe = _setup(model, ["l0 attn", "l1 mlp", "l2h1", "l2g0", "l2"])
    products = linear.combine_products(linear.sequence_products(model, [probe], grads, index, "cpu"),
                                       grads.weights)[0]
    g_full = grads.full()
    for c in range(len(index.names)):
        derivative, first = linear.token_directional_derivatives(model, torch.tensor([probe.input_ids]),
                                                                 index.restricted(g_full, c), 2, "cpu")
        assert first == susceptibility.component_facts(index.names[c])["layer"]  # started at the component's layer
        assert derivative[0, linear.answer_positions(probe)].mean().item() == pytest.approx(products[c], rel=1e-5)  # float32 cross-entropy


def test_stationary_variance_and_its_errors():
    assert linear.stationary_variance({"lr": 1.5e-6, "localization": 1e6}) == pytest.approx(1.6e-6)
    with pytest.raises(linear.LinearResponseError, match=r"susceptibility.sampler.localization is 0.0"):
        linear.stationary_variance({"lr": 1e-6, "localization": 0})
    with pytest.raises(linear.LinearResponseError, match=r"susceptibility.sampler.lr is -1"):
        linear.stationary_variance({"lr": -1e-6, "localization": 1e6})
    with pytest.raises(linear.LinearResponseError, match=">= 4, where SGLD diverges"):
        linear.stationary_variance({"lr": 1e-5, "localization": 1e6})
    # the AR(1) it describes, simulated: w' = a w + sqrt(lr) xi
    lr, gamma = 1e-3, 1500.0
    a, w, rng, kept = 1 - lr * gamma / 2, np.zeros(20000), np.random.default_rng(0), []
    for step in range(200):
        w = a * w + np.sqrt(lr) * rng.standard_normal(w.size)
        if step >= 50:
            kept.append(w.var())
    assert np.mean(kept) == pytest.approx(linear.stationary_variance({"lr": lr, "localization": gamma}), rel=0.03)


def test_a_component_without_gradient_is_refused_by_name():
    model = _tiny_model()
    mlp = model.model.layers[1].mlp
    with torch.no_grad():  # silu(0) * 0 = 0: no gradient reaches gate, up or down
        mlp.gate_proj.weight.zero_()
        mlp.up_proj.weight.zero_()
    index = linear.ComponentIndex(model, susceptibility.component_masks(model, {"l0 attn": "l0 attn",
                                                                                 "l1 mlp": "l1 mlp"}))
    grads = linear.half_gradients(model, _sequences(4, 16, 0), index, 2, "cpu")
    with pytest.raises(linear.LinearResponseError, match=r"\['l1 mlp'\] get no gradient.*linear_response.restrictions"):
        linear.fail_on_zero_gradient(linear.half_gram(grads, index), grads.weights, index.names)
    with pytest.raises(linear.LinearResponseError, match="n_sequences >= 2"):
        linear.half_gradients(model, _sequences(1, 16, 0), index, 2, "cpu")


def test_odd_sampling_data_splits_unevenly_and_the_halves_recombine_exactly():
    """g of all rows is the token-weighted mean of the halves' gradients, also for an odd number of rows."""
    model = _tiny_model()
    index = linear.ComponentIndex(model, susceptibility.component_masks(model, {"l0 attn": "l0 attn"}))
    rows = _sequences(5, 16, 0)
    grads = linear.half_gradients(model, rows, index, 2, "cpu")
    assert grads.weights.tolist() == [0.4, 0.6]
    whole = linear.half_gradients(model, torch.cat([rows, rows]), index, 5, "cpu")  # each half is all 5 rows
    direct = whole.halves[0]
    for name, value in grads.full().items():
        assert torch.allclose(value, direct[name], rtol=1e-5, atol=1e-7)  # float32 cross-entropy


def test_reliability_statistics_on_data_with_a_known_answer():
    assert reliability.spearman_brown(0.5) == pytest.approx(2 / 3)
    assert reliability.spearman(np.arange(5.0), np.arange(5.0) ** 3) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    truth = np.linspace(-1, 1, 40)
    weights = {"a": np.full(16, 10)}
    exact = {"a": np.tile(truth, (16, 1))}
    combine = reliability.rankings(["a"], {})["a"][1]
    exact_row = reliability.summarise(reliability.prompt_split_halves(exact, weights, combine, 20, 0))
    assert exact_row["reliability"] == pytest.approx(1.0) and exact_row["ci_low"] == pytest.approx(1.0)
    noise = {"a": rng.standard_normal((16, 40))}
    noise_row = reliability.summarise(reliability.prompt_split_halves(noise, weights, combine, 200, 0))
    assert abs(noise_row["reliability"]) < 0.15 and noise_row["ci_low"] < 0 < noise_row["ci_high"]
    # per-prompt noise sd 2 around true values spread over [-1, 1]: the pooled mean of 16 prompts has noise sd
    # 0.5 against a true sd of 0.58, so the full ranking's reliability is about 0.58^2 / (0.58^2 + 0.5^2) = 0.57
    mixed = {"a": truth + 2.0 * rng.standard_normal((16, 40))}
    mixed_row = reliability.summarise(reliability.prompt_split_halves(mixed, weights, combine, 200, 0))
    assert 0.35 < mixed_row["reliability"] < 0.8
    se = reliability.bootstrap_se(noise["a"], weights["a"], 400, 0)
    assert se.mean() == pytest.approx(1 / np.sqrt(16), rel=0.15)  # sd 1 over 16 equally weighted prompts


@pytest.fixture(scope="module")
def linear_run(checkpoint, tiny_model_dir, prompt_tables, wheel_cache, tmp_path_factory):
    from workflow_lib.data import jailbreak_templates

    out = tmp_path_factory.mktemp("linear")
    templates = out / "templates.parquet"
    jailbreak_templates.prepare_templates(cache_dir=wheel_cache, out_path=templates)
    settings = {"sampling_task": "training_mix",
                "sampler": {"lr": 1.5e-6, "localization": 1e6, "batch_size": 2, "seq_len": 80, "n_sequences": 8,
                            "seed": 0},
                "observables": {"harmful_refusal": {"prompt_set": "harmful", "answer": "refusal"},
                                "harmless_answer": {"prompt_set": "harmless", "answer": "base"},
                                "jailbreak_refusal": {"prompt_set": "harmful", "answer": "refusal",
                                                      "templates": ["prefix_injection"]}},
                "observable_split": "train", "n_prompts": 4, "min_answer_tokens": 4,
                "linear_response": {"restrictions": {"layers": "all", "per_layer": ["attn", "mlp", "heads", "layer"]},
                                    "per_token": {"layers": [1], "per_layer": ["attn", "mlp"]}, "n_prompts": 6,
                                    "bootstrap_resamples": 50, "seed": 0},
                "structure": {"contrasts": {"refusal_vs_harmless": ["harmful_refusal", "harmless_answer"]}}}
    paths = {name: out / f"{name}.parquet" for name in ("sequences", "tokens", "table", "reliability")}
    stage.run_linear_susceptibility(
        model="tiny", technique="sft", step=3, model_dir=tiny_model_dir, checkpoint_dir=checkpoint / "step-3",
        mix_path=checkpoint / "mix.parquet", prompt_paths=prompt_tables,
        completions_path=checkpoint / "completions.parquet", templates_path=templates, settings=settings,
        sequences_out=paths["sequences"], tokens_out=paths["tokens"], table_out=paths["table"])
    stage.write_reliability(sequences_path=paths["sequences"], out_path=paths["reliability"],
                            settings={"contrasts": settings["structure"]["contrasts"], "split_half_resamples": 20,
                                      "seed": 0})
    return {"sequences": tables.read_table(paths["sequences"], "susceptibility_sequences"),
            "tokens": tables.read_table(paths["tokens"], "susceptibility_tokens"),
            "table": tables.read_table(paths["table"], "susceptibility"),
            "reliability": tables.read_table(paths["reliability"], "susceptibility_reliability")}


def test_stage_writes_every_component_and_its_tables_agree(linear_run):
    table, tokens, sequences = linear_run["table"], linear_run["tokens"], linear_run["sequences"]
    assert (table["estimator"] == "linear_response").all() and (table["status"] == "ok").all()
    # 2 layers x (attn, mlp, 4 heads, layer) over 3 observables, every value finite with a standard error
    assert table.height == 2 * 7 * 3
    assert table["chi_mean"].is_finite().all() and (table["chi_se"] > 0).all()
    assert set(tokens["component"].unique()) == {"l1 attn", "l1 mlp"}
    # the per-token JVP and the per-sequence backward agree on the answer-token mean
    from_tokens = (tokens.filter(pl.col("segment") == "answer").group_by("component", "observable")
                   .agg(pl.col("chi").mean()))
    joined = from_tokens.join(table, on=["component", "observable"])
    assert np.allclose(joined["chi"], joined["chi_mean"], rtol=1e-6, atol=1e-12)
    assert sequences.filter(pl.col("observable") == "harmful_refusal")["prompt_id"].n_unique() == 6
    assert sequences["chi_half_a"].is_finite().all() and (sequences["chi_half_a"] != sequences["chi_half_b"]).any()


def test_stage_reliability_rows_cover_each_kind_ranking_and_source(linear_run):
    rel = linear_run["reliability"]
    assert set(rel["source"]) == {"sampling_data_halves", "observable_prompt_halves"}
    assert set(rel["component_kind"]) == {"head"}  # only heads come in threes or more on two layers
    assert set(rel["name"]) == {"harmful_refusal", "harmless_answer", "jailbreak_refusal", "refusal_vs_harmless"}
    finite = rel.filter(pl.col("reliability").is_not_null())
    assert finite.height > 0 and finite["reliability"].is_between(-1, 1).all()


def test_reliability_figure_takes_a_range_that_meets_its_estimate(tmp_path):
    """When every prompt halving agrees, the 2.5-97.5% range is the estimate itself, and float rounding can put
    it a hair beyond (the default run once stopped on `yerr` -1e-17): the figure is drawn regardless."""
    import math

    from workflow_lib.slt import plots

    estimate = 0.9713960713960714
    rows = [{"model": "m", "technique": "t", "step": step, "seed": 0, "estimator": "linear_response",
             "component_kind": "head", "ranked_by": "abs", "name": "harmful_refusal", "source": "susceptibility",
             "n_components": 9, "halves_spearman": estimate, "reliability": estimate,
             "ci_low": math.nextafter(estimate, 1.0), "ci_high": math.nextafter(estimate, 0.0), "n_splits": 200}
            for step in (0, 10)]
    path = tmp_path / "reliability.parquet"
    tables.write_table(tables.fill_missing(pl.DataFrame(rows), "susceptibility_reliability"), path,
                       "susceptibility_reliability")
    plots.susceptibility_reliability(path, tmp_path / "reliability.png")
    assert (tmp_path / "reliability.png").read_bytes()[:4] == b"\x89PNG"
