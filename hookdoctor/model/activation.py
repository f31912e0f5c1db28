"""A final softmax or sigmoid written as a function call (``F.softmax``, ``torch.sigmoid``).

An ``nn.Softmax`` module at the end of a model is found by the module that returned the
score. A functional one has no module: the autograd graph shows it (the score's
``grad_fn`` is ``SoftmaxBackward0`` or ``SigmoidBackward0``), but autograd keeps only the
activation's output, not its input. ``FinalActivationInputs`` is a ``TorchFunctionMode``
that keeps the input of the last few softmax / sigmoid calls, so that the logit before the
final one can be explained - by the probe and, at every call, by the spec's model.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_FUNCTIONS = {
    F.softmax: "softmax",
    torch.softmax: "softmax",
    torch.Tensor.softmax: "softmax",
    torch._C.TensorBase.softmax: "softmax",
    torch.special.softmax: "softmax",
    torch.sigmoid: "sigmoid",
    torch.Tensor.sigmoid: "sigmoid",
    torch._C.TensorBase.sigmoid: "sigmoid",
    torch.special.expit: "sigmoid",
    F.sigmoid: "sigmoid",
}
# The autograd nodes a functional (or module) softmax / sigmoid leaves on its output.
ACTIVATION_NODES = {"SoftmaxBackward0": "softmax", "SigmoidBackward0": "sigmoid"}
_KEEP = 4  # the final activation is among the last calls of the forward


def final_activation(score: torch.Tensor) -> str | None:
    """``"softmax"`` or ``"sigmoid"`` when the autograd graph says the score is one's output."""
    node = score.grad_fn
    return ACTIVATION_NODES.get(type(node).__name__) if node is not None else None


class FinalActivationInputs(TorchFunctionMode):
    """Keeps ``(output, input)`` of the last softmax / sigmoid calls made while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=_KEEP)

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        result = func(*args, **(kwargs or {}))
        if func in _FUNCTIONS and args and isinstance(args[0], torch.Tensor) and isinstance(result, torch.Tensor):
            self.seen.append((result, args[0]))
        return result

    def input_of(self, output: torch.Tensor) -> torch.Tensor | None:
        """The input of the activation call that returned ``output`` (the same tensor object), or None."""
        return next((before for after, before in reversed(self.seen) if after is output), None)

    def clear(self) -> None:
        self.seen.clear()
