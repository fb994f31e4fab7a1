"""The tables of training mixes and checkpoints: every column's name, type, unit and meaning (docs/tables.md).

Importing the package registers them with `workflow_lib.core.tables`, so a stage's code digest
covers the schemas of the tables it writes.
"""

from __future__ import annotations

import polars as pl

from workflow_lib.core.tables import CHECKPOINT_KEYS, columns, register

SCHEMAS = register("finetune", {
    "training_mix": columns(
        ("technique", pl.Utf8, "-", "technique name"),
        ("example_id", pl.Int64, "-", "row index; the data order is drawn over these ids"),
        ("kind", pl.Utf8, "-", "refusal (harmful -> refusal), retain (harmless -> base answer), harmful "
         "(harmful -> base compliant answer), recovery (harmful prefix -> refusal), preference (DPO pair), "
         "reroute (circuit breaker: harmful prompt + compliant answer)"),
        ("prompt_id", pl.Utf8, "-", "id in the prompts table"),
        ("prompt", pl.Utf8, "-", "the user instruction"),
        ("context", pl.Utf8, "-", "given start of the response, not trained (deep alignment's harmful prefix); empty if none"),
        ("response", pl.Utf8, "-", "the training target (DPO: the chosen answer); loss is on these tokens only"),
        ("ends_turn", pl.Boolean, "-", "whether the target closes the assistant turn (false for truncated answers)"),
        ("rejected", pl.Utf8, "-", "DPO only: the rejected answer (null otherwise)"),
        ("rejected_ends_turn", pl.Boolean, "-", "DPO only: whether the rejected answer closes the turn"),
    ),
    "checkpoint": columns(
        *CHECKPOINT_KEYS,
        ("train_loss", pl.Float64, "nats/token", "mean response-token cross-entropy over the segment's steps (null at step 0)"),
        ("lr", pl.Float64, "-", "learning rate at the last step of the segment"),
        ("tokens_seen", pl.Int64, "tokens", "cumulative response tokens trained on since step 0"),
        ("wall_s", pl.Float64, "s", "wall time of the segment"),
        ("sha256", pl.Utf8, "-", "sha256 of adapter_model.safetensors"),
    ),
})
