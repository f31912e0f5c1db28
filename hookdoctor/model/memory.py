"""Will a full-size pass fit? An estimate from the parameter count and the activations, checked first.

One function decides (``ensure_fits``), so that every guard - the model's weights and
pass here, a huge input elsewhere - says the same thing in the same words. The estimate
is deliberately simple: the weights (when they are still to be built), plus every
module's output kept for the backward, plus a gradient of the same size flowing back.
The activations are measured on the meta device, which costs no memory: the same forward
with shapes and no values.

After a pass, ``releasing_freed_memory`` hands the heap pages it freed back to the system.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import torch
from torch import nn

from hookdoctor.errors import InsufficientMemoryError

P = ParamSpec("P")
R = TypeVar("R")

_GIB = 1024**3
# The part of the available memory a pass may plan to use: the rest is for Python, the
# libraries and whatever else the machine runs.
USABLE_FRACTION = 0.8


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a full-size inspect needs: the weights (if not built yet) and one forward + backward."""

    parameters: int  # parameter count
    weight_bytes: int  # bytes still to allocate for weights (0 for a model already built)
    activation_bytes: int  # module outputs kept for the backward, and their gradients

    @property
    def total(self) -> int:
        return self.weight_bytes + self.activation_bytes


def gib(count: int) -> str:
    return f"{count / _GIB:.1f} GiB"


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` now: MemAvailable (or free pages) for the CPU, the allocator's for CUDA."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None  # MPS and others share or hide their memory: no guard
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def parameter_bytes(model: nn.Module) -> tuple[int, int]:
    """(parameter count, bytes of parameters and buffers) - on the meta device too."""
    count = sum(p.numel() for p in model.parameters())
    size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    return count, size


@contextmanager
def _output_sizes(model: nn.Module, sink: dict[int, torch.Tensor]) -> Iterator[None]:
    # The outputs are kept (meta tensors cost no memory): a freed one's id could be reused
    # by a later output, which would then not be counted.
    def keep(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            sink[id(output)] = output

    handles = [m.register_forward_hook(keep) for m in model.modules() if next(m.children(), None) is None]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def activation_bytes(meta_model: nn.Module, call: Any) -> int:
    """Bytes of the leaf modules' outputs on one forward of ``meta_model`` (a model on the meta device), x2.

    The factor two stands for the gradient of each kept output during the backward;
    ``call`` runs the forward (``lambda m: m(x)`` on meta inputs).
    """
    outputs: dict[int, torch.Tensor] = {}
    with _output_sizes(meta_model, outputs), torch.no_grad():
        call(meta_model)
    return 2 * sum(t.numel() * t.element_size() for t in outputs.values())


def ensure_fits(estimate: MemoryEstimate, device: torch.device, what: str) -> None:
    """Raise InsufficientMemoryError when ``estimate`` exceeds the usable memory of ``device``."""
    available = available_bytes(device)
    if available is None or estimate.total <= USABLE_FRACTION * available:
        return
    weights = f"{gib(estimate.weight_bytes)} of weights and " if estimate.weight_bytes else ""
    raise InsufficientMemoryError(
        f"{what} has {estimate.parameters / 1e6:,.0f} million parameters; a full-size inspect needs about "
        f"{gib(estimate.total)} ({weights}{gib(estimate.activation_bytes)} of activations and gradients for one "
        f"forward and backward), but only {gib(available)} is available on {device}. Inspect its structure on "
        "the meta device instead, with no weights: --structure-only (inspect(..., structure_only=True)), or "
        "use a smaller --input-shape."
    )


def _load_malloc_trim() -> Any:
    try:
        import ctypes

        trim = ctypes.CDLL(None).malloc_trim  # glibc only
    except (AttributeError, OSError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _load_malloc_trim() if os.name == "posix" else None


def releasing_freed_memory(function: Callable[P, R]) -> Callable[P, R]:
    """``function``, handing the heap pages it freed back to the operating system once it returns.

    A pass allocates and frees hundreds of megabytes of activations and gradients of many
    sizes; glibc keeps the freed pages of its heap mapped, so without this the process's
    resident set stays tens of megabytes above what is live after every ``inspect`` (how
    much depends on where the last allocations landed). The pages are handed back (glibc's
    ``malloc_trim``) after the call has returned, once its frame and every local of it
    (the record, the autograd graph's networkx copy) are freed too: trimmed inside the
    call, they left 10-12 MB behind on the ViT-Bs. Elsewhere (macOS, musl) nothing is done.
    """

    @functools.wraps(function)
    def released(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        finally:
            if _MALLOC_TRIM is not None:
                _MALLOC_TRIM(0)

    return released
