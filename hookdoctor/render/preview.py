"""A heatmap small enough to sit beside the verdict lines: block characters, four lines tall.

In colour, each character is two map cells (upper-half block, foreground above, background
below), so cells come out square. Without colour (a pipe, a file, ``NO_COLOR``) the map is
plain text: one shade character (`` ░▒▓█``) per pair of cells, the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from rich.style import Style
from rich.text import Text

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult

LINES = 4  # the preview is never taller than this: the compact report fits a screen
MAX_COLUMNS = 16
SHADES = " ░▒▓█"
# A perceptual ramp (dark blue -> teal -> yellow), readable on dark and light terminals.
_RAMP = np.array(
    [(48, 18, 59), (70, 107, 227), (40, 188, 235), (50, 241, 151), (164, 252, 60), (251, 185, 56), (229, 70, 24)],
    dtype=np.float64,
)


def cells(heatmap: np.ndarray) -> np.ndarray:
    """The map averaged down to at most ``2 * LINES`` rows and ``MAX_COLUMNS`` columns, aspect kept."""
    height, width = heatmap.shape
    rows = 2 * LINES
    columns = max(1, min(MAX_COLUMNS, round(rows * width / height)))
    if columns == MAX_COLUMNS:  # a wide map: fewer rows, still in whole characters
        rows = max(2, min(2 * LINES, 2 * round(MAX_COLUMNS * height / width / 2)))
    pooled = F.adaptive_avg_pool2d(torch.from_numpy(np.ascontiguousarray(heatmap, dtype=np.float32))[None, None],
                                   (rows, columns))
    return pooled[0, 0].numpy()


def _colour(value: float) -> str:
    position = float(np.clip(value, 0.0, 1.0)) * (len(_RAMP) - 1)
    low = int(np.floor(position))
    high = min(low + 1, len(_RAMP) - 1)
    r, g, b = (_RAMP[low] + (_RAMP[high] - _RAMP[low]) * (position - low)).round().astype(int)
    return f"#{r:02x}{g:02x}{b:02x}"


@dataclass(frozen=True)
class HeatPreview:
    """A rich renderable of a ``[H, W]`` map in [0, 1] (``cells`` decides its size)."""

    heatmap: np.ndarray

    @property
    def width(self) -> int:
        return int(cells(self.heatmap).shape[1])

    def lines(self, colour: bool) -> list[Text]:
        grid = cells(self.heatmap)
        out = []
        for top in range(0, grid.shape[0], 2):
            line = Text(no_wrap=True)
            for column in range(grid.shape[1]):
                upper = float(grid[top, column])
                lower = float(grid[top + 1, column]) if top + 1 < grid.shape[0] else upper
                if colour:
                    line.append("▀", Style(color=_colour(upper), bgcolor=_colour(lower)))
                else:
                    level = round(float(np.clip((upper + lower) / 2, 0.0, 1.0)) * (len(SHADES) - 1))
                    line.append(SHADES[level])
            out.append(line)
        return out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        colour = console.color_system is not None and not console.no_color
        yield from self.lines(colour)
