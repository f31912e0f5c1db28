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


def probe_cells(grid: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The top-right and bottom-left cells (one cell in where the grid allows).

    Two cells on the anti-diagonal tell every wrong layout the test is for: a mirror in
    either axis, a transposition and a 180-degree turn each send one of them to another
    corner, and a wrong prefix count or grid width shifts both. Each cell costs one
    backward pass, so two is what the test pays. On a video grid (T, H, W) the two cells
    are also at opposite ends in time; on a signal (L,) they are its two ends.
    """
    margins = [1 if g > 3 else 0 for g in grid]
    low = list(margins)
    high = [g - 1 - m for g, m in zip(grid, margins, strict=True)]
    first = (*low[:-1], high[-1])
    second = (*high[:-1], low[-1])
    return sorted({first, second})


_POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def lines_up(
    output: torch.Tensor,
    image: torch.Tensor,
    layout: Layout,
    *,
    strict: bool = True,
    channel_axis: int | None = 1,
) -> bool:
    """True when every probe cell's input gradient peaks at that cell (see the module doc).

    ``output`` must still be attached to the graph that produced it from ``image``
    (the probe keeps that graph). ``channel_axis`` is the input's channel axis, None for a
    spectrogram ``[B, T, F]``, whose every axis but the batch is positional.
    """
    transform = layout.transform()
    fmap = transform(output) if transform is not None and layout.kind != "NCL" else output
    grid = tuple(layout.grid)
    if tuple(fmap.shape[2:]) != grid:
        return False
    tolerance = 0 if layout.kind == "tokens" else 1
    mix = torch.randn(fmap.shape[1], generator=torch.Generator().manual_seed(1)).to(fmap)
    cells = probe_cells(grid)
    energies = []
    for cell in cells:
        index: tuple[int | slice, ...] = (0, slice(None), *cell)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad((fmap[index] * mix).sum(), image, retain_graph=True, allow_unused=True)
        if grad is None:
            return False
        magnitude = grad[:1].abs()
        magnitude = magnitude.sum(channel_axis, keepdim=True) if channel_axis is not None else magnitude[:, None]
        energy = _POOL[len(grid)](magnitude, grid)[0, 0]  # type: ignore[arg-type]
        if not bool(energy.max() > 0):
            return False
        energies.append(energy)
    peaks = [tuple(int(i) for i in torch.unravel_index(energy.argmax(), grid)) for energy in energies]
    if all(
        all(abs(p - c) <= tolerance for p, c in zip(peak, cell, strict=True))
        for cell, peak in zip(cells, peaks, strict=True)
    ):
        return True
    return not strict and len(grid) == 2 and _keeps_order(cells, [_centre_of_mass(e) for e in energies])


def _centre_of_mass(energy: torch.Tensor) -> tuple[float, float]:
    h, w = energy.shape
    total = energy.sum()
    rows = (energy.sum(1) * torch.arange(h, dtype=energy.dtype, device=energy.device)).sum() / total
    cols = (energy.sum(0) * torch.arange(w, dtype=energy.dtype, device=energy.device)).sum() / total
    return float(rows), float(cols)


def _keeps_order(cells: list[tuple[int, ...]], centres: list[tuple[float, float]]) -> bool:
    """Cells further down (right) must have their input centre of mass further down (right)."""
    for (i1, j1), (r1, c1) in zip(cells, centres, strict=True):
        for (i2, j2), (r2, c2) in zip(cells, centres, strict=True):
            if (i1 < i2 and not r1 < r2) or (j1 < j2 and not c1 < c2):
                return False
    return True


def gradcam_map(activation: torch.Tensor, weights: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Grad-CAM ``relu(sum_c w_c * A_c)`` as ``[B, *grid]``, from the activation and channel weights ``[B, C]``."""
    transform = layout.transform()
    acts = transform(activation) if transform is not None and layout.kind != "NCL" else activation
    weights = weights.reshape(*weights.shape, *([1] * (acts.dim() - 2)))
    return torch.relu((weights * acts.detach()).sum(dim=1))


def is_working_map(cam: torch.Tensor) -> bool:
    """Finite, not all zeros, not constant: what the contract calls a working map."""
    if cam[0].numel() < 2 or not bool(torch.isfinite(cam).all()):  # one cell cannot vary
        return False
    peak = float(cam.abs().max())
    return peak > 0 and float(cam.std()) > 1e-6 * peak
