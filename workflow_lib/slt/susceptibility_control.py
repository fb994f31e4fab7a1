"""Stein control variates for the SGLD susceptibility: the part beyond the linear response, with less noise.

devinterp's estimate of component C's susceptibility, averaged over an
observable's answer tokens (Baker et al. 2025, app. C.4), is the mean over
draws of

    y_d = phi_d * (P_d - l_d) - phi_d * Delta

with P_d the sampling loss at draw d, phi_d = P_d - P(w*), l_d the observable's
mean answer-token loss and Delta the unrestricted chain's mean of P - l. Its
noise is mostly the quadratic form phi_d * (P_d - l_d) ~ (g . delta)((g - h) . delta)
of the displacement delta = w_d - w* (g, h the gradients of the sampling and the
observable loss at w*): the linear response, whose mean `susceptibility_linear`
computes exactly.

Control variates with an exactly known mean remove that noise without assuming
the chain is Gaussian. devinterp's SGLD step is
delta' = delta - (lr / 2) G + sqrt(lr) xi, with G = n_beta grad L_batch(w) + gamma delta
and xi ~ N(0, I) on C's weights. At stationarity the first two moments of delta
do not change, which gives, for any vector a and symmetric matrix A,

    E[a . G] = 0,    E[delta^T A G - (lr / 4) G^T A G - tr A] = 0

exactly for the discrete chain (not only in the small-step limit; the
zero-variance identity of Mira et al. 2013, written for the SGLD update). We use
a = g, A = g g^T and A = sym(g (g - h)^T): each needs only the four numbers
g . delta, h . delta, g . G, h . G per step, so recording them costs a few dot
products per step. The estimate regresses y on the control variates over the
draws (least squares, Glasserman 2004, sec. 4.1) and subtracts their mean
times the coefficients. Where the chain is near Gaussian (strong localization)
the control variates take away most of the variance; where curvature matters
the residual is what singular learning theory adds and SGLD still measures it.
Assumes: the chain has reached stationarity after burn-in, one batch per step
(no gradient accumulation), no weight decay and no bounding box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from workflow_lib.slt import sampling
from workflow_lib.core.statistics import batch_means_se
from workflow_lib.slt.observables import ObservableRow
from workflow_lib.slt.susceptibility_linear import ComponentIndex, _grad, answer_positions


def answer_mean_gradient(model: nn.Module, rows: list[ObservableRow], index: ComponentIndex, batch_size: int,
                         device: str) -> dict[str, torch.Tensor]:
    """Gradient at the current weights of the mean loss over every answer token of `rows` (tokens pooled)."""
    n_answer = sum(r.n_tokens - r.answer_start for r in rows)
    total: dict[str, torch.Tensor] | None = None
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        losses = sampling.causal_lm_loss(model, torch.tensor([list(r.input_ids) for r in chunk], device=device))
        mask = torch.zeros_like(losses)
        for i, row in enumerate(chunk):
            mask[i, answer_positions(row)] = 1.0
        g = _grad((losses * mask).sum() / n_answer, index)
        total = g if total is None else {k: total[k] + g[k] for k in total}
    return total


class StepRecorder:
    """Wraps a chain's loss function to record, at every SGLD step, delta . v and grad L_batch . v per direction v.

    devinterp copies the model for each chain and calls the loss function once
    per step with gradients on; the recorder notices a new copy (a new chain),
    hooks the gradients of the component's weights, and stores the projections
    of the step's displacement and batch gradient on each direction.
    `records()` gives, per chain, an array (steps, 2, n_directions).
    """

    def __init__(self, model: nn.Module, mask: dict, directions: list[dict[str, torch.Tensor]], loss_fn):
        params = dict(model.named_parameters())
        self.index = ComponentIndex(model, {"c": mask})
        self.names = list(self.index.by_param)
        self.start = {n: params[n].detach().clone() for n in self.names}
        self.directions = [{n: d[n] for n in self.names} for d in directions]
        self.loss_fn = loss_fn
        self.chains: list[list[np.ndarray]] = []
        self._model_id: int | None = None
        self._pending: np.ndarray | None = None
        self._grads: dict[str, torch.Tensor] = {}
        self._hooks: list = []

    def _project(self, vector: dict[str, torch.Tensor]) -> np.ndarray:
        return np.array([self.index.inner_products(vector, d)[0] for d in self.directions])

    def _flush(self) -> None:
        if self._pending is not None:
            if len(self._grads) != len(self.names):  # the step never ran its backward pass
                raise RuntimeError("control variates: a step's gradient was not recorded")
            self._pending[1] = self._project(self._grads)
            self.chains[-1].append(self._pending)
        self._pending, self._grads = None, {}

    def _attach(self, model: nn.Module) -> None:
        self._flush()
        for hook in self._hooks:
            hook.remove()
        params = dict(model.named_parameters())

        def keep(name):
            def hook(p):
                self._grads[name] = p.grad.detach().clone()
            return hook

        self._hooks = [params[n].register_post_accumulate_grad_hook(keep(n)) for n in self.names]
        self._params = {n: params[n] for n in self.names}
        self._model_id = id(model)
        self.chains.append([])

    def __call__(self, model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # an SGLD step (draws and the initial loss run without gradients)
            if id(model) != self._model_id:
                self._attach(model)
            self._flush()
            record = np.zeros((2, len(self.directions)))
            with torch.no_grad():
                record[0] = self._project({n: self._params[n] - self.start[n] for n in self.names})
            self._pending = record
        return self.loss_fn(model, input_ids)

    def records(self) -> list[np.ndarray]:
        self._flush()
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        return [np.stack(chain) if chain else np.zeros((0, 2, len(self.directions))) for chain in self.chains]


# ---- per-draw statistics from devinterp's samples ------------------------------------------------


def answer_mask(ids: np.ndarray, rows: list[ObservableRow]) -> np.ndarray:
    """(batch, seq-1) mask of the answer-token losses of devinterp's observable batch, matched to rows by ids."""
    by_ids = {tuple(int(t) for t in r.input_ids): r for r in rows}
    mask = np.zeros((ids.shape[0], ids.shape[1] - 1))
    for b in range(ids.shape[0]):
        row = by_ids[tuple(int(t) for t in ids[b])]
        mask[b, answer_positions(row)] = 1.0
    return mask


