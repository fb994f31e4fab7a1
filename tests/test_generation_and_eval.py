import polars as pl
import pytest
import torch

import tiny
from workflow_lib.core import chat, models, tables
from workflow_lib.data import completions
from workflow_lib.core import generation
from workflow_lib.evaluation import refusal_eval

INSTRUCTIONS = ["Name a fruit.", "Write a very short poem about the sea and the wind at night.", "Hi"]


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    model, tokenizer = models.load_base(tiny_model_dir)
    return model.eval(), tokenizer


def test_batched_greedy_equals_unbatched(lm):
    model, tokenizer = lm
    batched = generation.generate(model, tokenizer, INSTRUCTIONS, max_new_tokens=12, batch_size=3)
    for text, gen in zip(INSTRUCTIONS, batched):
        single = generation.generate(model, tokenizer, [text], max_new_tokens=12, batch_size=1)[0]
        assert gen.response == single.response
        assert gen.n_tokens == single.n_tokens
        assert torch.allclose(gen.first_logits, single.first_logits, atol=1e-4)


def reference_generate(model, tokenizer, instructions, max_new_tokens):
    """The tokens and first logits of Hugging Face's own greedy `generate`, one left-padded batch."""
    tokenizer.padding_side = "left"
    texts = [chat.prompt_text(tokenizer, inst) for inst in instructions]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    stop_ids = generation.end_of_turn_ids(model, tokenizer)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids,
                             pad_token_id=tokenizer.pad_token_id, return_dict_in_generate=True, output_logits=True)
    rows = []
    for tokens in out.sequences[:, batch["input_ids"].shape[1]:].tolist():
        stops = [k for k, tok in enumerate(tokens) if tok in stop_ids]
        rows.append(tokens[:stops[0] + 1] if stops else tokens)
    return rows, out.logits[0].float()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma", "gpt_neox"])
def test_own_decoder_gives_the_tokens_of_hf_generate(tiny_tokenizer, arch):
    """Dropping finished rows from the batch and cache changes no token (issue 19, item 3)."""
    model = tiny.build_model(tiny_tokenizer, arch=arch, seed=3).eval()
    instructions = INSTRUCTIONS + ["Tell me about rivers.", "Why is the sky blue?", "Count to ten slowly please."]
    # A random model rarely ends its turn, so a token it does write at varied steps also stops it here.
    free, _ = reference_generate(model, tiny_tokenizer, instructions, max_new_tokens=20)
    first_at = lambda tok: {row.index(tok) for row in free if tok in row}  # noqa: E731
    stop = max({tok for row in free for tok in row}, key=lambda tok: len(first_at(tok)))
    model.generation_config.eos_token_id = [tiny_tokenizer.eos_token_id, stop]
    expected, expected_logits = reference_generate(model, tiny_tokenizer, instructions, max_new_tokens=20)
    gens = generation.generate(model, tiny_tokenizer, instructions, max_new_tokens=20, batch_size=len(instructions))
    assert [g.token_ids for g in gens] == expected
    # the test has power: the answers end at different steps, so rows leave the batch mid-way
    assert len({g.n_tokens for g in gens}) > 1 and min(g.n_tokens for g in gens) < 20
    assert torch.allclose(torch.stack([g.first_logits for g in gens]), expected_logits, atol=1e-4)


def test_per_instruction_prefixes_equal_separate_calls(lm):
    """A prefill and a direct request in one batch answer as they do apart (pooling attacks is safe)."""
    model, tokenizer = lm
    pooled = generation.generate(model, tokenizer, INSTRUCTIONS * 2, max_new_tokens=10, batch_size=6,
                                 response_prefix=[""] * 3 + ["Sure, here is"] * 3)
    direct = generation.generate(model, tokenizer, INSTRUCTIONS, max_new_tokens=10, batch_size=3)
    prefilled = generation.generate(model, tokenizer, INSTRUCTIONS, max_new_tokens=10, batch_size=3,
                                    response_prefix="Sure, here is")
    assert [g.token_ids for g in pooled] == [g.token_ids for g in direct + prefilled]


