"""hookdoctor: why Grad-CAM and attention rollout fail on a vision model, and a hook spec that works.

    import hookdoctor
    report = hookdoctor.inspect(model, x)
    report.gradcam.pytorch_grad_cam_kwargs()   # for pytorch_grad_cam.GradCAM(**kwargs)
    report.rollout.rollout(model, x)           # attention rollout map [B, H, W]

This module is the whole public API. Names load lazily, so ``import hookdoctor`` (and
``hookdoctor explain``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hookdoctor.codes import explain
from hookdoctor.errors import (
    HookCompatibilityError,
    HookdoctorError,
    InputError,
    MethodUnsupportedError,
    MissingDependencyError,
    ModelLoadError,
    ModelRunError,
    UnknownCodeError,
)

__version__ = "0.1.0"

_LAZY = {
    "inspect": "hookdoctor._inspect",
    "preflight": "hookdoctor.preflight",
    "Report": "hookdoctor.report",
    "Diagnostic": "hookdoctor.report",
    "LayerVerdict": "hookdoctor.report",
    "GradCAMSpec": "hookdoctor.specs.gradcam",
    "AttentionSpec": "hookdoctor.attention",
    "ReshapeTransform": "hookdoctor.geometry.layout",
}

__all__ = [
    "AttentionSpec",
    "Diagnostic",
    "GradCAMSpec",
    "HookCompatibilityError",
    "HookdoctorError",
    "InputError",
    "LayerVerdict",
    "MethodUnsupportedError",
    "MissingDependencyError",
    "ModelLoadError",
    "ModelRunError",
    "Report",
    "ReshapeTransform",
    "UnknownCodeError",
    "explain",
    "inspect",
    "preflight",
]

if TYPE_CHECKING:
    from hookdoctor._inspect import inspect
    from hookdoctor.attention import AttentionSpec
    from hookdoctor.geometry.layout import ReshapeTransform
    from hookdoctor.preflight import preflight
    from hookdoctor.report import Diagnostic, LayerVerdict, Report
    from hookdoctor.specs.gradcam import GradCAMSpec


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hookdoctor' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
