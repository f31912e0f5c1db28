"""See through the wrappers users hand in: DataParallel, DDP and torch.compile."""

from __future__ import annotations

from torch import nn

from hookdoctor.errors import InputError


def is_torchscript(model: object) -> bool:
    import torch.jit

    return isinstance(model, (torch.jit.ScriptModule, torch.jit.ScriptFunction))


def unwrap(model: nn.Module) -> tuple[nn.Module, str, list[str]]:
    """(inner module, name prefix, wrapper class names) for a possibly wrapped model.

    The prefix is what ``model.named_modules()`` puts in front of the inner module's names
    (``"module."``, ``"_orig_mod."``), so names hookdoctor reports are valid on the model
    the user passed.
    """
    if is_torchscript(model):
        raise InputError(
            f"{type(model).__name__} is a TorchScript module: its forward runs as a compiled graph, "
            "so Python hooks never fire and neither Grad-CAM nor attention capture can work on it. "
            "Inspect the eager nn.Module it was scripted or traced from."
        )
    if not isinstance(model, nn.Module):
        raise InputError(
            f"hookdoctor.inspect takes a torch.nn.Module, not {type(model).__name__}; pass the model object."
        )
    prefix = ""
    wrappers: list[str] = []
    inner = model
    while True:
        if type(inner).__name__ == "OptimizedModule":
            attr = "_orig_mod"
        elif isinstance(inner, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            attr = "module"
        else:
            return inner, prefix, wrappers
        wrapped = getattr(inner, attr, None)
        if not isinstance(wrapped, nn.Module):
            return inner, prefix, wrappers
        wrappers.append(type(inner).__name__)
        prefix += attr + "."
        inner = wrapped


def without_compile(model: nn.Module) -> nn.Module:
    """The eager module inside the innermost ``torch.compile`` wrapper, or ``model`` when it has none.

    A compiled forward's backward is compiled too, with buffers donated on the assumption
    that it runs once; pytorch-grad-cam backpropagates with ``retain_graph=True``, which that
    backward refuses. The module that ``torch.compile`` wrapped computes the same function.
    """
    eager = model
    current = model
    while True:
        wrapped = getattr(current, "_orig_mod", None) if type(current).__name__ == "OptimizedModule" else None
        if isinstance(wrapped, nn.Module):
            current = eager = wrapped
        elif isinstance(current, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            current = current.module
        else:
            return eager
