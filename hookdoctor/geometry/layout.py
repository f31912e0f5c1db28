"""How a layer's output maps onto the input image: NCHW, NHWC or tokens.

A grid is "image-aligned" when it is what a stride-s sampling of the input would give:
(h, w) with h in {floor(H/s), ceil(H/s)} and w likewise, for one integer s. Token
sequences ``[B, T, C]`` are ``prefix + h*w`` tokens; the prefix count comes from the
model's own description (``num_prefix_tokens``, its learned token parameters) and the
grid from what the probe saw (the patch embedding's output) or from the input and a
stride. Candidates are ranked; the locality probe in ``locality.py`` confirms one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

LayoutKind = Literal["NCHW", "NHWC", "tokens", "NCTHW", "NCL"]
MAX_PREFIX_TOKENS = 16

# Learned tokens that a ViT concatenates in front of the patch tokens.
_PREFIX_PARAM = re.compile(
    r"(^|[._])(cls|class|dist|distill|distillation|reg|register|registers)_?(token|tokens|embedding)s?$"
)


@dataclass(frozen=True)
class Layout:
    """Where the channels and the grid are in a layer's output.

    The grid has one entry per positional axis of the input: (H, W) for images and
    spectrograms, (T, H, W) for video (``NCTHW``, the 3-D convolution layout), (L,) for
    signals (``NCL``, the 1-D convolution layout).
    """

    kind: LayoutKind
    grid: tuple[int, ...]
    channels: int
    prefix_tokens: int = 0
    # The layer stores its two axes the other way round from the input's (AST turns a [B, T, F]
    # spectrogram into [B, 1, F, T] before its patch embedding): the grid is still in the input's order.
    transposed: bool = False

    def transform(self) -> ReshapeTransform | None:
        """The reshape to what pytorch-grad-cam takes (``[B, C, H, W]`` or ``[B, C, T, H, W]``), or None."""
        if self.kind in ("NCHW", "NCTHW") and not self.transposed:
            return None
        return ReshapeTransform(self.kind, self.grid, self.prefix_tokens, transposed=self.transposed)

    def describe(self) -> str:
        if self.transposed:
            return f"{self._describe()}, its two axes swapped against the input's"
        return self._describe()

    def _describe(self) -> str:
        if self.kind == "NCTHW":
            t, h, w = self.grid
            return f"NCTHW [B, {self.channels}, {t}, {h}, {w}]"
        if self.kind == "NCL":
            return f"NCL [B, {self.channels}, {self.grid[0]}]"
        h, w = self.grid
        if self.kind == "tokens":
            return f"tokens [B, {self.prefix_tokens}+{h}x{w}, {self.channels}]"
        if self.kind == "NHWC":
            return f"channels-last [B, {h}, {w}, {self.channels}]"
        return f"NCHW [B, {self.channels}, {h}, {w}]"


class ReshapeTransform:
    """Map a layer's output to ``[B, C, H, W]``: drop prefix tokens, unflatten, permute.

    A plain class rather than a lambda so that specs pickle (DataLoader workers, Ray) and
    print as code.
    """

    def __init__(
        self, kind: LayoutKind, grid: tuple[int, ...], prefix_tokens: int = 0, *, transposed: bool = False
    ) -> None:
        if kind not in ("NHWC", "tokens", "NCL") and not (kind == "NCHW" and transposed):
            raise ValueError(f"ReshapeTransform handles 'NHWC', 'tokens', 'NCL' and swapped layouts, not {kind!r}")
        self.kind = kind
        self.grid = tuple(int(g) for g in grid)
        self.prefix_tokens = int(prefix_tokens)
        self.transposed = transposed

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.kind == "NCL":  # a 1-D map as a one-row image: [B, C, L] -> [B, C, 1, L]
            return tensor.unsqueeze(2)
        if self.kind == "NCHW":  # swapped axes: [B, C, W, H] -> [B, C, H, W]
            return tensor.transpose(2, 3)
        if self.kind == "tokens" and self.transposed:  # tokens in the swapped order, shown in the input's
            h, w = self.grid
            patches = tensor[:, self.prefix_tokens :, :]
            return patches.reshape(patches.shape[0], w, h, patches.shape[-1]).permute(0, 3, 2, 1)
        if self.kind == "NHWC":
            return tensor.permute(0, 3, 1, 2)
        h, w = self.grid
        patches = tensor[:, self.prefix_tokens :, :]
        return patches.reshape(patches.shape[0], h, w, patches.shape[-1]).permute(0, 3, 1, 2)

    def inverse(self, grid_view: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        """Put a ``[B, C, H, W]`` view back into the layer's own layout (prefix from ``original``)."""
        if self.kind == "NCL":
            return grid_view.squeeze(2)
        if self.kind == "NCHW":
            return grid_view.transpose(2, 3)
        if self.kind == "tokens" and self.transposed:
            patches = grid_view.permute(0, 3, 2, 1).reshape(grid_view.shape[0], -1, grid_view.shape[1])
            return torch.cat([original[:, : self.prefix_tokens, :], patches], dim=1)
        if self.kind == "NHWC":
            return grid_view.permute(0, 2, 3, 1)
        patches = grid_view.permute(0, 2, 3, 1).reshape(grid_view.shape[0], -1, grid_view.shape[1])
        return torch.cat([original[:, : self.prefix_tokens, :], patches], dim=1)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReshapeTransform) and (
            self.kind,
            self.grid,
            self.prefix_tokens,
            self.transposed,
        ) == (other.kind, other.grid, other.prefix_tokens, other.transposed)

    def __hash__(self) -> int:
        return hash((self.kind, self.grid, self.prefix_tokens, self.transposed))

    def __repr__(self) -> str:
        if self.transposed:
            return (
                f"ReshapeTransform({self.kind!r}, grid={self.grid}, prefix_tokens={self.prefix_tokens}, "
                "transposed=True)"
            )
        if self.kind == "NCL":
            return f"ReshapeTransform('NCL', grid={self.grid})"
        if self.kind == "NHWC":
            return f"ReshapeTransform('NHWC', grid={self.grid})"
        return f"ReshapeTransform('tokens', grid={self.grid}, prefix_tokens={self.prefix_tokens})"


