"""Tiny, randomly initialised chat models built from a config, for fast tests.

The tokenizer is a small byte-level BPE trained here on the project's own
harmless prompts and the refusal texts, with a ChatML chat template, so the
whole chat/generation/training path runs exactly as on a real model.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def corpus() -> list[str]:
    from workflow_lib.finetune.mixes import REFUSALS

    text = resources.files("workflow_lib.data").joinpath("harmless_instructions.jsonl").read_text()
    return [json.loads(line)["text"] for line in text.splitlines() if line.strip()] + list(REFUSALS) * 5


def build_tokenizer(vocab_size: int = 600):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def build_model(tokenizer, arch: str = "llama", seed: int = 0, n_layers: int = 2):
    """A tiny causal LM of the given family, random weights from `seed`."""
    import transformers as tf

    common = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
                  num_attention_heads=4, max_position_embeddings=512, initializer_range=0.5, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    configs = {
        "llama": lambda: tf.LlamaConfig(num_key_value_heads=2, tie_word_embeddings=True, **common),
        "qwen2": lambda: tf.Qwen2Config(num_key_value_heads=2, **common),
        "gemma": lambda: tf.GemmaConfig(num_key_value_heads=2, head_dim=8, **common),
        "gpt_neox": lambda: tf.GPTNeoXConfig(**common),
    }
    torch.manual_seed(seed)
    return tf.AutoModelForCausalLM.from_config(configs[arch]())


def save_tiny_model(path: Path, arch: str = "llama", seed: int = 0) -> Path:
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, arch, seed)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # A random model would often emit structural tokens that decode to nothing; a real
    # chat model never does, so keep the tiny one to ordinary text.
    model.generation_config.suppress_tokens = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>"])
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def planned_generations(*, checkpoint_dir, model_dir, prompt_paths, out_dir, phrases, refusal_eval=None, jailbreak=None,
                        interventions=None, templates_path=None, direction_path=None, final_direction_path=None,
                        final_step=None, technique="sft", step=0, batch_size=8) -> list:
    """Run a checkpoint's generation plan (plain, then directed when a need has a hook) as the generate
    rule does; returns the generations tables' paths for the judging stages."""
    from workflow_lib.evaluation import generation_plan, generation_store

    settings = {"refusal_eval": refusal_eval or {"prompt_sets": ["harmful"], "split": "test", "max_prompts": 1,
                                                 "max_new_tokens": 1},
                "refusal_start_phrases": phrases, "batch_size": batch_size, "jailbreak": jailbreak,
                "interventions": interventions}
    kinds = ["plain"] + (["directed"] if generation_plan.needs_directions(settings) else [])
    paths = []
    for kind in kinds:
        path = Path(out_dir) / "generations" / f"{kind}.parquet"
        generation_store.run(kind=kind, model="tiny", technique=technique, step=step, model_dir=model_dir,
                             checkpoint_dir=checkpoint_dir, prompt_paths=prompt_paths, templates_path=templates_path,
                             settings=generation_plan.job_settings(settings, kind), code="test",
                             runtime={"device": "cpu", "dtype": "float32"},
                             out_path=path, direction_path=direction_path, final_direction_path=final_direction_path,
                             final_step=final_step)
        paths.append(path)
    return paths
