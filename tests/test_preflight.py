"""Model-aware pre-flight (workflow_lib/preflight.py) on tiny Llama, Qwen2, Gemma and GPT-NeoX models."""

from __future__ import annotations

import copy
import json

import pytest
import yaml
from snakemake.utils import validate

import tiny
from conftest import REPO
from workflow_lib import preflight

ARCHS = ["llama", "qwen2", "gemma", "gpt_neox"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("archs")
    return {arch: tiny.save_tiny_model(root / arch, arch) for arch in ARCHS}


def tiny_config(folder, tmp_path, edit=None) -> dict:
    """tests/config/tiny.yaml on `folder`, with the schema's defaults filled in as the Snakefile does."""
    config = yaml.safe_load((REPO / "tests" / "config" / "tiny.yaml").read_text())
    config["models"]["tiny"]["path"] = str(folder)
    config["cache_dir"] = str(tmp_path / "cache")
    for technique in config["techniques"].values():
        technique["lora"].pop("target_modules")  # the default: PEFT's choice for the architecture
    if edit:
        edit(config)
    validate(config, str(REPO / "config" / "schema.yaml"), set_default=True)
    return config


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_passes_with_the_default_lora_settings(folders, tmp_path, arch):
    config = tiny_config(folders[arch], tmp_path)
    assert preflight.check_models(config) == []
    stamps = list((tmp_path / "cache" / "preflight").glob("tiny.*.ok"))
    assert len(stamps) == 1
    targeted = preflight.check_lora_targets(config, (folders[arch] / "config.json").read_bytes(), "m")
    assert targeted["sft_refusal"] == (("query_key_value",) if arch == "gpt_neox" else ("q_proj", "v_proj"))


def test_a_passing_check_is_remembered_and_only_relevant_edits_repeat_it(folders, tmp_path):
    config = tiny_config(folders["llama"], tmp_path)
    preflight.check_models(config)
    preflight.check_models(tiny_config(folders["llama"], tmp_path, lambda c: c["jailbreak"].update(max_prompts=2)))
    assert len(list((tmp_path / "cache" / "preflight").iterdir())) == 1
    preflight.check_models(tiny_config(folders["llama"], tmp_path,
                                       lambda c: c["susceptibility"]["restrictions"].update(layers=[1])))
    assert len(list((tmp_path / "cache" / "preflight").iterdir())) == 2


def explicit(modules):
    def edit(config):
        for technique in config["techniques"].values():
            technique["lora"]["target_modules"] = modules
    return edit


@pytest.mark.parametrize("arch, edit, message", [
    ("gpt_neox", explicit(["q_proj", "v_proj"]),
     "techniques.sft_refusal.lora.target_modules is ['q_proj', 'v_proj'], but the model (gpt_neox) has none of "
     "these modules; its linear layers are ['dense', 'dense_4h_to_h', 'dense_h_to_4h', 'query_key_value']. "
     "Delete the key to use PEFT's default for gpt_neox"),
    ("llama", explicit(["q_proj", "v_prj"]),
     "techniques.sft_refusal.lora.target_modules names ['v_prj'], which the model (llama) does not have"),
    ("qwen2", lambda c: c["susceptibility"]["restrictions"].update(layers=[0, 7]),
     "susceptibility.restrictions.layers names layers [7], but the model has 2 layers (0 to 1)"),
    ("gemma", lambda c: c["susceptibility"]["linear_response"].setdefault("restrictions", {}).update(extra={"x": "no.such.thing"}),
     "restriction 'x' (pattern 'no.such.thing')"),
    ("llama", lambda c: c["llc"].update(spaces=["late"], custom_spaces={"late": ["model.layers.5.*"]}),
     "llc.custom_spaces.late ['model.layers.5.*'] selects no weight"),
    ("llama", lambda c: c["techniques"].update(cb={"kind": "circuit_breaker", "steps": [0, 2]}),
     "techniques.cb.target_layers is [10, 20] (the default, as the key is unset), but the model has hidden "
     "states 0 to 2"),
    ("llama", lambda c: c["techniques"].update(other={"kind": "sft_refusal", "steps": [0, 2],
                                                      "lora": {"target_modules": "all-linear"}})
     or c["llc"].update(spaces=["adapted"]),
     "llc.spaces uses `adapted`, but the techniques adapt different modules"),
])
def test_a_config_that_does_not_fit_the_model_is_rejected_with_the_key(folders, tmp_path, arch, edit, message):
    config = tiny_config(folders[arch], tmp_path, edit)
    with pytest.raises(preflight.PreflightError) as err:
        preflight.check_models(config)
    assert message in str(err.value)
    assert not (tmp_path / "cache" / "preflight").exists() or not any((tmp_path / "cache" / "preflight").iterdir())


def test_a_model_without_a_chat_template_is_rejected(folders, tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    for f in folders["llama"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(preflight.PreflightError, match="models.tiny: .* has no chat template"):
        preflight.check_models(tiny_config(folder, tmp_path))


def test_the_embedded_model_is_checked_from_its_shipped_config(tmp_path, folders):
    config = tiny_config(folders["llama"], tmp_path, lambda c: c["models"].update(tiny={"source": "embedded"})
                         or c["susceptibility"]["restrictions"].update(layers=[29, 30]))
    with pytest.raises(preflight.PreflightError, match=r"layers names layers \[30\], but the model has 30 layers"):
        preflight.check_models(config)


def test_an_hf_model_not_yet_downloaded_is_left_to_its_jobs(tmp_path, folders, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    config = tiny_config(folders["llama"], tmp_path, lambda c: c["models"].update(
        tiny={"source": "hf", "id": "nobody/not-downloaded"}))
    assert preflight.check_models(copy.deepcopy(config)) == ["tiny"]
