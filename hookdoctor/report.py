"""The result types of ``inspect``: LayerVerdict and Report (Diagnostic lives with the codes).

They know nothing of rich or of the command line; ``Report.__rich_console__`` imports the
renderer lazily so that ``import hookdoctor`` stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hookdoctor.codes import Diagnostic, sort_diagnostics

__all__ = ["Diagnostic", "LayerVerdict", "Report", "sort_diagnostics"]

if TYPE_CHECKING:
    from torch import nn

    from hookdoctor.attention import AttentionSpec
    from hookdoctor.model.inputs import ExampleImage
    from hookdoctor.specs.gradcam import GradCAMSpec

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class LayerVerdict:
    """Whether one named layer (a module, or one call ``NAME#k``) can be a Grad-CAM target, and why not.

    The one per-layer result of ``inspect``: ``report.check_layer(name)`` returns it, and
    ``report.layers`` holds one per module, in the order the probe recorded them, for
    the module tree. It keeps no tensor and no module, only what the probe saw and the checks
    concluded.
    """

    name: str
    usable: bool
    diagnostics: list[Diagnostic]
    layout: str | None = None
    grid: tuple[int, ...] | None = None
    prefix_tokens: int | None = None
    suggestions: list[str] = field(default_factory=list)
    # True when a locality test (or the autograd graph, probe.positions) showed that the
    # cells line up with the input, False when they do not (HD306), None when not tested:
    # inspect tests the layers it tries for its recommendation and the layers named in layer=.
    cells_confirmed: bool | None = None
    # What the probe saw of the module ("" and 0 for a name that is no module).
    type: str = ""  # the module's class name
    kind: str = ""  # conv, norm, block, attention, container, ... (``model.tree.module_kind``)
    calls: int = 0  # how many times the module ran in the forward pass
    output: str = "-"  # the structure of its (first) output, e.g. "Tensor[1, 64, 8, 8]"
    holds_only: bool = False  # a ModuleList/ModuleDict: it holds modules and never runs, nothing to judge

    @property
    def codes(self) -> tuple[str, ...]:
        """The codes that make the layer unusable, each once, in the order found (none for a holder)."""
        if self.holds_only:
            return ()
        return tuple(dict.fromkeys(d.code for d in self.diagnostics if d.severity == "error"))

    def to_dict(self) -> dict[str, Any]:
        """The verdict in full (the JSON's "checked_layers")."""
        return {
            "name": self.name,
            "usable": self.usable,
            "layout": self.layout,
            "grid": list(self.grid) if self.grid else None,
            "prefix_tokens": self.prefix_tokens,
            "cells_confirmed": self.cells_confirmed,
            "suggestions": list(self.suggestions),
            "diagnostics": [d.to_dict() for d in self.diagnostics],
        }

    def to_row(self) -> dict[str, Any]:
        """The layer's row in the module table (the JSON's "layers"): the layout of usable layers only."""
        return {
            "name": self.name,
            "type": self.type,
            "kind": self.kind,
            "calls": self.calls,
            "output": self.output,
            "layout": self.layout if self.usable else None,
            "grid": list(self.grid) if self.grid and self.usable else None,
            "usable": None if self.holds_only else self.usable,
            "codes": list(self.codes),
        }


@dataclass(frozen=True)
class Report:
    """What ``hookdoctor.inspect`` found. ``ok`` is True when every requested method has a spec."""

    methods: tuple[str, ...]
    diagnostics: list[Diagnostic]
    gradcam: GradCAMSpec | None
    rollout: AttentionSpec | None
    model_class: str
    input_shape: tuple[int, ...]
    target: int | None
    environment: dict[str, Any]
    layers: list[LayerVerdict]  # one per module, for the tree (``check_layer`` reads any name)
    layer_verdicts: dict[str, LayerVerdict]
    _judge: Callable[[str], LayerVerdict] = field(repr=False, compare=False)
    task: str = "classification"  # classification, segmentation, embedding or detection (what target indexes)
    structure_only: bool = False  # the pass ran on the meta device: shapes and graph, no values
    not_run: tuple[str, ...] = ()  # the checks that need values, skipped by a structure-only pass
    # For pictures, computed on demand: the model inspected (the specs hold it already) and how to
    # get the example image back. Neither keeps a tensor the model made.
    _model: nn.Module | None = field(default=None, repr=False, compare=False)
    _example: ExampleImage | None = field(default=None, repr=False, compare=False)

    @property
    def full_run_adds(self) -> str | None:
        """One line: what inspecting without structure_only would add (None after a full run)."""
        from hookdoctor.checks.structure import FULL_RUN_ADDS

        return FULL_RUN_ADDS if self.structure_only else None

    @property
    def ok(self) -> bool:
        wanted = {"gradcam": self.gradcam, "rollout": self.rollout}
        if any(wanted[m] is None for m in self.methods):
            return False
        return all(v.usable for v in self.layer_verdicts.values())

    def check_layer(self, name: str) -> LayerVerdict:
        """The verdict for any module name (exact dotted name; close matches suggested on a miss)."""
        return self._judge(name)

    def figure(self, x: Any = None, *, caption: str | None = None) -> Any:
        """A matplotlib Figure: the habit layer's Grad-CAM, the spec's, and the rollout, on the input.

        ``x`` defaults to the example input: the random input inspect made is made again,
        and an input you passed is used while you still hold it (the report keeps no tensor,
        so once it is gone pass it again). Maps are computed now, with pytorch-grad-cam and
        the spec's own rollout; needs the ``plot`` extra (matplotlib).
        """
        from hookdoctor.render.figure import draw_figure
        from hookdoctor.render.maps import compute_maps

        model, image = self.model_and_image(x)
        return draw_figure(compute_maps(self, model, image), caption)

    def model_and_image(self, x: Any = None) -> tuple[nn.Module, Any]:
        """The inspected model and the ``[B, C, H, W]`` image to draw maps on (``x``, or the example input)."""
        from hookdoctor.errors import InputError
        from hookdoctor.model.inputs import resolve_input
        from hookdoctor.model.unwrap import unwrap

        if self._model is None:
            raise InputError("This report was not made by hookdoctor.inspect, so it has no model to draw maps of.")
        inner, _, _ = unwrap(self._model)
        if any(t.is_meta for t in inner.parameters()):
            raise InputError(
                f"{type(inner).__name__} lives on the meta device: it has no weights, so no map can be drawn. "
                "Build it on a real device and inspect it (structure_only=True is fine) to draw its maps."
            )
        given = resolve_input(inner, x) if x is not None else None
        kind = given.kind if given is not None else self._example.kind if self._example is not None else "image"
        if kind != "image":
            # The figure overlays [H, W] maps on a picture; a video's or a signal's map has other axes.
            raise InputError(
                f"The model takes a {kind} input, and pictures are drawn for image inputs only. Compute the map "
                "with the spec instead: GradCAM(**spec.pytorch_grad_cam_kwargs())(input_tensor="
                "spec.as_backend_input(x), targets=[ClassifierOutputTarget(report.target)])."
            )
        if given is not None:
            return self._model, given.image
        image = self._example.recall(inner) if self._example is not None else None
        if image is None:
            raise InputError(
                "The example input given to inspect is gone (the report keeps no tensor of it); pass it "
                "again: report.figure(x)."
            )
        return self._model, image

    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "ok": self.ok,
            "methods": list(self.methods),
            "model": {
                "class": self.model_class,
                "input_shape": list(self.input_shape),
                "target": self.target,
                "task": self.task,
            },
            "environment": dict(self.environment),
            "diagnostics": [d.to_dict() for d in self.diagnostics],
            "gradcam": self.gradcam.to_dict() if self.gradcam is not None else None,
            "rollout": self.rollout.to_dict() if self.rollout is not None else None,
            "checked_layers": {n: v.to_dict() for n, v in self.layer_verdicts.items()},
            "layers": [layer.to_row() for layer in self.layers],
            "structure_only": self.structure_only,
            "not_run": list(self.not_run),
        }

    def __rich_console__(self, console: Any, options: Any) -> Any:
        """Compact on a terminal, in full elsewhere (a file, a pipe, Jupyter), as the CLI prints it."""
        from hookdoctor.render.terminal import render_report

        yield from render_report(self, console=console)
