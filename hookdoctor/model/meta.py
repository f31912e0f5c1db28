"""The meta device: a copy of a model with no weights, and example inputs without values.

``inspect(..., structure_only=True)`` runs its one pass on the meta device: shapes, call
counts and the autograd graph are real, values do not exist. A model that already lives
on a real device is copied structurally: every parameter and buffer is swapped for a
meta tensor of the same shape before ``copy.deepcopy`` reaches it, so the copy costs no
weight memory and the user's model is never touched.
"""

from __future__ import annotations

import copy
from itertools import chain
from typing import Any

import torch
from torch import nn

from hookdoctor.errors import InputError
from hookdoctor.model.inputs import ModelInput

META = torch.device("meta")


def is_meta(model: nn.Module) -> bool:
    """True when the model's tensors live on the meta device (it was built without weights)."""
    tensors = chain(model.parameters(), model.buffers())
    first = next(tensors, None)
    return first is not None and first.is_meta


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are meta tensors of the same shapes."""
    memo: dict[int, Any] = {}
    for parameter in model.parameters():
        memo[id(parameter)] = nn.Parameter(
            torch.empty_like(parameter, device=META), requires_grad=parameter.requires_grad
        )
    for buffer in model.buffers():
        memo[id(buffer)] = torch.empty_like(buffer, device=META)
    try:
        shadow = copy.deepcopy(model, memo)
    except Exception as exc:  # whatever the model holds that cannot be copied (locks, compiled graphs, handles)
        raise InputError(
            f"structure_only=True needs a weightless copy of {type(model).__name__}, and copying it raised "
            f"{type(exc).__name__}: {exc}. Build the model on the meta device yourself "
            "(`with torch.device('meta'): model = build()`) and pass that model."
        ) from exc
    # Plain tensor attributes (caches a model keeps outside its buffers) were copied as they are.
    for module in shadow.modules():
        for key, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) and not value.is_meta:
                setattr(module, key, torch.empty_like(value, device=META))
    return shadow


def _to_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value if value.is_meta else torch.empty_like(value, device=META)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_meta(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_meta(v) for k, v in value.items()}
    return value


def meta_input(model_input: ModelInput) -> ModelInput:
    """The same call on meta tensors of the same shapes and dtypes."""
    return ModelInput(
        tuple(_to_meta(a) for a in model_input.args),
        {k: _to_meta(v) for k, v in model_input.kwargs.items()},
        model_input.image_slot,
    )
