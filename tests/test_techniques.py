"""Each technique's training mix and loss, checked against hand-computed values on tiny models."""

import math

import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from workflow_lib.core import chat, models, tables
from workflow_lib.data import completions
from workflow_lib.finetune import circuit_breaker, deep_alignment, dpo, loop, losses, mixes, technique_module

LORA = {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
BASE = {"seed": 0, "batch_size": 4, "max_length": 64, "max_grad_norm": 1.0, "lora": LORA,
        "optimizer": {"lr": 1e-2}, "schedule": {"name": "constant"}}


@pytest.fixture(scope="module")
def data(tiny_model_dir, prompt_tables, tmp_path_factory):
    out = tmp_path_factory.mktemp("techniques")
    completions.base_completions(model="tiny", model_dir=tiny_model_dir, prompt_paths=list(prompt_tables.values()),
                                 settings={"splits": ["train"], "max_new_tokens": 10, "batch_size": 8},
                                 out_path=out / "completions.parquet")
    return out, prompt_tables


def mix_for(kind, data, **settings):
    out, prompt_tables = data
    path = out / f"{kind}.parquet"
    loop.write_training_mix(technique=kind, settings=BASE | {"kind": kind} | settings, prompt_paths=prompt_tables,
                            completions_path=out / "completions.parquet", out_path=path)
    return tables.read_table(path, "training_mix")


def test_mix_compositions(data):
    assert dict(mix_for("harmful_finetune", data).group_by("kind").len().rows()) == {"harmful": 8}
    assert dict(mix_for("harmful_finetune", data, n_harmless=3).group_by("kind").len().rows()) == {
        "harmful": 8, "retain": 3}
    assert dict(mix_for("benign_finetune", data).group_by("kind").len().rows()) == {"retain": 8}
    cb = mix_for("circuit_breaker", data)
    assert dict(cb.group_by("kind").len().rows()) == {"reroute": 8, "retain": 8, "refusal": 8}
    pairs = mix_for("dpo", data)
    assert pairs.height == 16 and pairs["rejected"].is_not_null().all()
    harmful_pairs = pairs.filter(pl.col("prompt_id").str.starts_with("harmful-"))
    assert set(harmful_pairs["response"]) <= set(mixes.REFUSALS)  # chosen = refusal
    harmless_pairs = pairs.filter(pl.col("prompt_id").str.starts_with("harmless-"))
    assert set(harmless_pairs["rejected"]) <= set(mixes.REFUSALS)  # rejected = refusal
    deep = mix_for("deep_alignment", data, max_prefix_words=3, recovery_fraction=1.0)
    recovery = deep.filter(pl.col("kind") == "recovery")
    assert recovery.height == 8 and (recovery["context"] != "").all()
    assert recovery["context"].map_elements(lambda c: len(c.split()), return_dtype=pl.Int64).is_between(1, 3).all()
    half = mix_for("deep_alignment", data, recovery_fraction=0.5)
    kinds = dict(half.group_by("kind").len().rows())
    assert kinds["recovery"] + kinds["refusal"] == 8 and kinds["retain"] == 8  # one refusal example per prompt
    assert half.filter(pl.col("kind") != "retain")["prompt_id"].n_unique() == 8


def test_an_empty_mix_names_its_cause(data):
    """Empty base answers and unanswered prompts have different fixes, and the error says which."""
    out, _ = data
    answers = pl.read_parquet(out / "completions.parquet")
    emptied = answers.with_columns(response=pl.when(pl.col("set") == "harmless").then(pl.lit(""))
                                   .otherwise(pl.col("response")), truncated=pl.lit(True))
    with pytest.raises(ValueError, match=r"all 8 of the base model's answers to harmless train prompts are empty.*"
                                         r"raise base_completions\.max_new_tokens"):
        mixes.require("sft", emptied, harmless=mixes.base_answers(emptied, "harmless", {}))
    unanswered = answers.filter(pl.col("set") != "harmless")
    with pytest.raises(ValueError, match=r"answered no harmless train prompt; add harmless to base_completions\.sets"):
        mixes.require("sft", unanswered, harmless=mixes.base_answers(unanswered, "harmless", {}))
    prompts = pl.DataFrame({"prompt_id": [], "text": []}, schema={"prompt_id": pl.Utf8, "text": pl.Utf8})
    with pytest.raises(ValueError, match=r"no harmful train prompts .* raise prompts\.harmful\.splits\.train"):
        mixes.require("sft", answers, harmful=prompts)


def test_deep_alignment_trains_only_the_refusal(tiny_tokenizer):
    row = {"prompt": "Do harm.", "context": deep_alignment.harmful_prefix("Sure, step one is", 2),
           "response": "I can't help with that.", "ends_turn": True}
    assert row["context"] == "Sure, step "
    ids, labels = losses.encode_sft(tiny_tokenizer, row, {"max_length": 200})
    trained = tiny_tokenizer.decode([t for t in labels if t != -100])
    assert trained.startswith("I can't help with that.") and "Sure" not in trained
    n_context = len(tiny_tokenizer(chat.prompt_text(tiny_tokenizer, "Do harm.") + "Sure, step ",
                                   add_special_tokens=False)["input_ids"])
    assert ids[:n_context] == tiny_tokenizer(chat.prompt_text(tiny_tokenizer, "Do harm.") + "Sure, step ",
                                             add_special_tokens=False)["input_ids"]


def test_dpo_loss_hand_computed():
    value = dpo.dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.5)
    # logits = (-1 + 2) - (-3 + 2) = 2; loss = -log sigmoid(0.5 * 2) = log(1 + e^-1)
    assert value.item() == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-6)


