"""Local learning coefficient (LLC) estimation through devinterp, with our own chain diagnostics.

devinterp 2.0.1 does the sampling (`devinterp.slt.sampling.sample`, SGLD) and the
estimate (`devinterp.slt.llc.compute_llc`: n_beta * (mean sampling loss - init
loss)). This module supplies what devinterp leaves to the caller:

- the token dataset that defines the loss (packed chat-formatted examples, so
  every position is a real token and no padding dilutes the mean loss);
- the parameter space to sample (LoRA adapter, full model, or name globs), with
  the trainable flags and dropout set so the sampler really moves those weights;
- a fresh output folder per run, so devinterp's settings-only cache can never
  return another checkpoint's samples (NOTES-devinterp, pitfall 1);
- burn-in excluded from the estimate (pitfall 3) by handing `compute_llc` only
  the post-burn-in steps;
- epoch-aligned windows: devinterp replays one shuffled pass over the dataset
  (`epoch_mode="cycle"`), so the initial loss is taken over exactly one pass and
  the draws must cover whole passes; otherwise the estimate compares the loss of
  different batches, and batch-to-batch differences (measured: +-1 nat/token on
  the training mix) swamp the LLC;
- a batch-matched trace: every step's loss minus the checkpoint's loss *on the
  same batch*, which removes batch noise from the diagnostics and the plots;
- diagnostics that decide each chain's `status`, so a NaN, exploding, drifting or
  negative chain never silently enters the mean (pitfall 2).
"""

from __future__ import annotations

import fnmatch
import gc
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workflow_lib.core import progress, schema_defaults, scratch

# Chain statuses, in the order a chain is checked.
OK, DIVERGED, NOT_CONVERGED, NEGATIVE = "ok", "diverged", "not_converged", "negative"

SAMPLER_DEFAULTS = schema_defaults.defaults("llc", "sampler")  # config/schema.yaml is their one source
DIAGNOSTIC_DEFAULTS = schema_defaults.defaults("llc", "diagnostics")


# ---- the loss -------------------------------------------------------------------------------


def causal_lm_loss(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token next-token cross-entropy, shape (batch, seq-1): devinterp's `loss_fn` protocol.

    `use_cache=False` skips the KV-cache a plain forward would build, and
    `F.cross_entropy` avoids materialising a second vocabulary-sized tensor.
    """
    return next_token_losses(model(input_ids=input_ids, use_cache=False).logits, input_ids)


def next_token_losses(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every next token given the logits of the whole sequence, shape (batch, seq-1)."""
    logits = logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), input_ids[:, 1:].reshape(-1),
                           reduction="none").view(input_ids.shape[0], -1)