def observable_means(dataset, obs_id: str, mask: np.ndarray) -> np.ndarray:
    """Mean answer-token loss per (chain, draw) of one observable."""
    loss = dataset[f"loss_{obs_id}"].values
    return (loss * mask).sum(axis=(-2, -1)) / mask.sum()


def sampling_means(dataset, sampling_id: str) -> np.ndarray:
    """Mean sampling loss P per (chain, draw)."""
    return dataset[f"loss_{sampling_id}"].values.mean(axis=(-2, -1))


def full_gap(full_dataset, sampling_id: str, obs_id: str, mask: np.ndarray) -> np.ndarray:
    """P - l per (chain, draw) of the unrestricted chain: its mean is devinterp's Delta (answer tokens pooled)."""
    return sampling_means(full_dataset, sampling_id) - observable_means(full_dataset, obs_id, mask)


def draw_values(dataset, full_dataset, sampling_id: str, obs_id: str, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y, phi) per (chain, draw): the mean of y over draws is devinterp's susceptibility averaged over the answer
    tokens."""
    p = sampling_means(dataset, sampling_id)
    phi = p - float(full_dataset["init_loss"].values.mean())
    delta = float(full_gap(full_dataset, sampling_id, obs_id, mask).mean())
    return phi * (p - observable_means(dataset, obs_id, mask)) - phi * delta, phi


# ---- the control variates and the estimate -------------------------------------------------------


def draw_steps(n_draws: int, burn_in: int, steps_between: int) -> np.ndarray:
    """Index of the step that starts from each draw's weights (draw d follows step burn_in + d * steps_between)."""
    return burn_in + np.arange(n_draws) * steps_between + 1


