import polars as pl
import pytest

from workflow_lib.data import prompts
from workflow_lib.core import tables


def _rows(texts):
    return [{"text": t, "category": "c", "source": "s"} for t in texts]


def test_splits_are_disjoint_deterministic_and_deduplicated():
    texts = [f"Instruction number {i}" for i in range(40)] + ["instruction  NUMBER 3!", "Instruction number 5"]
    settings = {"splits": {"train": 10, "val": 5, "test": 5}}
    a = prompts.build_prompt_set("harmless", _rows(texts), settings, seed=1, max_chars=300)
    b = prompts.build_prompt_set("harmless", list(reversed(_rows(texts))), settings, seed=1, max_chars=300)
    assert a.equals(b)  # independent of source order
    assert a.height == 40  # two duplicates dropped
    assert a["prompt_id"].n_unique() == a.height
    counts = dict(a.group_by("split").len().rows())
    assert counts == {"train": 10, "val": 5, "test": 5, "unused": 20}
    c = prompts.build_prompt_set("harmless", _rows(texts), settings, seed=2, max_chars=300)
    assert not a.filter(pl.col("split") == "test")["prompt_id"].equals(c.filter(pl.col("split") == "test")["prompt_id"])


def test_empty_after_filtering_is_a_clear_error():
    with pytest.raises(prompts.PromptSetError, match="empty after filtering.*max_chars=5"):
        prompts.build_prompt_set("harmful", _rows(["a long instruction"]), {"splits": {"test": 1}}, 0, max_chars=5)
    with pytest.raises(prompts.PromptSetError, match="splits ask for 30"):
        prompts.build_prompt_set("harmful", _rows(["x", "y"]), {"splits": {"test": 30}}, 0, max_chars=50)


def test_unknown_sources_are_named(wheel_cache):
    with pytest.raises(prompts.PromptSetError, match=r"unknown sources \['reddit'\]"):
        prompts.raw_prompts("harmful", {"sources": ["reddit"]}, wheel_cache)
    with pytest.raises(prompts.PromptSetError, match=r"unknown areas \['gossip'\]"):
        prompts.raw_prompts("harmful", {"sources": ["donotanswer"], "donotanswer_areas": ["gossip"]}, wheel_cache)


def test_real_sources_from_the_wheels(wheel_cache):
    rows = prompts.raw_prompts("harmful", {"sources": ["advbench", "harmbench", "donotanswer"],
                                           "donotanswer_areas": ["malicious_uses"]}, wheel_cache)
    by_source = pl.DataFrame(rows).group_by("source").len()
    assert dict(by_source.rows()) == {"advbench": 520, "harmbench": 200, "donotanswer": 243}
    assert any("bomb" in r["text"].lower() for r in rows)
    harmless = prompts.raw_prompts("harmless", {}, wheel_cache)
    assert len(harmless) >= 300 and len({r["category"] for r in harmless}) >= 10


def test_prepared_tables_follow_the_schema(prompt_tables):
    for path in prompt_tables.values():
        df = tables.read_table(path, "prompts")
        assert set(df["split"]) == {"train", "val", "test", "unused"}
        assert df["text"].str.len_chars().max() <= 300
