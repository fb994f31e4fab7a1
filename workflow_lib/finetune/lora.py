"""The LoRA adapter a technique trains: one place that turns `techniques.<name>.lora` into PEFT's config.

Shared by the fine-tuning loop and the pre-flight check (`workflow_lib.preflight`),
so both resolve target modules the same way. Unset `target_modules` is PEFT's own
per-architecture default (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`,
e.g. q_proj and v_proj on Llama, query_key_value on GPT-NeoX); `all-linear` is
every linear layer but the output head (Hu et al. 2021, LoRA, section 4.2 adapts
the attention projections; PEFT's defaults follow that choice per architecture).
"""

from __future__ import annotations


class LoraTargetError(ValueError):
    """`lora.target_modules` names modules the model does not have, or the model has no PEFT default."""


def lora_config(lora: dict):
    from peft import LoraConfig

    return LoraConfig(r=int(lora.get("r", 8)), lora_alpha=float(lora.get("alpha", 16)),
                      lora_dropout=float(lora.get("dropout", 0.0)), target_modules=lora.get("target_modules"),
                      bias="none", task_type="CAUSAL_LM")


def linear_module_names(model) -> list[str]:
    """Distinct last names of the model's linear layers, output head excluded (what a user may target)."""
    from torch import nn

    try:
        from transformers.pytorch_utils import Conv1D
        kinds = (nn.Linear, Conv1D)
    except ImportError:  # pragma: no cover (older transformers)
        kinds = (nn.Linear,)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if isinstance(m, kinds) and m is not head})


def attach(base, lora: dict, technique: str):
    """`base` wrapped in a fresh LoRA adapter, or an error that names `techniques.<technique>.lora.target_modules`.

    Every listed name must match a module: PEFT itself fails only when none does,
    so a misspelt second name would otherwise train one module without a word.
    """
    from peft import get_peft_model

    model_type = getattr(base.config, "model_type", type(base).__name__)
    wanted = lora.get("target_modules")
    key = f"techniques.{technique}.lora.target_modules"
    names = linear_module_names(base)
    try:
        peft_model = get_peft_model(base, lora_config(lora))
    except ValueError as err:  # NoMatchingPeftModuleError is a ValueError, as is "no default for this model"
        if wanted is None:
            raise LoraTargetError(f"{key} is unset and PEFT has no default for model type {model_type!r} "
                                  f"({err}); set it to some of this model's linear layers: {names}") from None
        raise LoraTargetError(f"{key} is {wanted}, but the model ({model_type}) has none of these modules; its "
                              f"linear layers are {names}. Delete the key to use PEFT's default for "
                              f"{model_type}, or pick from that list") from None
    targeted = sorted({n.rsplit(".", 1)[-1] for n in peft_model.targeted_module_names})
    if isinstance(wanted, list):
        missing = [t for t in wanted if not any(n == t or n.endswith("." + t) for n in peft_model.targeted_module_names)]
        if missing:
            raise LoraTargetError(f"{key} names {missing}, which the model ({model_type}) does not have; its linear "
                                  f"layers are {names}. Remove them, or delete the key to use PEFT's default")
    return peft_model, targeted


def describe(lora: dict, targeted: list[str], model_type: str) -> str:
    """One log line: which modules LoRA adapts and where that choice came from."""
    wanted = lora.get("target_modules")
    source = (f"PEFT's default for {model_type} (lora.target_modules unset)" if wanted is None
              else "all linear layers" if wanted == "all-linear" else "lora.target_modules")
    return f"LoRA adapts {targeted}: {source}"
