"""`llc_calibrate` stage: a step size x n_beta (x localization) grid on one checkpoint, and a recommended setting.

devinterp's calibration guidance, as applied here: the SGLD loss trace should rise
from the checkpoint's loss and then plateau, without escaping the basin, without
NaN and without going below the initial loss; among settings that do this, the
estimate should no longer depend on the step size. So a grid point is *stable*
when every chain is `ok` under the same diagnostics the `llc` stage uses, and
for each n_beta the recommended step size is the largest stable one whose LLC
changed by at most `plateau_tolerance` from the next smaller stable step size
(larger steps mix faster for the same budget). Every grid point burns in for at
least `relaxation_times` relaxation times of the prior, 2 / (lr * gamma) steps, so a
small step size is not compared before its chain has left the checkpoint. n_beta sets the LLC's scale, so it
is not optimised: the first listed (n_beta, localization) with a plateau is
recommended, and those values must then stay fixed for every checkpoint compared.
"""

from __future__ import annotations

import math

import polars as pl

from workflow_lib.slt import llc, sampling
from workflow_lib.core import tables


def recommend(grid: pl.DataFrame, tolerance: float) -> pl.DataFrame:
    """Add `relative_change` and `recommended` to a grid of (lr, n_beta, llc_mean, status) rows."""
    out = []
    chosen = None
    if "localization" not in grid.columns:
        grid = grid.with_columns(localization=pl.lit(0.0))
    for n_beta, gamma in grid.select("n_beta", "localization").unique(maintain_order=True).rows():
        rows = grid.filter((pl.col("n_beta") == n_beta) & (pl.col("localization") == gamma)).sort("lr").to_dicts()
        previous, best = None, None
        for row in rows:
            row["relative_change"], row["relative_change_se"] = None, None
            if row["status"] == sampling.OK:
                if previous is not None and previous["llc_mean"]:
                    row["relative_change"] = abs(row["llc_mean"] - previous["llc_mean"]) / abs(row["llc_mean"])
                    row["relative_change_se"] = _ratio_se(row, previous)
                    if row["relative_change"] <= tolerance:
                        best = row["lr"]
                previous = row
            row["recommended"] = False
        if best is not None and chosen is None:
            chosen = (n_beta, gamma)
            for row in rows:
                row["recommended"] = row["lr"] == best
        out.extend(rows)
    return pl.DataFrame(out, infer_schema_length=None)


def _ratio_se(row: dict, previous: dict) -> float | None:
    """Delta-method standard error of (previous / row), which is 1 - the signed relative change: the two
    points' chains are independent runs, so their errors combine in quadrature."""
    if row.get("llc_se") is None or previous.get("llc_se") is None:
        return None
    ratio = previous["llc_mean"] / row["llc_mean"]
    return abs(ratio) * math.hypot(row["llc_se"] / row["llc_mean"], previous["llc_se"] / previous["llc_mean"])


def relaxed_burn_in(sampler: dict, lr: float, gamma: float, times: float) -> int:
    """Burn-in of at least `times` relaxation times of the prior, 2 / (lr gamma) steps (the AR(1) decay of
    `w - w*` under the localization alone), rounded up to whole passes over the data."""
    epoch = max(1, int(sampler["n_sequences"]) // int(sampler["batch_size"]))
    needed = max(int(sampler["burn_in"]), math.ceil(times * 2.0 / (lr * gamma)))
    return epoch * math.ceil(needed / epoch)


def calibrate(*, model: str, technique: str, step: int, model_dir, checkpoint_dir, mix_path, completions_path,
              settings: dict, out_path, trace_path, device: str = "cpu", dtype: str = "float32") -> pl.DataFrame:
    cal = settings["calibration"]
    space, dataset = cal.get("space", "lora"), cal.get("dataset", llc.REFERENCE)
    sampler = sampling.SAMPLER_DEFAULTS | settings.get("sampler", {}) | cal.get("sampler", {})
    lm, tokenizer, masks = llc.load_in_space(model_dir, checkpoint_dir, space,
                                             settings.get("custom_spaces", {}).get(space), device)
    data = llc.loss_dataset(tokenizer, dataset, settings, sampler, mix_path, completions_path)
    loss_fn = llc.tilted_loss(lm, data, masks, sampler, device) if settings.get("tilt", False) else sampling.causal_lm_loss
    keys = {"model": model, "technique": technique, "step": step, "parameter_space": space, "dataset": dataset}
    grid, traces = [], []
    points = [(float(b), float(g), float(lr)) for b in cal["n_betas"]
              for g in cal.get("localizations") or [sampler["localization"]] for lr in cal["lrs"]]
    for n_beta, gamma, lr in points:
        point = sampler | {"lr": lr, "n_beta": n_beta, "localization": gamma,
                           "burn_in": relaxed_burn_in(sampler, lr, gamma, float(cal.get("relaxation_times", 5)))}
        chains, samples, summary = sampling.estimate_llc(lm, data, masks, point, settings.get("diagnostics", {}),
                                                  loss_fn=loss_fn, device=device, scratch_owner=out_path)
        grid.append(keys | {"lr": lr, "n_beta": n_beta, "localization": gamma, "llc_mean": summary["llc_mean"],
                            "llc_std": summary["llc_std"], "n_ok_chains": summary["n_ok"],
                            "llc_se": llc.summary_se(samples, chains, point),
                            "n_chains": len(chains), "status": sampling.OK if summary["n_ok"] == len(chains) else "unstable",
                            "reason": "; ".join(f"chain {c.chain}: {c.status} ({c.reason})" for c in chains
                                                if c.status != sampling.OK)})
        n_chains, n_steps = samples.trace.shape
        for c in range(n_chains):
            traces.append(pl.DataFrame({
                **{k: [v] * n_steps for k, v in keys.items()}, "lr": lr, "n_beta": n_beta, "localization": gamma,
                "chain": c, "sgld_step": range(n_steps), "burn_in": [i < int(point["burn_in"]) for i in range(n_steps)],
                "loss": samples.trace[c], "batch_init_loss": samples.batch_init[c],
                "init_loss": chains[c].init_loss,
            }))
    table = recommend(pl.DataFrame(grid, infer_schema_length=None), float(cal.get("plateau_tolerance", 0.2)))
    tables.write_table(pl.concat(traces), trace_path, "llc_calibration_trace")
    return tables.write_table(table, out_path, "llc_calibration")
