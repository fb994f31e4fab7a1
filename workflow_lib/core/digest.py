"""Code digests for cache invalidation.

Snakemake's `code` rerun trigger sees only a rule's own shell text, not the
Python it calls. Each rule therefore carries, in its params, a digest of the
`workflow_lib` modules its stage runs: the entry modules plus everything they
import from `workflow_lib`, found statically from the source (no import, no
torch). Editing `refusal_eval.py` changes only the digests of the stages that
import it, so only their jobs rerun. Package data read by a module (e.g. the
harmless prompts) is hashed with that module.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE = "workflow_lib"
ROOT = Path(__file__).resolve().parents[1]  # the workflow_lib package
DATA_FILES = {f"{PACKAGE}.prompts": ["data/*.jsonl"]}


def module_path(module: str) -> Path:
    rel = Path(*module.split(".")[1:])
    package_init = ROOT / rel / "__init__.py"
    return package_init if package_init.is_file() else ROOT / rel.with_suffix(".py")


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:k]) for k in range(2, len(parts))]


@lru_cache(maxsize=None)  # one parse per module per process: the DAG asks once per job (issue 21)
def imported_modules(module: str) -> frozenset[str]:
    """`workflow_lib` modules imported by `module` (absolute imports and `from workflow_lib import x`)."""
    tree = ast.parse(module_path(module).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] == PACKAGE and name != PACKAGE and module_path(name).is_file():
                found.add(name)
    return frozenset(found)


def closure(entries: list[str]) -> list[str]:
    """Entry modules, their parent packages and everything they import from the package, transitively."""
    todo, seen = list(entries), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(imported_modules(module))
        todo.extend(_parents(module))
    return sorted(seen)


def code_digest(entries: list[str]) -> str:
    """sha256 over the source (and package data) of the modules a stage runs."""
    return _code_digest(tuple(entries))


@lru_cache(maxsize=None)  # a Snakemake process reads each stage's code once, not once per job
def _code_digest(entries: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for module in closure(list(entries)):
        path = module_path(module)
        digest.update(f"{module}\0".encode())
        digest.update(path.read_bytes())
        for pattern in DATA_FILES.get(module, []):
            for data in sorted(ROOT.glob(pattern)):
                digest.update(data.name.encode())
                digest.update(data.read_bytes())
    return digest.hexdigest()[:16]
