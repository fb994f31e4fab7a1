"""Susceptibilities through devinterp on a tiny checkpoint: restrictions, observables, tables, structure."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from workflow_lib.core import models, tables
from workflow_lib.data import jailbreak_templates
from workflow_lib.slt import frozen_prefix, observables, sampling, susceptibility, susceptibility_structure

TINY_SAMPLER = {"lr": 1e-4, "n_beta": 10.0, "localization": 100.0, "chains": 1, "draws": 8, "burn_in": 2,
                "batch_size": 2, "seq_len": 80, "n_sequences": 8, "seed": 0}
OBSERVABLES = {
    "harmful_refusal": {"prompt_set": "harmful", "answer": "refusal"},
    "harmful_compliant": {"prompt_set": "harmful", "answer": "base"},
    "harmless_answer": {"prompt_set": "harmless", "answer": "base"},
    "jailbreak_refusal": {"prompt_set": "harmful", "answer": "refusal",
                          "templates": ["prefix_injection", "style_injection"]},
}
SETTINGS = {"sampling_task": "training_mix", "sampler": TINY_SAMPLER,
            "restrictions": {"layers": [0, 1], "per_layer": ["attn", "mlp"],
                             "extra": {"l1h0": "l1h0", "l1h1": "l1h1", "l0h2": "l0h2"}},
            "observables": OBSERVABLES, "observable_split": "train", "n_prompts": 4, "min_answer_tokens": 4}


@pytest.fixture(scope="module")
def templates(wheel_cache, tmp_path_factory):
    path = tmp_path_factory.mktemp("templates") / "jailbreak_templates.parquet"
    jailbreak_templates.prepare_templates(cache_dir=wheel_cache, out_path=path)
    return path


def _run(checkpoint, tiny_model_dir, prompt_tables, templates, name, **overrides):
    out = checkpoint / f"sus-{name}"
    settings = SETTINGS | overrides
    table = susceptibility.run_susceptibility(
        model="tiny", technique="sft", step=3, model_dir=tiny_model_dir, checkpoint_dir=checkpoint / "step-3",
        mix_path=checkpoint / "mix.parquet", prompt_paths=prompt_tables,
        completions_path=checkpoint / "completions.parquet", templates_path=templates, settings=settings,
        tokens_out=out / "susceptibility_tokens.parquet", table_out=out / "susceptibility.parquet",
        reliability_out=out / "susceptibility_reliability.parquet")
    return table, tables.read_table(out / "susceptibility_tokens.parquet", "susceptibility_tokens")


@pytest.fixture(scope="module")
def ok_run(checkpoint, tiny_model_dir, prompt_tables, templates):
    return _run(checkpoint, tiny_model_dir, prompt_tables, templates, "ok")


def test_templates_come_from_the_pyrit_wheel_and_wrap_prompts(templates):
    table = tables.read_table(templates, "jailbreak_templates")
    assert table.height > 100 and (table["source"] == "pyrit").all()
    text = jailbreak_templates.pick(table, ["prefix_injection"])[0]
    assert jailbreak_templates.wrap(text, "Do X").startswith("Do X. Start with")
    with pytest.raises(jailbreak_templates.TemplateError, match="unknown jailbreak templates"):
        jailbreak_templates.pick(table, ["no_such_template"])


def test_restriction_patterns_and_a_missing_layer_or_head(tiny_model_dir):
    model, _ = models.load_base(tiny_model_dir)  # 2 layers, 4 heads, 2 KV groups
    patterns = susceptibility.component_patterns(model.config, {"layers": "all",
                                                                "per_layer": ["attn", "mlp", "heads", "groups"]})
    assert list(patterns)[:4] == ["l0 attn", "l0 mlp", "l0h0", "l0h1"]
    assert len(patterns) == 2 * (2 + 4 + 2)
    masks = susceptibility.component_masks(model, patterns)
    assert all(masks.values())
    with pytest.raises(susceptibility.RestrictionError, match=r"layers \[5\].*2 layers \(0 to 1\)"):
        susceptibility.component_patterns(model.config, {"layers": [0, 5], "per_layer": ["attn"]})
    bad_head = susceptibility.component_patterns(model.config, {"layers": [0], "per_layer": ["attn"],
                                                                "extra": {"head9": "l0h9"}})
    with pytest.raises(susceptibility.RestrictionError, match=r"'head9'.*l0h9.*Head 9 out of range"):
        susceptibility.component_masks(model, bad_head)
    with pytest.raises(susceptibility.RestrictionError, match="selects no weight"):
        susceptibility.component_masks(model, {"unembed": "unembed"})  # tied embeddings


def test_observable_rows_fit_pad_and_mark_the_answer(tiny_tokenizer, prompt_tables, checkpoint, templates):
    prompts = {name: tables.read_table(path, "prompts") for name, path in prompt_tables.items()}
    completions = tables.read_table(checkpoint / "completions.parquet", "completions")
    template_table = tables.read_table(templates, "jailbreak_templates")
    build = {"seq_len": 80, "batch_size": 2, "n_prompts": 4, "observable_split": "train", "min_answer_tokens": 4}
    rows = observables.build_observable(tiny_tokenizer, "jb", OBSERVABLES["jailbreak_refusal"], prompts, completions,
                                        template_table, build)
    assert len(rows) == 4 and all(len(r.input_ids) == 80 for r in rows)
    assert [r.prompt_id.split("@")[1] for r in rows] == ["prefix_injection", "style_injection"] * 2
    for r in rows:
        assert r.answer_start + 4 <= 80 and r.n_tokens <= 80
        assert set(r.input_ids[r.n_tokens:]) <= {tiny_tokenizer.pad_token_id}
        answer = tiny_tokenizer.decode(list(r.input_ids[r.answer_start:r.n_tokens]))
        assert observables.stable_refusal(r.prompt_id.split("@")[0]).startswith(answer.strip()[:10])
    with pytest.raises(observables.ObservableError, match="raise susceptibility.sampler.seq_len"):
        observables.build_observable(tiny_tokenizer, "long", OBSERVABLES["harmful_refusal"], prompts, completions,
                                     None, build | {"seq_len": 12})


def test_stage_writes_finite_per_token_and_aggregate_tables(ok_run):
    table, tokens = ok_run
    assert table.columns == [c.name for c in tables.schema("susceptibility")]
    components = ["l0 attn", "l0 mlp", "l1 attn", "l1 mlp", "l1h0", "l1h1", "l0h2"]
    assert sorted(table["component"].unique()) == sorted(components)
    assert table.height == len(components) * len(OBSERVABLES)
    assert table["chi_mean"].is_finite().all() and (table["n_tokens"] > 0).all() and (table["n_prompts"] == 4).all()
    assert set(table["status"]) <= {"ok", "diverged", "not_converged"}
    assert tokens["chi"].is_finite().all() and set(tokens["segment"]) == {"prompt", "answer"}
    # MLP weights carry no LoRA: they move only because the merged model was made trainable
    assert (tokens.filter(pl.col("component") == "l0 mlp")["chi"].abs() > 0).any()
    # the aggregate is the mean over answer tokens of the per-token table
    pick = tokens.filter((pl.col("component") == "l1 attn") & (pl.col("observable") == "harmless_answer")
                         & (pl.col("segment") == "answer"))
    row = table.filter((pl.col("component") == "l1 attn") & (pl.col("observable") == "harmless_answer")).row(0, named=True)
    assert row["chi_mean"] == pytest.approx(pick["chi"].mean()) and row["n_tokens"] == pick.height
    assert table.filter(pl.col("component") == "l1h0")["head"].to_list() == [0] * len(OBSERVABLES)


def test_frozen_prefix_loss_and_gradients_equal_the_full_forward(tiny_model_dir):
    import torch

    model, _ = models.load_base(tiny_model_dir)  # 2 decoder layers
    sampling.select_parameters(model, "full")
    ids = torch.randint(0, model.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(0))
    assert frozen_prefix.first_moving_layer(["model.layers.1.mlp.up_proj.weight", "model.layers.3.x"]) == 1
    assert frozen_prefix.first_moving_layer(["model.layers.1.mlp.up_proj.weight", "model.norm.weight"]) == 0
    loss, first = frozen_prefix.loss_for_chain(model, ["model.layers.1.self_attn.q_proj.weight"], ids, 2,
                                               sampling.causal_lm_loss)
    assert first == 1 and isinstance(loss, frozen_prefix.FrozenPrefixLoss)
    weight = model.model.layers[1].self_attn.q_proj.weight
    full = sampling.causal_lm_loss(model, ids)
    (full_grad,) = torch.autograd.grad(full.mean(), weight)
    short = loss(model, ids)
    (short_grad,) = torch.autograd.grad(short.mean(), weight)
    assert torch.allclose(short, full, atol=1e-6) and torch.allclose(short_grad, full_grad, atol=1e-6)
    assert len(model.model.layers) == 2  # the layer list is restored after every call
    unseen = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(loss(model, unseen), sampling.causal_lm_loss(model, unseen), atol=1e-6)


def test_the_frozen_prefix_shortcut_leaves_every_susceptibility_unchanged(checkpoint, tiny_model_dir,
                                                                           prompt_tables, templates, caplog):
    with caplog.at_level("INFO", logger="workflow_lib.slt.susceptibility"):
        _, shortcut = _run(checkpoint, tiny_model_dir, prompt_tables, templates, "prefix", frozen_prefix=True)
    assert "'l1 attn': 1, 'l1 mlp': 1, 'l1h0': 1" in caplog.text and "'l0 attn': 0" in caplog.text
    _, full = _run(checkpoint, tiny_model_dir, prompt_tables, templates, "no-prefix", frozen_prefix=False)
    keys = ["component", "observable", "prompt_id", "token_pos"]
    joined = shortcut.join(full, on=keys, suffix="_full")
    assert joined.height == shortcut.height == full.height
    scale = float(full["chi"].abs().max())
    assert (joined["chi"] - joined["chi_full"]).abs().max() <= 1e-4 * scale


def test_a_huge_step_size_gives_flagged_rows_not_a_crash(checkpoint, tiny_model_dir, prompt_tables, templates):
    table, _ = _run(checkpoint, tiny_model_dir, prompt_tables, templates, "huge",
                    sampler=TINY_SAMPLER | {"lr": 1e4, "n_beta": 1e4})
    assert (table["status"] == "diverged").all(), table.select("component", "status", "reason").rows()
    assert table["reason"].str.contains("full").all()


def test_a_bad_restriction_fails_before_sampling(checkpoint, tiny_model_dir, prompt_tables, templates):
    with pytest.raises(susceptibility.RestrictionError, match="layers"):
        _run(checkpoint, tiny_model_dir, prompt_tables, templates, "bad",
             restrictions={"layers": [3], "per_layer": ["attn"]})
    assert not (checkpoint / "sus-bad").exists()


def test_pca_finds_a_planted_direction_with_fixed_signs():
    rng = np.random.default_rng(0)
    direction = np.array([3.0, -1.0, 0.5, 0.0])
    matrix = rng.normal(size=(400, 1)) * direction + 0.05 * rng.normal(size=(400, 4))
    ratio, loadings, scores = susceptibility_structure.principal_components(matrix, 3)
    assert ratio[0] > 0.99 and ratio.sum() <= 1.0 + 1e-12
    assert loadings[0] == pytest.approx(direction / np.linalg.norm(direction), abs=0.02)
    flipped = susceptibility_structure.principal_components(-matrix, 3)[1]
    assert flipped[0] == pytest.approx(loadings[0])  # the sign convention does not depend on the data's sign
    assert scores.shape == (400, 3)


def test_structure_rows_contrasts_and_ranking_agreement(ok_run):
    table, tokens = ok_run
    settings = {"n_pcs": 3, "contrasts": {"refusal_vs_harmless": ["harmful_refusal", "harmless_answer"]}}
    rows = susceptibility_structure.structure(tokens, table, settings)
    ok = table.filter(pl.col("status") == "ok")["component"].unique()
    ratio = rows.filter(pl.col("quantity") == "explained_variance_ratio")
    if ok.len() >= 2:
        assert ratio.height == min(3, ok.len()) and ratio["value"].is_finite().all()
        assert rows.filter(pl.col("quantity") == "loading")["component"].n_unique() == ok.len()
    contrast = rows.filter(pl.col("quantity") == "contrast")
    chi = dict(zip(zip(table["component"], table["observable"]), table["chi_mean"]))
    for r in contrast.iter_rows(named=True):
        assert r["value"] == pytest.approx(chi[(r["component"], "harmful_refusal")] - chi[(r["component"], "harmless_answer")])
    assert susceptibility_structure.ranking_agreement(table, table, "harmful_refusal") == pytest.approx(1.0)
    reversed_ = table.with_columns(chi_mean=-pl.col("chi_mean"))
    assert susceptibility_structure.ranking_agreement(table, reversed_, "harmful_refusal") == pytest.approx(-1.0)


def test_seed_agreement_ranks_by_observables_and_contrasts(ok_run, tmp_path):
    table, _ = ok_run
    other = table.with_columns(seed=pl.lit(1, pl.Int64), chi_mean=pl.col("chi_mean") * 2.0)  # same ranking
    paths = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    tables.write_table(table, paths[0], "susceptibility")
    tables.write_table(other, paths[1], "susceptibility")
    check = susceptibility_structure.seed_agreement(
        [str(p) for p in paths], "refusal_vs_harmless", {"refusal_vs_harmless": ["harmful_refusal", "harmless_answer"]},
        tmp_path / "check.parquet")
    assert check.height == len(OBSERVABLES) + 1 and check["spearman"].to_list() == pytest.approx([1.0] * check.height)
    primary = check.filter(pl.col("primary")).row(0, named=True)
    assert primary["ranked_by"] == "contrast" and (primary["seed_a"], primary["seed_b"]) == (0, 1)


def test_the_sgld_stage_writes_split_half_reliability_over_draws(checkpoint, ok_run):
    """The first and second half of the draws each give a ranking; their agreement is stepped up to all draws."""
    rel = tables.read_table(checkpoint / "sus-ok" / "susceptibility_reliability.parquet", "susceptibility_reliability")
    # only kinds with three or more components are ranked: the three heads here, by each observable
    assert set(rel["component_kind"]) == {"head"} and (rel["n_components"] == 3).all()
    assert set(rel["name"]) == set(OBSERVABLES) and (rel["source"] == "sgld_draw_halves").all()
    assert (rel["estimator"] == "sgld").all() and (rel["n_splits"] == 1).all()
    finite = rel.filter(pl.col("halves_spearman").is_not_null())
    assert finite["halves_spearman"].is_between(-1, 1).all()
    from workflow_lib.slt import susceptibility_reliability as reliability

    a = pl.DataFrame({"component": ["x", "y", "z", "w"], "observable": ["o"] * 4, "chi_mean": [1.0, 2.0, 3.0, 4.0]})
    kinds = pl.DataFrame({"component": ["x", "y", "z", "w"], "component_kind": ["head"] * 4})
    same = reliability.halves_rows(a, a, kinds, {}, estimator="sgld", source="sgld_draw_halves")
    assert same[0]["reliability"] == pytest.approx(1.0) and same[0]["n_components"] == 4
    flipped = reliability.halves_rows(a, a.with_columns(chi_mean=-pl.col("chi_mean")), kinds, {},
                                      estimator="sgld", source="sgld_draw_halves")
    assert flipped[0]["halves_spearman"] == pytest.approx(-1.0) and flipped[0]["reliability"] is not None
