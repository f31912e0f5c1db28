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
  parameter's ``requires_grad`` and ``.grad``. Nothing is copied up front: a
  ``TorchFunctionMode`` sees every torch operation called while the guard is active and,
  before one writes into the memory of a parameter or buffer (in place, through ``.data``
  or a view, ``out=``, ``inplace=True``, batch norm's running statistics), keeps that one
  tensor's values (copy on write). A rebound ``.data`` is found by its storage. An edit
  the mode cannot see (a C++ extension writing into a weight) still moves the tensor's
  version counter: it is reported in a ``RuntimeWarning``, since its old values are gone;
- the transformers attention settings;
- the RNG states of torch (CPU and initialised CUDA devices), Python's ``random`` and
  numpy.

Lazy modules (``nn.LazyLinear``...) are refused before anything runs: their first forward
turns them into other classes with new parameters, which cannot be undone, so the user
runs one forward first.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.overrides import TorchFunctionMode

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
    """A parameter's or buffer's binding: its storage, ``requires_grad`` and ``.grad``; values only once written."""

    tensor: torch.Tensor
    data: torch.Tensor  # an alias of the storage the object held: ``param.data = ...`` swaps it
    version: int  # the in-place version counter: an edit the write watch did not see still moves it
    requires_grad: bool
    grad: torch.Tensor | None
    saved: torch.Tensor | None = None  # the values before the first write the watch saw (on the CPU)

    @classmethod
    def of(cls, tensor: torch.Tensor) -> _TensorState:
        return cls(tensor, tensor.data, _version(tensor), tensor.requires_grad, tensor.grad)

    def save(self) -> None:
        """Keep the values, once, before a write: on the CPU, so that a GPU model's memory is not doubled."""
        if self.saved is None:
            with torch.no_grad():
                self.saved = self.data.detach().to("cpu", copy=True)

    def restore(self) -> bool:
        """Put the binding and, where a write was seen, the values back; False for an edit nobody saw."""
        tensor = self.tensor
        data = tensor.data
        rebound = (data.data_ptr(), data.shape, data.dtype, data.device) != (
            self.data.data_ptr(), self.data.shape, self.data.dtype, self.data.device,
        )
        if rebound:  # ``param.data = ...`` or ``set_`` (which no mode sees): the old storage is intact
            tensor.data = self.data  # the object is bound to its old storage again
        unseen = self.saved is None and not rebound and not tensor.is_meta and _version(tensor) != self.version
        if self.saved is not None:
            with torch.no_grad():
                value = self.saved.to(tensor.device)
                if not torch.equal(tensor.detach(), value):
                    tensor.detach().copy_(value)
            self.saved = None
        if tensor.requires_grad != self.requires_grad:
            tensor.requires_grad_(self.requires_grad)
        if tensor.grad is not self.grad:
            tensor.grad = self.grad
        return not unseen


def _version(tensor: torch.Tensor) -> int:
    return -1 if tensor.is_inference() else int(tensor._version)


def _storage_key(tensor: torch.Tensor) -> int | None:
    """The identity of the memory a tensor reads (its views and ``.data`` aliases share it)."""
    try:
        return int(tensor.untyped_storage()._cdata)
    except Exception:  # sparse, nested or other tensors without one plain storage
        return None


# Tensor methods whose name ends in "_" but that write no values.
_NOT_WRITES = frozenset({"requires_grad_", "rename_", "_fix_weakref"})
# Operations that update tensors they are given inside the kernel (batch norm's running statistics):
# the flag named here says whether they do, passed by keyword or at _UPDATE_FLAG_POSITION (every
# one of them takes the input, two statistics and two affine tensors first, in some order).
_UPDATE_FLAG_POSITION = 5
_UPDATES_ARGUMENTS = {
    "batch_norm": "training", "native_batch_norm": "training", "_native_batch_norm_legit": "training",
    "_batch_norm_with_update": None, "cudnn_batch_norm": "training", "miopen_batch_norm": "training",
    "_batch_norm_impl_index": "training", "instance_norm": "use_input_stats",
}


def _inplace_flag_positions() -> dict[Any, int]:
    """torch.nn.functional functions with an ``inplace`` argument -> its position."""
    import inspect as _inspect

    import torch.nn.functional as F

    found: dict[Any, int] = {}
    for name in dir(F):
        function = getattr(F, name)
        if not callable(function) or isinstance(function, type):
            continue
        try:
            parameters = list(_inspect.signature(function).parameters)
        except (TypeError, ValueError):
            continue
        if "inplace" in parameters:
            found[function] = parameters.index("inplace")
    return found


_INPLACE_FLAG = _inplace_flag_positions()
_INPLACE_DUNDERS = frozenset(
    {"add", "sub", "mul", "truediv", "floordiv", "div", "mod", "pow", "and", "or", "xor", "lshift", "rshift",
     "matmul"}
)
# How each function seen so far may write: _NEVER, _ALWAYS, ("inplace", position) or (flag name, default).
_NEVER, _ALWAYS = 0, 1
_KINDS: dict[Any, Any] = {}


def _kind(func: Any) -> Any:
    name = getattr(func, "__name__", "")
    if (
        name in ("__setitem__", "__set__")
        or (name.startswith("__i") and name.endswith("__") and name[3:-2] in _INPLACE_DUNDERS)
        or (name.endswith("_") and not name.endswith("__") and name not in _NOT_WRITES)
    ):
        return _ALWAYS
    if _hashable(func) and func in _INPLACE_FLAG:
        return ("inplace", _INPLACE_FLAG[func])
    flag = _UPDATES_ARGUMENTS.get(name, "")
    if flag is None:
        return _ALWAYS
    if flag:
        return (flag, flag == "use_input_stats")  # F.instance_norm uses the input's statistics by default
    return _NEVER


def _writes(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether ``func(*args, **kwargs)`` may write into a tensor it is given."""
    try:
        kind = _KINDS[func]
    except KeyError:
        kind = _KINDS[func] = _kind(func)
    except TypeError:  # an unhashable callable: judged each time
        kind = _kind(func)
    if kind == _NEVER:
        return bool(kwargs) and kwargs.get("out") is not None
    if kind == _ALWAYS or kwargs.get("out") is not None:
        return True
    flag, default = kind
    if flag == "inplace":
        return bool(kwargs.get("inplace", args[default] if len(args) > default else False))
    positional = args[_UPDATE_FLAG_POSITION] if len(args) > _UPDATE_FLAG_POSITION else default
    return bool(kwargs.get(flag, positional))


def _hashable(func: Any) -> bool:
    try:
        hash(func)
    except TypeError:
        return False
    return True


def _tensors_in(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[torch.Tensor]:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (v for v in value if isinstance(v, torch.Tensor))


class _WriteWatch(TorchFunctionMode):
    """Copy on write: before an operation writes into the memory of a guarded tensor, its values are kept.

    Every torch operation called from Python while the guard is active passes through
    here - the model's forward, hooks, ``.data`` edits (an alias of the same storage), views
    (``weight[0].zero_()``), ``out=`` and ``inplace=True`` calls, batch norm updating its
    running statistics - so only the tensors something writes to are ever copied.
    """

    def __init__(self, by_storage: dict[int, list[_TensorState]]) -> None:
        super().__init__()
        self._by_storage = by_storage

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if self._by_storage and _writes(func, args, kwargs):
            for tensor in _tensors_in(args, kwargs):
                key = _storage_key(tensor)
                if key is not None and key in self._by_storage:
                    for state in self._by_storage.pop(key):
                        state.save()
        return func(*args, **kwargs)


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
    states = [_TensorState.of(t) for t in tensors.values()]
    by_storage: dict[int, list[_TensorState]] = {}
    for state in states:
        storage = None if state.tensor.is_meta else _storage_key(state.tensor)  # a meta tensor holds no values
        if storage is not None:
            by_storage.setdefault(storage, []).append(state)
    configs = [
        (c, {f: getattr(c, f) for f in _CONFIG_FIELDS if f in getattr(c, "__dict__", {})}) for c in _configs(model)
    ]
    rng = _RandomState.capture()
    try:
        with _WriteWatch(by_storage) if by_storage else contextlib.nullcontext():
            yield
    finally:
        # Attributes first: they re-bind the parameter and buffer objects whose values follow.
        for module_state in modules:
            module_state.restore()
        unseen = [state.tensor for state in states if not state.restore()]
        for config, settings in configs:
            for key, setting in settings.items():
                if getattr(config, key, None) != setting:
                    config.__dict__[key] = setting
        rng.restore()
        if unseen:
            warnings.warn(_unseen_edit(model, unseen), RuntimeWarning, stacklevel=3)


def _unseen_edit(model: nn.Module, unseen: list[torch.Tensor]) -> str:
    names = {id(t): n for n, t in (*model.named_parameters(), *model.named_buffers())}
    shown = ", ".join(f"`{names.get(id(t), tuple(t.shape))}`" for t in unseen[:3])
    more = f" and {len(unseen) - 3} more" if len(unseen) > 3 else ""
    return (
        f"hookdoctor could not put back {shown}{more}: something edited it in place outside torch's Python API "
        "(a C++ extension, or code run under torch._C.DisableTorchFunction), where hookdoctor cannot see the "
        "write coming and keep the old values. Reload those weights before using the model."
    )
