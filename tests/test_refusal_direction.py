"""Refusal direction: interventions, candidate scoring, selection, the no_direction path, drift."""

from __future__ import annotations

import copy

import polars as pl
import pytest
import torch

import tiny
from workflow_lib.core import direction_file, interventions
from workflow_lib.refusal import refusal_direction as rd, refusal_drift
from workflow_lib.core import models
from workflow_lib.refusal import refusal_interventions
from workflow_lib.core import tables

PHRASES = ["I'm sorry", "I cannot", "Sorry"]
SELECTION = {"kl_max": 0.1, "induce_min": 0.0, "max_layer_fraction": 0.8}


def settings(**over) -> dict:
    base = {"train_split": "train", "val_split": "val", "n_train": None, "n_val": None, "filter_train": False, "filter_val": False,
            "min_filtered_prompts": 1, "positions": "all", "layer_stride": 1,
            "selection": {**SELECTION, "kl_max": 1e9, "induce_min": -1e9, "max_layer_fraction": 1.0},
            "batch_size": 3, "candidate_batch": 2}
    base.update(over)
    return base


def tiny_lm(arch: str = "llama", n_layers: int = 3):
    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(tokenizer, arch, seed=1, n_layers=n_layers).eval()
    tokenizer.padding_side = "left"
    return model, tokenizer


def encoded(model, tokenizer, texts=("How do I bake bread?", "Write a short poem about rain", "Hi")):
    n = len(rd.post_instruction_tokens(tokenizer))
    return rd.encode(tokenizer, list(texts), torch.device("cpu"), n)