def packed_dataset(token_streams: list[list[int]], seq_len: int, n_sequences: int, seed: int):
    """A devinterp dataset of `n_sequences` rows of `seq_len` tokens, packed from shuffled examples.

    Examples are shuffled with `seed`, concatenated and cut into equal rows; the
    tail that does not fill a row is dropped.
    """
    from datasets import Dataset

    order = np.random.default_rng(seed).permutation(len(token_streams))
    flat = [token for i in order for token in token_streams[i]]
    n_rows = min(n_sequences, len(flat) // seq_len)
    if n_rows < 1:
        raise ValueError(f"{len(flat)} tokens cannot fill one sequence of {seq_len}; lower llc seq_len")
    rows = np.asarray(flat[: n_rows * seq_len], dtype=np.int64).reshape(n_rows, seq_len)
    return Dataset.from_dict({"input_ids": rows.tolist()}).with_format("torch")


# ---- the parameter space ----------------------------------------------------------------------


class ParameterSpaceError(ValueError):
    """A parameter space selects nothing or names an unknown kind."""


def select_parameters(model: nn.Module, space: str, patterns: list[str] | None = None) -> dict[str, None]:
    """devinterp `param_masks` for a space, after making exactly those parameters trainable.

    - `lora`: every LoRA adapter weight of a PEFT model (base weights stay frozen);
    - `full`: every parameter of a plain (merged) model;
    - otherwise `patterns`: parameters whose name matches one of the fnmatch globs.

    The sampler moves only parameters that get a gradient (NOTES-devinterp,
    pitfalls 5 and 6), so `requires_grad` is set here to match the mask, which
    also keeps the backward pass from computing gradients nobody samples.
    """
    names = [name for name, _ in model.named_parameters()]
    if space == "lora":
        chosen = [n for n in names if ".lora_A." in n or ".lora_B." in n]
    elif space == "full":
        chosen = names
    elif patterns:
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    else:
        raise ParameterSpaceError(f"parameter space {space!r} is not lora or full and has no patterns")
    if not chosen:
        raise ParameterSpaceError(f"parameter space {space!r} selects no parameter of {type(model).__name__}; "
                                  f"patterns {patterns} (names look like {names[:3]})")
    wanted = set(chosen)
    for name, param in model.named_parameters():
        param.requires_grad_(name in wanted)
    for module in model.modules():  # sampling runs in train(): dropout would add its own noise
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return {name: None for name in chosen}


def count_parameters(model: nn.Module, masks: dict[str, None]) -> int:
    params = dict(model.named_parameters())
    return sum(params[name].numel() for name in masks)


# ---- sampling and the estimate -----------------------------------------------------------------


@dataclass
class ChainResult:
    chain: int
    llc: float
    init_loss: float
    status: str
    reason: str
    drift: float


class SamplerSettingsError(ValueError):
    """Sampler settings that would make the estimate compare different batches."""


def epoch_batches(n_rows: int, sampler: dict) -> int:
    """Batches in one pass over the dataset; the draws must cover whole passes (see module docstring)."""
    batch_size, draws = int(sampler["batch_size"]), int(sampler["draws"]) * int(sampler["steps_between_draws"])
    epoch = n_rows // batch_size
    if epoch < 1:
        raise SamplerSettingsError(f"{n_rows} sequences < llc batch_size {batch_size}")
    if draws % epoch:
        raise SamplerSettingsError(
            f"llc draws x steps_between_draws = {draws} is not a multiple of the {epoch} batches in one pass over "
            f"the {n_rows} packed sequences; set draws to a multiple of {epoch} (or n_sequences to a divisor of "
            f"draws x batch_size), so that every batch counts equally in the estimate")
    return epoch


def sequence_losses(model: nn.Module, dataset, loss_fn, batch_size: int, device: str) -> dict[tuple, float]:
    """Mean token loss of every dataset row at the checkpoint, keyed by the row's token ids."""
    rows = torch.stack([row["input_ids"] for row in dataset])
    out = {}
    was_training = model.training
    model.train()  # the sampler evaluates in train mode (dropout is off, see select_parameters)
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size].to(device)
            for ids, loss in zip(chunk.cpu(), loss_fn(model, chunk).float().mean(dim=1).cpu()):
                out[tuple(ids.tolist())] = float(loss)
    model.train(was_training)
    return out


@dataclass
class Samples:
    trace: np.ndarray          # (chain, step) minibatch loss, nats/token
    batch_init: np.ndarray     # (chain, step) the checkpoint's loss on the same minibatch
    init_loss: np.ndarray      # (chain,) devinterp's initial loss (one pass over the data)
    llc: np.ndarray            # (chain,) devinterp's compute_llc on the post-burn-in steps
    failed: set
    batch_keys: np.ndarray | None = None  # (chain, step) fingerprint of the minibatch's token ids


def batch_fingerprints(ids: np.ndarray) -> np.ndarray:
    """(chain, step) int64 fingerprint of each minibatch's token ids (chain, step, row, token): equal batches,
    equal keys, so paired differences can check they compare the same batches."""
    import hashlib

    out = np.zeros(ids.shape[:2], dtype=np.int64)
    for c in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            digest = hashlib.blake2b(np.ascontiguousarray(ids[c, t], dtype=np.int64).tobytes(), digest_size=8)
            out[c, t] = int.from_bytes(digest.digest(), "little", signed=True)
    return out


def freeze_heap() -> None:
    """Take every object alive now (the imported libraries, the loaded model) out of the cyclic garbage
    collector's scans, before devinterp samples.

    devinterp runs a full `gc.collect()` before and after every chain (`devinterp/slt/sampler.py`,
    `_gc_and_empty_cache`). With torch, transformers and peft loaded that walks about 4e5 long-lived
    objects, 0.2 s a call on this project's CPU: 2.6 s of a tiny susceptibility job's 13.8 s, and more
    with many restrictions and chains. After `gc.freeze()` (Python's `gc` docs) a collection scans only
    objects made since, which are freed as before; no number changes.
    """
    gc.freeze()


