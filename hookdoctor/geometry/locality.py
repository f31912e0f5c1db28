"""The locality probe: does cell (i, j) of a layer's map really look at the input at (i, j)?

The gradient of one cell (its channels mixed with a fixed random vector: a plain channel
sum is constant after LayerNorm) with respect to the input must peak at that cell -
exactly for token layouts, where each patch keeps its own residual stream, and within one
cell for convolutions, whose receptive fields spread. This strict test is what tells a
correct prefix count and grid orientation from one that only happens to have the right
number of tokens.

Some models spread every cell over much of the image and pull the peaks towards the
centre (Inception's last blocks; TinyViT's local convolutions between window
attentions). Where no layout passes the strict test, the relaxed one asks only that the
probe cells' centres of mass keep the grid's order - which a mirrored, transposed or
mis-laid-out grid still breaks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hookdoctor.geometry.layout import Layout


def probe_cells(grid: tuple[int, int]) -> list[tuple[int, int]]:
    """The top-right and bottom-left cells (one cell in where the grid allows).

    Two cells on the anti-diagonal tell every wrong layout the test is for: a mirror in
    either axis, a transposition and a 180-degree turn each send one of them to another
    corner, and a wrong prefix count or grid width shifts both. Each cell costs one
    backward pass, so two is what the test pays.
    """
    h, w = grid
    top, left = (1 if h > 3 else 0), (1 if w > 3 else 0)
    return sorted({(top, w - 1 - left), (h - 1 - top, left)})


def lines_up(output: torch.Tensor, image: torch.Tensor, layout: Layout, *, strict: bool = True) -> bool:
    """True when every probe cell's input gradient peaks at that cell (see the module doc).

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
    cells = probe_cells((h, w))
    energies = []
    for i, j in cells:
        with torch.enable_grad():
            (grad,) = torch.autograd.grad((fmap[0, :, i, j] * mix).sum(), image, retain_graph=True, allow_unused=True)
        if grad is None:
            return False
        energy = F.adaptive_avg_pool2d(grad[:1].abs().sum(1, keepdim=True), (h, w))[0, 0]
        if not bool(energy.max() > 0):
            return False
        energies.append(energy)
    peaks = [divmod(int(energy.argmax()), w) for energy in energies]
    if all(abs(r - i) <= tolerance and abs(c - j) <= tolerance for (i, j), (r, c) in zip(cells, peaks, strict=True)):
        return True
    return not strict and _keeps_order(cells, [_centre_of_mass(e) for e in energies])


def _centre_of_mass(energy: torch.Tensor) -> tuple[float, float]:
    h, w = energy.shape
    total = energy.sum()
    rows = (energy.sum(1) * torch.arange(h, dtype=energy.dtype, device=energy.device)).sum() / total
    cols = (energy.sum(0) * torch.arange(w, dtype=energy.dtype, device=energy.device)).sum() / total
    return float(rows), float(cols)


def _keeps_order(cells: list[tuple[int, int]], centres: list[tuple[float, float]]) -> bool:
    """Cells further down (right) must have their input centre of mass further down (right)."""
    for (i1, j1), (r1, c1) in zip(cells, centres, strict=True):
        for (i2, j2), (r2, c2) in zip(cells, centres, strict=True):
            if (i1 < i2 and not r1 < r2) or (j1 < j2 and not c1 < c2):
                return False
    return True


def gradcam_map(activation: torch.Tensor, weights: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Grad-CAM ``relu(sum_c w_c * A_c)`` as ``[B, H, W]``, from the activation and channel weights ``[B, C]``."""
    transform = layout.transform()
    acts = transform(activation) if transform is not None else activation
    return torch.relu((weights[:, :, None, None] * acts.detach()).sum(dim=1))


def is_working_map(cam: torch.Tensor) -> bool:
    """Finite, not all zeros, not constant: what the contract calls a working map."""
    if cam[0].numel() < 2 or not bool(torch.isfinite(cam).all()):  # one cell cannot vary
        return False
    peak = float(cam.abs().max())
    return peak > 0 and float(cam.std()) > 1e-6 * peak
