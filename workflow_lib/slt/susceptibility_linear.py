"""Linear-response susceptibilities: the small-noise limit of devinterp's estimator, computed exactly.

devinterp 2.0.1 estimates, per component C and observable token t (Baker et al.
2025, app. C.4; `susceptibility.py`),

    chi_C(t) = E_C[phi * L] - E_C[phi * l_t] - E_C[phi] * (E_full[L] - E_full[l_t]),

with L the sampling task's mean loss, phi = L(w) - L(w*) and E_C the SGLD
posterior restricted to C's weights. Under strong localization (gamma >> n_beta
times the largest curvature of the loss in C; the loss smooth at the chain's
spread), SGLD is a Gaussian AR(1) around w*: w' - w* = a (w - w*) + sqrt(lr) xi with
a = 1 - lr * gamma / 2, stationary per-weight variance

    sigma^2 = lr / (1 - a^2),

and a mean shift -(n_beta / gamma) g. Expanding phi and l_t to first order in
w - w* (Isserlis for the products) gives

    chi_C(t) = sigma^2 * g_C . (g_C - h_{t,C}) + O(sigma^4) + O(n_beta * lambda / gamma),

g = grad L(w*), h_t = grad l_t(w*), both restricted to C (shared/NOTES-sampling.md). So
at the configured sampler the SGLD estimate is, up to noise, a gradient inner
product restricted to C: how far moving C along the direction that raises the
sampling loss raises that too for token t (TracIn-like; the damped influence
function of Kreer et al. 2025 in the limit gamma -> infinity). This module
computes it exactly and deterministically:

- g per half of the sampling sequences (g is their mean), so that the same run
  gives the split-half reliability over the sampling data;
- per observable sequence, one backward pass of its mean answer-token loss gives
  g_C . h_C for every component at once (the answer-token mean of chi, which is
  what the aggregate tables and the rankings use);
- per token, one forward-mode product (torch.func.jvp) per component along g_C
  gives g_C . h_t for every token of every observable sequence at once, started
  at the component's first layer from cached layer inputs (`frozen_prefix.py`).

Components are devinterp's weight restrictions (`create_param_masks`), so they
are exactly the weights an SGLD chain for the same name would move: a head is
its q and o slices plus the k and v slices of its GQA group, which it shares with
the other heads of that group (so heads of one group do not add up to `attn`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from workflow_lib.slt import frozen_prefix, sampling
from workflow_lib.core import schema_defaults
from workflow_lib.slt.observables import ObservableRow
from workflow_lib.slt.sgld_scale import LinearResponseError, stationary_variance  # noqa: F401 (part of this API)

log = logging.getLogger(__name__)


# ---- components as index sets over the parameters ------------------------------------------------


def _selector(mask: torch.Tensor | None) -> tuple[str, torch.Tensor | None]:
    """How to sum a parameter's entries under a mask cheaply: all of it, whole rows, whole columns, or elementwise.

    devinterp's head and group masks are whole rows (q, k, v) or whole columns
    (o) of a weight: their sums come from one row-sum or column-sum per weight.
    """
    if mask is None or bool(mask.all()):
        return "all", None
    if mask.dim() == 2:
        rows, cols = mask.all(dim=1), mask.all(dim=0)
        if torch.equal(mask, rows[:, None].expand_as(mask)):
            return "rows", rows.nonzero().flatten()
        if torch.equal(mask, cols[None, :].expand_as(mask)):
            return "cols", cols.nonzero().flatten()
    return "mask", mask


class ComponentIndex:
    """For every parameter, the components that hold (part of) it: sums of elementwise products per component.

    `masks` is devinterp's {component: {param name: None (whole tensor) | bool mask}}.
    """

    def __init__(self, model: nn.Module, masks: dict[str, dict]):
        self.names = list(masks)
        params = dict(model.named_parameters())
        self.by_param: dict[str, list[tuple[int, torch.Tensor | None]]] = {}
        self.selectors: dict[str, list[tuple[int, str, torch.Tensor | None]]] = {}
        for i, name in enumerate(self.names):
            for param_name, mask in masks[name].items():
                if param_name not in params:
                    raise LinearResponseError(f"susceptibility component {name!r} names {param_name}, which the "
                                              "model does not have")
                m = None if mask is None else mask.to(torch.bool).reshape(params[param_name].shape)
                self.by_param.setdefault(param_name, []).append((i, m))
                self.selectors.setdefault(param_name, []).append((i, *_selector(m)))
        self.params = [params[n] for n in self.by_param]

    def inner_products(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> np.ndarray:
        """Per component, sum over its weights of a * b.

        Row or column dot products in the parameters' dtype (`torch.linalg.vecdot`,
        no product tensor), then sums over rows, columns and components in float64:
        a whole-weight sum is the sum of its row (or column) dot products.
        """
        out = np.zeros(len(self.names))
        for param_name, holders in self.selectors.items():
            x, y = a[param_name], b[param_name]
            kinds = {kind for _, kind, _ in holders}
            sums: dict[str, torch.Tensor] = {}
            if x.dim() == 2 and ("rows" in kinds or "cols" not in kinds):
                sums["rows"] = torch.linalg.vecdot(x, y, dim=1).double()
            if x.dim() == 2 and "cols" in kinds:
                sums["cols"] = torch.linalg.vecdot(x, y, dim=0).double()
            if x.dim() != 2:
                sums["flat"] = (x.reshape(-1) * y.reshape(-1)).double()
            whole = next(iter(sums.values())).sum()
            for i, kind, where in holders:
                if kind == "all":
                    out[i] += float(whole)
                elif kind == "mask":
                    out[i] += float((x * y)[where].double().sum())
                else:
                    out[i] += float(sums[kind][where].sum())
        return out

    def restricted(self, vector: dict[str, torch.Tensor], component: int) -> dict[str, torch.Tensor]:
        """`vector` restricted to one component's weights (zeros elsewhere within the parameters it touches)."""
        out = {}
        for param_name, holders in self.by_param.items():
            for i, mask in holders:
                if i == component:
                    out[param_name] = vector[param_name] if mask is None else vector[param_name] * mask
        return out