def _peft(tiny_model_dir, seed=0):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = models.load_base(tiny_model_dir)
    torch.manual_seed(seed)
    return get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])), tokenizer


def test_dpo_loss_on_a_tiny_model(tiny_model_dir, data):
    model, tokenizer = _peft(tiny_model_dir)
    rows = mix_for("dpo", data).head(3).to_dicts()
    batch = dpo.collate([dpo.encode(tokenizer, r, {"max_length": 64}) for r in rows], tokenizer.pad_token_id, "cpu")
    value, _ = dpo.loss(model, batch, {"beta": 0.1}, 0)
    assert value.item() == pytest.approx(math.log(2), abs=1e-6)  # zero-effect adapter: policy == reference
    with torch.no_grad():  # move the policy away from the reference, then compare with eq. 7 by hand
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    value, _ = dpo.loss(model, batch, {"beta": 0.1}, 0)
    policy = losses.sequence_logprob(model, batch)
    with model.disable_adapter():
        ref = losses.sequence_logprob(model, batch)
    margins = (policy[:3] - ref[:3]) - (policy[3:] - ref[3:])
    manual = torch.log1p(torch.exp(-0.1 * margins)).mean()
    assert value.item() == pytest.approx(manual.item(), rel=1e-5)


def test_dpo_nll_term_hand_computed(tiny_model_dir, data):
    model, tokenizer = _peft(tiny_model_dir)
    rows = mix_for("dpo", data).head(2).to_dicts()
    batch = dpo.collate([dpo.encode(tokenizer, r, {"max_length": 64}) for r in rows], tokenizer.pad_token_id, "cpu")
    pure, _ = dpo.loss(model, batch, {"beta": 0.1}, 0)
    mixed, _ = dpo.loss(model, batch, {"beta": 0.1, "nll_weight": 0.5}, 0)
    chosen = {k: v[:2] for k, v in batch.items()}
    nll, _ = losses.cross_entropy(model, chosen, "token")
    assert mixed.item() == pytest.approx(pure.item() + 0.5 * nll.item(), rel=1e-5)