def test_generation_logs_progress(lm, caplog, monkeypatch):
    """Long generations say how far they are: sequences done of total, tokens per second, ETA."""
    import logging

    from workflow_lib.core import progress

    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    model, tokenizer = lm
    with caplog.at_level(logging.INFO, logger="workflow_lib.core.progress"):
        generation.generate(model, tokenizer, INSTRUCTIONS, max_new_tokens=4, batch_size=2, what="test answers")
    lines = [r.getMessage() for r in caplog.records if r.name == "workflow_lib.core.progress"]
    assert lines[-1].startswith("test answers: 3/3 sequences") and "tokens/s" in lines[-1]
    assert any("ETA" in line for line in lines[:-1])


def test_first_logits_are_the_next_token_logits_of_the_prompt(lm):
    model, tokenizer = lm
    gen = generation.generate(model, tokenizer, INSTRUCTIONS[:1], max_new_tokens=2, batch_size=1)[0]
    ids = tokenizer(chat.prompt_text(tokenizer, INSTRUCTIONS[0]), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        expected = model(**ids).logits[0, -1]
    assert torch.allclose(gen.first_logits, expected, atol=1e-4)


def test_truncation_flag(lm):
    model, tokenizer = lm
    gens = generation.generate(model, tokenizer, INSTRUCTIONS, max_new_tokens=3, batch_size=2)
    for g in gens:
        assert g.n_tokens <= 3
        assert g.truncated == (g.n_tokens == 3 and not g.response.endswith("<|im_end|>"))


def test_base_completions_table(tiny_model_dir, prompt_tables, tmp_path):
    out = tmp_path / "completions.parquet"
    table = completions.base_completions(model="tiny", model_dir=tiny_model_dir, prompt_paths=list(prompt_tables.values()),
                                         settings={"splits": ["train"], "max_new_tokens": 4, "batch_size": 4},
                                         out_path=out)
    assert table.height == 16 and set(table["split"]) == {"train"}
    assert (table["n_response_tokens"] <= 4).all()
    assert tables.read_table(out, "completions").equals(table)


def test_refusal_eval_on_a_checkpoint(tiny_model_dir, prompt_tables, tmp_path):
    from workflow_lib.finetune import loop

    settings = {"kind": "sft_refusal", "seed": 0, "lora": {"r": 2, "alpha": 4, "dropout": 0.0,
                                                            "target_modules": ["q_proj", "v_proj"]}}
    loop.run_segment(model="tiny", technique="t", settings=settings, model_dir=tiny_model_dir, mix_path=None,
                     prev_dir=None, prev_step=None, step=0, out_dir=tmp_path / "ckpt")
    eval_settings = {"prompt_sets": ["harmful", "harmless"], "split": "test", "max_new_tokens": 5,
                     "max_prompts": None}
    [plain] = tiny.planned_generations(checkpoint_dir=tmp_path / "ckpt", model_dir=tiny_model_dir,
                                       prompt_paths=prompt_tables, out_dir=tmp_path, phrases=["I'm sorry", "Sorry"],
                                       refusal_eval=eval_settings)
    table = refusal_eval.refusal_eval(model="tiny", technique="t", step=0, model_dir=tiny_model_dir,
                                      prompt_paths=prompt_tables, generations_path=plain, settings=eval_settings,
                                      out_path=tmp_path / "r.parquet", judged_path=tmp_path / "g.parquet")
    assert table["prompt_set"].to_list() == ["harmful", "harmless"]
    assert table["n"].to_list() == [6, 6] and (table["status"] == "ok").all()
    gens = tables.read_table(tmp_path / "g.parquet", "refusal_generations")
    assert gens.height == 12
    rate = gens.filter(pl.col("prompt_set") == "harmful")["refused"].mean()
    assert table.filter(pl.col("prompt_set") == "harmful")["refusal_rate"][0] == pytest.approx(rate)
    assert gens["refusal_score_logodds"].is_finite().all()
