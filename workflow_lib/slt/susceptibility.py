"""`susceptibility` stage: per-token susceptibilities of one checkpoint (Baker et al. 2025, app. C.4).

devinterp 2.0.1 does the work: `create_param_masks` turns each weight
restriction (`l3 attn`, `l3 mlp`, `l3h2`, `l3g0`, `embed`, ...) into masks, and
`susceptibilities` runs one SGLD `sample()` per restriction plus the required
unrestricted (`full`) one, then estimates, for every observable token,

    chi_C(token) = -( E_C[phi * (l_token - L)] - E_C[phi] * E_full[l_token - L] )

where L is the sampling task's mean loss, phi = L(w) - L(w_checkpoint), and E_C
averages over the draws of the posterior restricted to component C: minus the
covariance between phi and the token's loss relative to the sampling task. A
positive chi means that moving component C in directions that raise the
sampling loss lowers that token's (relative) loss.

What this module adds around devinterp:
- the checkpoint is merged into plain weights and every weight is made
  trainable, so restriction patterns find the layers and the `full` chain moves
  the whole model (NOTES-devinterp, pitfalls 5 and 6); dropout is off;
- every restriction is checked against the model (layer, head and group indices)
  before any sampling, with an error that names the config key;
- the sampling-task observable is the whole sampling dataset and the initial
  loss covers exactly one pass of it, so phi is zero at the checkpoint instead of
  carrying a batch-dependent offset;
- each restriction's chains are diagnosed like LLC chains (`sampling.diagnose_chain`
  on the batch-matched trace), and the verdict becomes the `status` of its rows;
- per-token results are mapped back to prompt ids, token ids and the
  prompt/answer segment, and padding is dropped.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from workflow_lib.slt import frozen_prefix as frozen_prefix_loss
from workflow_lib.slt import susceptibility_control as variance
from workflow_lib.slt import llc, observables, sampling
from workflow_lib.core import models, progress, scratch, tables

SAMPLING_TASK = "sampling_task"
log = logging.getLogger(__name__)
PER_LAYER_KINDS = ("attn", "mlp", "layer", "heads", "groups")


class RestrictionError(ValueError):
    """A weight restriction names something the model does not have."""


# ---- weight restrictions ------------------------------------------------------------------------


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def component_patterns(model_config, restrictions: dict) -> dict[str, str | list[str]]:
    """Component name -> devinterp restriction pattern, in layer order; indices checked against the model."""
    cfg = _text_config(model_config)
    n_layers, n_heads = int(cfg.num_hidden_layers), int(cfg.num_attention_heads)
    n_groups = int(getattr(cfg, "num_key_value_heads", None) or n_heads)
    layers = list(range(n_layers)) if restrictions.get("layers", "all") == "all" else list(restrictions["layers"])
    missing = [layer for layer in layers if not 0 <= int(layer) < n_layers]
    if missing:
        raise RestrictionError(f"susceptibility.restrictions.layers names layers {missing}, but the model has "
                               f"{n_layers} layers (0 to {n_layers - 1}); pick layers in that range or 'all'")
    kinds = list(restrictions.get("per_layer", ["attn", "mlp"]))
    unknown = [k for k in kinds if k not in PER_LAYER_KINDS]
    if unknown:
        raise RestrictionError(f"susceptibility.restrictions.per_layer has unknown kinds {unknown}; "
                               f"choose from {list(PER_LAYER_KINDS)}")
    out: dict[str, str | list[str]] = {}
    for layer in layers:
        for kind in kinds:
            if kind in ("attn", "mlp"):
                out[f"l{layer} {kind}"] = f"l{layer} {kind}"
            elif kind == "layer":
                out[f"l{layer}"] = f"l{layer}"
            elif kind == "heads":
                out.update({f"l{layer}h{h}": f"l{layer}h{h}" for h in range(n_heads)})
            else:
                out.update({f"l{layer}g{g}": f"l{layer}g{g}" for g in range(n_groups)})
    for name, pattern in (restrictions.get("extra") or {}).items():
        if name == "full" or name in out:
            raise RestrictionError(f"susceptibility.restrictions.extra.{name}: the name is taken "
                                   f"({'reserved for the unrestricted chain' if name == 'full' else 'a per-layer component'})")
        out[name] = pattern
    if not out:
        raise RestrictionError("susceptibility.restrictions selects no component; set layers and per_layer, or extra")
    return out


def component_masks(model, patterns: dict[str, str | list[str]]) -> dict[str, dict]:
    """devinterp masks of every component, built before any sampling so a bad pattern fails in seconds."""
    from devinterp.slt.weight_restrictions import create_param_masks

    masks = {}
    for name, pattern in patterns.items():
        try:
            masks[name] = create_param_masks(model, pattern)
        except (ValueError, TypeError) as err:
            raise RestrictionError(f"susceptibility restriction {name!r} (pattern {pattern!r}) does not fit "
                                   f"this model: {err}") from None
        if not masks[name]:
            raise RestrictionError(f"susceptibility restriction {name!r} (pattern {pattern!r}) selects no weight "
                                   "of this model (e.g. `unembed` on a model with tied embeddings); remove it")
    return masks


def component_facts(name: str) -> dict:
    """layer, head and kind of a component name (null where it has none)."""
    if m := re.fullmatch(r"l(\d+) (attn|mlp)", name):
        return {"layer": int(m[1]), "head": None, "component_kind": m[2]}
    if m := re.fullmatch(r"l(\d+)h(\d+)", name):
        return {"layer": int(m[1]), "head": int(m[2]), "component_kind": "head"}
    if m := re.fullmatch(r"l(\d+)g(\d+)", name):
        return {"layer": int(m[1]), "head": int(m[2]), "component_kind": "group"}
    if m := re.fullmatch(r"l(\d+)", name):
        return {"layer": int(m[1]), "head": None, "component_kind": "layer"}
    return {"layer": None, "head": None, "component_kind": "custom"}


# ---- sampling ------------------------------------------------------------------------------------


def sample_susceptibilities(model, sampling_data, probes: dict[str, list[observables.ObservableRow]],
                            masks: dict[str, dict], sampler: dict, *, device: str = "cpu",
                            scratch_owner: str | Path | None = None, frozen_prefix: bool = True,
                            control: bool = False):
    """devinterp sampling and estimate over every component, and the batch-matched trace of every restriction.

    As devinterp's `susceptibilities()`: one `sample()` per restriction plus the
    unrestricted `full` one, then `compute_susceptibilities()`. We call the two
    steps ourselves only to give each chain its own loss function: with
    `frozen_prefix`, a chain whose weights all lie in decoder layers >= k runs its
    forward passes from layer k (`frozen_prefix.py`; exact).

    With `control`, every component chain also records what the Stein control
    variates need (`susceptibility_control.py`), and the last value returned is
    their frame (one row per component x observable); else it is None.

    Returns (the loaded /susceptibilities and /context datasets, {restriction: (trace, batch_init)},
    {restriction: first layer its forward passes ran from}, the /susceptibilities of the first and of the
    second half of the draws, the control-variate frame or None).
    """
    import torch
    import xarray as xr
    from devinterp.slt.sampling import sample
    from devinterp.slt.susceptibilities import compute_susceptibilities

    s = sampling.SAMPLER_DEFAULTS | sampler
    epoch = sampling.epoch_batches(len(sampling_data), s)
    batch_size = int(s["batch_size"])
    obs = {SAMPLING_TASK: (sampling_data, epoch)}  # phi over exactly the pass the initial loss covers
    obs |= {name: (observables.as_dataset(rows), len(rows) // batch_size) for name, rows in probes.items()}
    keys = {f"c{i}": name for i, name in enumerate(masks)}  # zarr-safe restriction keys
    everything = {name: None for name, _ in model.named_parameters()}
    restrictions = {"full": everything} | {key: masks[name] for key, name in keys.items()}
    sequences = torch.cat([torch.stack(list(sampling_data["input_ids"]))]
                          + [torch.tensor([list(r.input_ids) for r in rows]) for rows in probes.values()])
    reference = sampling.sequence_losses(model, sampling_data, sampling.causal_lm_loss, batch_size, device)
    traces, starts, wr_map, recorders = {}, {}, {}, {}
    directions = control_directions(model, sampling_data, probes, masks, batch_size, device) if control else None
    per_restriction = progress.sgld_evaluations(s, epoch, observable_batches=sum(b for _, b in obs.values()))
    steps = progress.Progress("SGLD (susceptibilities)", per_restriction * len(restrictions), "loss evaluations")
    sampling.freeze_heap()
    with scratch.folder_beside(scratch_owner, "sgld") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a failed chain shows up as NaN in its trace, checked below
        for key, chain_masks in restrictions.items():
            loss_fn, starts[keys.get(key, key)] = (
                frozen_prefix_loss.loss_for_chain(model.to(device), chain_masks, sequences.to(device), batch_size,
                                                  sampling.causal_lm_loss)
                if frozen_prefix else (sampling.causal_lm_loss, 0))
            if control and key != "full":
                loss_fn = recorders[key] = variance.StepRecorder(model, chain_masks, directions.vectors, loss_fn)
            wr_map[key] = sample(
                model=model, dataset=sampling_data, observables=obs, param_masks=chain_masks, lr=float(s["lr"]),
                n_beta=float(s["n_beta"]), loss_fn=progress.counted(loss_fn, steps), num_chains=int(s["chains"]),
                num_draws=int(s["draws"]), num_burnin_steps=int(s["burn_in"]),
                num_steps_bw_draws=int(s["steps_between_draws"]), batch_size=batch_size,
                num_init_loss_batches=epoch, init_seed=int(s["seed"]), localization=float(s["localization"]),
                device=device, output_path=Path(tmp) / f"samples_{key}.zarr",
            )
        steps.finish()
        tree = compute_susceptibilities(wr_map, SAMPLING_TASK)
        n_draws = int(s["draws"])
        halves = [compute_susceptibilities({k: xr.DataTree(dataset=t.dataset.isel(draw=part)) for k, t in
                                            wr_map.items()}, SAMPLING_TASK)["susceptibilities"].dataset.load()
                  for part in (slice(0, n_draws // 2), slice(n_draws // 2, n_draws))]
        for key in restrictions:
            with xr.open_datatree(str(Path(tmp) / f"samples_{key}.zarr"), engine="zarr", consolidated=False) as dt:
                trace, batch_init, _ = sampling.batch_matched_trace(dt.dataset, reference)
            traces[keys.get(key, key)] = (trace, batch_init)
        sus = tree["susceptibilities"].dataset.load()
        context = tree["context"].dataset.load()
        controlled = (control_frame(wr_map, recorders, keys, directions, probes, s) if control else None)
    sus, *halves = (x.assign_coords(wr=[keys.get(str(k), str(k)) for k in x.wr.values]) for x in [sus, *halves])
    return sus, context, traces, starts, halves, controlled


@dataclass
class ControlDirections:
    """g (sampling loss) and h_o (each observable's answer-token mean loss) at the checkpoint, with their products."""

    vectors: list[dict]          # [g, h_1, ..., h_O]
    observables: list[str]
    gg: np.ndarray               # |g_C|^2 per component
    gh: np.ndarray               # (observable, component) g_C . h_C


def control_directions(model, sampling_data, probes, masks, batch_size: int, device: str) -> ControlDirections:
    """The gradients the control variates project on, for every component at once (one pass over each dataset)."""
    import torch

    from workflow_lib.slt import susceptibility_linear as linear

    index = linear.ComponentIndex(model, masks)
    rows = torch.stack(list(sampling_data["input_ids"]))
    g = linear.half_gradients(model, rows, index, batch_size, device).full()
    hs = [variance.answer_mean_gradient(model, probe_rows, index, batch_size, device) for probe_rows in probes.values()]
    return ControlDirections([g, *hs], list(probes), index.inner_products(g, g),
                             np.stack([index.inner_products(g, h) for h in hs]))


def control_frame(wr_map, recorders, keys, directions: ControlDirections, probes, sampler: dict) -> pl.DataFrame:
    """Per component x observable: the linear response, and devinterp's answer-token mean plain and with control
    variates, each with its batch-means standard error."""
    from devinterp.slt.observables import to_obs_id

    from workflow_lib.slt.sgld_scale import LinearResponseError, stationary_variance

    try:
        sigma2 = stationary_variance(sampler)
    except LinearResponseError:  # a sampler past its own stability edge has no stationary variance
        sigma2 = float("nan")
    full = wr_map["full"].dataset
    sampling_id = to_obs_id(SAMPLING_TASK)
    rows = []
    for c, key in enumerate(keys):
        records = recorders[key].records()
        for o, name in enumerate(directions.observables):
            obs_id = to_obs_id(name)
            ids = full[f"input_ids_{obs_id}"].values
            while ids.ndim > 2:
                ids = ids[0]
            mask = variance.answer_mask(ids, probes[name])
            y, phi = variance.draw_values(wr_map[key].dataset, full, sampling_id, obs_id, mask)
            est = variance.component_estimate([r[:, :, [0, 1 + o]] for r in records], y, sampler,
                                              float(directions.gg[c]), float(directions.gh[o, c]), phi,
                                              variance.full_gap(full, sampling_id, obs_id, mask))
            rows.append({"component": keys[key], "observable": name,
                         "chi_linear": sigma2 * float(directions.gg[c] - directions.gh[o, c]),
                         "chi_plain": est.plain, "chi_plain_se": est.plain_se, "chi_cv": est.cv,
                         "chi_cv_se": est.cv_se, "n_cv_draws": est.n_draws})
    return pl.DataFrame(rows)


def restriction_status(trace: np.ndarray, batch_init: np.ndarray, diagnostics: dict) -> tuple[str, str]:
    """One restriction's verdict: the worst of its chains under the LLC diagnostics.

    Only `diverged` and `not_converged` apply. `negative` is an LLC verdict: a
    component's chain may sit at a mean loss rise indistinguishable from zero,
    which is no reason to distrust the covariances it yields.
    """
    verdicts = []
    for c in range(trace.shape[0]):
        excess = trace[c] - batch_init[c]
        status, reason, _ = sampling.diagnose_chain(excess, 0.0, False, diagnostics)
        verdicts.append((status, f"chain {c}: {reason}" if reason else ""))
    order = [sampling.DIVERGED, sampling.NOT_CONVERGED, sampling.OK]
    worst = min(verdicts, key=lambda v: order.index(v[0]))
    return worst[0], "; ".join(r for s, r in verdicts if s != sampling.OK)


# ---- tables --------------------------------------------------------------------------------------


def token_frame(sus, context, probes: dict[str, list[observables.ObservableRow]]) -> pl.DataFrame:
    """Long table of chi per (component, observable, prompt, target token), padding dropped."""
    names = list(sus.attrs["dataset_id_to_name"])
    ids = pl.DataFrame({"dataset_id": context.dataset_id.values, "batch": context.batch.values,
                        "token_pos": context.position.values, "token": context.input_ids.values})
    rows_meta = []
    for d, name in enumerate(names):
        by_ids = {r.input_ids: r for r in probes[name]}
        block = ids.filter(pl.col("dataset_id") == d).sort("batch", "token_pos")
        for (batch,), group in block.group_by(["batch"], maintain_order=True):
            row = by_ids.get(tuple(group["token"].to_list()))
            if row is None:
                raise RuntimeError(f"observable {name}: devinterp returned a sequence we did not build")
            rows_meta.append({"dataset_id": d, "batch": batch, "prompt_id": row.prompt_id, "n_tokens": row.n_tokens,
                              "answer_start": row.answer_start})
    meta = pl.DataFrame(rows_meta)
    values = pl.DataFrame({"dataset_id": sus.dataset_id.values, "batch": sus.batch.values,
                           "token_pos": sus.target_position.values}
                          | {str(wr): sus.sus.sel(wr=wr).values.astype(np.float64) for wr in sus.wr.values})
    long = values.unpivot(index=["dataset_id", "batch", "token_pos"], variable_name="component", value_name="chi")
    return (long.join(meta, on=["dataset_id", "batch"]).join(ids, on=["dataset_id", "batch", "token_pos"])
            .filter(pl.col("token_pos") < pl.col("n_tokens"))
            .with_columns(observable=pl.col("dataset_id").map_elements(lambda d: names[d], return_dtype=pl.Utf8),
                          segment=pl.when(pl.col("token_pos") >= pl.col("answer_start")).then(pl.lit("answer"))
                          .otherwise(pl.lit("prompt")))
            .drop("dataset_id", "batch", "n_tokens", "answer_start"))


def aggregate(tokens: pl.DataFrame, statuses: dict[str, tuple[str, str]]) -> pl.DataFrame:
    """Per component x observable: mean, std and count of chi over the answer tokens, with the status."""
    answer = tokens.filter(pl.col("segment") == "answer")
    agg = answer.group_by("component", "observable", maintain_order=True).agg(
        chi_mean=pl.col("chi").mean(), chi_std=pl.col("chi").std(), n_tokens=pl.len(),
        n_prompts=pl.col("prompt_id").n_unique())
    prompt_means = tokens.filter(pl.col("segment") == "prompt").group_by("component", "observable").agg(
        chi_prompt_mean=pl.col("chi").mean())
    agg = agg.join(prompt_means, on=["component", "observable"], how="left")
    status, reason = [], []
    for row in agg.iter_rows(named=True):
        s, r = statuses[row["component"]]
        if s == sampling.OK and not math.isfinite(row["chi_mean"]):
            s, r = sampling.DIVERGED, "non-finite susceptibility"
        status.append(s)
        reason.append(r)
    return agg.with_columns(status=pl.Series(status, dtype=pl.Utf8), reason=pl.Series(reason, dtype=pl.Utf8),
                            estimator=pl.lit("sgld"))


def with_control(table: pl.DataFrame, controlled: pl.DataFrame) -> pl.DataFrame:
    """The aggregate with the linear response, the control-variate estimate, its error and the residual."""
    return table.join(controlled.select("component", "observable", "chi_linear", "chi_cv", "chi_cv_se",
                                        chi_se="chi_plain_se"), on=["component", "observable"], how="left").with_columns(
        chi_residual=pl.col("chi_cv") - pl.col("chi_linear"))


def write_draw_reliability(halves, context, probes, facts: pl.DataFrame, settings: dict, keys: dict,
                           out_path) -> pl.DataFrame:
    """Split-half reliability over draws: each ranking from the first and from the second half of every chain."""
    from workflow_lib.slt import susceptibility_reliability as reliability

    means = [token_frame(half, context, probes).filter(pl.col("segment") == "answer")
             .group_by("component", "observable", maintain_order=True).agg(chi_mean=pl.col("chi").mean())
             for half in halves]
    contrasts = (settings.get("structure") or {}).get("contrasts", {})
    rows = reliability.halves_rows(*means, facts.select("component", "component_kind"), contrasts,
                                   estimator="sgld", source="sgld_draw_halves")
    frame = (pl.DataFrame(rows, infer_schema_length=None).with_columns(**{k: pl.lit(v) for k, v in keys.items()})
             if rows else tables.empty_frame("susceptibility_reliability"))  # fewer than 3 components per kind
    return tables.write_table(tables.fill_missing(frame, "susceptibility_reliability"), out_path,
                              "susceptibility_reliability")


def stage_inputs(tokenizer, settings: dict, prompt_paths: dict[str, str], completions_path, templates_path, mix_path,
                 *, batch_size: int, n_prompts: int):
    """(observables {name: rows}, the sampling task's packed dataset) of a susceptibility stage.

    Observables keep a whole number of `batch_size` rows; the sampling data is
    drawn with `data_seed` (the sampler seed when null).
    """
    sampler = sampling.SAMPLER_DEFAULTS | settings["sampler"]
    prompts = {name: tables.read_table(path, "prompts") for name, path in prompt_paths.items()}
    completions = tables.read_table(completions_path, "completions")
    templates = tables.read_table(templates_path, "jailbreak_templates") if templates_path else None
    build = {"seq_len": sampler["seq_len"]} | settings | {"batch_size": batch_size, "n_prompts": n_prompts}
    probes = {name: observables.build_observable(tokenizer, name, spec, prompts, completions, templates, build)
              for name, spec in settings["observables"].items()}
    streams = llc.loss_token_streams(tokenizer, settings["sampling_task"], mix_path, completions_path)
    data_seed = settings.get("data_seed", 0)
    data = sampling.packed_dataset(streams, int(sampler["seq_len"]), int(sampler["n_sequences"]),
                              int(sampler["seed"] if data_seed is None else data_seed))
    return probes, data


def run_susceptibility(*, model: str, technique: str, step: int, model_dir, checkpoint_dir, mix_path,
                       prompt_paths: dict[str, str], completions_path, templates_path, settings: dict,
                       tokens_out, table_out, reliability_out=None, device: str = "cpu",
                       dtype: str = "float32") -> pl.DataFrame:
    """Check, sample, estimate and write `susceptibility_tokens`, `susceptibility` and (with `reliability_out`)
    the split-half reliability over draws of one checkpoint."""
    sampler = sampling.SAMPLER_DEFAULTS | settings["sampler"]
    device = str(models.resolve_device(device))
    lm, tokenizer = models.load_checkpoint(model_dir, checkpoint_dir, dtype="float32", device=device, merge=True)
    masks = component_masks(lm, component_patterns(lm.config, settings["restrictions"]))
    probes, data = stage_inputs(tokenizer, settings, prompt_paths, completions_path, templates_path, mix_path,
                                batch_size=int(sampler["batch_size"]), n_prompts=int(settings["n_prompts"]))
    sampling.select_parameters(lm, "full")  # every weight trainable (PEFT froze the base), dropout off
    Path(table_out).parent.mkdir(parents=True, exist_ok=True)
    sus, context, traces, starts, halves, controlled = sample_susceptibilities(
        lm, data, probes, masks, sampler, device=device, scratch_owner=table_out,
        frozen_prefix=bool(settings.get("frozen_prefix", True)), control=True)
    log.info("forward passes start at layer: %s", starts)
    diagnostics = sampling.DIAGNOSTIC_DEFAULTS | settings.get("diagnostics", {})
    full_status, full_reason = restriction_status(*traces["full"], diagnostics)
    statuses = {}
    for name in masks:
        status, reason = restriction_status(*traces[name], diagnostics)
        if full_status != sampling.OK:  # the unrestricted chain enters every estimate
            status = full_status
            reason = f"the unrestricted (full) chain is {full_status}: {full_reason}" + (f"; own: {reason}" if reason else "")
        statuses[name] = (status, reason)
    keys = {"model": model, "technique": technique, "step": step, "seed": int(sampler["seed"])}
    tokens = token_frame(sus, context, probes)
    facts = pl.DataFrame([{"component": name} | component_facts(name) for name in masks],
                         schema={"component": pl.Utf8, "layer": pl.Int64, "head": pl.Int64, "component_kind": pl.Utf8})
    tokens = tokens.join(facts, on="component").with_columns(**{k: pl.lit(v) for k, v in keys.items()})
    tables.write_table(tokens, tokens_out, "susceptibility_tokens")
    if reliability_out is not None:
        write_draw_reliability(halves, context, probes, facts, settings, keys, reliability_out)
    table = with_control(aggregate(tokens, statuses), controlled).join(facts, on="component").with_columns(
        **{k: pl.lit(v) for k, v in keys.items()})
    return tables.write_table(table, table_out, "susceptibility")