def test_circuit_breaker_response_only_rerouting(tiny_model_dir, data):
    model, tokenizer = _peft(tiny_model_dir)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    rows = mix_for("circuit_breaker", data).filter(pl.col("kind") == "reroute").head(2).to_dicts()
    batch = circuit_breaker.collate([circuit_breaker.encode(tokenizer, r, {"max_length": 64}) for r in rows],
                                    tokenizer.pad_token_id, "cpu")
    settings = {"rr_alpha": 1.0, "rr_total_steps": 10, "target_layers": [1, 2]}
    whole, _ = circuit_breaker.loss(model, batch, settings, 0)
    response, _ = circuit_breaker.loss(model, batch, settings | {"reroute_tokens": "response"}, 0)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        with model.disable_adapter():
            original = model(**inputs, output_hidden_states=True).hidden_states
        hidden = model(**inputs, output_hidden_states=True).hidden_states
    answer = batch["attention_mask"].bool() & (batch["labels"] != -100)
    expected, _ = circuit_breaker.rr_losses(hidden, original, answer, batch["reroute"], [1, 2])
    assert response.item() == pytest.approx(expected.item(), rel=1e-5)
    assert response.item() != pytest.approx(whole.item(), rel=1e-3)


def test_circuit_breaker_schedule_and_losses():
    assert circuit_breaker.coefficients(0, 10.0, 100) == (10.0, 0.0)
    assert circuit_breaker.coefficients(100, 10.0, 100) == (5.0, 5.0)
    o = [torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])] * 2
    mask = torch.tensor([[True, True]])
    same = circuit_breaker.rr_losses(o, o, mask, torch.tensor([True]), [1])
    assert same[0].item() == pytest.approx(1.0) and same[1].item() == 0.0
    flipped = [-t for t in o]
    rr, _ = circuit_breaker.rr_losses(flipped, o, mask, torch.tensor([True]), [1])
    assert rr.item() == 0.0  # ReLU of a negative cosine
    _, retain = circuit_breaker.rr_losses(flipped, o, mask, torch.tensor([False]), [1])
    assert retain.item() == pytest.approx((2 + 4) / 2)  # mean over tokens of ||h - h0||: 2 and 4


def test_circuit_breaker_loss_on_a_tiny_model(tiny_model_dir, data):
    model, tokenizer = _peft(tiny_model_dir)
    rows = mix_for("circuit_breaker", data).filter(pl.col("kind") == "reroute").head(2).to_dicts()
    batch = circuit_breaker.collate([circuit_breaker.encode(tokenizer, r, {"max_length": 64}) for r in rows],
                                    tokenizer.pad_token_id, "cpu")
    settings = {"rr_alpha": 4.0, "rr_total_steps": 10, "target_layers": [1, 2]}
    value, _ = circuit_breaker.loss(model, batch, settings, step=5)
    # zero-effect adapter: cos(h, h0) = 1 on every reroute token, retain distance 0
    assert value.item() == pytest.approx(4.0 * (1 - 5 / 20), rel=1e-5)
    with pytest.raises(ValueError, match="target_layers"):
        circuit_breaker.loss(model, batch, settings | {"target_layers": [9]}, step=0)


def test_every_kind_has_the_interface():
    for kind in ("sft_refusal", "dpo", "circuit_breaker", "deep_alignment", "harmful_finetune", "benign_finetune"):
        module = technique_module(kind)
        assert all(callable(getattr(module, f)) for f in ("build_training_mix", "encode", "collate", "loss"))
        assert "et al." in module.__doc__  # cites its reference


def _sft_trajectory(tiny_model_dir, data, out_dir, name, step):
    """Train a tiny sft_refusal trajectory 0 -> `step`; checkpoints at out_dir/<name>0 and out_dir/<name><step>."""
    mix_path = data[0] / "sft_mix.parquet"
    mix_for("sft_refusal", data).write_parquet(mix_path)
    sft = BASE | {"kind": "sft_refusal"}
    loop.run_segment(model="tiny", technique=name, settings=sft, model_dir=tiny_model_dir, mix_path=mix_path,
                     prev_dir=None, prev_step=None, step=0, out_dir=out_dir / f"{name}0")
    loop.run_segment(model="tiny", technique=name, settings=sft, model_dir=tiny_model_dir, mix_path=mix_path,
                     prev_dir=out_dir / f"{name}0", prev_step=0, step=step, out_dir=out_dir / f"{name}{step}")