# ---- gradients -----------------------------------------------------------------------------------


def _grad(loss: torch.Tensor, index: ComponentIndex) -> dict[str, torch.Tensor]:
    grads = torch.autograd.grad(loss, index.params, allow_unused=True)
    return {name: (torch.zeros_like(p) if g is None else g.detach())
            for (name, p), g in zip(zip(index.by_param, index.params), grads)}


@dataclass
class HalfGradients:
    """Gradients of the mean token loss over each half of the sampling sequences, and each half's token share.

    devinterp's L averages every next-token loss of every sampling sequence, so
    g = sum_a weight_a * g_a exactly (rows are of equal length).
    """

    halves: list[dict[str, torch.Tensor]]
    weights: np.ndarray

    def full(self) -> dict[str, torch.Tensor]:
        return {k: sum(float(w) * h[k] for w, h in zip(self.weights, self.halves)) for k in self.halves[0]}


def half_gradients(model: nn.Module, rows: torch.Tensor, index: ComponentIndex, batch_size: int,
                   device: str) -> HalfGradients:
    """`HalfGradients` of the sampling sequences split in order into halves (the first floor(n/2) rows, the rest)."""
    n = len(rows)
    if n < 2:
        raise LinearResponseError(f"the sampling task has {n} sequence(s); the linear-response estimator splits "
                                  "them into two halves, so it needs susceptibility.sampler.n_sequences >= 2 (and "
                                  "enough sampling data to pack them)")
    halves = []
    for half in (rows[: n // 2], rows[n // 2:]):
        total: dict[str, torch.Tensor] | None = None
        for start in range(0, len(half), batch_size):
            chunk = half[start:start + batch_size].to(device)
            loss = sampling.causal_lm_loss(model, chunk).sum() / (len(half) * (rows.shape[1] - 1))
            g = _grad(loss, index)
            total = g if total is None else {k: total[k] + g[k] for k in total}
        halves.append(total)
    return HalfGradients(halves, np.array([n // 2, n - n // 2], dtype=np.float64) / n)


def combine_gram(gram: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """|g_C|^2 per component of g = sum_a w_a g_a, from the halves' Gram matrices (a, b, component)."""
    return np.einsum("a,b,abc->c", weights, weights, gram)


def combine_products(products: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """g_C . h per (sequence, component) of g = sum_a w_a g_a, from the halves' products (sequence, a, component)."""
    return np.einsum("nac,a->nc", products, weights)


def answer_positions(row: ObservableRow) -> slice:
    """Indices into the (seq-1) next-token losses of the answer tokens: loss j predicts token j + 1."""
    return slice(row.answer_start - 1, row.n_tokens - 1)


def sequence_products(model: nn.Module, rows: list[ObservableRow], grads: HalfGradients, index: ComponentIndex,
                      device: str, progress: str = "") -> np.ndarray:
    """g_half_C . h_C per sequence, half and component; h the gradient of the sequence's mean answer-token loss.

    Shape (n_rows, 2, n_components). One forward and one backward pass per sequence.
    """
    halves = grads.halves
    out = np.zeros((len(rows), len(halves), len(index.names)))
    started, last = time.monotonic(), time.monotonic()
    for r, row in enumerate(rows):
        ids = torch.tensor([row.input_ids], device=device)
        loss = sampling.causal_lm_loss(model, ids)[0, answer_positions(row)].mean()
        h = _grad(loss, index)
        for k, g in enumerate(halves):
            out[r, k] = index.inner_products(g, h)
        if time.monotonic() - last > 30 or r + 1 == len(rows):
            last = time.monotonic()
            rate = (r + 1) / (last - started)
            log.info("%sanswer gradients: %d/%d sequences, %.2f seq/s, ETA %.0f s", progress, r + 1, len(rows), rate,
                     (len(rows) - r - 1) / rate)
    return out


class _LossFrom(nn.Module):
    """Next-token losses from given layer inputs, as a module, so torch.func can reparametrise the model inside."""

    def __init__(self, model: nn.Module, prefix: frozen_prefix.FrozenPrefixLoss | None):
        super().__init__()
        self.model = model
        self.prefix = prefix

    def forward(self, hidden, input_ids):
        if self.prefix is None:
            return sampling.causal_lm_loss(self.model, input_ids)
        return self.prefix.from_layer_inputs(self.model, hidden, input_ids)


def token_directional_derivatives(model: nn.Module, sequences: torch.Tensor, tangent: dict[str, torch.Tensor],
                                  batch_size: int, device: str) -> tuple[torch.Tensor, int]:
    """d l_t / d eps along `tangent` for every next-token loss of every sequence: (n_seq, seq-1), and the first layer.

    One forward-mode pass (torch.func.jvp) per batch, from the first decoder layer
    the tangent touches, with the layer's input cached at the checkpoint (exact,
    checked against the full forward as for SGLD chains).
    """
    from torch.func import functional_call, jvp
    from torch.nn.attention import SDPBackend, sdpa_kernel

    sequences = sequences.to(device)
    loss_fn, first = frozen_prefix.loss_for_chain(model, list(tangent), sequences, batch_size, sampling.causal_lm_loss)
    prefix = loss_fn if isinstance(loss_fn, frozen_prefix.FrozenPrefixLoss) else None
    wrapper = _LossFrom(model, prefix)
    primals = {f"model.{n}": p.detach() for n, p in model.named_parameters() if n in tangent}
    tangents = {f"model.{n}": t.to(primals[f"model.{n}"].dtype) for n, t in tangent.items()}
    out = []
    # The fused CPU/CUDA attention kernels have no forward-mode derivative; the math kernel computes the same.
    with sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start:start + batch_size]
            hidden = None if prefix is None else prefix.layer_inputs(model, chunk)
            _, derivative = jvp(lambda p, h=hidden, ids=chunk: functional_call(wrapper, p, (h, ids), strict=False),
                                (primals,), (tangents,))
            out.append(derivative.detach())
    return torch.cat(out), first


# ---- the estimate --------------------------------------------------------------------------------


def chi_from_products(sigma2: float, gg: np.ndarray, gh: np.ndarray) -> np.ndarray:
    """sigma^2 * (g_C . g_C - g_C . h_C), broadcast over any leading axes of gh."""
    return sigma2 * (gg - gh)


def half_gram(grads: HalfGradients, index: ComponentIndex) -> np.ndarray:
    """(2, 2, n_components) array of g_a,C . g_b,C over the two halves."""
    halves = grads.halves
    k = len(halves)
    gram = np.zeros((k, k, len(index.names)))
    for a in range(k):
        for b in range(a, k):
            gram[a, b] = gram[b, a] = index.inner_products(halves[a], halves[b])
    return gram


def zero_gradient_components(gram: np.ndarray, weights: np.ndarray, names: list[str]) -> list[str]:
    """Components whose weights get no gradient from the sampling task (|g_C| = 0): their chi is 0 by construction."""
    return [name for name, value in zip(names, combine_gram(gram, weights)) if not value > 0]


# ---- the stage -----------------------------------------------------------------------------------

LINEAR_DEFAULTS = schema_defaults.defaults("susceptibility", "linear_response")  # from config/schema.yaml
ESTIMATOR = "linear_response"


def fail_on_zero_gradient(gram: np.ndarray, weights: np.ndarray, names: list[str]) -> None:
    dead = zero_gradient_components(gram, weights, names)
    if dead:
        raise LinearResponseError(
            f"susceptibility components {dead[:8]}{' ...' if len(dead) > 8 else ''} get no gradient from the "
            "sampling task, so their linear-response susceptibility is 0 by construction (e.g. weights the "
            "loss does not reach); remove them from susceptibility.linear_response.restrictions")


def observable_products(lm, probes: dict[str, list[ObservableRow]], grads: HalfGradients, index: ComponentIndex,
                        device: str) -> dict[str, np.ndarray]:
    """Per observable: g_half . h per (sequence, half, component), one backward pass per sequence."""
    return {name: sequence_products(lm, rows, grads, index, device, progress=f"{name}: ")
            for name, rows in probes.items()}


def token_chi(lm, probes: dict[str, list[ObservableRow]], g_full: dict, gg_full: np.ndarray, sigma2: float,
              index: ComponentIndex, components: list[str], batch_size: int, device: str) -> dict:
    """{component: {observable: chi per (sequence, next-token loss)}} by one JVP pass per component."""
    out = {}
    names = list(probes)
    sequences = torch.tensor([list(r.input_ids) for name in names for r in probes[name]])
    bounds = np.cumsum([0] + [len(probes[name]) for name in names])
    started = time.monotonic()
    for n, component in enumerate(components):
        c = index.names.index(component)
        derivative, first = token_directional_derivatives(lm, sequences, index.restricted(g_full, c), batch_size,
                                                          device)
        chi = chi_from_products(sigma2, gg_full[c], derivative.double().cpu().numpy())
        out[component] = {name: chi[bounds[i]:bounds[i + 1]] for i, name in enumerate(names)}
        elapsed = time.monotonic() - started
        log.info("per-token JVP %d/%d (%s, from layer %d): %.1f s elapsed, ETA %.0f s", n + 1, len(components),
                 component, first, elapsed, elapsed / (n + 1) * (len(components) - n - 1))
    return out
