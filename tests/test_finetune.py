import math

import polars as pl
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from workflow_lib.data import completions
from workflow_lib.core import models, tables
from workflow_lib.finetune import known_kinds, loop, losses, mixes, sft_refusal, technique_module

SETTINGS = {
    "kind": "sft_refusal", "seed": 3, "batch_size": 4, "max_length": 64, "max_grad_norm": 1.0,
    "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]},
    "optimizer": {"lr": 1e-2, "weight_decay": 0.01, "betas": [0.9, 0.999]},
    "schedule": {"name": "cosine", "warmup_steps": 1, "total_steps": 6, "min_lr_ratio": 0.1},
}


@pytest.fixture(scope="module")
def mix_path(tiny_model_dir, prompt_tables, tmp_path_factory):
    out = tmp_path_factory.mktemp("mix")
    completions.base_completions(model="tiny", model_dir=tiny_model_dir, prompt_paths=list(prompt_tables.values()),
                                 settings={"splits": ["train"], "max_new_tokens": 6, "batch_size": 8},
                                 out_path=out / "completions.parquet")
    loop.write_training_mix(technique="t", settings=SETTINGS, prompt_paths=prompt_tables,
                            completions_path=out / "completions.parquet", out_path=out / "mix.parquet")
    return out / "mix.parquet"


def _segment(tiny_model_dir, mix_path, out, prev_step, step, prev=None):
    return loop.run_segment(model="tiny", technique="t", settings=SETTINGS, model_dir=tiny_model_dir,
                            mix_path=mix_path, prev_dir=prev, prev_step=prev_step, step=step, out_dir=out)


def test_batches_cover_each_epoch_once_and_depend_only_on_seed_and_step():
    first_epoch = loop.batch_indices(10, 5, seed=1, step=0) + loop.batch_indices(10, 5, seed=1, step=1)
    assert sorted(first_epoch) == list(range(10))
    assert loop.batch_indices(10, 5, seed=1, step=7) == loop.batch_indices(10, 5, seed=1, step=7)
    assert loop.batch_indices(10, 5, seed=1, step=0) != loop.batch_indices(10, 5, seed=2, step=0)


def test_lr_schedules():
    opt = {"lr": 1.0}
    assert loop.lr_at(0, opt, {"name": "constant", "warmup_steps": 4}) == 0.25
    assert loop.lr_at(9, opt, {"name": "constant", "warmup_steps": 4}) == 1.0
    cosine = {"name": "cosine", "warmup_steps": 0, "total_steps": 10, "min_lr_ratio": 0.1}
    assert loop.lr_at(0, opt, cosine) == 1.0
    assert loop.lr_at(5, opt, cosine) == pytest.approx(0.55)
    assert loop.lr_at(50, opt, cosine) == pytest.approx(0.1)
    assert loop.lr_at(5, opt, {"name": "linear", "total_steps": 10}) == pytest.approx(0.5)


def test_training_mix_maps_harmful_to_refusals_and_harmless_to_base_answers(mix_path):
    mix = tables.read_table(mix_path, "training_mix")
    assert dict(mix.group_by("kind").len().rows()) == {"refusal": 8, "retain": 8}
    assert set(mix.filter(pl.col("kind") == "refusal")["response"]) <= set(mixes.REFUSALS)
    assert mix["prompt_id"].filter(mix["kind"] == "retain").str.starts_with("harmless-").all()


def test_sft_loss_equals_hand_computed_cross_entropy(tiny_model_dir, tiny_tokenizer):
    model, _ = models.load_base(tiny_model_dir)
    batch = losses.collate_sft([([5, 6, 7, 8], [-100, -100, 7, 8]), ([9, 10, 11], [-100, 10, 11])],
                         tiny_tokenizer.pad_token_id, "cpu")
    value, n_tokens = sft_refusal.loss(model, batch, {}, 0)
    logp = F.log_softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
    # targets: row 0 predicts 7 at position 1 and 8 at 2; row 1 predicts 10 at 0 and 11 at 1
    manual = -(logp[0, 1, 7] + logp[0, 2, 8] + logp[1, 0, 10] + logp[1, 1, 11]) / 4
    assert n_tokens == 4
    assert value.item() == pytest.approx(manual.item(), rel=1e-5)
    per_example, _ = sft_refusal.loss(model, batch, {"loss_normalisation": "example"}, 0)
    row0 = -(logp[0, 1, 7] + logp[0, 2, 8]) / 2
    row1 = -(logp[1, 0, 10] + logp[1, 1, 11]) / 2
    assert per_example.item() == pytest.approx(((row0 + row1) / 2).item(), rel=1e-5)


