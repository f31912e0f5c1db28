"""The locality probe: does cell (i, j) of a layer's map really look at the input at (i, j)?

The gradient of one cell (its channels mixed with a fixed random vector: a plain channel
sum is constant after LayerNorm) with respect to the input must peak at that cell -
exactly for token layouts, where each patch keeps its own residual stream, and within one
cell for convolutions, whose receptive fields spread. This strict test is what tells a
correct prefix count and grid orientation from one that only happens to have the right
number of tokens.

After global attention every cell's input gradient also carries a common part, the same
for every cell up to scale, that can peak anywhere; it is removed before the peak is read
(each cell's energy scaled to sum 1, minus the pointwise minimum over the probe cells).

Some models spread every cell over much of the image and pull the peaks towards the
centre (Inception's last blocks; TinyViT's local convolutions between window
attentions). Where no layout passes the strict test, the relaxed one asks only that the
probe cells' centres of mass keep the grid's order by a clear margin (half a cell) - a
mirrored, transposed or mis-laid-out grid breaks it, and the margin keeps chance from
passing one.

PyTorch 2.14 on CPU computes wrong input gradients through an eval-mode BatchNorm with
batch 1 when the gradient arriving at it is not contiguous (a ``flatten(2).transpose(1, 2)``
after it: LeViT, TinyViT and XCiT stems). ``contiguous_gradients`` makes those gradients
contiguous for the probe's own backward passes only (checked against finite differences).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from hookdoctor.geometry.layout import Layout


def _on_grid(tensor: torch.Tensor, layout: Layout) -> torch.Tensor:
    """``tensor`` as ``[B, C, *grid]`` under ``layout`` (a signal's ``[B, C, L]`` as it is, not as
    the one-row image ``layout.transform()`` makes of it for pytorch-grad-cam)."""
    transform = layout.transform()
    return transform(tensor) if transform is not None and layout.kind != "NCL" else tensor


def probe_cells(grid: tuple[int, ...], inset: bool = True) -> list[tuple[int, ...]]:
    """The top-right and bottom-left cells; with ``inset``, one cell in where the grid allows.

    Two cells on the anti-diagonal tell every wrong layout the test is for: a mirror in
    either axis, a transposition and a 180-degree turn each send one of them to another
    corner, and a wrong prefix count or grid width shifts both. Each cell costs one
    backward pass, so two is what the test pays. On a video grid (T, H, W) the two cells
    are also at opposite ends in time; on a signal (L,) they are its two ends.
    Convolutions are probed one cell in (zero padding clips the border cells' receptive
    fields); tokens at the very corners, because cells one in are fixed points of the 2x2
    mask-unit order (Hiera), which the corners are not.
    """
    margins = [1 if inset and g > 3 else 0 for g in grid]
    low = list(margins)
    high = [g - 1 - m for g, m in zip(grid, margins, strict=True)]
    first = (*low[:-1], high[-1])
    second = (*high[:-1], low[-1])
    return sorted({first, second})


def _cells(layout: Layout) -> list[tuple[int, ...]]:
    return probe_cells(tuple(layout.grid), inset=layout.kind != "tokens")


# The relaxed test's margin: probe cells' centres of mass must be this many cells apart, in order.
ORDER_MARGIN = 0.5

_POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def cell_energies(
    output: torch.Tensor, image: torch.Tensor, layout: Layout, *, channel_axis: int | None = 1
) -> list[torch.Tensor] | None:
    """Input-gradient energy (pooled to the grid) of each probe cell; None when one has none.

    One backward per probe cell (``probe_cells``). ``output`` must still be attached to the
    graph that produced it from ``image`` (the probe keeps that graph). ``channel_axis`` is
    the input's channel axis, None for a spectrogram ``[B, T, F]``, whose every axis but the
    batch is positional.
    """
    fmap = _on_grid(output, layout)
    grid = tuple(layout.grid)
    if tuple(fmap.shape[2:]) != grid:
        return None
    mix = torch.randn(fmap.shape[1], generator=torch.Generator().manual_seed(1)).to(fmap)
    energies = []
    for cell in _cells(layout):
        index: tuple[int | slice, ...] = (0, slice(None), *cell)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad((fmap[index] * mix).sum(), image, retain_graph=True, allow_unused=True)
        if grad is None:
            return None
        magnitude = grad[:1].abs()
        magnitude = magnitude.sum(channel_axis, keepdim=True) if channel_axis is not None else magnitude[:, None]
        energy = _POOL[len(grid)](magnitude, grid)[0, 0]  # type: ignore[arg-type]
        if not bool(energy.max() > 0):
            return None
        energies.append(energy)
    return energies


def common_mode_removed(energies: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each cell's energy scaled to sum 1, minus the pointwise minimum over all cells: its own part."""
    scaled = [e / e.sum() for e in energies]
    floor = torch.stack(scaled).amin(0)
    return [e - floor for e in scaled]


