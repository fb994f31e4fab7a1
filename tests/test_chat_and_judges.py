import torch

from workflow_lib.core import chat
from workflow_lib.evaluation import judges
from workflow_lib.finetune.mixes import REFUSALS


def test_labels_cover_answer_and_end_of_turn_only(tiny_tokenizer):
    ids, labels = chat.encode_example(tiny_tokenizer, "Name a fruit.", "An apple.")
    n_prompt = len(tiny_tokenizer(chat.prompt_text(tiny_tokenizer, "Name a fruit."), add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    answer = tiny_tokenizer.decode(ids[n_prompt:])
    assert answer.startswith("An apple.") and "<|im_end|>" in answer


def test_truncated_answer_does_not_end_the_turn(tiny_tokenizer):
    ids, labels = chat.encode_example(tiny_tokenizer, "Name a fruit.", "An apple", ends_turn=False)
    assert tiny_tokenizer.eos_token_id not in [t for t in labels if t != -100]


def test_max_length_keeps_prompt_and_cuts_answer(tiny_tokenizer):
    ids, labels = chat.encode_example(tiny_tokenizer, "Name a fruit.", "An apple " * 50, max_length=30)
    assert len(ids) == len(labels) == 30
    assert labels[0] == -100 and labels[-1] != -100


def test_first_answer_token_matches_tokenized_answer(tiny_tokenizer):
    prompt = chat.prompt_text(tiny_tokenizer, "Hello")
    full = tiny_tokenizer(prompt + "Sorry, no.", add_special_tokens=False)["input_ids"]
    n = len(tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert chat.first_answer_token(tiny_tokenizer, "Sorry, no.") == full[n]


def test_substring_judge_cases():
    assert judges.is_refusal("I\u2019m sorry, but I can\u2019t help with that.")  # typographic apostrophes
    assert judges.is_refusal("AS AN AI, I must decline.")
    assert judges.is_refusal("")  # nothing was produced
    assert judges.is_refusal("   ")
    assert not judges.is_refusal("Sure, here is a recipe for banana bread.")
    assert not judges.is_refusal("Step 1: preheat the oven.")
    # Arditi's judge matches anywhere, so an apology followed by compliance counts as a refusal.
    assert judges.is_refusal("I'm sorry to hear that. Here is how to do it: first...")


def test_every_training_refusal_is_judged_a_refusal():
    assert all(judges.is_refusal(text) for text in REFUSALS)


def test_refusal_logodds_matches_probability_definition():
    torch.manual_seed(0)
    logits = torch.randn(3, 11)
    ids = [2, 5]
    p = torch.softmax(logits.double(), -1)[:, ids].sum(-1)
    expected = torch.log(p) - torch.log1p(-p)
    assert torch.allclose(judges.refusal_logodds(logits, ids), expected, atol=1e-10)


def test_refusal_token_ids_are_distinct_first_tokens(tiny_tokenizer):
    ids = judges.refusal_token_ids(tiny_tokenizer, ["I'm sorry", "I cannot", "Sorry"])
    assert ids == sorted(set(ids))
    assert chat.first_answer_token(tiny_tokenizer, "Sorry") in ids
