"""`susceptibility_linear` stage: linear-response susceptibilities of one checkpoint, with their reliability.

Reads the same checkpoint, observables and sampling task as the SGLD stage
(`susceptibility.py`), computes the exact small-noise limit of devinterp's
estimator (`susceptibility_linear.py`) for every configured component, and
writes three tables:

- `susceptibility_sequences`: chi per component x observable sequence (mean over
  its answer tokens), from all sampling sequences and from each half of them;
- `susceptibility_tokens`: chi per token for the `per_token` components;
- `susceptibility`: per component x observable, the answer-token mean pooled
  over sequences, with its bootstrap standard error over prompts;

and, as a light job of its own (`write_reliability`), `susceptibility_reliability`:
split-half reliabilities of the component rankings, over the sampling data and
over the observable prompts.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from workflow_lib.core import models, tables
from workflow_lib.slt import sampling, susceptibility
from workflow_lib.slt import susceptibility_linear as linear
from workflow_lib.slt import susceptibility_reliability as reliability

log = logging.getLogger(__name__)


def linear_settings(settings: dict) -> dict:
    return linear.LINEAR_DEFAULTS | (settings.get("linear_response") or {})


def build_inputs(tokenizer, settings: dict, prompt_paths, completions_path, templates_path, mix_path):
    """(observables {name: rows}, the sampling task's packed sequences), as the SGLD stage builds them, but with
    every observable row that fits (one backward pass each, so no batch rounding)."""
    probes, data = susceptibility.stage_inputs(tokenizer, settings, prompt_paths, completions_path, templates_path,
                                               mix_path, batch_size=1,
                                               n_prompts=int(linear_settings(settings)["n_prompts"]))
    return probes, torch.stack(list(data["input_ids"]))


def estimate(lm, probes, sampling_rows: torch.Tensor, patterns: dict, token_components: list[str],
             sigma2: float, batch_size: int, device: str) -> dict:
    """Every number the tables need, from one model already set up for gradients."""
    masks = susceptibility.component_masks(lm, patterns)
    index = linear.ComponentIndex(lm, masks)
    started = time.monotonic()
    grads = linear.half_gradients(lm, sampling_rows, index, batch_size, device)
    gram, w = linear.half_gram(grads, index), grads.weights
    linear.fail_on_zero_gradient(gram, w, index.names)
    log.info("sampling-task gradients (2 halves of %d sequences): %.1f s", len(sampling_rows),
             time.monotonic() - started)
    products = linear.observable_products(lm, probes, grads, index, device)
    gg = {"all": linear.combine_gram(gram, w), "a": gram[0, 0], "b": gram[1, 1]}
    chi = {obs: {"all": linear.chi_from_products(sigma2, gg["all"], linear.combine_products(p, w)),
                 "a": linear.chi_from_products(sigma2, gg["a"], p[:, 0]),
                 "b": linear.chi_from_products(sigma2, gg["b"], p[:, 1])} for obs, p in products.items()}
    g_full = grads.full()
    del grads
    tokens = linear.token_chi(lm, probes, g_full, gg["all"], sigma2, index, token_components, batch_size, device)
    return {"components": index.names, "chi": chi, "tokens": tokens}


def _facts(components: list[str]) -> pl.DataFrame:
    return pl.DataFrame([{"component": c} | susceptibility.component_facts(c) for c in components],
                        schema={"component": pl.Utf8, "layer": pl.Int64, "head": pl.Int64,
                                "component_kind": pl.Utf8})


def sequence_frame(result: dict, probes) -> pl.DataFrame:
    frames = []
    for obs, rows in probes.items():
        values = result["chi"][obs]
        n = len(rows)
        for c, component in enumerate(result["components"]):
            frames.append(pl.DataFrame({
                "component": [component] * n, "observable": [obs] * n,
                "prompt_id": [r.prompt_id for r in rows],
                "n_tokens": [r.n_tokens - r.answer_start for r in rows],
                "chi": values["all"][:, c], "chi_half_a": values["a"][:, c], "chi_half_b": values["b"][:, c]}))
    return pl.concat(frames)


def token_frame(result: dict, probes) -> pl.DataFrame:
    frames = []
    for component, per_obs in result["tokens"].items():
        for obs, chi in per_obs.items():
            for row, values in zip(probes[obs], chi):
                positions = np.arange(1, row.n_tokens)  # loss j predicts token j + 1; padding dropped
                frames.append(pl.DataFrame({
                    "component": component, "observable": obs, "prompt_id": row.prompt_id,
                    "token_pos": positions, "token": np.asarray(row.input_ids)[positions],
                    "segment": np.where(positions >= row.answer_start, "answer", "prompt"),
                    "chi": values[positions - 1]}))
    schema = {"component": pl.Utf8, "observable": pl.Utf8, "prompt_id": pl.Utf8, "token_pos": pl.Int64,
              "token": pl.Int64, "segment": pl.Utf8, "chi": pl.Float64}
    return pl.concat(frames).cast(schema) if frames else pl.DataFrame(schema=schema)


def aggregate_frame(sequences: pl.DataFrame, tokens: pl.DataFrame, n_resamples: int, seed: int) -> pl.DataFrame:
    """Pooled answer-token mean per component x observable, its bootstrap SE over prompts, token spread where known."""
    rows = []
    for (obs,), block in sequences.group_by(["observable"], maintain_order=True):
        wide = block.pivot(on="component", index="prompt_id", values="chi", maintain_order=True)
        components = [c for c in wide.columns if c != "prompt_id"]
        weights = block.filter(pl.col("component") == components[0])["n_tokens"].to_numpy()
        values = wide.select(components).to_numpy()
        means = reliability.pooled_mean(values, weights)
        ses = reliability.bootstrap_se(values, weights, n_resamples, seed)
        rows += [{"component": c, "observable": obs, "chi_mean": float(means[j]), "chi_se": float(ses[j]),
                  "n_tokens": int(weights.sum()), "n_prompts": int(len(weights))} for j, c in enumerate(components)]
    table = pl.DataFrame(rows)
    spread = tokens.group_by("component", "observable").agg(
        chi_std=pl.col("chi").filter(pl.col("segment") == "answer").std(),
        chi_prompt_mean=pl.col("chi").filter(pl.col("segment") == "prompt").mean())
    return (table.join(spread, on=["component", "observable"], how="left")
            .with_columns(status=pl.lit("ok"), reason=pl.lit(""), estimator=pl.lit(linear.ESTIMATOR),
                          chi_linear=pl.col("chi_mean")))


def write_reliability(*, sequences_path, settings: dict, out_path) -> pl.DataFrame:
    """The `susceptibility_reliability` table of one checkpoint from its sequences table (a light job of its own,
    so that a new contrast or resampling setting reruns only this)."""
    sequences = tables.read_table(sequences_path, "susceptibility_sequences")
    keys = sequences.select("model", "technique", "step", "seed").unique()
    if keys.height != 1:
        raise ValueError(f"{sequences_path} holds {keys.height} checkpoints; expected one")
    rel = reliability_frame(sequences, settings.get("contrasts", {}), int(settings["split_half_resamples"]),
                            int(settings["seed"]))
    rel = (rel.with_columns(**{k: pl.lit(v) for k, v in keys.row(0, named=True).items()}) if rel.height
           else tables.empty_frame("susceptibility_reliability"))  # no kind has 3 or more components
    return tables.write_table(tables.fill_missing(rel, "susceptibility_reliability"), out_path,
                              "susceptibility_reliability")


def reliability_frame(sequences: pl.DataFrame, contrasts: dict, n_splits: int, seed: int) -> pl.DataFrame:
    """Split-half reliabilities of every ranking (observables, contrasts) within each component kind."""
    facts = _facts(sequences["component"].unique(maintain_order=True).to_list())
    observables_ = sequences["observable"].unique(maintain_order=True).to_list()
    rows = []
    for kind in facts["component_kind"].unique(maintain_order=True).to_list():
        names = facts.filter(pl.col("component_kind") == kind)["component"].to_list()
        if len(names) < 3:
            continue
        block = sequences.filter(pl.col("component").is_in(names))
        values, weights = {}, {}
        for obs in observables_:
            o = block.filter(pl.col("observable") == obs)
            weights[obs] = o.filter(pl.col("component") == names[0])["n_tokens"].to_numpy()
            values[obs] = o.pivot(on="component", index="prompt_id", values="chi", maintain_order=True).select(
                names).to_numpy()
        for name, (ranked_by, combine) in reliability.rankings(observables_, contrasts).items():
            base = {"estimator": linear.ESTIMATOR, "component_kind": kind, "ranked_by": ranked_by, "name": name,
                    "n_components": len(names)}
            split = reliability.prompt_split_halves(values, weights, combine, n_splits, seed)
            rows.append(reliability.summarise(split, **base, source="observable_prompt_halves"))
    halves = [sequences.group_by("component", "observable", maintain_order=True)
              .agg(chi_mean=(pl.col(col) * pl.col("n_tokens")).sum() / pl.col("n_tokens").sum())
              for col in ("chi_half_a", "chi_half_b")]
    rows += reliability.halves_rows(*halves, facts.select("component", "component_kind"), contrasts,
                                    estimator=linear.ESTIMATOR, source="sampling_data_halves")
    return pl.DataFrame(rows, infer_schema_length=None)


def run_linear_susceptibility(*, model: str, technique: str, step: int, model_dir, checkpoint_dir, mix_path,
                              prompt_paths: dict[str, str], completions_path, templates_path, settings: dict,
                              sequences_out, tokens_out, table_out, device: str = "cpu") -> pl.DataFrame:
    """Check, estimate and write the three linear-response tables of one checkpoint."""
    sampler = sampling.SAMPLER_DEFAULTS | settings["sampler"]
    lin = linear_settings(settings)
    sigma2 = linear.stationary_variance(sampler)
    device = str(models.resolve_device(device))
    lm, tokenizer = models.load_checkpoint(model_dir, checkpoint_dir, dtype="float32", device=device, merge=True)
    patterns = susceptibility.component_patterns(lm.config, lin["restrictions"])
    per_token = lin["per_token"] or {}
    wanted = per_token.get("layers", "all") or per_token.get("extra")
    token_patterns = susceptibility.component_patterns(lm.config, per_token) if wanted else {}
    susceptibility.component_masks(lm, patterns | token_patterns)  # a bad restriction fails before any gradient
    probes, sampling_rows = build_inputs(tokenizer, settings, prompt_paths, completions_path, templates_path,
                                         mix_path)
    sampling.select_parameters(lm, "full")
    lm.eval()
    log.info("linear response: sigma^2 = %.3g, %d components (%d per token), %d observable sequences",
             sigma2, len(patterns | token_patterns), len(token_patterns), sum(len(r) for r in probes.values()))
    result = estimate(lm, probes, sampling_rows, patterns | token_patterns, list(token_patterns), sigma2,
                      int(sampler["batch_size"]), device)
    keys = {"model": model, "technique": technique, "step": step, "seed": int(settings.get("data_seed") or 0)}
    facts = _facts(result["components"])
    sequences = sequence_frame(result, probes)
    tokens = token_frame(result, probes)
    table = aggregate_frame(sequences, tokens, int(lin["bootstrap_resamples"]), int(lin["seed"]))
    with_keys = {k: pl.lit(v) for k, v in keys.items()}
    tables.write_table(sequences.join(facts, on="component").with_columns(**with_keys), sequences_out,
                       "susceptibility_sequences")
    tables.write_table(tokens.join(facts, on="component").with_columns(**with_keys), tokens_out,
                       "susceptibility_tokens")
    Path(table_out).parent.mkdir(parents=True, exist_ok=True)
    return tables.write_table(tables.fill_missing(table.join(facts, on="component").with_columns(**with_keys),
                                                  "susceptibility"), table_out,
                              "susceptibility")