def peaks_at_cells(energies: list[torch.Tensor], layout: Layout) -> bool:
    """Every probe cell's energy peaks at that cell (exactly for tokens, within one cell otherwise)."""
    grid = tuple(layout.grid)
    tolerance = 0 if layout.kind == "tokens" else 1
    peaks = [tuple(int(i) for i in torch.unravel_index(energy.argmax(), grid)) for energy in energies]
    return all(
        all(abs(p - c) <= tolerance for p, c in zip(peak, cell, strict=True))
        for cell, peak in zip(_cells(layout), peaks, strict=True)
    )


def keeps_order(energies: list[torch.Tensor], layout: Layout, margin: float = ORDER_MARGIN) -> bool:
    """Cells further down (right) have their input centre of mass further down (right), by ``margin`` cells.

    Without the margin, two centres that land almost on top of each other pass or fail by
    chance; with it, only a grid whose order the gradients really show passes. Only for 2-D grids.
    """
    if len(layout.grid) != 2:
        return False
    cells = _cells(layout)
    centres = [_centre_of_mass(e) for e in energies]
    for (i1, j1), (r1, c1) in zip(cells, centres, strict=True):
        for (i2, j2), (r2, c2) in zip(cells, centres, strict=True):
            if (i1 < i2 and not r2 - r1 >= margin) or (j1 < j2 and not c2 - c1 >= margin):
                return False
    return True


def lines_up(
    output: torch.Tensor,
    image: torch.Tensor,
    layout: Layout,
    *,
    strict: bool = True,
    channel_axis: int | None = 1,
) -> bool:
    """True when every probe cell's input gradient peaks at that cell, its common part removed.

    With ``strict=False``, keeping the grid's order (with a margin) is enough.
    """
    energies = cell_energies(output, image, layout, channel_axis=channel_axis)
    if energies is None:
        return False
    return peaks_as_laid_out(energies, layout) or (not strict and keeps_order(energies, layout))


def peaks_as_laid_out(energies: list[torch.Tensor], layout: Layout) -> bool:
    """The strict test: every probe cell peaks at that cell, as measured or with the common part removed."""
    return peaks_at_cells(energies, layout) or peaks_at_cells(common_mode_removed(energies), layout)


@contextmanager
def contiguous_gradients(tensors: Iterable[torch.Tensor]) -> Iterator[None]:
    """Within the block, gradients arriving at ``tensors`` are made contiguous (see the module doc)."""
    handles = [t.register_hook(lambda grad: grad.contiguous()) for t in tensors if t.requires_grad]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _centre_of_mass(energy: torch.Tensor) -> tuple[float, float]:
    h, w = energy.shape
    total = energy.sum()
    rows = (energy.sum(1) * torch.arange(h, dtype=energy.dtype, device=energy.device)).sum() / total
    cols = (energy.sum(0) * torch.arange(w, dtype=energy.dtype, device=energy.device)).sum() / total
    return float(rows), float(cols)


def follows_coordinates(coordinates: list[torch.Tensor], layout: Layout) -> bool:
    """True when ``layout`` reads cell (i, j) of the tensor where the input's position (i, j) is.

    ``coordinates`` holds, per input axis, that axis's index at every cell of the tensor (NaN
    on prefix cells): what ``probe.positions`` read from the graph. Read through the layout,
    each must be the grid's own index along its axis, the same in every channel.
    """
    grid = tuple(layout.grid)
    if len(coordinates) != len(grid):
        return False
    for axis, coordinate in enumerate(coordinates):
        try:
            laid_out = _on_grid(coordinate, layout)
        except RuntimeError:  # the layout's reshape does not fit the tensor
            return False
        if tuple(laid_out.shape[2:]) != grid:
            return False
        index = torch.arange(grid[axis], dtype=laid_out.dtype).view([-1 if a == axis else 1 for a in range(len(grid))])
        if not torch.equal(laid_out[0], index.expand(laid_out.shape[1:])):
            return False
    return True


def gradcam_map(activation: torch.Tensor, weights: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Grad-CAM ``relu(sum_c w_c * A_c)`` as ``[B, *grid]``, from the activation and channel weights ``[B, C]``."""
    acts = _on_grid(activation, layout)
    weights = weights.reshape(*weights.shape, *([1] * (acts.dim() - 2)))
    return torch.relu((weights * acts.detach()).sum(dim=1))


def is_working_map(cam: torch.Tensor) -> bool:
    """Finite, not all zeros, not constant: what the contract calls a working map."""
    if cam[0].numel() < 2 or not bool(torch.isfinite(cam).all()):  # one cell cannot vary
        return False
    peak = float(cam.abs().max())
    return peak > 0 and float(cam.std()) > 1e-6 * peak
