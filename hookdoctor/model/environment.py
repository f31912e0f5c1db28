"""Versions and attention switches that explain why a report looks the way it does."""

from __future__ import annotations

import functools
import sys
from collections import Counter
from importlib import metadata
from typing import Any

from torch import nn


@functools.cache  # the installed metadata is read once per process (20-30 ms a call otherwise)
def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(model: nn.Module) -> dict[str, Any]:
    implementations = sorted(
        {
            str(getattr(m.config, "_attn_implementation", None))
            for m in model.modules()
            if getattr(m, "config", None) is not None and hasattr(m.config, "_attn_implementation")
        }
    )
    fused = Counter(
        f"{type(m).__name__}.fused_attn={m.fused_attn}" for m in model.modules() if hasattr(m, "fused_attn")
    )
    return {
        "python": sys.version.split()[0],
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "timm": _version("timm"),
        "torchvision": _version("torchvision"),
        "attn_implementation": implementations[0] if len(implementations) == 1 else (implementations or None),
        "fused_attention": dict(sorted(fused.items())),
    }
