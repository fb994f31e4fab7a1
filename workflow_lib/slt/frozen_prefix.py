"""Exact shortcut for restricted SGLD chains: start the forward pass at the first decoder layer that moves.

A susceptibility chain restricted to `l15 attn` never changes the embedding or
decoder layers 0 to 14, so the input of layer 15 is a fixed function of the
tokens for the whole chain. `FrozenPrefixLoss` computes it once per sequence at
the checkpoint and then runs only layers 15 to the end, the final norm and the
head. Every loss value equals the full forward's (the same operations on the
same inputs); on the default restrictions (layers 0, 15 and 29) this removes
about a third of the stage's forward passes, and more for late layers. The
backward pass is unchanged: it never entered frozen layers anyway.

Used only where it is exact: every sampled weight must lie in a decoder layer
(a chain that moves the embedding, the final norm or the head starts at 0), and
on the first batch the shortcut must reproduce the full forward's losses, else
the chain falls back to the full forward and the log says why.
"""

from __future__ import annotations

import logging
import re

import torch
from torch import nn

from workflow_lib.slt import sampling

log = logging.getLogger(__name__)

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def first_moving_layer(param_names) -> int:
    """Index of the lowest decoder layer holding a sampled weight; 0 if any sampled weight is outside the layers."""
    layers = []
    for name in param_names:
        m = _LAYER.search(name)
        if m is None:
            return 0
        layers.append(int(m[1]))
    return min(layers) if layers else 0


def _decoder(model: nn.Module) -> nn.Module:
    """The module holding the decoder layers as `layers` (LlamaModel and most causal LMs)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is None or not isinstance(getattr(decoder, "layers", None), nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no decoder with a `layers` ModuleList")
    return decoder


def _key(row: torch.Tensor) -> bytes:
    return row.detach().cpu().numpy().tobytes()


class FrozenPrefixLoss:
    """devinterp `loss_fn` that runs decoder layers `first_layer`.. from cached inputs (see the module doc)."""

    def __init__(self, model: nn.Module, first_layer: int, sequences: torch.Tensor, batch_size: int):
        self.first_layer = int(first_layer)
        self.cache: dict[bytes, torch.Tensor] = {}
        unique = {_key(row): row for row in sequences}
        rows = torch.stack(list(unique.values())) if unique else sequences
        for start in range(0, len(rows), batch_size):
            self._fill(model, rows[start:start + batch_size])

    def _layer_inputs(self, model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """The hidden states entering layer `first_layer`, captured by a pre-hook during a no-grad forward."""
        decoder = _decoder(model)
        captured = {}

        def grab(_module, args, kwargs):
            captured["h"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
            raise _Captured

        handle = decoder.layers[self.first_layer].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with torch.no_grad():
                model(input_ids=input_ids, use_cache=False)
        except _Captured:
            pass
        finally:
            handle.remove()
        return captured["h"]

    def _fill(self, model: nn.Module, input_ids: torch.Tensor) -> None:
        hidden = self._layer_inputs(model, input_ids)
        for row, h in zip(input_ids, hidden):
            self.cache[_key(row)] = h

    def layer_inputs(self, model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """The cached inputs of layer `first_layer` for these sequences (computed now for new ones)."""
        missing = [row for row in input_ids if _key(row) not in self.cache]
        if missing:  # layers below first_layer never move, so the current model gives the same inputs
            self._fill(model, torch.stack(missing))
        return torch.stack([self.cache[_key(row)] for row in input_ids]).to(input_ids.device)

    def __call__(self, model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        return self.from_layer_inputs(model, self.layer_inputs(model, input_ids), input_ids)

    def from_layer_inputs(self, model: nn.Module, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Next-token losses from the inputs of layer `first_layer` (no cache lookup: usable under torch.func)."""
        decoder = _decoder(model)
        layers = decoder.layers
        decoder.layers = layers[self.first_layer:]  # the same modules, so the sampled weights get their grads
        try:
            logits = model(inputs_embeds=hidden, use_cache=False).logits
        finally:
            decoder.layers = layers
        return sampling.next_token_losses(logits, input_ids)


class _Captured(Exception):
    """Stops the forward pass once the cached layer input is captured."""


def loss_for_chain(model: nn.Module, param_names, sequences: torch.Tensor, batch_size: int, full_loss):
    """`FrozenPrefixLoss` where it is exact for this chain's sampled weights, else `full_loss`; and the layer it starts at."""
    first = first_moving_layer(param_names)
    if first == 0:
        return full_loss, 0
    try:
        loss = FrozenPrefixLoss(model, first, sequences, batch_size)
    except (TypeError, AttributeError, KeyError) as err:
        log.warning("frozen prefix off for this chain: %s", err)
        return full_loss, 0
    probe = sequences[:batch_size]
    was_training = model.training
    model.train()  # the sampler evaluates in train mode
    with torch.no_grad():
        short, full = loss(model, probe), full_loss(model, probe)
    model.train(was_training)
    if short.shape != full.shape or not torch.allclose(short, full, rtol=1e-4, atol=1e-5):
        gap = (short - full).abs().max().item() if short.shape == full.shape else float("nan")
        log.warning("frozen prefix off for this chain: starting at layer %d changes the loss by up to %.2e "
                    "(this architecture does more than stack its layers); using the full forward", first, gap)
        return full_loss, 0
    return loss, first
