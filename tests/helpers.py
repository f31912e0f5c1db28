"""Run the real attribution libraries the way a user would, and judge the maps they give.

Nothing here reimplements Grad-CAM: ``run_pytorch_grad_cam`` records the maps that
pytorch-grad-cam itself computes (per target layer, before its resize to the input),
and ``captum_map`` calls Captum's ``LayerGradCam``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn


@dataclass
class CamRun:
    """What one ``pytorch_grad_cam.GradCAM`` call produced."""

    raw: list[np.ndarray] = field(default_factory=list)  # per target layer, ReLU'd, before resize: [B, h, w]
    final: np.ndarray | None = None  # the library's output: [B, H_in, W_in], min-max scaled
    activations: list[torch.Tensor] = field(default_factory=list)
    gradients: list[torch.Tensor] = field(default_factory=list)


def run_pytorch_grad_cam(
    model: nn.Module,
    target_layers: Sequence[nn.Module],
    x: torch.Tensor,
    reshape_transform: Callable[[Any], torch.Tensor] | None = None,
    targets: list[Any] | None = None,
) -> CamRun:
    """``GradCAM(model, target_layers, reshape_transform)(x, targets)``, keeping each layer's raw map.

    Exceptions from the library propagate unchanged: the tests assert on them.
    """
    from pytorch_grad_cam import GradCAM

    run = CamRun()
    cam = GradCAM(model=model, target_layers=list(target_layers), reshape_transform=reshape_transform)
    original = cam.get_cam_image

    def keep_raw(*args: Any, **kwargs: Any) -> np.ndarray:
        # BaseCAM.compute_cam_per_layer calls this once per target layer, with the tensors it paired.
        raw = original(*args, **kwargs)
        run.raw.append(np.maximum(raw, 0))
        return raw

    cam.get_cam_image = keep_raw
    try:
        run.final = cam(input_tensor=x, targets=targets)
        run.activations = list(cam.activations_and_grads.activations)
        run.gradients = list(cam.activations_and_grads.gradients)
    finally:
        cam.activations_and_grads.release()
    return run


def spec_gradcam(spec: Any, x: torch.Tensor, targets: list[Any] | None = None) -> np.ndarray:
    """The raw pytorch-grad-cam map ``[B, h, w]`` of a hookdoctor spec, used exactly as documented."""
    kwargs = spec.pytorch_grad_cam_kwargs()
    run = run_pytorch_grad_cam(
        kwargs["model"], kwargs["target_layers"], x, kwargs["reshape_transform"], targets,
    )
    assert len(run.raw) == 1, f"one target layer, {len(run.raw)} maps"
    return run.raw[0]


def captum_map(
    forward_func: Callable[..., Any], layer: nn.Module, x: torch.Tensor, target: int,
) -> torch.Tensor:
    """Captum's ``LayerGradCam(forward_func, layer).attribute(x, target=target)``, detached."""
    from captum.attr import LayerGradCam

    return LayerGradCam(forward_func, layer).attribute(x, target=target).detach()


def spec_captum(spec: Any, x: torch.Tensor, target: int) -> torch.Tensor:
    """``spec.captum().attribute(x, target=target)``, detached."""
    return spec.captum().attribute(x, target=target).detach()


def assert_working_map(raw: np.ndarray | torch.Tensor, grid: Sequence[int]) -> None:
    """Finite, not all zeros, not constant, and of size ``grid`` - what the contract calls working."""
    raw = raw.numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
    assert tuple(raw.shape[-2:]) == tuple(grid), f"map is {raw.shape[-2:]}, spec says {tuple(grid)}"
    assert np.isfinite(raw).all(), "map has NaN/inf"
    assert raw.max() > 0, "map is all zeros (or negative)"
    assert raw.std() > 1e-6 * float(np.abs(raw).max()), "map is constant"


