"""Leave the user's model exactly as it was found.

Every pass hookdoctor makes over a model runs inside ``preserved(model)``. On the way out,
also when the forward or backward raised (or a hook raised ``KeyboardInterrupt``), it
puts back:

- every module's instance attributes: attributes the call added are deleted, rebound
  ones are bound to their old objects again, and the contents of dict, list and set
  attributes are restored in place. This one rule covers the ``training`` flag, every
  hook dictionary, ``_parameters`` / ``_buffers`` / ``_modules`` (a buffer rebound in
  forward, ``self.count = self.count + 1``, or a parameter replaced by a new one),
  ``fused_attn`` switches, caches filled during the call (timm LeViT's
  ``attention_bias_cache``, which would hold the probe's autograd graph) and flags a
  library sets when it installs hooks lazily (transformers 5 sets
  ``_output_capturing_hooks_installed`` with the output-capturing hooks of the first
  forward: both go, so the next forward installs them again);
- the values of every parameter and buffer, edited in place or not, and each
  parameter's ``requires_grad`` and ``.grad``;
- the transformers attention settings;
- the RNG states of torch (CPU and initialised CUDA devices), Python's ``random`` and
  numpy.

Lazy modules (``nn.LazyLinear``...) are refused before anything runs: their first forward
turns them into other classes with new parameters, which cannot be undone, so the user
runs one forward first.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from hookdoctor.errors import InputError

# Settings transformers reads at call time; hookdoctor never changes them, but a forward
# with ``output_attentions`` can, so they are put back all the same.
_CONFIG_FIELDS = ("_attn_implementation", "output_attentions", "output_hidden_states", "return_dict")
# Instance attributes of these types are restored element by element, keeping the
# container object the model (and anyone else) holds.
_CONTAINERS = (dict, list, set)


def _configs(model: nn.Module) -> list[Any]:
    seen: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and not isinstance(config, (dict, str)) and id(config) not in seen:
            seen[id(config)] = config
    return list(seen.values())


def refuse_lazy_modules(model: nn.Module) -> None:
    """InputError when a Lazy module has not run yet: its first forward would change the model for good."""
    lazy = [
        name or type(model).__name__
        for name, m in model.named_modules()
        if isinstance(m, LazyModuleMixin) and cast(Any, m).has_uninitialized_params()
    ]
    if lazy:
        shown = ", ".join(f"`{n}`" for n in lazy[:3]) + (f" and {len(lazy) - 3} more" if len(lazy) > 3 else "")
        raise InputError(
            f"The model holds Lazy modules that have not run yet ({shown}): their first forward replaces "
            "their parameters and changes their class, which hookdoctor could not undo. Run the model once "
            "on a real input (model(x)) before inspecting it, as you would before building an optimizer."
        )


def _same_items(current: Any, saved: Any) -> bool:
    """True when a container holds the same objects (by identity) as its saved copy."""
    if len(current) != len(saved):
        return False
    if isinstance(saved, dict):
        return current.keys() == saved.keys() and all(current[k] is v for k, v in saved.items())
    if isinstance(saved, set):
        return current == saved
    return all(a is b for a, b in zip(current, saved, strict=True))


def _refill(container: Any, saved: Any) -> None:
    if isinstance(container, list):
        container[:] = saved
    else:
        container.clear()
        container.update(saved)


@dataclass
class _ModuleState:
    module: nn.Module
    attributes: dict[str, Any]  # the instance __dict__, shallow
    contents: dict[str, Any]  # attribute name -> shallow copy of a dict / list / set attribute

    @classmethod
    def of(cls, module: nn.Module) -> _ModuleState:
        attributes = dict(module.__dict__)
        contents = {k: _copy(v) for k, v in attributes.items() if isinstance(v, _CONTAINERS)}
        return cls(module, attributes, contents)

    def restore(self) -> None:
        live = self.module.__dict__
        for key in [k for k in live if k not in self.attributes]:
            del live[key]
        for key, value in self.attributes.items():
            if live.get(key, _MISSING) is not value:
                live[key] = value
        for key, saved in self.contents.items():
            if not _same_items(live[key], saved):
                _refill(live[key], saved)


_MISSING = object()


def _copy(container: Any) -> Any:
    """A shallow copy of a dict / list / set subclass (OrderedDict hook dicts...) as its plain base."""
    if isinstance(container, dict):
        return dict(container)
    return list(container) if isinstance(container, list) else set(container)


@dataclass
class _TensorState:
    """A parameter's or buffer's value, kept on the CPU so that a GPU model's memory is not doubled."""

    tensor: torch.Tensor
    data: torch.Tensor  # an alias of the storage the object held: ``param.data = ...`` swaps it
    saved: torch.Tensor | None  # None for a meta tensor: it holds no values (a structure-only pass)
    requires_grad: bool
    grad: torch.Tensor | None

    @classmethod
    def of(cls, tensor: torch.Tensor) -> _TensorState:
        with torch.no_grad():
            saved = None if tensor.is_meta else tensor.detach().to("cpu", copy=True)
        return cls(tensor, tensor.data, saved, tensor.requires_grad, tensor.grad)

    def restore(self) -> None:
        tensor = self.tensor
        data = tensor.data
        if (data.data_ptr(), data.shape, data.dtype, data.device) != (
            self.data.data_ptr(), self.data.shape, self.data.dtype, self.data.device,
        ):
            tensor.data = self.data  # the object is bound to its old storage again
        # Always compared: an edit through ``.data`` leaves the version counter as it was.
        if self.saved is not None and not tensor.is_meta:
            with torch.no_grad():
                value = self.saved.to(tensor.device)
                if not torch.equal(tensor.detach(), value):
                    tensor.detach().copy_(value)
        if tensor.requires_grad != self.requires_grad:
            tensor.requires_grad_(self.requires_grad)
        if tensor.grad is not self.grad:
            tensor.grad = self.grad


@dataclass
class _RandomState:
    torch_cpu: torch.Tensor
    torch_cuda: list[torch.Tensor] | None
    python: Any
    numpy: Any

    @classmethod
    def capture(cls) -> _RandomState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return cls(torch.random.get_rng_state(), cuda, random.getstate(), _numpy_state())

    def restore(self) -> None:
        torch.random.set_rng_state(self.torch_cpu)
        if self.torch_cuda is not None:
            torch.cuda.set_rng_state_all(self.torch_cuda)
        random.setstate(self.python)
        if self.numpy is not None:
            import numpy as np

            np.random.set_state(self.numpy)


def _numpy_state() -> Any:
    try:
        import numpy as np
    except ImportError:  # numpy is optional for torch
        return None
    return np.random.get_state()


@contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    refuse_lazy_modules(model)
    modules = [_ModuleState.of(m) for m in model.modules()]
    # Every parameter and buffer object any module holds (shared ones once), by identity.
    tensors: dict[int, torch.Tensor] = {}
    for m in model.modules():
        for value in (*m._parameters.values(), *m._buffers.values()):
            if value is not None:
                tensors.setdefault(id(value), value)
    values = [_TensorState.of(t) for t in tensors.values()]
    configs = [
        (c, {f: getattr(c, f) for f in _CONFIG_FIELDS if f in getattr(c, "__dict__", {})}) for c in _configs(model)
    ]
    rng = _RandomState.capture()
    try:
        yield
    finally:
        # Attributes first: they re-bind the parameter and buffer objects whose values follow.
        for state in modules:
            state.restore()
        for tensor_state in values:
            tensor_state.restore()
        for config, settings in configs:
            for key, setting in settings.items():
                if getattr(config, key, None) != setting:
                    config.__dict__[key] = setting
        rng.restore()
