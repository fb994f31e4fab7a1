"""Temporary folders and files that never outlive their job, even one killed with SIGKILL.

A job builds next to its output, in a hidden sibling named after that output
(`.<output name>.<purpose>-<pid>`), and removes it when done. A SIGKILL skips the
removal, so before making its own, a job removes every sibling an earlier attempt
at the same output left. That is safe: Snakemake runs one job per output at a
time, under its lock, so any such sibling belongs to a dead attempt (issue 20).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def sweep(parent: Path, prefix: str, suffix: str = "") -> None:
    """Remove what earlier attempts left in `parent`: entries named `prefix...suffix`."""
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        if entry.name.startswith(prefix) and entry.name.endswith(suffix):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


def fresh_folder(owner: str | os.PathLike, purpose: str = "tmp") -> Path:
    """A new empty `.<owner name>.<purpose>-<pid>` beside `owner`, after sweeping earlier attempts' ones."""
    owner = Path(owner)
    owner.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{owner.name}.{purpose}-"
    sweep(owner.parent, prefix)
    folder = owner.parent / f"{prefix}{os.getpid()}"
    folder.mkdir()
    return folder


@contextmanager
def folder(owner: str | os.PathLike, purpose: str = "tmp"):
    """`fresh_folder`, removed on the way out whatever happens."""
    path = fresh_folder(owner, purpose)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def folder_beside(owner: str | os.PathLike | None, purpose: str):
    """`folder(owner, purpose)`, or a system temporary folder when there is no output to sit beside."""
    if owner is None:
        with tempfile.TemporaryDirectory() as path:
            yield Path(path)
    else:
        with folder(owner, purpose) as path:
            yield path