def aligned_cells(
    model: nn.Module,
    layer: nn.Module,
    reshape_transform: Callable[[Any], torch.Tensor] | None,
    grid: Sequence[int],
    x: torch.Tensor,
    cells: Sequence[tuple[int, int]],
    tolerance: int = 0,
) -> int:
    """How many of ``cells`` line up with the input: cell (i, j)'s input gradient peaks at (i, j).

    The input gradient of one cell (channels mixed with a fixed random vector: a plain
    channel sum is constant after LayerNorm) is pooled to the map's grid; its peak must
    lie within ``tolerance`` cells of (i, j). Tokens keep each patch in its own residual
    stream, so they line up exactly; convolutions may sit one cell off.
    """
    captured: dict[str, Any] = {}
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.__setitem__("out", output))
    try:
        x = x.clone().requires_grad_(True)
        with torch.enable_grad():
            model(x)
    finally:
        handle.remove()
    fmap = reshape_transform(captured["out"]) if reshape_transform is not None else captured["out"]
    height, width = grid
    assert tuple(fmap.shape[-2:]) == (height, width), f"reshaped to {tuple(fmap.shape)}, grid {tuple(grid)}"
    mix = torch.randn(fmap.shape[1], generator=torch.Generator().manual_seed(1))
    hits = 0
    for i, j in cells:
        (grad,) = torch.autograd.grad((fmap[0, :, i, j] * mix).sum(), x, retain_graph=True)
        per_pixel = grad[:1].abs().sum(1, keepdim=True)
        energy = torch.nn.functional.adaptive_avg_pool2d(per_pixel, (height, width))[0, 0]
        row, col = divmod(int(energy.argmax()), width)
        hits += abs(row - i) <= tolerance and abs(col - j) <= tolerance
    return hits


def corner_cells(grid: Sequence[int], inset: int = 0) -> list[tuple[int, int]]:
    """Four corners (``inset`` cells in from the border) and one inner cell: enough to catch a
    transposed or shifted grid."""
    height, width = grid
    top, left = min(inset, height - 1), min(inset, width - 1)
    bottom, right = max(height - 1 - inset, 0), max(width - 1 - inset, 0)
    cells = [(top, left), (top, right), (bottom, left), (bottom, right), (height // 2, width // 3)]
    return list(dict.fromkeys(cells))


def assert_aligned(spec: Any, x: torch.Tensor, tolerance: int = 0) -> None:
    """Every probe cell of the spec's map lines up with the input.

    Token layouts are probed at the corners, exactly. A convolution's receptive field is
    clipped by the zero padding at the border, so with ``tolerance`` > 0 the corners are
    moved one cell in (as the contract's probe cells are).
    """
    cells = corner_cells(spec.grid, inset=1 if tolerance else 0)
    hits = aligned_cells(spec.model, spec.layer, spec.reshape_transform, spec.grid, x, cells, tolerance)
    assert hits == len(cells), f"only {hits}/{len(cells)} probe cells of `{spec.layer_name}` line up"


def tokens_to_grid(prefix_tokens: int, height: int, width: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The reshape tutorials write: drop ``prefix_tokens``, view as (height, width), permute to NCHW."""

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens[:, prefix_tokens:, :]
        return tokens.reshape(tokens.size(0), height, width, tokens.size(2)).permute(0, 3, 1, 2)

    return reshape


def corr(a: Any, b: Any) -> float:
    """Pearson correlation of two maps (NaN when one is constant)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.std() < 1e-12 or b.std() < 1e-12:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def timm_builder(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    """A factory for timm's ``name`` with no weights, in eval mode; timm is imported when it runs."""

    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, **kwargs).eval()

    return build


def torchvision_builder(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    """A factory for ``torchvision.models.<name>`` with no weights, in eval mode."""

    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, **kwargs).eval()

    return build


_LIBRARY_MARKS = {"timm": pytest.mark.timm, "hf": pytest.mark.transformers}


def marked_by_library(names: Iterable[str], extra: dict[str, Any] | None = None) -> list[Any]:
    """``pytest.param`` per case name, marked ``timm`` or ``transformers`` by its ``timm-``/``hf-`` prefix.

    .ci/run's compatibility stages select the cases by these marks; ``extra`` adds a mark
    to the named cases.
    """
    params = []
    for name in names:
        marks = [mark for mark in (_LIBRARY_MARKS.get(name.split("-", 1)[0]), (extra or {}).get(name)) if mark]
        params.append(pytest.param(name, id=name, marks=marks))
    return params
