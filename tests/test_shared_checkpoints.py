"""Checkpoints that are one model share their measurements; different ones never do."""

from __future__ import annotations

import shutil

import polars as pl

from workflow_lib.core import shared_checkpoints, tables


def fake_checkpoint(root, weights: bytes):
    (root / "adapter").mkdir(parents=True)
    (root / "adapter" / "adapter_model.safetensors").write_bytes(weights)
    (root / "adapter" / "adapter_config.json").write_text('{"r": 8, "target_modules": ["q_proj", "v_proj"]}')
    return root


def test_same_model_needs_identical_adapters_and_no_own_base_weights(tmp_path):
    a = fake_checkpoint(tmp_path / "a", b"weights")
    b = fake_checkpoint(tmp_path / "b", b"weights")
    other = fake_checkpoint(tmp_path / "c", b"weightz")
    assert shared_checkpoints.same_model(a, b) and not shared_checkpoints.same_model(a, other)
    # peft writes target_modules in no fixed order: the same set is the same adapter, another rank is not
    (b / "adapter" / "adapter_config.json").write_text('{"target_modules": ["v_proj", "q_proj"], "r": 8}')
    assert shared_checkpoints.same_model(a, b)
    (b / "adapter" / "adapter_config.json").write_text('{"target_modules": ["v_proj", "q_proj"], "r": 4}')
    assert not shared_checkpoints.same_model(a, b)
    shutil.copytree(a, tmp_path / "abliterated")
    (tmp_path / "abliterated" / "base_model").mkdir()  # rewritten weights: never assumed equal
    assert not shared_checkpoints.same_model(tmp_path / "abliterated", a)


def _refusal_eval(path, technique, step):
    frame = pl.DataFrame({"model": ["m"], "technique": [technique], "step": [step], "prompt_set": ["harmful"],
                          "refusal_rate": [0.75], "refusal_score_logodds": [1.5], "n": [4], "status": ["ok"]})
    return tables.write_table(frame, path, "refusal_eval")


def test_reuse_copies_under_its_own_keys_or_leaves_the_job_to_measure(tmp_path):
    source = fake_checkpoint(tmp_path / "sft" / "checkpoint", b"w")
    _refusal_eval(tmp_path / "sft.parquet", "sft", 4)
    (tmp_path / "sft.bin").write_bytes(b"direction")
    same = fake_checkpoint(tmp_path / "attack" / "checkpoint", b"w")
    outputs = {"table": (str(tmp_path / "attack.parquet"), "refusal_eval"), "direction": (str(tmp_path / "a.bin"), None)}
    src = {"checkpoint": str(source), "table": str(tmp_path / "sft.parquet"), "direction": str(tmp_path / "sft.bin")}
    assert shared_checkpoints.reuse(checkpoint_dir=same, source=src, outputs=outputs, technique="attack", step=0)
    copied = tables.read_table(tmp_path / "attack.parquet", "refusal_eval")
    assert copied.select("technique", "step").row(0) == ("attack", 0) and copied["refusal_rate"][0] == 0.75
    assert (tmp_path / "a.bin").read_bytes() == b"direction"
    different = fake_checkpoint(tmp_path / "dpo" / "checkpoint", b"other seed")
    outputs = {"table": (str(tmp_path / "dpo.parquet"), "refusal_eval")}
    assert not shared_checkpoints.reuse(checkpoint_dir=different, source=src, outputs=outputs, technique="dpo", step=0)
    assert not (tmp_path / "dpo.parquet").exists()
