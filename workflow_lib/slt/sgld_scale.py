"""The spread of devinterp's SGLD chain under its localizing prior alone: the linear-response estimator's scale.

devinterp's step is w <- w - (lr/2)(n_beta grad L + gamma (w - w*)) + sqrt(lr) N(0, I). Where the prior
dominates the loss, the chain is the AR(1) w' - w* = a (w - w*) + sqrt(lr) xi with a = 1 - lr gamma / 2,
whose stationary per-weight variance is lr / (1 - a^2). No torch here: the config checks use it at DAG time.
"""

from __future__ import annotations


class LinearResponseError(ValueError):
    """Settings or data under which the linear-response estimate is undefined."""


def stationary_variance(sampler: dict, key: str = "susceptibility.sampler") -> float:
    """Per-weight stationary variance of devinterp's SGLD under the localizing prior alone: lr / (1 - a^2).

    The chain is stable only for 0 < lr * gamma < 4 (|a| < 1); outside that the
    variance is undefined, and so is the estimate on SGLD's scale.
    """
    lr, gamma = float(sampler["lr"]), float(sampler["localization"])
    if not lr > 0:
        raise LinearResponseError(f"{key}.lr is {lr}; the step size must be > 0")
    if not gamma > 0:
        raise LinearResponseError(f"{key}.localization is {gamma}; the linear-response estimator needs a "
                                  "localizing prior (> 0), which sets the chain's spread")
    a = 1.0 - lr * gamma / 2.0
    if not abs(a) < 1.0:
        raise LinearResponseError(f"{key}: lr x localization = {lr * gamma:g} >= 4, where SGLD diverges "
                                  "under its own prior; lower lr or localization")
    return lr / (1.0 - a * a)