def control_variates(record: np.ndarray, sampler: dict, gg: float, gh: float) -> np.ndarray:
    """(steps, 3) mean-zero control variates from one chain's record (steps, 2, [g, h]).

    Columns: g . G; the identity with A = g g^T; with A = sym(g (g - h)^T).
    gg = |g_C|^2 and gh = g_C . h_C are the traces.
    """
    lr, n_beta, gamma = float(sampler["lr"]), float(sampler["n_beta"]), float(sampler["localization"])
    a, ha = record[:, 0, 0], record[:, 0, 1]           # g . delta, h . delta
    big = n_beta * record[:, 1, :] + gamma * record[:, 0, :]   # G . g, G . h
    a2, h2 = big[:, 0], big[:, 1]
    b, b2 = a - ha, a2 - h2                              # (g - h) . delta, (g - h) . G
    z_gg = a * a2 - lr / 4 * a2 * a2 - gg
    z_gu = 0.5 * (a * b2 + b * a2) - lr / 4 * a2 * b2 - (gg - gh)
    return np.stack([a2, z_gg, z_gu], axis=1)


@dataclass
class Estimate:
    plain: float        # mean of y over the paired draws
    plain_se: float     # batch-means standard error of `plain`
    cv: float           # control-variate estimate
    cv_se: float        # batch-means standard error of `cv`
    n_draws: int        # draws paired with a recorded step, over all chains

    @property
    def variance_ratio(self) -> float:
        """plain / control-variate variance: how many times fewer draws the control variates need."""
        return (self.plain_se / self.cv_se) ** 2 if self.cv_se > 0 else float("inf")


def estimate(y: list[np.ndarray], z: list[np.ndarray]) -> Estimate:
    """Plain and control-variate estimates from per-chain draw values y (n,) and control variates z (n, k)."""
    y_all, z_all = np.concatenate(y), np.concatenate(z)
    zc = z_all - z_all.mean(axis=0)
    scale = np.where(zc.std(axis=0) > 0, zc.std(axis=0), 1.0)
    beta = np.linalg.lstsq(zc / scale, y_all - y_all.mean(), rcond=None)[0] / scale
    residual = [yc - zc_ @ beta for yc, zc_ in zip(y, z)]
    return Estimate(plain=float(y_all.mean()), plain_se=batch_means_se(y), cv=float(np.concatenate(residual).mean()),
                    cv_se=batch_means_se(residual), n_draws=len(y_all))


def component_estimate(records: list[np.ndarray], draws: np.ndarray, sampler: dict, gg: float,
                       gh: float, phi: np.ndarray | None = None, gap: np.ndarray | None = None) -> Estimate:
    """Pair each chain's draws with the step that starts from them, and estimate plain and with control variates.

    `draws` is y per (chain, draw); `records` the chain records with directions [g, h]. With `phi` (per chain,
    draw) and the unrestricted chain's `gap` (P - l per chain, draw), both standard errors include the
    uncertainty of Delta, which enters every draw's y alike: E[phi]^2 SE(Delta)^2.
    """
    steps = draw_steps(draws.shape[1], int(sampler["burn_in"]), int(sampler["steps_between_draws"]))
    y, z, phis = [], [], []
    for chain, record in enumerate(records):
        keep = (steps < len(record)) & np.isfinite(draws[chain])  # a failed chain stops early
        y.append(draws[chain, keep])
        z.append(control_variates(record, sampler, gg, gh)[steps[keep]])
        if phi is not None:
            phis.append(phi[chain, keep])
    est = estimate(y, z)
    if phi is not None and gap is not None:  # E[phi] itself with the control variates: its plain mean is noisy
        extra = (estimate(phis, z).cv * batch_means_se(list(gap))) ** 2
        est.plain_se = float(np.sqrt(est.plain_se ** 2 + extra))
        est.cv_se = float(np.sqrt(est.cv_se ** 2 + extra))
    return est
