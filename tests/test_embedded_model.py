"""The real embedded model: SmolLM2-135M-Instruct from the PyPI wheel, converted once.

This is the one test that touches the real 135M model (about 30 s with the
wheel cached): it checks the GGUF conversion path the main job relies on.
"""

import json

import torch

from conftest import REPO
from workflow_lib.core import generation
from workflow_lib.core import models


def test_embedded_smollm2_converts_to_plain_safetensors(tmp_path, wheel_cache):
    facts = models.prepare_model("smollm2", {"source": "embedded"}, tmp_path / "smollm2", wheel_cache)
    assert facts["model_type"] == "llama" and facts["n_layers"] == 30
    assert facts["n_parameters"] == 134_515_008
    config = json.loads((tmp_path / "smollm2" / "config.json").read_text())
    assert "quantization_config" not in config  # trainable and serialisable like any HF model
    shipped = json.loads((REPO / "workflow_lib" / "data" / "embedded_model_config.json").read_text())
    assert {k: v for k, v in shipped.items() if k != "transformers_version"} == {
        k: v for k, v in config.items() if k != "transformers_version"}  # what the pre-flight checks against
    model, tokenizer = models.load_base(tmp_path / "smollm2")
    assert len(models.decoder_layers(model)) == 30
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert all(p.dtype == torch.float32 for p in model.parameters())
    answer = generation.generate(model.eval(), tokenizer, ["What is the capital of France?"],
                                 max_new_tokens=16, batch_size=1)[0]
    assert "Paris" in answer.response
