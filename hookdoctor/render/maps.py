"""The maps a picture shows, computed with the real libraries from the model and an input.

A Report keeps no tensor of the model, so every map is computed here, when a picture is
asked for: the Grad-CAM map of the layer a user would pick by habit (the last block of
the model's block stack, or its last convolution), the map of the spec's layer (both with
pytorch-grad-cam, as a user would run it), and the spec's own attention rollout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hookdoctor.errors import MissingDependencyError
from hookdoctor.geometry.layout import Layout, ReshapeTransform
from hookdoctor.model.guard import preserved
from hookdoctor.model.unwrap import unwrap
from hookdoctor.specs.wrappers import Float32Maps, score_model_of

if TYPE_CHECKING:
    from hookdoctor.report import LayerVerdict, Report
    from hookdoctor.specs.gradcam import GradCAMSpec

# Below this a min-max scaled map is all zero: pytorch-grad-cam scales by max + 1e-7.
BLANK = 1e-6


@dataclass(frozen=True)
class MapPanel:
    """One map over the input: what it is, the verdict it illustrates, and the map itself.

    ``heatmap`` is ``[H, W]`` at the input's size, in [0, 1] (all zero when ``blank``).
    """

    kind: str  # "habit", "spec" or "rollout"
    title: str
    layer: str
    verdict: str
    code: str | None
    heatmap: np.ndarray
    blank: bool


@dataclass(frozen=True)
class MapSet:
    """The panels of a picture and the input they lie on (``picture``: ``[H, W]`` gray, in [0, 1])."""

    picture: np.ndarray
    panels: tuple[MapPanel, ...]
    model_class: str
    target: int | None


def habit_layer(report: Report) -> str | None:
    """The layer tutorials and habit pick: the last block of a block stack, else the last convolution.

    Found from the structure the report recorded: a "block" whose parent is a container
    (``blocks.11``, ``layer4.1``, ``encoder.layers.encoder_layer_11``), the last one to
    run; a model without a block stack gets its last convolution.
    """
    kinds = {layer.name: layer.kind for layer in report.layers}
    in_a_stack = [
        layer.name
        for layer in report.layers
        if layer.kind == "block" and "." in layer.name and kinds.get(layer.name.rsplit(".", 1)[0]) == "container"
    ]
    if in_a_stack:
        return in_a_stack[-1]
    convolutions = [layer.name for layer in report.layers if layer.kind == "conv" and layer.calls > 0]
    return convolutions[-1] if convolutions else None


def _transform(verdict: LayerVerdict, spec: GradCAMSpec) -> ReshapeTransform | Float32Maps | None:
    """The habit layer's reshape: from its verdict, else the spec's (same token stream)."""
    if verdict.layout in ("tokens", "NHWC") and verdict.grid is not None:
        return Layout(verdict.layout, verdict.grid, 0, verdict.prefix_tokens or 0).transform()  # type: ignore[arg-type]
    if verdict.layout == "NCHW":
        return None
    return spec.reshape_transform


def pytorch_grad_cam_map(
    score_model: nn.Module, layer: nn.Module, transform: Any, image: torch.Tensor, target: int | None
) -> np.ndarray:
    """``GradCAM(model, [layer], reshape_transform)(image, [ClassifierOutputTarget(target)])[0]``: ``[H, W]``."""
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as exc:
        raise MissingDependencyError(
            "Pictures of the maps are computed with pytorch-grad-cam, which is not installed. Install it with "
            "`pip install 'hookdoctor[grad-cam]'` (or `pip install grad-cam`)."
        ) from exc
    targets = [ClassifierOutputTarget(target)] if target is not None else None
    # pytorch-grad-cam puts the model in eval mode and leaves it there: the user's model is put back.
    with preserved(unwrap(score_model)[0]):
        with GradCAM(model=score_model, target_layers=[layer], reshape_transform=transform) as cam:
            heatmap = cam(input_tensor=image, targets=targets)
    return np.asarray(heatmap[0], dtype=np.float32)


def spec_map(report: Report, image: torch.Tensor) -> np.ndarray | None:
    """The spec's Grad-CAM map ``[H, W]`` on ``image`` (pytorch-grad-cam), or None without a spec."""
    spec = report.gradcam
    if spec is None:
        return None
    kwargs = spec.pytorch_grad_cam_kwargs()
    return pytorch_grad_cam_map(
        kwargs["model"], kwargs["target_layers"][0], kwargs["reshape_transform"], image[:1], report.target
    )


