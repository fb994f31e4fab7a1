"""The LLC of a loss at a point that is not its minimum: sample the loss with its tangent plane removed.

The local learning coefficient is defined at a critical point of the loss
(Lau et al. 2023, sec. 3). A fine-tuned checkpoint is not a critical point of a
loss it was not trained on, such as the reference loss shared by every
technique (`llc.py`), nor of its own training loss before training converges.
There the loss has a slope g, and the localized posterior drifts down it: its
mean sampled loss gains a first-order term of about -(n_beta / gamma) |g|^2 per
n_beta, which at a localization strong enough to stay local outweighs the
curvature the LLC counts, and the estimate turns negative (measured on
`sft_refusal@50`, config/README.md#llc).

The tilted loss L~(w) = L(w) - g . (w - w*) has the same value, curvature and
higher-order structure at w* as L, and w* is its critical point, so its LLC
measures the geometry around the checkpoint without the drift along g. g is the
gradient of the mean token loss over the whole packed dataset at w*, restricted
to the sampled weights. Adding the same scalar to every token's loss adds it to
every mean, so devinterp sees the tilted loss through its usual per-token
`loss_fn` protocol; at w* the tilt is 0, so the initial loss is unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def mean_loss_gradient(model: nn.Module, rows: torch.Tensor, names: list[str], loss_fn, batch_size: int,
                       device: str) -> dict[str, torch.Tensor]:
    """Gradient of the mean per-token loss over all `rows` with respect to the parameters `names`."""
    params = dict(model.named_parameters())
    chosen = [params[n] for n in names]
    total = [torch.zeros_like(p) for p in chosen]
    was_training = model.training
    model.train()  # as the sampler evaluates (dropout is off)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size].to(device)
        losses = loss_fn(model, chunk)
        grads = torch.autograd.grad(losses.sum() / (len(rows) * losses.shape[1]), chosen, allow_unused=True)
        total = [t + (torch.zeros_like(t) if g is None else g.detach()) for t, g in zip(total, grads)]
    model.train(was_training)
    return dict(zip(names, total))


class TiltedLoss:
    """devinterp `loss_fn` for L(w) - g . (w - w*): the per-token loss minus the tilt, on whichever model copy
    the sampler passes (parameters looked up by name)."""

    def __init__(self, model: nn.Module, gradient: dict[str, torch.Tensor], loss_fn):
        params = dict(model.named_parameters())
        self.start = {n: params[n].detach().clone() for n in gradient}
        self.gradient = gradient
        self.loss_fn = loss_fn

    def tilt(self, model: nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        return sum((self.gradient[n] * (params[n] - self.start[n])).sum() for n in self.gradient)

    def __call__(self, model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(model, input_ids) - self.tilt(model)
