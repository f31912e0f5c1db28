"""The locality probe: does cell (i, j) of a layer's map really look at the input at (i, j)?

The gradient of one cell (its channels mixed with a fixed random vector: a plain channel
sum is constant after LayerNorm) with respect to the input must peak at that cell -
exactly for token layouts, where each patch keeps its own residual stream, and within one
cell for convolutions, whose receptive fields spread. This is what tells a correct prefix
count and grid orientation from one that only happens to have the right number of tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hookdoctor.layout import Layout


def probe_cells(grid: tuple[int, int]) -> list[tuple[int, int]]:
    """Four cells near the corners (one cell in where the grid allows)."""
    h, w = grid
    top, left = (1 if h > 3 else 0), (1 if w > 3 else 0)
    cells = {(top, left), (top, w - 1 - left), (h - 1 - top, left), (h - 1 - top, w - 1 - left)}
    return sorted(cells)


def lines_up(output: torch.Tensor, image: torch.Tensor, layout: Layout) -> bool:
    """True when every probe cell's input gradient peaks within tolerance of that cell.

    ``output`` must still be attached to the graph that produced it from ``image``
    (the probe keeps that graph).
    """
    transform = layout.transform()
    fmap = transform(output) if transform is not None else output
    h, w = layout.grid
    if tuple(fmap.shape[-2:]) != (h, w):
        return False
    tolerance = 0 if layout.kind == "tokens" else 1
    mix = torch.randn(fmap.shape[1], generator=torch.Generator().manual_seed(1)).to(fmap)
    for i, j in probe_cells((h, w)):
        with torch.enable_grad():
            (grad,) = torch.autograd.grad((fmap[0, :, i, j] * mix).sum(), image, retain_graph=True, allow_unused=True)
        if grad is None:
            return False
        energy = F.adaptive_avg_pool2d(grad[:1].abs().sum(1, keepdim=True), (h, w))[0, 0]
        if not bool(energy.max() > 0):
            return False
        r, c = divmod(int(energy.argmax()), w)
        if abs(r - i) > tolerance or abs(c - j) > tolerance:
            return False
    return True


def gradcam_map(activation: torch.Tensor, weights: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Grad-CAM ``relu(sum_c w_c * A_c)`` as ``[B, H, W]``, from the activation and channel weights ``[B, C]``."""
    transform = layout.transform()
    acts = transform(activation) if transform is not None else activation
    return torch.relu((weights[:, :, None, None] * acts.detach()).sum(dim=1))


def is_working_map(cam: torch.Tensor) -> bool:
    """Finite, not all zeros, not constant: what the contract calls a working map."""
    if not bool(torch.isfinite(cam).all()):
        return False
    peak = float(cam.abs().max())
    return peak > 0 and float(cam.std()) > 1e-6 * peak