def sample_llc(model: nn.Module, dataset, masks: dict, sampler: dict, *, loss_fn=causal_lm_loss,
               device: str = "cpu", scratch_owner: str | Path | None = None) -> Samples:
    """Run devinterp's SGLD once, with the initial loss over exactly one pass of the data.

    Chains get independent batch orders (devinterp's default shares one order
    across chains, which makes the spread between chains understate the
    uncertainty); chain c's noise and batch order come from seed + c alone, so
    the same seed on the same data gives every checkpoint the same noise and
    batches: common random numbers, which pair the draws of two checkpoints.

    The zarr store lives in a new temporary folder that is removed afterwards, so
    devinterp's cache can never hand back another run's samples.
    """
    from devinterp.slt.sampling import sample

    s = SAMPLER_DEFAULTS | sampler
    epoch = epoch_batches(len(dataset), s)
    reference = sequence_losses(model, dataset, loss_fn, int(s["batch_size"]), device)
    freeze_heap()
    steps = progress.Progress("SGLD (LLC)", progress.sgld_evaluations(s, epoch), "loss evaluations")
    with scratch.folder_beside(scratch_owner, "sgld") as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = sample(
            model, dataset, {}, lr=float(s["lr"]), n_beta=float(s["n_beta"]), param_masks=masks,
            num_chains=int(s["chains"]), num_draws=int(s["draws"]), num_burnin_steps=int(s["burn_in"]),
            num_steps_bw_draws=int(s["steps_between_draws"]), batch_size=int(s["batch_size"]),
            num_init_loss_batches=epoch, init_seed=int(s["seed"]), localization=float(s["localization"]),
            device=device, output_path=Path(tmp) / "samples.zarr",
            loss_fn=progress.counted(loss_fn, steps),
            match_sampling_input_ids_across_chains=False,
        )
        steps.finish()
        trace, batch_init, init = batch_matched_trace(samples.dataset, reference)
        keys = batch_fingerprints(samples.dataset.sampling_input_ids_micro.values)
        estimate = _devinterp_estimate(samples, int(s["burn_in"]))
        samples.close()
    return Samples(trace, batch_init, init, estimate, failed_chains(caught), keys)


