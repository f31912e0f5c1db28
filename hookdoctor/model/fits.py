"""Before a full-size pass or build: stop with a clear message when it would not fit.

The estimate and its one message live in ``memory``; this module measures a model for it
on the meta device (a weightless copy, or the meta build itself), which is why it sits
above ``inputs`` and ``meta``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hookdoctor.errors import InputError
from hookdoctor.model import memory
from hookdoctor.model.inputs import resolve_input
from hookdoctor.model.meta import meta_copy, meta_input

# A built model is measured (on a weightless copy) only when its weights or its input are
# large enough for the pass to matter: small models skip the extra meta forward.
_MEASURE_FROM_WEIGHT_FRACTION = 0.1
_MEASURE_FROM_INPUT_ELEMENTS = 2**24


def guard_pass(model: nn.Module, model_input: Any) -> None:
    """Before the full-size pass of a built ``model``: stop with a clear message when it would not fit.

    The weights exist already; what the pass adds is its activations and their gradients,
    measured with one forward of a weightless copy on the meta device.
    """
    device = model_input.image.device
    available = memory.available_bytes(device)
    count, size = memory.parameter_bytes(model)
    if available is None:
        return
    if size < _MEASURE_FROM_WEIGHT_FRACTION * available and model_input.image.numel() < _MEASURE_FROM_INPUT_ELEMENTS:
        return
    try:
        shadow, on_meta = meta_copy(model), meta_input(model_input)
        activations = memory.activation_bytes(shadow, on_meta.call)
    except Exception:  # a model the meta device cannot run is not guarded: the estimate is only a courtesy
        return
    memory.ensure_fits(memory.MemoryEstimate(count, 0, activations), device, type(model).__name__)


def guard_build(meta_model: nn.Module, input_shape: tuple[int, ...] | None, device: torch.device | None) -> None:
    """Before building a model at full size: its weights plus one pass, estimated from a meta build of it."""
    target = device if device is not None else torch.device("cpu")
    available = memory.available_bytes(target)
    if available is None:
        return
    count, size = memory.parameter_bytes(meta_model)
    try:
        model_input = resolve_input(meta_model, None, input_shape)
    except InputError:  # inspect says what input it needs, after the build
        return
    if size < _MEASURE_FROM_WEIGHT_FRACTION * available and model_input.image.numel() < _MEASURE_FROM_INPUT_ELEMENTS:
        return
    try:
        activations = memory.activation_bytes(meta_model, model_input.call)
    except Exception:  # a model the meta device cannot run is judged on its weights alone
        activations = 0
    memory.ensure_fits(memory.MemoryEstimate(count, size, activations), target, type(meta_model).__name__)
