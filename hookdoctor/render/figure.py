"""The picture: the maps of a MapSet side by side on the input, as a matplotlib Figure.

The input is drawn in gray and each map is laid over it in colour with an opacity that
grows with the map's value, so an all-zero map leaves its panel gray: a blank Grad-CAM is
seen as blank. ``save_figure`` writes a PNG whose text chunk ``hookdoctor:panels`` lists
each panel's pixel box and title, so the picture can be checked by reading it back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hookdoctor.errors import MissingDependencyError
from hookdoctor.render.maps import MapSet

PANEL_INCHES = 2.6
DPI = 100
MAX_OPACITY = 0.7
COLORMAP = "jet"
_TITLE_COLOURS = {"habit": "#b00020", "spec": "#006b3c", "rollout": "#00458a"}


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)  # no display needed; an interactive backend already chosen stays
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError(
            "Pictures need matplotlib, which is not installed. Install it with `pip install 'hookdoctor[plot]'` "
            "(or `pip install matplotlib Pillow`)."
        ) from exc
    return Figure


def overlay(picture: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """``[H, W, 3]``: the gray picture with the map in colour, opaque where the map is high."""
    from matplotlib import colormaps

    gray = np.repeat(picture[..., None], 3, axis=-1)
    colours = colormaps[COLORMAP](np.clip(heatmap, 0.0, 1.0))[..., :3]
    opacity = (MAX_OPACITY * np.clip(heatmap, 0.0, 1.0))[..., None]
    return np.clip((1.0 - opacity) * gray + opacity * colours, 0.0, 1.0)


def draw_figure(maps: MapSet, caption: str | None = None) -> Any:
    """A matplotlib Figure (no pyplot state): one panel per map, titled with the layer and verdict."""
    figure_class = _pyplot()
    count = max(len(maps.panels), 1)
    figure = figure_class(figsize=(PANEL_INCHES * count, PANEL_INCHES + 0.9), dpi=DPI)
    title = f"{maps.model_class}" + (f" · explaining class {maps.target}" if maps.target is not None else "")
    figure.suptitle(title, fontsize=10, y=0.985)
    if caption:
        figure.text(0.5, 0.015, caption, ha="center", va="bottom", fontsize=7, color="#444444")
    width = 1.0 / count
    height = 0.9 * PANEL_INCHES / (PANEL_INCHES + 0.9)  # square panels, room for titles above
    for index, panel in enumerate(maps.panels):
        axes = figure.add_axes((index * width + 0.05 * width, 0.09, 0.9 * width, height))
        axes.imshow(overlay(maps.picture, panel.heatmap), interpolation="nearest")
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_title(
            f"{panel.title}: {_short(panel.layer)}\n{panel.verdict}",
            fontsize=8,
            color=_TITLE_COLOURS.get(panel.kind, "black"),
        )
        axes.set_gid(f"hookdoctor-{panel.kind}")
    return figure


def _short(name: str, limit: int = 34) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1) :]


def panel_boxes(figure: Any) -> list[dict[str, Any]]:
    """Each panel's box in PNG pixels (left, top, right, bottom; the image area inside the axes) and title."""
    figure.canvas.draw()
    height = figure.bbox.height
    boxes = []
    for axes in figure.axes:
        image = axes.get_images()[0]
        extent = image.get_window_extent()
        boxes.append(
            {
                "kind": str(axes.get_gid() or "").removeprefix("hookdoctor-"),
                "title": axes.get_title(),
                "box": [
                    int(np.ceil(extent.x0)),
                    int(np.ceil(height - extent.y1)),
                    int(np.floor(extent.x1)),
                    int(np.floor(height - extent.y0)),
                ],
            }
        )
    return boxes


def save_figure(figure: Any, path: str | Path) -> Path:
    """Write the figure as a PNG (at its own dpi, so the panel boxes hold) and return the path."""
    target = Path(path)
    boxes = panel_boxes(figure)
    figure.savefig(target, format="png", dpi=figure.dpi, metadata={"hookdoctor:panels": json.dumps(boxes)})
    return target
