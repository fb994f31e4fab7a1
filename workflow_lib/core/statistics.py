"""Correlations with honest uncertainty for a handful of checkpoints.

A technique's trajectory has a few checkpoints, so a correlation between LLC and
attack success is a statistic of three to ten points. Every coefficient therefore
comes with a bootstrap 95% interval over checkpoints (percentile method, Efron and
Tibshirani 1993, ch. 13) and a permutation p-value (exact over every permutation
when there are at most `EXACT_PERMUTATIONS` of them, else Monte Carlo with the
(k + 1) / (B + 1) estimate of Phipson and Smyth 2010). Spearman's rho is Pearson's r
on average ranks, so ties are handled as usual.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

EXACT_PERMUTATIONS = 40320  # 8!: enumerate every permutation up to 8 points


def ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (1-based); tied values share the mean of their ranks."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="mergesort")
    ranked = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            ranked[order[start:end]] = (start + end + 1) / 2
            start = end
    return ranked


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r; NaN when either variable is constant (the coefficient is undefined)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy / denom) if denom > 0 else math.nan


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(ranks(x), ranks(y))


METHODS = {"spearman": spearman, "pearson": pearson}


@dataclass(frozen=True)
class Correlation:
    method: str
    n: int
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    n_resamples_used: int  # bootstrap resamples with a defined coefficient (not constant in x or y)
    status: str            # ok, too_few_points, or constant (an input does not vary)
    reason: str


def _resample_index(rng, n: int, clusters, strata) -> np.ndarray:
    """Point indices of one resample: plain, or two-stage over clusters within strata."""
    if clusters is None:
        return rng.integers(0, n, size=n)
    index = []
    for stratum in np.unique(strata):
        members = np.unique(clusters[strata == stratum])
        for cluster in rng.choice(members, size=len(members), replace=True):
            points = np.flatnonzero(clusters == cluster)
            index.append(rng.choice(points, size=len(points), replace=True))
    return np.concatenate(index)


def bootstrap_interval(x: np.ndarray, y: np.ndarray, method: str, *, n_resamples: int, seed: int,
                       level: float = 0.95, clusters=None, strata=None, x_se=None) -> tuple[float, float, int]:
    """Percentile interval of the coefficient over checkpoints resampled with replacement.

    With `clusters` (one label per point, e.g. its trajectory) the resample is
    two-stage, for nested data (Davison and Hinkley 1997, sec. 3.8): clusters are
    drawn with replacement within each stratum (`strata`, e.g. the technique, whose
    clusters are its replicate trajectories), then points within each drawn
    cluster. With `x_se` each resample also redraws x as x + se * z, so a
    measurement's own standard error (the LLC's) widens the interval; the mean shift towards 0 that
    this extra noise causes (attenuation) is removed, so only the spread is added. With one cluster per
    stratum (no replicates) the resample is the plain one over points.
    Resamples in which x or y is constant have no coefficient and are left out; their
    count is returned so a reader can see how many resamples the interval rests on.
    """
    rng = np.random.default_rng(seed)
    n = len(x)
    stat = METHODS[method]
    if clusters is not None:
        clusters = np.asarray(clusters)
        strata = np.zeros(n, dtype=int) if strata is None else np.asarray(strata)
        replicated = any(len(np.unique(clusters[strata == s])) > 1 for s in np.unique(strata))
        if not replicated:  # one run per stratum: resampling runs adds nothing, resample points as before
            clusters = strata = None
    noise = None if x_se is None else np.nan_to_num(np.asarray(x_se, dtype=float))
    if noise is not None and not noise.any():
        noise = None
    values, exact = [], []
    for _ in range(n_resamples):
        index = _resample_index(rng, n, clusters, strata)
        value = stat(x[index], y[index])
        if noise is not None:
            noisy = stat(x[index] + noise[index] * rng.standard_normal(len(index)), y[index])
            if math.isnan(noisy) or math.isnan(value):
                continue
            exact.append(value)
            value = noisy
        if not math.isnan(value):
            values.append(value)
    if not values:
        return math.nan, math.nan, 0
    if exact:
        # noise added to values that already carry it attenuates the coefficient towards 0; keep the
        # spread it adds but remove that shift, so the interval widens around the same centre
        values = list(np.asarray(values) - (np.mean(values) - np.mean(exact)))
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high), len(values)


def permutation_p(x: np.ndarray, y: np.ndarray, method: str, *, n_permutations: int, seed: int) -> float:
    """Two-sided p-value of |coefficient| under random pairing of x and y."""
    stat = METHODS[method]
    observed = abs(stat(x, y))
    tolerance = 1e-12
    if math.factorial(len(y)) <= EXACT_PERMUTATIONS:
        extreme = total = 0
        for perm in itertools.permutations(range(len(y))):
            total += 1
            extreme += abs(stat(x, y[list(perm)])) >= observed - tolerance
        return extreme / total
    rng = np.random.default_rng(seed)
    extreme = sum(abs(stat(x, rng.permutation(y))) >= observed - tolerance for _ in range(n_permutations))
    return (extreme + 1) / (n_permutations + 1)


def correlate(x, y, method: str, *, n_resamples: int = 2000, n_permutations: int = 5000, seed: int = 0,
              min_points: int = 3, clusters=None, strata=None, x_se=None) -> Correlation:
    """One coefficient with its bootstrap interval and permutation p-value, or a flagged row.

    `clusters`, `strata` and `x_se` go to `bootstrap_interval` (replicate trajectories
    and the LLC's standard error); the p-value permutes the pairing of all points.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length ({len(x)} vs {len(y)})")
    n = len(x)
    if n < min_points:
        return Correlation(method, n, math.nan, math.nan, math.nan, math.nan, 0, "too_few_points",
                           f"{n} checkpoints with both values; at least {min_points} are needed")
    estimate = METHODS[method](x, y)
    if math.isnan(estimate):
        which = "LLC" if np.ptp(x) == 0 else "the attack success rate"
        return Correlation(method, n, math.nan, math.nan, math.nan, math.nan, 0, "constant",
                           f"{which} is the same at every checkpoint: no correlation is defined")
    low, high, used = bootstrap_interval(x, y, method, n_resamples=n_resamples, seed=seed, clusters=clusters,
                                         strata=strata, x_se=x_se)
    p = permutation_p(x, y, method, n_permutations=n_permutations, seed=seed)
    return Correlation(method, n, estimate, low, high, p, used, "ok", "")


def subspace_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Principal angles (radians, ascending) between the column spans of a and b."""
    qa, _ = np.linalg.qr(np.asarray(a, dtype=float))
    qb, _ = np.linalg.qr(np.asarray(b, dtype=float))
    cosines = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return np.sort(np.arccos(np.clip(cosines, -1.0, 1.0)))


def batch_means_se(series: list[np.ndarray], n_blocks: int = 8) -> float:
    """Standard error of the grand mean of autocorrelated MCMC series (one per chain, equal weight per draw).

    Each chain is cut into up to `n_blocks` contiguous blocks (at least 4 draws
    each); the block means are treated as independent (Flegal and Jones 2010,
    batch means). NaN with fewer than two blocks in all.
    """
    blocks = []
    for values in series:
        values = np.asarray(values, dtype=np.float64)
        k = max(1, min(n_blocks, len(values) // 4))
        blocks += [part.mean() for part in np.array_split(values, k) if len(part)]
    if len(blocks) < 2:
        return float("nan")
    blocks = np.asarray(blocks)
    return float(blocks.std(ddof=1) / np.sqrt(len(blocks)))



def chain_se(series: list[np.ndarray], n_blocks: int = 8) -> float:
    """Standard error of the grand mean of several chains: the larger of the batch-means error and the
    error implied by the spread of the chains' own means (their std / sqrt(chains), two chains or more).

    Batch means treat every block as independent, so a slow mode that keeps one chain above another for
    its whole length is counted as if it averaged out; the chains' spread measures it directly (the
    between-chain variance of Gelman-Rubin diagnostics). Measured: four 64-draw SGLD chains of the
    embedded model whose means disagree far beyond their batch-means errors (chi-square p < 1e-7;
    config/README.md#llc). Taking the larger never reports less error than either estimate supports; with
    few chains the spread is itself noisy, so for well-mixed chains the result is somewhat conservative.
    """
    within = batch_means_se(series, n_blocks)
    means = [float(np.mean(values)) for values in series if len(values)]
    if len(means) < 2:
        return within
    between = float(np.std(means, ddof=1) / np.sqrt(len(means)))
    return between if math.isnan(within) else max(within, between)


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float | None, float | None]:
    """Wilson score interval of a binomial proportion, clipped to [0, 1]; (None, None) when n is 0.

    Well-behaved at rates of 0 and 1, where the normal interval collapses (Wilson 1927;
    Brown, Cai and DasGupta 2001, section 4). The one implementation the stages share.
    """
    if n == 0:
        return None, None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def wilson_of_rates(rates, ns, z: float = 1.96) -> tuple[list, list]:
    """`wilson` for rates (successes / n) and their n, element by element: (lows, highs)."""
    bounds = [wilson(round(r * n), int(n), z) if r is not None else (None, None) for r, n in zip(rates, ns)]
    return [b[0] for b in bounds], [b[1] for b in bounds]

