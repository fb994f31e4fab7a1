"""Residual-stream interventions: directional ablation, activation addition, weight orthogonalisation.

Arditi et al. 2024, section 2.4 and appendix:
- **directional ablation** removes the component along a unit direction r from every
  write to the residual stream: the input of every decoder block (which carries the
  embeddings) and the outputs of every attention and MLP sublayer, at every position;
- **activation addition** adds a vector to the input of one decoder block, at every
  position (generated ones included);
- **weight orthogonalisation** makes ablation permanent: `W <- W - r r^T W` on every
  matrix that writes to the residual stream (embedding, attention output, MLP output,
  and their biases). With tied input/output embeddings the unembedding is untied
  first, because the paper orthogonalises the embedding only.

Directions may be one vector `(d,)` or one per batch row `(batch, d)`, so that many
candidate directions can be scored in one batched forward pass.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from workflow_lib.core import models

ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn")
ATTENTION_OUT_NAMES = ("o_proj", "out_proj", "dense", "c_proj")
MLP_OUT_NAMES = ("down_proj", "fc2", "dense_4h_to_h", "c_proj", "w2")


def _child(module: nn.Module, names: tuple[str, ...], what: str) -> nn.Module:
    for name in names:
        if isinstance(getattr(module, name, None), nn.Module):
            return getattr(module, name)
    raise ValueError(f"{type(module).__name__} has no {what} submodule (looked for {list(names)}); "
                     "interventions support Llama-, Qwen-, Gemma- and GPT-NeoX-style decoder blocks")


def sublayers(block: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The attention and MLP modules of one decoder block."""
    return _child(block, ATTENTION_NAMES, "attention"), _child(block, MLP_NAMES, "MLP")


def output_projections(block: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """The two linear maps of a decoder block that write to the residual stream: attention out, MLP out."""
    attn, mlp = sublayers(block)
    return (_child(attn, ATTENTION_OUT_NAMES, "attention output projection"),
            _child(mlp, MLP_OUT_NAMES, "MLP output projection"))


def remove_component(x: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """`x - (x . r) r` along the last axis; `direction` is (d,) or (batch, d) and unit-norm."""
    r = direction.to(x.dtype)
    if r.dim() == 2:
        r = r[:, None, :]
    return x - (x * r).sum(-1, keepdim=True) * r


def _add(x: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    v = vector.to(x.dtype)
    return x + (v[:, None, :] if v.dim() == 2 else v)


def _pre_hook(edit):
    def hook(module, args, kwargs):
        if args:
            return (edit(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": edit(kwargs["hidden_states"])}
    return hook


def _output_hook(edit):
    def hook(module, args, output):
        if isinstance(output, tuple):
            return (edit(output[0]), *output[1:])
        return edit(output)
    return hook


@contextlib.contextmanager
def _hooks(registrations):
    handles = []
    try:
        for register in registrations:
            handles.append(register())
        yield
    finally:
        for handle in handles:
            handle.remove()


def ablation(model: nn.Module, direction: torch.Tensor, skip_first_token: bool = False):
    """Context manager: ablate the unit `direction` from every residual-stream write, at every position.

    With `skip_first_token`, each sequence's first real token (after left padding) is
    left untouched. Small chat models park a massive activation there (an attention
    sink, norm ~25,000 in SmolLM2 against ~100 elsewhere); removing even a tiny
    component of it changes every later position. Weight orthogonalisation cannot
    skip a position, so it equals ablation with `skip_first_token=False` only.
    """
    state: dict[str, torch.Tensor | None] = {"first": None}

    def note_mask(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        if mask is None and ids is None:
            state["first"] = None
            return
        shape = mask.shape if mask is not None else ids.shape
        first = torch.zeros(shape, dtype=torch.bool, device=(mask if mask is not None else ids).device)
        index = mask.long().argmax(-1) if mask is not None else torch.zeros(shape[0], dtype=torch.long)
        first[torch.arange(shape[0]), index] = True
        state["first"] = first

    def edit(x):
        out = remove_component(x, direction)
        first = state["first"]
        if skip_first_token and first is not None and first.shape == x.shape[:2]:
            out = torch.where(first[..., None], x, out)
        return out

    registrations = []
    if skip_first_token:
        registrations.append(lambda: model.register_forward_pre_hook(note_mask, with_kwargs=True))
    for block in models.decoder_layers(model):
        attn, mlp = sublayers(block)
        registrations.append(lambda b=block: b.register_forward_pre_hook(_pre_hook(edit), with_kwargs=True))
        registrations.append(lambda m=attn: m.register_forward_hook(_output_hook(edit)))
        registrations.append(lambda m=mlp: m.register_forward_hook(_output_hook(edit)))
    return _hooks(registrations)


def addition(model: nn.Module, vector: torch.Tensor, layer: int):
    """Context manager: add `vector` to the input of decoder block `layer`, at every position."""
    block = models.decoder_layers(model)[layer]
    return _hooks([lambda: block.register_forward_pre_hook(_pre_hook(lambda x: _add(x, vector)), with_kwargs=True)])


def unit(vector: torch.Tensor) -> torch.Tensor:
    return vector / vector.norm(dim=-1, keepdim=True)


def _project_out_rows(weight: torch.Tensor, r: torch.Tensor) -> None:
    """In place: rows are residual vectors (embedding layout, (n, d)): `W <- W - (W r) r^T`."""
    weight.sub_(torch.outer(weight @ r, r))


def _project_out_outputs(linear: nn.Linear, r: torch.Tensor) -> None:
    """In place: a linear layer writing to the residual (weight (d, k)): `W <- W - r (r^T W)`, bias likewise."""
    linear.weight.sub_(torch.outer(r, r @ linear.weight))
    if linear.bias is not None:
        linear.bias.sub_(r * (r @ linear.bias))


@torch.no_grad()
def orthogonalise(model: nn.Module, direction: torch.Tensor) -> nn.Module:
    """Orthogonalise every residual-stream write of `model` against `direction`, in place.

    Equal to `ablation(model, direction)` on the outputs (tested), with no hooks, so the
    result can be saved and measured like any other checkpoint.
    """
    embedding = model.get_input_embeddings()
    output = model.get_output_embeddings()
    if output is not None and output.weight is embedding.weight:
        output.weight = nn.Parameter(embedding.weight.detach().clone())
        model.config.tie_word_embeddings = False
        if hasattr(model.config, "get_text_config"):
            model.config.get_text_config().tie_word_embeddings = False
    r = unit(direction.to(torch.float64))
    weight_r = r.to(embedding.weight.dtype)
    _project_out_rows(embedding.weight.data, weight_r)
    for block in models.decoder_layers(model):
        for linear in output_projections(block):
            _project_out_outputs(linear, weight_r)
    return model
