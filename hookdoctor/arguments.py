"""The one place where ``inspect``'s arguments are checked and each setting is defined.

Every argument a user hands ``hookdoctor.inspect`` (or the command line, which reuses
these checks) is validated here, before any model runs, so a wrong value is an
``InputError`` that says what to pass instead of a ``TypeError`` from deep inside, or a
value silently coerced (``target=True`` meaning class 1, ``16.7`` truncated to 16).

No torch import at module level: the command line checks ``--method`` with it before
torch is loaded.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hookdoctor.errors import InputError

GRADCAM = "gradcam"
ROLLOUT = "rollout"
METHODS = (GRADCAM, ROLLOUT)
AUTO = "auto"
ALL = "all"
# What each word a user may write stands for; "auto" leaves rollout to the model (see Methods).
METHOD_WORDS = (AUTO, ALL, *METHODS)
DEFAULT_METHODS = AUTO


@dataclass(frozen=True)
class Methods:
    """The methods to judge, and which of them were chosen by ``"auto"`` rather than by name.

    An auto method that does not apply to the model (rollout on a model without token
    attention) is reported as not applicable, not as a failure.
    """

    wanted: tuple[str, ...]
    auto: frozenset[str] = frozenset()

    def named(self, method: str) -> bool:
        """True when the user asked for ``method`` by name (``"rollout"``, ``"all"``), not via auto."""
        return method in self.wanted and method not in self.auto


def parse_methods(methods: Any) -> Methods:
    """``"auto"``, ``"gradcam"``, ``"rollout"``, ``"all"`` or an iterable of them -> Methods."""
    if isinstance(methods, str):
        words: tuple[Any, ...] = tuple(w.strip() for w in methods.split(",")) if "," in methods else (methods,)
    elif isinstance(methods, Iterable) and not isinstance(methods, (bytes, dict)):
        words = tuple(methods)
    else:
        words = ()
    bad = [w for w in words if not isinstance(w, str) or w.lower() not in METHOD_WORDS]
    if not words or bad:
        shown = repr(bad[0]) if bad else repr(methods)
        raise InputError(
            f"Unknown method {shown}: methods must be 'auto' (Grad-CAM, plus attention rollout where the "
            "model computes token attention), 'gradcam', 'rollout', 'all', or a tuple of them such as "
            "methods=('gradcam', 'rollout')."
        )
    lowered = [w.lower() for w in words]
    named = {m for m in METHODS if m in lowered or ALL in lowered}
    auto = set(METHODS) - named if AUTO in lowered else set()
    wanted = tuple(m for m in METHODS if m in named | auto)  # canonical order, no repeats
    return Methods(wanted, frozenset(auto))


def whole_number(value: Any, what: str, example: str) -> int:
    """``value`` as an int when it is one (Python or numpy int, 0-d integer tensor); never a bool or float."""
    if isinstance(value, bool):
        raise InputError(f"{what} is {value!r}, a bool, not a whole number; pass an int such as {example}.")
    try:
        return operator.index(value)
    except TypeError:
        raise InputError(
            f"{what} is {_short_repr(value)} ({type(value).__name__}), not a whole number; pass an int "
            f"such as {example}."
        ) from None


def parse_target(target: Any) -> int | None:
    if target is None:
        return None
    return whole_number(target, "target", "target=3 (a class index), or None for the top-scoring class")


# The shapes an input_shape may have: one per input kind (see model/inputs.py).
SHAPES = "(B, C, H, W) for images, (B, C, T, H, W) for video, (B, T, F) or (B, C, L) for audio and signals"


def parse_input_shape(input_shape: Any) -> tuple[int, ...] | None:
    """A shape of whole, positive sizes, or None; never truncated or guessed."""
    if input_shape is None:
        return None
    example = "input_shape=(1, 3, 224, 224)"
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise InputError(
            f"input_shape is {_short_repr(input_shape)}, not a shape: pass a tuple of sizes - {SHAPES} - "
            f"such as {example}, or an example_input tensor."
        )
    odd = [s for s in input_shape if isinstance(s, bool) or not _is_index(s)]
    if odd:
        raise InputError(
            f"input_shape {_short_repr(tuple(input_shape))} has a size that is not a whole number "
            f"({_short_repr(odd[0])}); sizes are never rounded. Pass whole numbers, e.g. {example}."
        )
    sizes = tuple(operator.index(s) for s in input_shape)
    if len(sizes) not in (3, 4, 5) or any(s <= 0 for s in sizes):
        raise InputError(
            f"input_shape must be three, four or five positive sizes - {SHAPES} - got {sizes!r}; "
            f"for example {example}."
        )
    return sizes


def parse_layer(layer: Any) -> list[str]:
    """The names of the layers to judge; each a non-empty dotted module name."""
    if layer is None:
        return []
    names = [layer] if isinstance(layer, str) else list(layer) if isinstance(layer, (list, tuple)) else None
    if names is None or not names or any(not isinstance(n, str) or not n.strip() for n in names):
        raise InputError(
            f"layer={_short_repr(layer)} is not a layer name: pass the dotted module name as "
            "model.named_modules() spells it, e.g. layer='layer4' or layer='blocks.11.norm1' "
            "(or a list of names)."
        )
    return names


def layer_name(name: Any) -> str:
    """The argument of ``report.check_layer``: one non-empty dotted module name."""
    if not isinstance(name, str) or not name.strip():
        raise InputError(
            f"check_layer({_short_repr(name)}): pass a module name as a string, as model.named_modules() "
            "spells it, e.g. report.check_layer('layer4')."
        )
    return name


def parse_output(output: Any) -> str | int | None:
    if output is None or isinstance(output, str):
        return output
    return whole_number(output, "output", "output='logits' (a field or key name) or output=0 (a tuple index)")


def _is_index(value: Any) -> bool:
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
