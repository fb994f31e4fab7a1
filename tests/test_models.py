import json
import shutil

import pytest
import torch

import tiny
from workflow_lib import config_checks
from workflow_lib.core import models


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma", "gpt_neox"])
def test_decoder_layers_found_generically(tiny_tokenizer, arch):
    model = tiny.build_model(tiny_tokenizer, arch, n_layers=3)
    layers = models.decoder_layers(model)
    assert len(layers) == 3
    assert all("Layer" in type(block).__name__ for block in layers)


def test_decoder_layers_through_a_peft_wrapper(tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    model = tiny.build_model(tiny_tokenizer, "llama")
    inner = models.decoder_layers(model)
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert models.decoder_layers(wrapped) is inner


def test_prepare_model_from_path_writes_a_loadable_folder(tiny_model_dir, tmp_path):
    facts = models.prepare_model("tiny", {"source": "path", "path": str(tiny_model_dir)}, tmp_path / "out", tmp_path)
    assert facts["n_layers"] == 2 and facts["model_type"] == "llama"
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "out" / "model_info.json").read_text())["source"] == "path"
    model, tokenizer = models.load_base(tmp_path / "out")
    assert tokenizer.padding_side == "left" and tokenizer.chat_template
    ref, _ = models.load_base(tiny_model_dir)
    ids = torch.tensor([[1, 5, 9, 30]])
    assert torch.equal(model(ids).logits, ref(ids).logits)


def test_prepare_model_from_the_local_hf_cache(tiny_model_dir, tmp_path, monkeypatch):
    """The `hf` source on a hub-cache layout built from local files, offline."""
    snapshot = tmp_path / "hub" / "models--tiny-org--tiny-chat" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_model_dir, snapshot)
    (tmp_path / "hub" / "models--tiny-org--tiny-chat" / "refs").mkdir()
    (tmp_path / "hub" / "models--tiny-org--tiny-chat" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    # the hub reads HF_HUB_OFFLINE when imported: without this it retries the network for 46 s
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    facts = models.prepare_model("tiny", {"source": "hf", "id": "tiny-org/tiny-chat"}, tmp_path / "out", tmp_path)
    assert facts["vocab_size"] == len(tiny.build_tokenizer())
    with pytest.raises(models.ModelSourceError, match="not in the local Hugging Face cache"):
        models.prepare_model("x", {"source": "hf", "id": "tiny-org/absent"}, tmp_path / "out2", tmp_path)


def test_model_without_chat_template_is_rejected(tiny_model_dir, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(models.ModelSourceError, match="no chat template"):
        models.prepare_model("plain", {"source": "path", "path": str(plain)}, tmp_path / "out", tmp_path)


def test_bad_model_entries_fail_with_the_key_and_fix(tmp_path):
    with pytest.raises(models.ModelSourceError, match=r"models\.m\.source is 'ftp'"):
        models.check_model_entry("m", {"source": "ftp"})
    with pytest.raises(models.ModelSourceError, match=r"models\.m\.path .* not a model folder"):
        models.check_model_entry("m", {"source": "path", "path": str(tmp_path / "nowhere")})
    with pytest.raises(models.ModelSourceError, match=r"models\.m\.id is required"):
        models.check_model_entry("m", {"source": "hf"})


def _config(**technique):
    entry = {"kind": "sft_refusal", "steps": [0, 2, 4]} | technique
    return {"models": {"m": {"source": "embedded"}}, "techniques": {"t": entry},
            "prompts": {"harmful": {}, "harmless": {}}, "refusal_eval": {"prompt_sets": ["harmful", "harmless"]}}


def test_config_checks():
    config_checks.check_config(_config())
    with pytest.raises(config_checks.ConfigError, match=r"techniques\.t\.kind is 'magic', an unknown technique"):
        config_checks.check_config(_config(kind="magic"))
    with pytest.raises(config_checks.ConfigError, match="strictly increasing"):
        config_checks.check_config(_config(steps=[0, 4, 4]))
    with pytest.raises(config_checks.ConfigError, match="must start at 0"):
        config_checks.check_config(_config(steps=[2, 4]))
    with pytest.raises(config_checks.ConfigError, match="total_steps is required"):
        config_checks.check_config(_config(schedule={"name": "cosine"}))
    bad_sets = _config() | {"refusal_eval": {"prompt_sets": ["harmless_lookalike"]}}
    with pytest.raises(config_checks.ConfigError, match="has no entry under prompts"):
        config_checks.check_config(bad_sets)


def test_start_from_checks():
    lora = {"r": 8}
    base = {"kind": "sft_refusal", "steps": [0, 10], "lora": lora}
    child = {"kind": "harmful_finetune", "steps": [0, 5], "lora": lora, "start_from": {"technique": "a", "step": 10}}
    config_checks.check_start_from({"a": base, "b": child})
    with pytest.raises(config_checks.ConfigError, match=r"start_from.technique is 'zzz', which is not configured"):
        config_checks.check_start_from({"a": base, "b": child | {"start_from": {"technique": "zzz", "step": 10}}})
    with pytest.raises(config_checks.ConfigError, match=r"start_from.step 7 is not a checkpoint of 'a'"):
        config_checks.check_start_from({"a": base, "b": child | {"start_from": {"technique": "a", "step": 7}}})
    with pytest.raises(config_checks.ConfigError, match="must equal the lora of its start_from"):
        config_checks.check_start_from({"a": base, "b": child | {"lora": {"r": 4}}})
    with pytest.raises(config_checks.ConfigError, match="reference is 'start' but there is no start_from"):
        config_checks.check_start_from({"a": base | {"kind": "dpo", "reference": "start"}})
    cyclic = {"a": base | {"start_from": {"technique": "b", "step": 5}}, "b": child}
    with pytest.raises(config_checks.ConfigError, match="cycle: a -> b -> a|cycle: b -> a -> b"):
        config_checks.check_start_from(cyclic)
