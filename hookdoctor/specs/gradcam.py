"""GradCAMSpec: a target layer, a reshape and a score model that work together.

The spec works with pytorch-grad-cam (``GradCAM(**spec.pytorch_grad_cam_kwargs())``),
Captum (``spec.captum().attribute(x, target=...)``) and plain hooks; ``spec.code(backend)``
prints the same thing as a snippet to paste. A spec for one call of a module that runs
several times (``NAME#k``) hands out a ``CallRouter`` as ``.model`` and its identity
``call_view`` as ``.layer``, so the libraries' hooks fire on that call alone.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hookdoctor.errors import MissingDependencyError
from hookdoctor.geometry.layout import Layout, ReshapeTransform
from hookdoctor.model.inputs import BACKEND_AXIS
from hookdoctor.specs.cam_family import method_kwargs
from hookdoctor.specs.snippets import gradcam_snippet
from hookdoctor.specs.wrappers import CallRouter, Float32Maps, ScoreModel, channels_first


def _backend_class(caller: str, library: str, package: str, module: str, name: str) -> Any:
    """``module.name`` from an optional library, or a MissingDependencyError with the install line."""
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{caller} needs {library}, which is not installed. Install it with "
            f"`pip install 'hookdoctor[{package}]'` (or `pip install {package}`)."
        ) from exc


@dataclass(frozen=True)
class GradCAMSpec:
    """A Grad-CAM hook spec that was checked to work on the example input.

    For one call of a module that runs several times, ``call_index`` is that call (from 0),
    ``layer_name`` is ``NAME#k``, ``module_name`` is ``NAME``, ``model`` is a
    ``CallRouter`` and ``layer`` is its ``call_view``: the libraries hook exactly that call.
    """

    layer_name: str
    layer: nn.Module
    reshape_transform: ReshapeTransform | Float32Maps | None
    model: nn.Module
    grid: tuple[int, ...]
    layout: Layout
    reasons: tuple[str, ...] = field(default_factory=tuple)
    score: str = "logits"
    call_index: int | None = None
    task: str = "classification"
    input_kind: str = "image"
    # False when the spec comes from a structure-only (meta device) pass: no map was computed with it
    verified: bool = True
    # The example input's shape: ShapleyCAM's double-backward check runs on an input like it.
    input_shape: tuple[int, ...] | None = None

    def as_backend_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input as pytorch-grad-cam takes it: a 3-D input gets a singleton axis, others come back as they are.

        pytorch-grad-cam 1.5.7 sizes its map from a 4-D or 5-D input only; ``spec.model``
        accepts this view and drops the axis again before calling the model.
        """
        axis = BACKEND_AXIS.get(self.input_kind)
        return x.unsqueeze(axis) if axis is not None and x.dim() == 3 else x

    @property
    def module_name(self) -> str:
        """The dotted name of the module in the model passed in (``layer_name`` without ``#k``)."""
        return self.layer_name if self.call_index is None else self.layer_name.rsplit("#", 1)[0]

    def pytorch_grad_cam_kwargs(self, method: str = "GradCAM") -> dict[str, Any]:
        """Keyword arguments for the pytorch-grad-cam class ``method`` (by class name) on this layer.

        ``dict(model=..., target_layers=[...], reshape_transform=...)``, plus what the method
        needs for this layer: AblationCAM gets an ablation layer that knows the layout and a
        model it cannot swap modules into, ShapleyCAM a model with double-differentiable
        attention whose grid view it hooks. Raises ``InputError`` for an unknown method and
        ``MethodUnsupportedError`` (with a code) where the method cannot work on this model.
        """
        return method_kwargs(self, method)

    def captum(self) -> Any:
        """A ``captum.attr.LayerGradCam`` whose ``attribute(x, target=...)`` is ``[B, 1, *grid]``."""
        layer_grad_cam = _backend_class("spec.captum()", "Captum", "captum", "captum.attr", "LayerGradCam")
        return layer_grad_cam(*channels_first(self.model, self.layer, self.layout))

    def torchcam(self) -> Any:
        """A ``torchcam.methods.GradCAM`` extractor whose map equals pytorch-grad-cam's.

        Run the extractor's own model, then ask for the map::

            extractor = spec.torchcam()
            scores = extractor.model(x)
            heatmap = extractor(class_idx=target, scores=scores)[0]  # [B, H, W], in [0, 1]
            extractor.remove_hooks()

        torchcam averages gradients over dims 2.. and sums activations over dim 1, like
        Captum; a token or channels-last layer is routed through a ``[B, C, H, W]`` view
        (``CaptumAdapter``) whose identity torchcam hooks, so ``extractor.model`` is then the
        adapter, and the user's model computes exactly what it did. torchcam's hooks stay on
        the extractor's target until ``remove_hooks()`` (or the end of a ``with`` block).
        """
        grad_cam = _backend_class("spec.torchcam()", "torchcam", "torchcam", "torchcam.methods", "GradCAM")
        model, layer = channels_first(self.model, self.layer, self.layout)
        return grad_cam(model, target_layer=layer)

    def code(self, backend: str = "pytorch-grad-cam", method: str = "GradCAM") -> str:
        """A copy-paste snippet for ``"pytorch-grad-cam"`` (any CAM class, by name), ``"captum"`` or ``"torchcam"``."""
        return gradcam_snippet(self, backend, method)

    def to_dict(self) -> dict[str, Any]:
        found = {
            "layer_name": self.layer_name,
            # A per-call spec's layer is the router's identity; the type that says something is the module's.
            "layer_type": type(self.model.module if isinstance(self.model, CallRouter) else self.layer).__name__,
            "grid": list(self.grid),
            "layout": self.layout.kind,
            "prefix_tokens": self.layout.prefix_tokens,
            "reshape_transform": repr(self.reshape_transform) if self.reshape_transform is not None else None,
            "model_wrapper": type(self.model).__name__ if isinstance(self.model, (ScoreModel, CallRouter)) else None,
            "score": self.score,
            "task": self.task,
            "reasons": list(self.reasons),
            "verified": self.verified,
        }
        if self.call_index is not None:  # only per-call specs: the keys of every other report stay as they were
            found.update(module_name=self.module_name, call_index=self.call_index)
        return found
