"""`llc` stage: the local learning coefficient of one checkpoint in one parameter space on one dataset.

The loss is next-token cross-entropy over packed chat-formatted examples:
- `reference` (the default): one fixed set per model, the base model's own
  answers to the prompt sets of `llc.reference.sets`, the same loss for every
  technique and checkpoint, so that LLC values compare across techniques and
  checkpoints that are one model are measured once (config/README.md#llc);
- `training_mix`: the technique's own training examples (prompt, any given
  context, and the trained response; DPO rows use the chosen answer), i.e. the
  loss landscape the fine-tuning actually moved on;
- a prompt set name (`harmful`, `harmless`, ...): that set's prompts with the
  base model's own answers from `base_completions`.

The packed sequences are drawn with `llc.data_seed`, never the sampler seed, so
that a new sampler seed changes the noise and batch order, not the loss.
Sampling always runs in float32: SGLD's small noise updates vanish in bf16.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from workflow_lib.core import chat, models, statistics, tables
from workflow_lib.slt import sampling

REFERENCE = "reference"
REFERENCE_SETS = ("harmful", "harmless")


class ReferenceLossError(ValueError):
    """The reference loss cannot be built as configured."""


def loss_token_streams(tokenizer, dataset: str, mix_path: str | Path | None,
                       completions_path: str | Path, reference_sets=REFERENCE_SETS) -> list[list[int]]:
    """Token ids of every example that defines the loss, one list per example."""
    if dataset == REFERENCE:
        completions = tables.read_table(completions_path, "completions").filter(
            pl.col("set").is_in(list(reference_sets)))
        missing = sorted(set(reference_sets) - set(completions["set"].unique().to_list()))
        if missing:
            raise ReferenceLossError(f"llc.reference.sets names {missing}, which base_completions did not answer; "
                                     "add them to base_completions.sets or remove them")
        return [chat.encode_example(tokenizer, r["prompt"], r["response"], ends_turn=not r["truncated"])[0]
                for r in completions.sort("set", "prompt_id").iter_rows(named=True)]
    if dataset == "training_mix":
        if mix_path is None:
            raise ValueError("dataset training_mix needs the technique's training_mix table")
        rows = tables.read_table(mix_path, "training_mix").iter_rows(named=True)
        return [chat.encode_example(tokenizer, r["prompt"], r["response"], ends_turn=r["ends_turn"],
                                    context=r["context"] or "")[0] for r in rows]
    completions = tables.read_table(completions_path, "completions").filter(pl.col("set") == dataset)
    if completions.is_empty():
        raise ValueError(f"base_completions has no rows for prompt set {dataset!r}; add it to "
                         "base_completions or pick training_mix")
    return [chat.encode_example(tokenizer, r["prompt"], r["response"], ends_turn=not r["truncated"])[0] for r in completions.iter_rows(named=True)]


def loss_dataset(tokenizer, dataset: str, settings: dict, sampler: dict, mix_path, completions_path):
    """The packed sequences of an LLC loss, drawn with `llc.data_seed` (never the sampler seed).

    The reference loss must fill `n_sequences` exactly: a shorter one would
    silently change the batches per pass and so the estimate's weighting.
    """
    reference_sets = settings.get("reference", {}).get("sets", REFERENCE_SETS)
    streams = loss_token_streams(tokenizer, dataset, mix_path, completions_path, reference_sets)
    data = sampling.packed_dataset(streams, int(sampler["seq_len"]), int(sampler["n_sequences"]),
                              int(settings.get("data_seed", 0)))
    if dataset == REFERENCE and len(data) < int(sampler["n_sequences"]):
        raise ReferenceLossError(f"the reference loss packs {len(data)} sequences of {sampler['seq_len']} tokens, "
                                 f"fewer than llc.sampler.n_sequences = {sampler['n_sequences']}: lower "
                                 "n_sequences or seq_len, or add prompt sets to llc.reference.sets")
    return data


def tilted_loss(model, data, masks: dict, sampler: dict, device: str):
    """`llc_tilt.TiltedLoss` of the causal LM loss at the checkpoint, from one pass over `data`."""
    import torch

    from workflow_lib.slt import llc_tilt

    rows = torch.stack(list(data["input_ids"]))
    gradient = llc_tilt.mean_loss_gradient(model, rows, list(masks), sampling.causal_lm_loss, int(sampler["batch_size"]),
                                           device)
    return llc_tilt.TiltedLoss(model, gradient, sampling.causal_lm_loss)


def load_in_space(model_dir, checkpoint_dir, space: str, patterns: list[str] | None, device: str):
    """The checkpoint as the sampler should see it, and devinterp masks for `space`.

    `lora` keeps the adapter unmerged so only its weights move (at step 0 the
    adapter is the zero-effect initialisation, B = 0, so the space is the same
    along the whole trajectory); `full` and glob spaces sample the merged weights.
    """
    model, tokenizer = models.load_checkpoint(model_dir, checkpoint_dir, dtype="float32", device=device,
                                              merge=space != "lora")
    if space == ADAPTED and patterns is None:
        patterns = adapted_weights(model, checkpoint_dir)
    return model, tokenizer, sampling.select_parameters(model, space, patterns)


ADAPTED = "adapted"


def adapted_weights(merged, checkpoint_dir) -> list[str]:
    """The built-in space `adapted`: weight names of the modules this checkpoint's LoRA adapter adapts.

    Read from the adapter's own config, matched with PEFT's own rule, so the space
    follows `lora.target_modules` (or PEFT's per-architecture default) on any model.
    Merged, these weights move the model linearly: no B x A saddle (config/README.md#llc).
    """
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    config = LoraConfig.from_pretrained(str(Path(checkpoint_dir) / "adapter"))
    params = dict(merged.named_parameters())
    return [f"{name}.weight" for name, _ in merged.named_modules()
            if f"{name}.weight" in params and check_target_module_exists(config, name)]


def _scaled_rise(samples, sampler: dict) -> np.ndarray:
    """n_beta x the batch-matched loss rise of every post-burn-in draw (chains x draws): its mean is the LLC."""
    burn_in = int(sampler["burn_in"])
    return float(sampler["n_beta"]) * (samples.trace[:, burn_in:] - samples.batch_init[:, burn_in:])


def summary_se(samples, chains, sampler: dict) -> float:
    """Standard error of the LLC over the ok chains (`statistics.chain_se`; NaN when none is ok)."""
    scaled = _scaled_rise(samples, sampler)
    ok = [scaled[c.chain] for c in chains if c.status == sampling.OK]
    return statistics.chain_se(ok) if ok else float("nan")


def run_llc(*, model: str, technique: str, step: int, model_dir, checkpoint_dir, space: str, dataset: str,
            mix_path, completions_path, settings: dict, out_path, trace_path, device: str = "cpu",
            dtype: str = "float32") -> pl.DataFrame:
    """Estimate, diagnose and write `llc` and `llc_trace` for one (checkpoint, space, dataset)."""
    sampler = sampling.SAMPLER_DEFAULTS | settings.get("sampler", {})
    patterns = settings.get("custom_spaces", {}).get(space)
    lm, tokenizer, masks = load_in_space(model_dir, checkpoint_dir, space, patterns, str(models.resolve_device(device)))
    data = loss_dataset(tokenizer, dataset, settings, sampler, mix_path, completions_path)
    if len(data) < int(sampler["batch_size"]):
        raise ValueError(f"{len(data)} packed sequences < llc batch_size {sampler['batch_size']}")
    device = str(models.resolve_device(device))
    loss_fn = tilted_loss(lm, data, masks, sampler, device) if settings.get("tilt", False) else sampling.causal_lm_loss
    chains, samples, summary = sampling.estimate_llc(lm, data, masks, sampler, settings.get("diagnostics", {}),
                                              loss_fn=loss_fn, device=device, scratch_owner=out_path)
    keys = {"model": model, "technique": technique, "step": step, "parameter_space": space, "dataset": dataset,
            "seed": int(sampler["seed"])}
    n_params = sampling.count_parameters(lm, masks)
    burn_in = int(sampler["burn_in"])
    scaled = _scaled_rise(samples, sampler)
    rows = [keys | {"row": "chain", "chain": c.chain, "llc_mean": c.llc, "llc_std": None,
                    "llc_se": statistics.batch_means_se([scaled[c.chain]]), "init_loss": c.init_loss,
                    "trace_drift": c.drift, "n_parameters": n_params, "n_ok_chains": None, "status": c.status,
                    "reason": c.reason} for c in chains]
    rows.append(keys | {"row": "summary", "chain": None, "llc_mean": summary["llc_mean"], "llc_std": summary["llc_std"],
                        "llc_se": summary_se(samples, chains, sampler) if summary["status"] == sampling.OK else float("nan"),
                        "init_loss": float(np.mean([c.init_loss for c in chains])), "trace_drift": None,
                        "n_parameters": n_params, "n_ok_chains": summary["n_ok"], "status": summary["status"],
                        "reason": summary["reason"]})
    table = tables.write_table(pl.DataFrame(rows, infer_schema_length=None), out_path, "llc")
    n_chains, n_steps = samples.trace.shape
    tables.write_table(pl.DataFrame({
        **{k: [v] * (n_chains * n_steps) for k, v in keys.items()},
        "chain": np.repeat(np.arange(n_chains), n_steps),
        "sgld_step": np.tile(np.arange(n_steps), n_chains),
        "burn_in": np.tile(np.arange(n_steps) < burn_in, n_chains),
        "loss": samples.trace.reshape(-1),
        "batch_init_loss": samples.batch_init.reshape(-1),
        "init_loss": np.repeat([c.init_loss for c in chains], n_steps),
        "batch_key": samples.batch_keys.reshape(-1),
    }), trace_path, "llc_trace")
    return table
