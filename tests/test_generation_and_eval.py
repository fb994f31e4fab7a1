import polars as pl
import pytest
import torch

from workflow_lib import chat, completions, generation, models, refusal_eval, tables

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
    eval_settings = {"split": "test", "max_new_tokens": 5, "batch_size": 4, "max_prompts": None,
                     "refusal_start_phrases": ["I'm sorry", "Sorry"]}
    table = refusal_eval.refusal_eval(model="tiny", technique="t", step=0, model_dir=tiny_model_dir,
                                      checkpoint_dir=tmp_path / "ckpt", prompt_paths=prompt_tables,
                                      settings=eval_settings, out_path=tmp_path / "r.parquet",
                                      generations_path=tmp_path / "g.parquet")
    assert table["prompt_set"].to_list() == ["harmful", "harmless"]
    assert table["n"].to_list() == [6, 6] and (table["status"] == "ok").all()
    gens = tables.read_table(tmp_path / "g.parquet", "refusal_generations")
    assert gens.height == 12
    rate = gens.filter(pl.col("prompt_set") == "harmful")["refused"].mean()
    assert table.filter(pl.col("prompt_set") == "harmful")["refusal_rate"][0] == pytest.approx(rate)
    assert gens["refusal_score_logodds"].is_finite().all()