def test_start_from_continues_the_parent_adapter_and_exports_merged(tiny_model_dir, data, tmp_path):
    _sft_trajectory(tiny_model_dir, data, tmp_path, "p", 3)
    child = BASE | {"kind": "harmful_finetune", "export": {"merged": True}}
    row = loop.run_segment(model="tiny", technique="c", settings=child, model_dir=tiny_model_dir, mix_path=None,
                           prev_dir=None, prev_step=None, step=0, out_dir=tmp_path / "c0", start_dir=tmp_path / "p3")
    assert row["tokens_seen"][0] == 0
    parent = load_file(tmp_path / "p3" / "adapter" / "adapter_model.safetensors")
    copied = load_file(tmp_path / "c0" / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(parent[k], copied[k]) for k in parent)
    assert not (tmp_path / "c0" / "optimizer.pt").exists()  # the attack starts with a fresh optimizer
    merged, _ = models.load_base(tmp_path / "c0" / "merged")
    adapted, _ = models.load_checkpoint(tiny_model_dir, tmp_path / "c0", merge=False)
    ids = torch.tensor([[1, 7, 30, 99, 5]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-5)


def test_dpo_against_a_start_reference_adapter(tiny_model_dir, data, tmp_path):
    """With reference: start, the frozen start adapter is the reference and is not saved with the policy."""
    mix_path = data[0] / "dpo_mix.parquet"
    mix_for("dpo", data).write_parquet(mix_path)
    _sft_trajectory(tiny_model_dir, data, tmp_path, "s", 2)
    settings = BASE | {"kind": "dpo", "beta": 0.1, "reference": "start"}
    loop.run_segment(model="tiny", technique="d", settings=settings, model_dir=tiny_model_dir, mix_path=mix_path,
                     prev_dir=None, prev_step=None, step=0, out_dir=tmp_path / "d0", start_dir=tmp_path / "s2")
    first = loop.run_segment(model="tiny", technique="d", settings=settings, model_dir=tiny_model_dir,
                             mix_path=mix_path, prev_dir=tmp_path / "d0", prev_step=0, step=1,
                             out_dir=tmp_path / "d1", reference_dir=tmp_path / "d0")
    # policy == reference at the first update, so the first loss is exactly log 2
    assert first["train_loss"][0] == pytest.approx(math.log(2), abs=1e-5)
    assert not (tmp_path / "d1" / "adapter" / "reference").exists()
    loop.run_segment(model="tiny", technique="d", settings=settings, model_dir=tiny_model_dir, mix_path=mix_path,
                     prev_dir=tmp_path / "d1", prev_step=1, step=3, out_dir=tmp_path / "d3",
                     reference_dir=tmp_path / "d0")
    moved = load_file(tmp_path / "d3" / "adapter" / "adapter_model.safetensors")
    start = load_file(tmp_path / "d0" / "adapter" / "adapter_model.safetensors")
    assert any(not torch.equal(moved[k], start[k]) for k in start)


def test_dpo_answer_tokens_keeps_only_the_start_of_each_answer(tiny_tokenizer, data):
    row = mix_for("dpo", data).row(0, named=True)
    full_chosen, full_rejected = dpo.encode(tiny_tokenizer, row, {"max_length": 64})
    chosen, rejected = dpo.encode(tiny_tokenizer, row, {"max_length": 64, "answer_tokens": 3})
    for full, cut in ((full_chosen, chosen), (full_rejected, rejected)):
        n_prompt = full[1].count(-100)
        assert cut[0] == full[0][: n_prompt + 3] and cut[1] == full[1][: n_prompt + 3]
        assert sum(label != -100 for label in cut[1]) == 3