def batch_matched_trace(ds, reference: dict[tuple, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(trace, batch_init, init_loss) from a devinterp sample: each step's loss and the checkpoint's on that batch."""
    trace = ds.sampling_loss_micro.mean(dim=["batch_sampling", "token_pos"]).values.astype(np.float64)
    ids = ds.sampling_input_ids_micro.values
    init = ds.init_loss.mean(dim="token_pos").values.astype(np.float64)
    batch_init = np.array([[np.mean([reference.get(tuple(row.tolist()), np.nan) for row in step_ids])
                            for step_ids in chain_ids] for chain_ids in ids])
    return trace, batch_init, init


def failed_chains(caught: list) -> set[int]:
    """Chains devinterp reported as failed: it only warns "Chain N failed" and writes NaN (pitfall 2)."""
    return {int(m.group(1)) for w in caught if (m := re.search(r"Chain (\d+) failed", str(w.message)))}


def _devinterp_estimate(samples, burn_in: int) -> np.ndarray:
    """devinterp's `compute_llc` per chain, on the steps after burn-in only (pitfall 3)."""
    import xarray as xr
    from devinterp.slt.llc import compute_llc

    kept = samples.dataset.isel(step=slice(burn_in, None)).load()
    return compute_llc(xr.DataTree(kept)).llc_per_chain.values.astype(np.float64)


def diagnose_chain(excess: np.ndarray, llc: float, failed: bool, diagnostics: dict) -> tuple[str, str, float]:
    """(status, reason, drift) of one chain from its excess-loss trace over the whole chain.

    `excess` is each step's loss minus the checkpoint's loss on the same batch
    (nats/token, burn-in included), so batch-to-batch differences do not look
    like trends or explosions.

    - `diverged`: devinterp reported the chain failed, the trace has NaN/inf, or a
      block mean (a tenth of the chain) rose more than `max_loss_rise` nats/token
      above the checkpoint's loss (the chain left the basin);
    - `not_converged`: an OLS line through the block means of the last half of the
      chain changes by more than `trend_tolerance` of that half's mean rise, with
      |t| > `trend_t` (a real trend, not noise);
    - `negative`: the chain's LLC is below zero (it found lower loss than the
      checkpoint: the checkpoint is not a local minimum at this resolution).
    """
    d = DIAGNOSTIC_DEFAULTS | diagnostics
    if failed or not np.all(np.isfinite(excess)) or not math.isfinite(llc):
        return DIVERGED, "devinterp reported a NaN/inf loss" if failed else "non-finite loss in the trace", math.nan
    rise = float(max(block.mean() for block in np.array_split(excess, min(10, len(excess)))))
    if rise > d["max_loss_rise"]:
        return (DIVERGED, f"loss rose {rise:.2f} nats/token above the checkpoint's (block mean; limit "
                f"{d['max_loss_rise']})", math.nan)
    late = excess[len(excess) // 2:]
    drift, t_stat = _trend(late)
    mean_rise = float(np.mean(late))
    if abs(t_stat) > d["trend_t"] and abs(drift) > d["trend_tolerance"] * max(abs(mean_rise), 1e-12):
        return (NOT_CONVERGED, f"loss drifts {drift:+.4f} nats/token over the last half (t = {t_stat:.1f}), "
                f"{abs(drift) / max(abs(mean_rise), 1e-12):.0%} of its mean rise {mean_rise:.4f}", drift)
    if llc < 0:
        return NEGATIVE, f"LLC {llc:.3g} < 0: the chain found lower loss than the checkpoint", drift
    return OK, "", drift


def _trend(values: np.ndarray, n_blocks: int = 10) -> tuple[float, float]:
    """(change of the OLS line over the window, t statistic of its slope).

    The fit runs on `n_blocks` block means rather than on single draws, with an
    AR(1) correction: SGLD draws are autocorrelated, and a plain t statistic over
    them would call slow wandering a trend.
    """
    n = len(values)
    blocks = min(n_blocks, n)
    if blocks < 4:
        return 0.0, 0.0
    edges = np.linspace(0, n, blocks + 1).astype(int)
    means = np.array([values[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])
    x = (edges[:-1] + edges[1:] - 1) / 2.0
    slope, intercept = np.polyfit(x, means, 1)
    residuals = means - (slope * x + intercept)
    se = math.sqrt(float(residuals @ residuals) / (blocks - 2) / float(((x - x.mean()) ** 2).sum()))
    # Block means of a slowly mixing chain are still correlated: widen the standard
    # error by the AR(1) factor of the residuals (lag-1 correlation clipped to [0, 0.9]).
    rho = float(np.clip(residuals[:-1] @ residuals[1:] / max(float(residuals @ residuals), 1e-300), 0.0, 0.9))
    se *= math.sqrt((1 + rho) / (1 - rho))
    t_stat = slope / se if se > 0 else (math.inf if slope else 0.0)
    return float(slope * (n - 1)), float(t_stat)


def estimate_llc(model: nn.Module, dataset, masks: dict, sampler: dict, diagnostics: dict, *,
                 loss_fn=causal_lm_loss, device: str = "cpu", scratch_owner: str | Path | None = None):
    """Sample, estimate and diagnose: (chain results, the Samples, summary dict)."""
    s = SAMPLER_DEFAULTS | sampler
    samples = sample_llc(model, dataset, masks, s, loss_fn=loss_fn, device=device, scratch_owner=scratch_owner)
    chains = []
    for c in range(samples.trace.shape[0]):
        excess = samples.trace[c] - samples.batch_init[c]
        status, reason, drift = diagnose_chain(excess, float(samples.llc[c]), c in samples.failed, diagnostics)
        chains.append(ChainResult(c, float(samples.llc[c]), float(samples.init_loss[c]), status, reason, drift))
    return chains, samples, summarise(chains, DIAGNOSTIC_DEFAULTS | diagnostics)


def summarise(chains: list[ChainResult], diagnostics: dict) -> dict:
    """Mean and std over the `ok` chains only; the status says how many were kept and why others were not."""
    ok = [c.llc for c in chains if c.status == OK]
    flagged = [f"chain {c.chain}: {c.status}" for c in chains if c.status != OK]
    if len(ok) < int(diagnostics["min_ok_chains"]):
        return {"llc_mean": math.nan, "llc_std": math.nan, "status": "failed", "n_ok": len(ok),
                "reason": f"{len(ok)} ok chains < min_ok_chains {diagnostics['min_ok_chains']}; " + "; ".join(flagged)}
    return {"llc_mean": float(np.mean(ok)), "llc_std": float(np.std(ok, ddof=1)) if len(ok) > 1 else math.nan,
            "status": OK, "n_ok": len(ok), "reason": ("excluded " + "; ".join(flagged)) if flagged else ""}
