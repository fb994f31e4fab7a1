"""Parquet table schemas and atomic writes.

Every table the workflow writes is declared once here: column name, polars type,
unit and meaning. `write_table` checks a frame against its schema before writing,
so a stage can never emit a table with a missing, extra or mistyped column, and it
writes to a temporary file that is renamed into place, so an interrupted job never
leaves a plausible-looking partial file behind.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl


@dataclass(frozen=True)
class Column:
    name: str
    dtype: pl.DataType
    unit: str
    description: str


def _cols(*rows: tuple[str, pl.DataType, str, str]) -> tuple[Column, ...]:
    return tuple(Column(*row) for row in rows)


_CHECKPOINT_KEYS = (
    ("model", pl.Utf8, "-", "model name, a key of `models` in the config"),
    ("technique", pl.Utf8, "-", "technique name, a key of `techniques` in the config"),
    ("step", pl.Int64, "optimizer steps", "global fine-tuning step of the checkpoint (0 = base model)"),
)

SCHEMAS: dict[str, tuple[Column, ...]] = {
    "prompts": _cols(
        ("prompt_id", pl.Utf8, "-", "stable id: `<set>-<sha1 of normalised text, 12 hex>`"),
        ("set", pl.Utf8, "-", "prompt set: harmful, harmless or harmless_lookalike"),
        ("split", pl.Utf8, "-", "train, val, test, or unused (deduplicated pool not drawn)"),
        ("category", pl.Utf8, "-", "source-provided harm area or topic"),
        ("source", pl.Utf8, "-", "dataset the prompt comes from (advbench, harmbench, donotanswer, slt-safety)"),
        ("text", pl.Utf8, "-", "the user instruction, without chat template"),
    ),
    "completions": _cols(
        ("model", pl.Utf8, "-", "model name"),
        ("prompt_id", pl.Utf8, "-", "id in the prompts table"),
        ("set", pl.Utf8, "-", "prompt set"),
        ("split", pl.Utf8, "-", "prompt split"),
        ("prompt", pl.Utf8, "-", "the user instruction"),
        ("response", pl.Utf8, "-", "the base model's greedy answer, special tokens removed"),
        ("n_response_tokens", pl.Int64, "tokens", "generated tokens, end-of-turn included when reached"),
        ("truncated", pl.Boolean, "-", "true when generation hit max_new_tokens before ending its turn"),
    ),
    "training_mix": _cols(
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
    "checkpoint": _cols(
        *_CHECKPOINT_KEYS,
        ("train_loss", pl.Float64, "nats/token", "mean response-token cross-entropy over the segment's steps (null at step 0)"),
        ("lr", pl.Float64, "-", "learning rate at the last step of the segment"),
        ("tokens_seen", pl.Int64, "tokens", "cumulative response tokens trained on since step 0"),
        ("wall_s", pl.Float64, "s", "wall time of the segment"),
        ("sha256", pl.Utf8, "-", "sha256 of adapter_model.safetensors"),
    ),
    "refusal_eval": _cols(
        *_CHECKPOINT_KEYS,
        ("prompt_set", pl.Utf8, "-", "harmful or harmless (test split)"),
        ("refusal_rate", pl.Float64, "fraction", "share of greedy responses the substring judge calls a refusal"),
        ("refusal_score_logodds", pl.Float64, "nats", "mean log-odds of a refusal-start token at the first response position"),
        ("n", pl.Int64, "prompts", "prompts evaluated"),
        ("status", pl.Utf8, "-", "ok, or empty when the set had no prompts"),
    ),
    "refusal_generations": _cols(
        *_CHECKPOINT_KEYS,
        ("prompt_set", pl.Utf8, "-", "harmful or harmless"),
        ("prompt_id", pl.Utf8, "-", "id in the prompts table"),
        ("category", pl.Utf8, "-", "prompt category"),
        ("prompt", pl.Utf8, "-", "the user instruction"),
        ("response", pl.Utf8, "-", "greedy response"),
        ("refused", pl.Boolean, "-", "substring judge verdict"),
        ("refusal_score_logodds", pl.Float64, "nats", "log-odds of a refusal-start token at the first response position"),
    ),
    "trajectory": _cols(
        *_CHECKPOINT_KEYS,
        ("prompt_set", pl.Utf8, "-", "harmful or harmless"),
        ("refusal_rate", pl.Float64, "fraction", "from refusal_eval"),
        ("refusal_score_logodds", pl.Float64, "nats", "from refusal_eval"),
        ("n", pl.Int64, "prompts", "from refusal_eval"),
        ("status", pl.Utf8, "-", "from refusal_eval"),
        ("train_loss", pl.Float64, "nats/token", "from the checkpoint manifest"),
        ("tokens_seen", pl.Int64, "tokens", "from the checkpoint manifest"),
    ),
}


class SchemaError(ValueError):
    """A frame does not match its declared schema."""


def empty_frame(name: str) -> pl.DataFrame:
    return pl.DataFrame(schema={c.name: c.dtype for c in SCHEMAS[name]})


def conform(df: pl.DataFrame, name: str) -> pl.DataFrame:
    """Return `df` with exactly the schema's columns, in order, cast to the schema's types.

    Raises SchemaError naming the missing or unexpected columns; a cast that would
    lose information (e.g. text into an integer column) raises too.
    """
    columns = SCHEMAS[name]
    expected = [c.name for c in columns]
    missing = [c for c in expected if c not in df.columns]
    extra = [c for c in df.columns if c not in expected]
    if missing or extra:
        raise SchemaError(f"table '{name}': missing columns {missing}, unexpected columns {extra}")
    try:
        return df.select([pl.col(c.name).cast(c.dtype, strict=True) for c in columns])
    except pl.exceptions.PolarsError as err:
        raise SchemaError(f"table '{name}': a column does not cast to its declared type: {err}") from err


def atomic_target(path: str | os.PathLike) -> tuple[Path, Path]:
    """A temporary sibling of `path` (same filesystem, so the final rename is atomic)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    return final, Path(tmp)


def write_table(df: pl.DataFrame, path: str | os.PathLike, name: str) -> pl.DataFrame:
    """Check `df` against schema `name` and write it atomically as Parquet."""
    checked = conform(df, name)
    final, tmp = atomic_target(path)
    try:
        checked.write_parquet(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return checked


def read_table(path: str | os.PathLike, name: str) -> pl.DataFrame:
    """Read a Parquet table and check it against its schema."""
    return conform(pl.read_parquet(path), name)


def schema_markdown() -> str:
    """Every table schema as Markdown, for the documentation."""
    out = []
    for name, columns in SCHEMAS.items():
        out.append(f"### `{name}`\n\n| column | type | unit | meaning |\n|---|---|---|---|")
        out.extend(f"| `{c.name}` | {c.dtype} | {c.unit} | {c.description} |" for c in columns)
        out.append("")
    return "\n".join(out)