def test_step_zero_is_the_base_function(tiny_model_dir, mix_path, tmp_path):
    row = _segment(tiny_model_dir, mix_path, tmp_path / "s0", None, 0)
    assert row["tokens_seen"][0] == 0 and row["train_loss"][0] is None
    model, _ = models.load_checkpoint(tiny_model_dir, tmp_path / "s0", merge=False)
    base, _ = models.load_base(tiny_model_dir)
    ids = torch.tensor([[1, 4, 9, 16, 25]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, base(ids).logits, atol=1e-6)


def test_chained_segments_equal_one_long_run(tiny_model_dir, mix_path, tmp_path):
    _segment(tiny_model_dir, mix_path, tmp_path / "s0", None, 0)
    _segment(tiny_model_dir, mix_path, tmp_path / "a2", 0, 2, tmp_path / "s0")
    chained = _segment(tiny_model_dir, mix_path, tmp_path / "a5", 2, 5, tmp_path / "a2")
    single = _segment(tiny_model_dir, mix_path, tmp_path / "b5", 0, 5, tmp_path / "s0")
    a = load_file(tmp_path / "a5" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b5" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert chained["tokens_seen"][0] == single["tokens_seen"][0] > 0
    assert chained["lr"][0] == pytest.approx(loop.lr_at(4, SETTINGS["optimizer"], SETTINGS["schedule"]))
    trained = load_file(tmp_path / "s0" / "adapter" / "adapter_model.safetensors")
    assert any(not torch.equal(a[k], trained[k]) for k in a)  # training moved the adapter
    manifest = loop.collect_manifest([tmp_path / "a5", tmp_path / "s0", tmp_path / "a2"], tmp_path / "m.parquet")
    assert manifest["step"].to_list() == [0, 2, 5]
    assert manifest["tokens_seen"].is_sorted()


def test_checkpoint_loads_with_plain_peft_and_is_readable(tiny_model_dir, mix_path, tmp_path):
    from peft import PeftModel

    _segment(tiny_model_dir, mix_path, tmp_path / "s0", None, 0)
    _segment(tiny_model_dir, mix_path, tmp_path / "s1", 0, 1, tmp_path / "s0")
    base, _ = models.load_base(tiny_model_dir)
    PeftModel.from_pretrained(base, tmp_path / "s1" / "adapter")
    assert (tmp_path / "s1" / "adapter" / "adapter_model.safetensors").stat().st_mode & 0o044
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folders left


def test_training_reduces_the_loss(tiny_model_dir, mix_path, tmp_path):
    settings = SETTINGS | {"schedule": {"name": "constant"}, "lora": SETTINGS["lora"] | {"dropout": 0.0}}
    loop.run_segment(model="tiny", technique="t", settings=settings, model_dir=tiny_model_dir, mix_path=mix_path,
                     prev_dir=None, prev_step=None, step=0, out_dir=tmp_path / "s0")
    row = loop.run_segment(model="tiny", technique="t", settings=settings, model_dir=tiny_model_dir,
                           mix_path=mix_path, prev_dir=tmp_path / "s0", prev_step=0, step=30, out_dir=tmp_path / "s30")
    first = loop.run_segment(model="tiny", technique="t", settings=settings, model_dir=tiny_model_dir,
                             mix_path=mix_path, prev_dir=tmp_path / "s0", prev_step=0, step=2, out_dir=tmp_path / "s2")
    assert math.isfinite(row["train_loss"][0])
    assert row["train_loss"][0] < first["train_loss"][0]


def test_unknown_kind_is_named():
    assert "sft_refusal" in known_kinds()
    with pytest.raises(ValueError, match="unknown technique kind 'magic'"):
        technique_module("magic")


def test_failed_segment_leaves_nothing(tiny_model_dir, mix_path, tmp_path):
    _segment(tiny_model_dir, mix_path, tmp_path / "s0", None, 0)
    diverging = SETTINGS | {"optimizer": {"lr": 1e30}, "schedule": {"name": "constant"}}
    with pytest.raises(FloatingPointError, match="lower optimizer.lr"):
        loop.run_segment(model="tiny", technique="t", settings=diverging, model_dir=tiny_model_dir,
                         mix_path=mix_path, prev_dir=tmp_path / "s0", prev_step=0, step=3, out_dir=tmp_path / "s3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s0"]