def _verdict_code(verdict: LayerVerdict) -> str | None:
    ranked = sorted(verdict.diagnostics, key=lambda d: {"error": 0, "warning": 1, "info": 2}[d.severity])
    return ranked[0].code if ranked and not verdict.usable else None


def _habit_panel(report: Report, model: nn.Module, image: torch.Tensor) -> MapPanel | None:
    spec = report.gradcam
    name = habit_layer(report)
    if spec is None or name is None:
        return None
    verdict = report.check_layer(name)
    layer = dict(model.named_modules())[name]
    transform = _transform(verdict, spec)
    heatmap = pytorch_grad_cam_map(score_model_of(spec.model), layer, transform, image[:1], report.target)
    blank = float(heatmap.max()) <= BLANK
    code = _verdict_code(verdict)
    if code is not None:
        said = f"{code}: {'all-zero map' if blank else 'not a working target'}"
    else:
        said = "all-zero map" if blank else "usable"
    return MapPanel("habit", "by habit", name, said, code, heatmap, blank)


def _rollout_panel(report: Report, model: nn.Module, image: torch.Tensor) -> MapPanel | None:
    spec = report.rollout
    if spec is None:
        return None
    rollout_input: Any = image[:1]
    score_model = score_model_of(report.gradcam.model) if report.gradcam is not None else None
    template = getattr(score_model, "call_template", None)
    if template is not None:  # a model with other inputs: the ones given to inspect, this image
        call = template.with_image(image[:1])
        rollout_input = call.kwargs if isinstance(call.image_slot, str) else call.args
    with torch.no_grad():
        grid = spec.rollout(model, rollout_input)[:1]
    heatmap = F.interpolate(grid.unsqueeze(1).float(), size=tuple(image.shape[-2:]), mode="bilinear")[0, 0]
    heatmap = heatmap - heatmap.min()
    peak = float(heatmap.max())
    scaled = (heatmap / peak if peak > 0 else heatmap).numpy().astype(np.float32)
    return MapPanel(
        "rollout", "attention rollout", f"{len(spec.layer_names)} layers", "the spec's rollout", None, scaled,
        peak <= BLANK,
    )


def compute_maps(report: Report, model: nn.Module, image: torch.Tensor) -> MapSet:
    """Every panel the picture shows, for the first sample of ``image`` (``[B, C, H, W]``)."""
    panels: list[MapPanel] = []
    habit = _habit_panel(report, model, image)
    if habit is not None:
        panels.append(habit)
    heatmap = spec_map(report, image)
    if heatmap is not None and report.gradcam is not None:
        blank = float(heatmap.max()) <= BLANK
        panels.append(
            MapPanel("spec", "the spec", report.gradcam.layer_name, "working spec", None, heatmap, blank)
        )
    rollout = _rollout_panel(report, model, image)
    if rollout is not None:
        panels.append(rollout)
    return MapSet(gray_picture(image), tuple(panels), report.model_class, report.target)


def gray_picture(image: torch.Tensor) -> np.ndarray:
    """The first sample as a gray picture in [0, 1]: the maps' colours stay the only colour."""
    gray = image[0].detach().float().mean(dim=0)
    gray = gray - gray.min()
    peak = float(gray.max())
    return (gray / peak if peak > 0 else gray).cpu().numpy().astype(np.float32)
