"""`llc_differences`: the change in LLC between checkpoints of a trajectory, with a paired standard error.

The question the LLC serves is about change along fine-tuning, so the estimate
that matters is a difference. With common random numbers (the same sampler
seed and the same reference loss at every checkpoint, `slt.sample_llc`), chain c
sees the same batches and the same noise at every checkpoint of a trajectory,
and the per-draw difference

    d_t = n_beta * [(L_a(w_t) - L_a*(batch_t)) - (L_b(w'_t) - L_b*(batch_t))]

cancels what the two chains share. Its batch-means standard error (over the
post-burn-in draws of the chains ok at both checkpoints) is `delta_se`; where
the batches differ (other data or seed) the two checkpoints' own errors are
combined as independent. A difference within 2 standard errors is marked
unresolved and must not be described as a change.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from workflow_lib.core import statistics, tables

GROUP = ["model", "technique", "parameter_space", "dataset"]


def _excess(trace: pl.DataFrame, n_beta: float) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """chain -> (n_beta * excess loss, batch keys) over the post-burn-in steps."""
    out = {}
    for (chain,), block in trace.filter(~pl.col("burn_in")).sort("sgld_step").group_by(["chain"],
                                                                                      maintain_order=True):
        out[int(chain)] = (n_beta * (block["loss"] - block["batch_init_loss"]).to_numpy(),
                           block["batch_key"].to_numpy())
    return out


def difference(a_llc: pl.DataFrame, a_trace: pl.DataFrame, b_llc: pl.DataFrame, b_trace: pl.DataFrame,
               n_beta: float) -> dict:
    """delta (a - b) over the chains ok at both, its standard error, and whether the draws were paired."""
    ok = [set(t.filter((pl.col("row") == "chain") & (pl.col("status") == "ok"))["chain"].to_list())
          for t in (a_llc, b_llc)]
    chains = sorted(ok[0] & ok[1])
    if not chains:
        return {"delta": math.nan, "delta_se": math.nan, "paired": False, "n_chains": 0, "status": "failed"}
    per_chain = [{int(r["chain"]): r["llc_mean"] for r in t.filter(pl.col("row") == "chain").iter_rows(named=True)}
                 for t in (a_llc, b_llc)]
    delta = float(np.mean([per_chain[0][c] - per_chain[1][c] for c in chains]))
    ea, eb = _excess(a_trace, n_beta), _excess(b_trace, n_beta)
    paired = all(len(ea[c][1]) == len(eb[c][1]) and np.array_equal(ea[c][1], eb[c][1]) for c in chains)
    if paired:
        se = statistics.chain_se([ea[c][0] - eb[c][0] for c in chains])
    else:
        se = math.hypot(statistics.chain_se([ea[c][0] for c in chains]),
                        statistics.chain_se([eb[c][0] for c in chains]))
    return {"delta": delta, "delta_se": se, "paired": paired, "n_chains": len(chains), "status": "ok"}


def differences(llc: pl.DataFrame, traces: pl.DataFrame, n_beta: float) -> pl.DataFrame:
    """Every consecutive pair and every checkpoint against step 0, per trajectory, space and dataset."""
    rows = []
    for keys, block in llc.group_by(GROUP, maintain_order=True):
        key = dict(zip(GROUP, keys))
        steps = sorted(block["step"].unique().to_list())
        trace = traces.filter(*[pl.col(k) == v for k, v in key.items()])
        by_step = {s: (block.filter(pl.col("step") == s), trace.filter(pl.col("step") == s)) for s in steps}
        pairs = [(s, prev, "consecutive") for prev, s in zip(steps, steps[1:])]
        pairs += [(s, steps[0], "from_start") for s in steps[1:]]
        for step, ref, kind in pairs:
            d = difference(*by_step[step], *by_step[ref], n_beta)
            rows.append(key | {"step": step, "reference_step": ref, "kind": kind} | d
                        | {"resolved": bool(d["status"] == "ok" and abs(d["delta"]) > 2 * d["delta_se"])})
    if not rows:
        return tables.empty_frame("llc_differences")
    return tables.conform(pl.DataFrame(rows, infer_schema_length=None), "llc_differences")


def write_differences(*, llc_paths: list[str], trace_paths: list[str], n_beta: float, out_path) -> pl.DataFrame:
    llc = pl.concat([tables.read_table(p, "llc") for p in llc_paths])
    traces = pl.concat([tables.read_table(p, "llc_trace") for p in trace_paths])
    return tables.write_table(differences(llc, traces, n_beta), out_path, "llc_differences")
