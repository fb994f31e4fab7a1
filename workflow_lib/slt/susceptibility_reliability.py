"""How far a component ranking by susceptibility can be trusted: split-half reliability and bootstrap errors.

A ranking of components is worth reporting only if it would come out the same
on another sample of what it was estimated from. Three sources of variation:

- `sampling_data_halves`: the sampling task's sequences (which define phi), split
  into two halves; each half gives its own estimate;
- `observable_prompt_halves`: the observable's prompts, split at random into two
  halves, many times;
- `sgld_draw_halves`: for the SGLD estimator, the first and second half of the
  draws.

For each, the Spearman correlation between the two halves' rankings, r, is
stepped up to the full sample's length with the Spearman-Brown formula
2r / (1 + r) (the classical split-half reliability). Random prompt splits give a
distribution of r: its mean and 2.5-97.5% range, stepped up, are reported. `bootstrap_se` gives
the standard error of an observable's pooled answer-token mean over prompts.
"""

from __future__ import annotations

import numpy as np
import polars as pl


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    ra, rb = (pl.Series(x).rank("average").to_numpy() for x in (a, b))
    if np.std(ra) == 0 or np.std(rb) == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def spearman_brown(r: float) -> float:
    """Reliability of the full-length measure from the correlation of its two halves."""
    return 2.0 * r / (1.0 + r) if np.isfinite(r) and r > -1.0 else float("nan")


def pooled_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean over axis 0 (sequences) of values (sequences x components); weights = answer tokens."""
    w = np.asarray(weights, dtype=np.float64)
    return (values * w[:, None]).sum(axis=0) / w.sum()


def prompt_split_halves(values: dict[str, np.ndarray], weights: dict[str, np.ndarray], combine,
                        n_splits: int, seed: int) -> np.ndarray:
    """Spearman correlations between the two halves' rankings over `n_splits` random halvings of the prompts.

    `values[obs]` is (sequences x components), `combine({obs: pooled mean per
    component}) -> ranking score per component` (one observable, or a contrast).
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_splits):
        half_a, half_b = {}, {}
        for obs, v in values.items():
            order = rng.permutation(len(v))
            a, b = order[: len(v) // 2], order[len(v) // 2:]
            if len(a) == 0 or len(b) == 0:
                return np.array([])
            half_a[obs] = pooled_mean(v[a], weights[obs][a])
            half_b[obs] = pooled_mean(v[b], weights[obs][b])
        out.append(spearman(combine(half_a), combine(half_b)))
    return np.asarray(out)


def bootstrap_se(values: np.ndarray, weights: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Standard error per component of the pooled mean over sequences, from resampling sequences."""
    if len(values) < 2:
        return np.full(values.shape[1], np.nan)
    rng = np.random.default_rng(seed)
    draws = np.stack([pooled_mean(values[idx], weights[idx])
                      for idx in (rng.integers(0, len(values), len(values)) for _ in range(n_resamples))])
    return draws.std(axis=0, ddof=1)


def rankings(observables: list[str], contrasts: dict[str, list[str]]) -> dict[str, tuple[str, object]]:
    """name -> (ranked_by, combine function) for every observable and every contrast whose two sides exist."""
    out: dict[str, tuple[str, object]] = {o: ("observable", lambda m, o=o: m[o]) for o in observables}
    for name, (plus, minus) in contrasts.items():
        if plus in observables and minus in observables:
            out[name] = ("contrast", lambda m, p=plus, q=minus: m[p] - m[q])
    return out


def summarise(halves_r: np.ndarray, **row) -> dict:
    """A reliability row from the halves' correlations over one or more splits.

    The Spearman-Brown step-up is applied to the mean correlation and to its
    2.5 and 97.5% quantiles (it is monotone), not averaged over splits: on
    unrelated halves 2r / (1 + r) is skewed far below 0 for negative r.
    """
    finite = halves_r[np.isfinite(halves_r)]
    if finite.size == 0:
        return row | {"halves_spearman": None, "reliability": None, "ci_low": None, "ci_high": None,
                      "n_splits": int(halves_r.size)}
    mean = float(finite.mean())
    return row | {"halves_spearman": mean, "reliability": spearman_brown(mean),
                  "ci_low": spearman_brown(float(np.quantile(finite, 0.025))),
                  "ci_high": spearman_brown(float(np.quantile(finite, 0.975))), "n_splits": int(halves_r.size)}


def halves_rows(half_a: pl.DataFrame, half_b: pl.DataFrame, kinds: pl.DataFrame, contrasts: dict, **row) -> list[dict]:
    """Reliability rows of one two-way split: per component kind with 3 or more components and per ranking.

    `half_a`, `half_b`: (component, observable, chi_mean) from each half; `kinds`: (component, component_kind).
    """
    observables = half_a["observable"].unique(maintain_order=True).to_list()
    wide = [h.pivot(on="observable", index="component", values="chi_mean").join(kinds, on="component")
            for h in (half_a, half_b)]
    rows = []
    for kind in kinds["component_kind"].unique(maintain_order=True).to_list():
        parts = [w.filter(pl.col("component_kind") == kind).sort("component") for w in wide]
        if parts[0].height < 3:
            continue
        for name, (ranked_by, combine) in rankings(observables, contrasts).items():
            scores = [combine({o: p[o].to_numpy() for o in observables}) for p in parts]
            rows.append(summarise(np.array([spearman(*scores)]), **row, component_kind=kind, ranked_by=ranked_by,
                                  name=name, n_components=parts[0].height))
    return rows
