"""What a module or model returned: its structure, its main tensor, and the score inside it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

# Fields of a transformers ModelOutput that hold a score, most preferred first: CLIP-style
# models return their image-text logits beside both towers' embeddings.
SCORE_FIELDS = ("logits_per_image", "logits", "image_embeds", "pooler_output")


def describe(value: Any, depth: int = 0) -> str:
    """A short structural description: ``Tensor[1, 65, 64]``, ``tuple(Tensor[..], None)``."""
    if isinstance(value, torch.Tensor):
        return f"Tensor[{', '.join(str(s) for s in value.shape)}]"
    if value is None:
        return "None"
    if depth > 1:
        return type(value).__name__
    if isinstance(value, Mapping):
        inner = ", ".join(f"{k}={describe(v, depth + 1)}" for k, v in value.items())
        return f"{type(value).__name__}({inner})"
    if isinstance(value, (tuple, list)):
        inner = ", ".join(describe(v, depth + 1) for v in value)
        return f"{type(value).__name__}({inner})"
    return type(value).__name__


def primary_tensor(value: Any) -> torch.Tensor | None:
    """The tensor a hook would most likely be after: the value itself, or its first tensor."""
    if isinstance(value, torch.Tensor):
        return value
    items = value.values() if isinstance(value, Mapping) else value if isinstance(value, (tuple, list)) else ()
    for item in items:
        if isinstance(item, torch.Tensor):
            return item
    return None


@dataclass(frozen=True)
class OutputSelector:
    """How to get the score tensor out of a model's output: picklable, printable as code."""

    how: str = "tensor"  # "tensor" | "attr" | "key" | "index"
    key: str | int | None = None

    def __call__(self, output: Any) -> torch.Tensor:
        if self.how == "tensor":
            return output
        if self.how == "attr":
            return getattr(output, str(self.key))
        return output[self.key]

    def expression(self, var: str = "out") -> str:
        if self.how == "tensor":
            return var
        if self.how == "attr":
            return f"{var}.{self.key}"
        return f"{var}[{self.key!r}]"


def find_score(output: Any) -> tuple[OutputSelector, list[str]] | None:
    """Where the score is in ``output``, and the other 2-D candidates that were passed over."""
    if isinstance(output, torch.Tensor):
        # A 0-d or 1-D tensor (a summed loss, a squeezed batch) has no [batch, classes] score.
        return (OutputSelector(), []) if output.dim() >= 2 else None
    candidates: list[tuple[OutputSelector, str]] = []
    if isinstance(output, Mapping):
        is_model_output = hasattr(output, "to_tuple")  # transformers ModelOutput (attribute access works)
        for key, value in output.items():
            if isinstance(value, torch.Tensor) and value.dim() == 2:
                candidates.append((OutputSelector("attr" if is_model_output else "key", key), str(key)))
        preferred = [name for name in SCORE_FIELDS if any(label == name for _, label in candidates)]
        if preferred:  # the preferred field first; the other 2-D tensors are the heads passed over (HD002)
            candidates.sort(key=lambda item: item[1] != preferred[0])
    elif isinstance(output, (tuple, list)):
        for index, value in enumerate(output):
            if isinstance(value, torch.Tensor) and value.dim() == 2:
                candidates.append((OutputSelector("index", index), f"[{index}]"))
    if not candidates:
        return None
    return candidates[0][0], [label for _, label in candidates[1:]]


def select_output(output: Any, key: str | int, ranks: tuple[int, ...] = (2,)) -> OutputSelector:
    """The selector for the score the user named (``output=``), or InputError saying what exists."""
    from hookdoctor.errors import InputError

    if isinstance(output, torch.Tensor):
        raise InputError(f"output={key!r} was given, but the model returns a single tensor; leave output unset.")
    if isinstance(output, Mapping):
        how = "attr" if hasattr(output, "to_tuple") else "key"
        value = output.get(key) if isinstance(key, str) else None
        available = ", ".join(repr(k) for k in output.keys())
    elif isinstance(output, (tuple, list)):
        how = "index"
        value = output[key] if isinstance(key, int) and -len(output) <= key < len(output) else None
        available = f"indices 0..{len(output) - 1}"
    else:
        raise InputError(f"output={key!r} was given, but the model returns {describe(output)}.")
    if not isinstance(value, torch.Tensor) or value.dim() not in ranks:
        raise InputError(
            f"output={key!r} does not name a score tensor ([batch, classes], a segmentation map or an embedding) "
            f"in the model's {describe(output)}; "
            f"choose one of: {available}."
        )
    return OutputSelector(how, key)