def aligned_grid(h: int, w: int, image_hw: tuple[int, int], *, overlapping: bool = False) -> bool:
    """True when (h, w) is a stride-s sampling of the image, for one integer stride s >= 1.

    ``overlapping`` also accepts one cell fewer on each axis: patches larger than their stride
    and no padding ((H - k) // s + 1 cells, AST's 16-wide patches every 10 frames).
    """
    big_h, big_w = image_hw
    if overlapping and aligned_grid(h + 1, w + 1, image_hw):
        return True
    if h < 1 or w < 1 or h > big_h or w > big_w:
        return False
    for s in range(max(1, math.floor(big_h / h) - 1), math.ceil(big_h / h) + 2):
        if h in (big_h // s, -(-big_h // s)) and w in (big_w // s, -(-big_w // s)):
            return True
    return False


def axis_aligned_grid(h: int, w: int, image_hw: tuple[int, int]) -> bool:
    """True when (h, w) samples the image with an integer stride along each axis, the two may differ.

    Adaptive pooling to a fixed size (5x7 -> 6x6) keeps every cell over its own part of
    the image although no one stride gives both sides. Only a 4-D map that no single
    stride explains is read this way; the locality probe (or the positions the autograd graph
    shows, probe.positions) confirms it.
    """
    big_h, big_w = image_hw
    return _aligned_axis(h, big_h) and _aligned_axis(w, big_w)


def prefix_token_hint(model: nn.Module) -> int | None:
    """How many non-patch tokens the model puts in front, from its own fields, or None."""
    declared = getattr(model, "num_prefix_tokens", None)
    if isinstance(declared, int):
        return declared
    # [D] (CLIP's class_embedding) is one token, [1, n, D] (cls/dist/register tokens) n of them;
    # named_parameters() lists a shared parameter once.
    tokens = [p for name, p in model.named_parameters() if _PREFIX_PARAM.search(name)]
    if tokens:
        return sum(1 if p.dim() == 1 else int(p.shape[-2]) for p in tokens)
    config = getattr(model, "config", None)
    registers = getattr(config, "num_register_tokens", None)
    if isinstance(registers, int):
        return 1 + registers
    return None


def _stride_grids(image_hw: tuple[int, int]) -> list[tuple[int, int]]:
    big_h, big_w = image_hw
    grids: list[tuple[int, int]] = []
    powers = [2**k for k in range(0, 7)]
    others = [s for s in range(1, 65) if s not in powers]
    for s in powers + others:
        for grid in ((big_h // s, big_w // s), (-(-big_h // s), -(-big_w // s))):
            if grid[0] >= 1 and grid[1] >= 1 and grid not in grids:
                grids.append(grid)
    return grids


def token_candidates(
    num_tokens: int,
    image_hw: tuple[int, int],
    observed_grids: Iterable[tuple[int, int]] = (),
    prefix_hint: int | None = None,
    overlapping: bool = False,
) -> list[tuple[int, tuple[int, int]]]:
    """Ranked (prefix_tokens, grid) readings of a sequence of ``num_tokens`` tokens.

    Grids the probe saw (the patch embedding's NCHW output) come first, then stride
    grids; within each, the prefix the model declares, then smaller prefixes.
    """
    ranked: list[tuple[tuple[int, int, int], int, tuple[int, int]]] = []
    seen: set[tuple[int, tuple[int, int]]] = set()
    observed = [g for g in observed_grids if aligned_grid(*g, image_hw, overlapping=overlapping)]
    for source, grids in ((0, observed), (1, _stride_grids(image_hw))):
        for grid in grids:
            prefix = num_tokens - grid[0] * grid[1]
            if not 0 <= prefix <= MAX_PREFIX_TOKENS or (prefix, grid) in seen:
                continue
            seen.add((prefix, grid))
            ranked.append(((0 if prefix == prefix_hint else 1, source, prefix), prefix, grid))
    ranked.sort(key=lambda item: item[0])
    return [(prefix, grid) for _, prefix, grid in ranked]


def _channels_last_hint(module: nn.Module | None, last_dim: int) -> bool:
    """A LayerNorm (or a module ending in one) over the last dim says channels are last."""
    if module is None:
        return False
    norm = module if isinstance(module, nn.LayerNorm) else None
    if norm is None:
        children = list(module.children())
        norm = children[-1] if children and isinstance(children[-1], nn.LayerNorm) else None
    return norm is not None and tuple(norm.normalized_shape) == (last_dim,)


def _aligned_axis(size: int, extent: int) -> bool:
    """True when ``size`` cells are a stride-s sampling of ``extent`` positions, for some integer s >= 1."""
    if size < 1 or size > extent:
        return False
    # Strides near extent / size: padding and rounding make size the floor or the ceiling of extent / s.
    strides = range(max(1, math.floor(extent / size) - 1), math.ceil(extent / size) + 2)
    return any(size in (extent // s, -(-extent // s)) for s in strides)


def infer_layouts(
    shape: Sequence[int],
    image_hw: tuple[int, ...],
    batch: int,
    *,
    module: nn.Module | None = None,
    observed_grids: Iterable[tuple[int, int]] = (),
    prefix_hint: int | None = None,
    swapped_too: bool = False,
) -> list[Layout]:
    """Every plausible layout of a tensor of ``shape``, most likely first; [] if none fits.

    With ``swapped_too`` (spectrograms, whose models may put frequency before time), the
    readings with the two axes swapped follow the others; the locality test tells them apart.

    ``image_hw`` is the input's positional axes: (H, W), (T, H, W) for video, (L,) for signals.
    """
    shape = tuple(int(s) for s in shape)
    if not shape or shape[0] != batch:
        return []
    if len(image_hw) == 3:  # video: 3-D convolution outputs [B, C, T, H, W]; time has its own stride
        if len(shape) == 5 and _aligned_axis(shape[2], image_hw[0]) and aligned_grid(*shape[3:], image_hw[1:]):
            return [Layout("NCTHW", (shape[2], shape[3], shape[4]), shape[1])]
        return []
    if len(image_hw) == 1:  # signals: 1-D convolution outputs [B, C, L]
        if len(shape) == 3 and _aligned_axis(shape[2], image_hw[0]):
            return [Layout("NCL", (shape[2],), shape[1])]
        return []
    image_hw = (image_hw[0], image_hw[1])
    # Spectrogram models patch with overlapping windows (AST): a grid may be one cell short.
    found = _plain_layouts(shape, image_hw, module, observed_grids, prefix_hint, overlapping=swapped_too)
    if swapped_too:
        # Observed grids are the convolutions' outputs as stored: already in the swapped order.
        swapped = _plain_layouts(
            shape, (image_hw[1], image_hw[0]), module, observed_grids, prefix_hint, overlapping=True
        )
        found += [
            Layout(lay.kind, (lay.grid[1], lay.grid[0]), lay.channels, lay.prefix_tokens, transposed=True)
            for lay in swapped
            if lay.kind != "NHWC"
        ]
    return found


def _plain_layouts(
    shape: tuple[int, ...],
    image_hw: tuple[int, int],
    module: nn.Module | None,
    observed_grids: Iterable[tuple[int, int]],
    prefix_hint: int | None,
    *,
    overlapping: bool = False,
) -> list[Layout]:
    if len(shape) == 4:
        _, a, b, c = shape
        nchw = Layout("NCHW", (b, c), a) if aligned_grid(b, c, image_hw, overlapping=overlapping) else None
        nhwc = Layout("NHWC", (a, b), c) if aligned_grid(a, b, image_hw, overlapping=overlapping) else None
        if nchw and nhwc:
            return [nhwc, nchw] if _channels_last_hint(module, c) else [nchw, nhwc]
        if nchw is None and nhwc is None:  # one stride per axis (adaptive pooling to a fixed size)
            nchw = Layout("NCHW", (b, c), a) if axis_aligned_grid(b, c, image_hw) else None
            nhwc = Layout("NHWC", (a, b), c) if axis_aligned_grid(a, b, image_hw) else None
            if nchw and nhwc:
                return [nhwc, nchw] if _channels_last_hint(module, c) else [nchw, nhwc]
        return [layout for layout in (nchw, nhwc) if layout]
    if len(shape) == 3:
        _, tokens, channels = shape
        if channels < 2:  # [B, C, 1]: one pooled token of C values, not C tokens of one channel
            return []
        return [
            Layout("tokens", grid, channels, prefix)
            for prefix, grid in token_candidates(tokens, image_hw, observed_grids, prefix_hint, overlapping)
        ]
    return []


def spatial_extent(shape: Sequence[int], axes: Sequence[int] = (0, 0)) -> int:
    """Number of positions a tensor could spread a map over (1 for [B, C], [B, C, 1, 1]).

    ``axes`` is the input's positional axes; a 3-D output of a signal model is [B, C, L].
    """
    if len(axes) == 1 and len(shape) == 3:
        return int(shape[2])
    if len(shape) == 5:
        return int(shape[2]) * int(shape[3]) * int(shape[4])
    if len(shape) == 4:
        return min(int(shape[1]) * int(shape[2]), int(shape[2]) * int(shape[3]))
    if len(shape) == 3:
        # [B, C, 1] is one pooled token: a token layout needs at least two positions of two channels.
        return int(shape[1]) if int(shape[2]) >= 2 else 1
    return 1
