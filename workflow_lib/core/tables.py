"""Parquet table schemas and atomic writes.

Every table the workflow writes is declared once, in the `schemas.py` of the
subpackage whose stages write it (`workflow_lib/<part>/schemas.py`): column name,
polars type, unit and meaning. Each registers its tables here when its package is
imported; the column groups several parts share (checkpoint keys, SGLD traces) live
here. `write_table` checks a frame against its schema before writing,
so a stage can never emit a table with a missing, extra or mistyped column, and it
writes to a temporary file that is renamed into place, so an interrupted job never
leaves a plausible-looking partial file behind.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from workflow_lib.core import scratch


@dataclass(frozen=True)
class Column:
    name: str
    dtype: pl.DataType
    unit: str
    description: str


def columns(*rows: tuple[str, pl.DataType, str, str]) -> tuple[Column, ...]:
    return tuple(Column(*row) for row in rows)


CHECKPOINT_KEYS = (
    ("model", pl.Utf8, "-", "model name, a key of `models` in the config"),
    ("technique", pl.Utf8, "-", "technique name, a key of `techniques` in the config"),
    ("step", pl.Int64, "optimizer steps", "global fine-tuning step of the checkpoint (0 = base model)"),
)

LLC_KEYS = (
    ("parameter_space", pl.Utf8, "-", "sampled weights: lora, full, or a name of `llc.custom_spaces`"),
    ("dataset", pl.Utf8, "-", "data defining the loss: reference (the same for every technique), training_mix "
     "or a prompt set with base answers"),
)

SGLD_TRACE = (
    ("chain", pl.Int64, "-", "chain index"),
    ("sgld_step", pl.Int64, "SGLD steps", "step of the chain, burn-in included"),
    ("burn_in", pl.Boolean, "-", "true for burn-in steps (left out of the estimate)"),
    ("loss", pl.Float64, "nats/token", "minibatch loss at this step (NaN after a chain failed)"),
    ("batch_init_loss", pl.Float64, "nats/token", "the checkpoint's loss on the same minibatch: "
     "loss - batch_init_loss is free of batch-to-batch noise"),
    ("init_loss", pl.Float64, "nats/token", "devinterp's loss at the checkpoint, over one pass of the data"),
)

ESTIMATOR = ("estimator", pl.Utf8, "-", "sgld (devinterp's SGLD estimate, workflow_lib/slt/susceptibility.py) or "
              "linear_response (its exact small-noise limit, workflow_lib/slt/susceptibility_linear.py)")

SUSCEPTIBILITY_KEYS = (
    ("seed", pl.Int64, "-", "sgld: sampler seed (chain c uses seed + c); linear_response: the data seed of the "
     "sampling sequences (susceptibility.data_seed; the estimate itself has no randomness)"),
    ("component", pl.Utf8, "-", "weight restriction, in devinterp's pattern syntax (`l3 attn`, `l3 mlp`, `l3h2`, "
     "`l3g0`, `l3`) or a name of `susceptibility.restrictions.extra`"),
    ("layer", pl.Int64, "-", "decoder layer of the component (null for custom ones)"),
    ("head", pl.Int64, "-", "attention head (or GQA group) index; null otherwise"),
    ("component_kind", pl.Utf8, "-", "attn, mlp, layer, head, group or custom"),
    ("observable", pl.Utf8, "-", "a key of `susceptibility.observables`"),
)



# The parts of the DAG, in its order; each has a `schemas.py` (docs/tables.md lists them in this order).
PARTS = ("data", "finetune", "evaluation", "refusal", "slt", "analysis")
_REGISTRY: dict[str, dict[str, tuple[Column, ...]]] = {}


def register(part: str, schemas: dict[str, tuple[Column, ...]]) -> dict[str, tuple[Column, ...]]:
    """Declare the tables of one part of the DAG (called by `workflow_lib/<part>/schemas.py`)."""
    taken = {name: other for other, named in _REGISTRY.items() if other != part for name in named}
    clash = sorted(set(schemas) & set(taken))
    if clash:
        raise ValueError(f"tables {clash} of {part} are already declared by {[taken[n] for n in clash]}")
    _REGISTRY[part] = schemas
    return schemas


def all_schemas() -> dict[str, tuple[Column, ...]]:
    """Every table's schema, in the DAG's order."""
    for part in PARTS:
        importlib.import_module(f"workflow_lib.{part}.schemas")
    return {name: cols for part in PARTS for name, cols in _REGISTRY[part].items()}


def schema(name: str) -> tuple[Column, ...]:
    """The columns of table `name`, from whichever part declares it."""
    for named in _REGISTRY.values():
        if name in named:
            return named[name]
    known = all_schemas()
    if name not in known:
        raise KeyError(f"no table schema {name!r}; known: {sorted(known)}")
    return known[name]


class SchemaError(ValueError):
    """A frame does not match its declared schema."""


def empty_frame(name: str) -> pl.DataFrame:
    return pl.DataFrame(schema={c.name: c.dtype for c in schema(name)})


def conform(df: pl.DataFrame, name: str) -> pl.DataFrame:
    """Return `df` with exactly the schema's columns, in order, cast to the schema's types.

    Raises SchemaError naming the missing or unexpected columns; a cast that would
    lose information (e.g. text into an integer column) raises too.
    """
    columns = schema(name)
    expected = [c.name for c in columns]
    missing = [c for c in expected if c not in df.columns]
    extra = [c for c in df.columns if c not in expected]
    if missing or extra:
        raise SchemaError(f"table '{name}': missing columns {missing}, unexpected columns {extra}")
    try:
        return df.select([pl.col(c.name).cast(c.dtype, strict=True) for c in columns])
    except pl.exceptions.PolarsError as err:
        raise SchemaError(f"table '{name}': a column does not cast to its declared type: {err}") from err


def fill_missing(df: pl.DataFrame, name: str) -> pl.DataFrame:
    """`df` with the schema's columns it lacks added as nulls, then conformed.

    For tables whose rows mark a missing measurement: the absent values are nulls,
    never zeros, and the row's status says why.
    """
    absent = [pl.lit(None).alias(c.name) for c in schema(name) if c.name not in df.columns]
    return conform(df.with_columns(absent) if absent else df, name)


def atomic_target(path: str | os.PathLike) -> tuple[Path, Path]:
    """A temporary sibling of `path` (same filesystem, so the final rename is atomic)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch.sweep(final.parent, f".{final.name}.", ".tmp")  # left by a killed attempt (workflow_lib/core/scratch.py)
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
    """Every table schema as Markdown, for the documentation, one section per part of the DAG."""
    all_schemas()
    out = []
    for part in PARTS:
        out.append(f"## {part} (`workflow_lib/{part}/schemas.py`)\n")
        for name, columns in _REGISTRY[part].items():
            out.append(f"### `{name}`\n\n| column | type | unit | meaning |\n|---|---|---|---|")
            out.extend(f"| `{c.name}` | {c.dtype} | {c.unit} | {c.description} |" for c in columns)
            out.append("")
    return "\n".join(out)