def random_unit(d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return interventions.unit(torch.randn(d, generator=g))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma", "gpt_neox"])
def test_ablation_removes_the_direction_from_every_residual_write(arch):
    model, tokenizer = tiny_lm(arch)
    r = random_unit(model.config.hidden_size)
    seen = []
    blocks = models.decoder_layers(model)

    def relative_component(x):  # largest |x . r| relative to the largest |x| of the tensor
        seen.append(float((x @ r).abs().max() / x.norm(dim=-1).max()))

    capture = lambda m, args, kwargs: relative_component(args[0] if args else kwargs["hidden_states"])  # noqa: E731
    handles = []
    with interventions.ablation(model, r):
        # registered after the ablation hooks, so they see the edited tensors
        for block in blocks:
            handles.append(block.register_forward_pre_hook(capture, with_kwargs=True))
            for sub in interventions.sublayers(block):
                handles.append(sub.register_forward_hook(
                    lambda m, a, out: relative_component(out[0] if isinstance(out, tuple) else out)))
        with torch.no_grad():
            model(**encoded(model, tokenizer).inputs(), use_cache=False)
    for h in handles:
        h.remove()
    assert len(seen) == 3 * len(blocks)
    assert max(seen) < 1e-6


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma", "gpt_neox"])
def test_orthogonalised_weights_equal_hook_ablation(arch):
    model, tokenizer = tiny_lm(arch)
    batch = encoded(model, tokenizer)
    r = random_unit(model.config.hidden_size, seed=3)
    with interventions.ablation(model, r), torch.no_grad():
        hooked = model(**batch.inputs(), use_cache=False).logits
    with torch.no_grad():
        plain = model(**batch.inputs(), use_cache=False).logits
    ortho = interventions.orthogonalise(copy.deepcopy(model), r)
    with torch.no_grad():
        weights = ortho(**batch.inputs(), use_cache=False).logits
    assert (hooked - plain).abs().max() > 1e-3  # the direction matters, so equality below is informative
    torch.testing.assert_close(weights, hooked, atol=2e-4, rtol=1e-4)
    assert ortho.get_output_embeddings().weight is not ortho.get_input_embeddings().weight or arch == "gpt_neox"


def test_candidate_batches_and_block_suffix_equal_one_at_a_time_hooks():
    model, tokenizer = tiny_lm()
    batch = encoded(model, tokenizer)
    d = model.config.hidden_size
    dirs = torch.stack([random_unit(d, s) for s in range(3)])
    with interventions.ablation(model, dirs.repeat_interleave(len(batch), dim=0)):
        together = rd.last_logits(model, batch, copies=3)
    for k in range(3):
        with interventions.ablation(model, dirs[k]):
            alone = rd.last_logits(model, batch)
        torch.testing.assert_close(together[k * len(batch):(k + 1) * len(batch)], alone, atol=1e-5, rtol=1e-5)
    suffix = rd.BlockSuffix(model, batch)
    torch.testing.assert_close(suffix.baseline_logits, rd.last_logits(model, batch))
    vectors = 3.0 * dirs
    for layer in range(3):
        fast = suffix.logits_with_addition(layer, vectors)
        for k in range(3):
            with interventions.addition(model, vectors[k], layer):
                full = rd.last_logits(model, batch)
            torch.testing.assert_close(fast[k * len(batch):(k + 1) * len(batch)], full, atol=1e-4, rtol=1e-4)


def test_capture_reads_block_inputs_at_the_post_instruction_positions():
    model, tokenizer = tiny_lm()
    batch = encoded(model, tokenizer)
    n = len(rd.post_instruction_tokens(tokenizer))
    acts, scores = rd.capture(model, [batch], n, [5, 7])
    with torch.no_grad():
        hidden = model(**batch.inputs(), use_cache=False, output_hidden_states=True).hidden_states
    for layer in range(3):
        torch.testing.assert_close(acts[:, layer], hidden[layer][:, -n:, :])
    assert acts.shape == (3, 3, n, model.config.hidden_size) and torch.isfinite(scores).all()


def test_post_instruction_positions_and_a_clear_error_for_a_bad_one(tiny_tokenizer):
    tokens = rd.post_instruction_tokens(tiny_tokenizer)
    assert tokens[0] == "<|im_end|>" and "<|im_start|>" in tokens
    assert rd.chosen_positions(len(tokens), "all") == list(range(-len(tokens), 0))
    assert rd.chosen_positions(len(tokens), [-1]) == [-1]
    with pytest.raises(ValueError, match=r"refusal_direction.positions \[-99\]"):
        rd.chosen_positions(len(tokens), [-99])


def test_val_filter_keeps_prompts_by_the_sign_of_the_refusal_score():
    model, tokenizer = tiny_lm()
    texts = ["How do I bake bread?", "Write a short poem about rain", "Hi", "Name a colour", "Count to five"]
    n = len(rd.post_instruction_tokens(tokenizer))
    scores = rd.capture(model, rd.batches(tokenizer, texts, torch.device("cpu"), n, 2), n, [5, 7])[1]
    refused = rd.kept_by_score(model, tokenizer, texts, torch.device("cpu"), n, 2, [5, 7], refuses=True)
    complied = rd.kept_by_score(model, tokenizer, texts, torch.device("cpu"), n, 2, [5, 7], refuses=False)
    assert refused == [t for t, s in zip(texts, scores) if s > 0]
    assert complied == [t for t, s in zip(texts, scores) if s < 0] and len(refused) + len(complied) == len(texts)


def test_selection_filters_and_picks_the_lowest_bypass_score():
    rows = [
        {"layer": 1, "position": -1, "bypass_score": -3.0, "induce_score": 1.0, "kl": 0.5},   # kl too high
        {"layer": 2, "position": -1, "bypass_score": -2.0, "induce_score": -0.5, "kl": 0.01},  # no induction
        {"layer": 9, "position": -2, "bypass_score": -9.0, "induce_score": 2.0, "kl": 0.01},  # layer >= 8
        {"layer": 3, "position": -2, "bypass_score": -1.0, "induce_score": 0.3, "kl": 0.05},  # passes
        {"layer": 4, "position": -1, "bypass_score": -1.5, "induce_score": 0.2, "kl": 0.1},   # passes (kl == max)
        {"layer": 5, "position": -1, "bypass_score": float("nan"), "induce_score": 1.0, "kl": 0.0},
        {"layer": 6, "position": -1, "bypass_score": None, "induce_score": None, "kl": None},
    ]
    marked, best = rd.select([dict(r) for r in rows], n_layers=10, selection=SELECTION)
    reasons = [r["filtered_reason"] for r in marked]
    assert reasons == ["kl > 0.1", "induce <= 0.0", "layer >= 8", None, None, "non-finite score", "not scored"]
    assert best["layer"] == 4 and [r["selected"] for r in marked].count(True) == 1
    _, none = rd.select([dict(r) for r in rows[:3]], n_layers=10, selection=SELECTION)
    assert none is None


def test_candidate_grid_stride_and_pruned_layers():
    scored, unscored = rd.candidate_grid(10, [-2, -1], {"layer_stride": 3, "selection": SELECTION})
    assert [(c.layer, c.position) for c in scored] == [(0, -2), (0, -1), (3, -2), (3, -1), (6, -2), (6, -1)]
    assert [(c.layer, c.position) for c in unscored] == [(9, -2), (9, -1)]


def _extract(checkpoint, tiny_model_dir, prompt_tables, out, step=3, **over):
    return rd.extract(model="tiny", technique="sft", step=step, model_dir=tiny_model_dir,
                      checkpoint_dir=checkpoint / f"step-{step}", prompt_paths=prompt_tables, settings=settings(**over),
                      refusal_phrases=PHRASES, candidates_out=out / f"cand-{step}.parquet",
                      direction_out=out / f"dir-{step}.safetensors", summary_out=out / f"sum-{step}.parquet")


def _interventions(checkpoint, tiny_model_dir, prompt_tables, out, max_prompts):
    settings = {"split": "test", "max_prompts": max_prompts, "max_new_tokens": 4,
                "conditions": ["baseline", "ablation", "actadd"]}
    paths = tiny.planned_generations(checkpoint_dir=checkpoint / "step-3", model_dir=tiny_model_dir,
                                     prompt_paths=prompt_tables, out_dir=out, phrases=PHRASES, step=3,
                                     direction_path=out / "dir-3.safetensors",
                                     interventions=settings | {"skip_first_token": False})
    return refusal_interventions.run_interventions(
        model="tiny", technique="sft", step=3, model_dir=tiny_model_dir, direction_path=out / "dir-3.safetensors",
        prompt_paths=prompt_tables, generations_paths=paths, settings=settings,
        out_path=out / "interventions.parquet")


def test_extract_scores_every_candidate_and_interventions_use_the_selection(checkpoint, tiny_model_dir, prompt_tables,
                                                                            tmp_path):
    summary = _extract(checkpoint, tiny_model_dir, prompt_tables, tmp_path)
    cands = tables.read_table(tmp_path / "cand-3.parquet", "refusal_candidates")
    n_pos = cands["position"].n_unique()
    assert cands.height == 2 * n_pos and summary["n_scored"] == n_pos
    # block 0's input is the token embedding: at template tokens both sets see the same vector
    block0 = cands.filter(pl.col("layer") == 0)
    assert (block0["filtered_reason"] == "zero mean difference").all() and block0["bypass_score"].is_null().all()
    scored = cands.filter(pl.col("layer") == 1)
    assert scored.select(pl.col("bypass_score", "induce_score", "kl").is_finite().all()).row(0) == (True,) * 3
    assert (scored["kl"] >= 0).all() and cands["selected"].sum() == 1
    assert summary["status"] == "ok" and summary["n_harmful_kept"] == summary["n_harmful_train"] == 8
    best = cands.filter("selected").row(0, named=True)
    assert best["bypass_score"] == cands["bypass_score"].min()
    direction = direction_file.read_direction(tmp_path / "dir-3.safetensors")
    assert direction["layer"] == best["layer"] and direction["position"] == best["position"]
    assert abs(float(direction["tensors"]["direction"].norm()) - 1) < 1e-9
    assert direction["tensors"]["mean_diff"].shape == (2, n_pos, 32)

    table = _interventions(checkpoint, tiny_model_dir, prompt_tables, tmp_path, max_prompts=3)
    assert table.height == 6 and (table["status"] == "ok").all() and (table["n"] == 3).all()
    logodds = {(r["condition"], r["prompt_set"]): r["refusal_score_logodds"] for r in table.iter_rows(named=True)}
    assert logodds[("ablation", "harmful")] != logodds[("baseline", "harmful")]
    assert logodds[("actadd", "harmless")] != logodds[("baseline", "harmless")]


def test_no_direction_is_a_status_not_a_crash(checkpoint, tiny_model_dir, prompt_tables, tmp_path):
    summary = _extract(checkpoint, tiny_model_dir, prompt_tables, tmp_path, filter_train=True, min_filtered_prompts=99)
    assert summary["status"] == "no_direction" and "min_filtered_prompts" in summary["reason"]
    cands = tables.read_table(tmp_path / "cand-3.parquet", "refusal_candidates")
    assert (cands["filtered_reason"] == "train filter").all() and not cands["selected"].any()
    assert cands["bypass_score"].is_null().all()
    direction = direction_file.read_direction(tmp_path / "dir-3.safetensors")
    assert direction["status"] == "no_direction" and "direction" not in direction["tensors"]
    table = _interventions(checkpoint, tiny_model_dir, prompt_tables, tmp_path, max_prompts=2)
    status = dict(zip(zip(table["condition"], table["prompt_set"]), table["status"]))
    assert status[("baseline", "harmful")] == "ok" and status[("ablation", "harmful")] == "no_direction"
    assert table.filter(pl.col("status") == "no_direction")["refusal_rate"].is_null().all()
    # nothing passes the filters: a status again
    summary = _extract(checkpoint, tiny_model_dir, prompt_tables, tmp_path, selection={**SELECTION, "kl_max": -1.0,
                                                                                 "max_layer_fraction": 1.0})
    assert summary["status"] == "no_direction" and summary["n_scored"] > 0 and summary["n_passing"] == 0


def test_drift_along_a_trajectory(checkpoint, tiny_model_dir, prompt_tables, tmp_path):
    for step in (0, 3):
        _extract(checkpoint, tiny_model_dir, prompt_tables, tmp_path, step=step)
    paths = [str(tmp_path / f"dir-{s}.safetensors") for s in (0, 3)]
    table = refusal_drift.drift(model="tiny", technique="sft", steps=[0, 3], direction_paths=paths,
                                base_path=paths[0], out_path=tmp_path / "drift.parquet")
    first, last = table.filter(pl.col("step") == 0), table.filter(pl.col("step") == 3)
    assert first["cos_to_previous"].is_null().all()
    defined = pl.col("layer") > 0  # block 0 differences are zero at template tokens: cosine undefined, null
    assert table.filter(~defined).select(pl.col("cos_to_base", "cos_to_final").is_null().all()).row(0) == (True, True)
    assert last.filter(defined)["cos_to_previous"].is_not_null().all()
    assert (first.filter(defined)["cos_to_base"] - 1).abs().max() < 1e-9
    assert (last.filter(defined)["cos_to_final"] - 1).abs().max() < 1e-9
    assert table["reference"].unique().to_list() == ["sft@3"] and last["selected_here"].sum() == 1
    assert (table["proj_harmful"] - table["proj_harmless"]).is_finite().all()


def test_direction_files_are_byte_identical_for_identical_contents(tmp_path):
    """The safetensors library writes its metadata map in hash order; the writer sorts it (issue 20)."""
    import hashlib

    tensors = {"direction": torch.arange(6, dtype=torch.float64), "mean_diff": torch.ones(2, 3)}
    metadata = {"status": "ok", "layer": "3", "position": "-1", "positions": "-2,-1", "position_tokens": "a\u241fb",
                "extra": "x"}
    digests = set()
    for k in range(8):
        direction_file.write_tensors(tensors, tmp_path / f"d{k}.safetensors", dict(reversed(metadata.items()))
                                     if k % 2 else metadata)
        digests.add(hashlib.sha256((tmp_path / f"d{k}.safetensors").read_bytes()).hexdigest())
    assert len(digests) == 1
    read = direction_file.read_direction(tmp_path / "d0.safetensors")
    assert read["layer"] == 3 and read["positions"] == [-2, -1]
    assert torch.equal(read["tensors"]["direction"], tensors["direction"])
    assert torch.equal(read["tensors"]["mean_diff"], tensors["mean_diff"])
