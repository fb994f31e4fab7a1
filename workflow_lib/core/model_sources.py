"""The `models` config entries, checked without loading anything (no torch: the DAG imports this)."""

from __future__ import annotations

from pathlib import Path

MODEL_SOURCES = ("embedded", "hf", "path")


class ModelSourceError(ValueError):
    """A model entry in the config cannot be resolved."""


def check_model_entry(name: str, entry: dict) -> None:
    """Cheap checks of one `models` entry, run before any job starts."""
    source = entry.get("source")
    if source not in MODEL_SOURCES:
        raise ModelSourceError(
            f"models.{name}.source is {source!r}; use one of {list(MODEL_SOURCES)}"
        )
    if source == "path":
        path = Path(entry.get("path") or "")
        if not entry.get("path") or not (path / "config.json").is_file():
            raise ModelSourceError(
                f"models.{name}.path {str(path)!r} is not a model folder (no config.json there); "
                "point it at a folder written by save_pretrained, or use source: hf / embedded"
            )
    if source == "hf" and not entry.get("id"):
        raise ModelSourceError(f"models.{name}.id is required when source is 'hf' (e.g. HuggingFaceTB/SmolLM2-135M-Instruct)")
