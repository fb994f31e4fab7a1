"""Safety techniques, one module per `kind`, sharing the segment loop in `loop.py`.

A technique module provides:
- `build_training_mix(technique, prompts, completions, settings, seed) -> DataFrame`
  (the `training_mix` table),
- `encode(tokenizer, row, settings)` and `collate(examples, pad_id, device)`, and
- `loss(model, batch, settings, step) -> (loss, n_response_tokens)`.

`losses.py`, `mixes.py` and `lora.py` hold the pieces they share.

Modules are imported by kind on demand, so a technique's code digest (and thus
its cache) covers only its own module and the loop.
"""

from __future__ import annotations

import importlib
import pkgutil

from workflow_lib.finetune import schemas  # noqa: F401  (registers the training_mix and checkpoint tables)

_NOT_TECHNIQUES = {"loop", "lora", "losses", "mixes", "schemas"}


def known_kinds() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_TECHNIQUES)


def technique_module(kind: str):
    if kind not in known_kinds():
        raise ValueError(f"unknown technique kind {kind!r}; known kinds are {known_kinds()}")
    return importlib.import_module(f"{__name__}.{kind}")
