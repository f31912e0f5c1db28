"""Is a layer a usable Grad-CAM target? One judgement per module, from the probe's records.

A layer is usable when it runs exactly once, returns a plain tensor that no later
in-place operation rewrites, has an image-aligned layout with more than one cell, and
receives gradient from the score at its image cells (not only at its prefix tokens).

One call of a module that runs several times is judged the same way under the name
``NAME#k`` (call k, counting from 0): the per-call spec routes that call alone to the
libraries, so running several times is no failure there; a call that does not depend on
the explained input (the other view of a siamese model) is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from hookdoctor.codes import Diagnostic
from hookdoctor.codes._gradcam import NO_GRADIENT_FIX  # noqa: F401 - for checks/recommend.py until it uses CutOff
from hookdoctor.geometry.layout import Layout, infer_layouts, spatial_extent
from hookdoctor.probe.gradpath import GradGraph
from hookdoctor.probe.run import CallRecord, ModuleRecord, Probe

GRADCAM = "gradcam"

_CALL_NAME = re.compile(r"^(?P<module>.+)#(?P<index>\d+)$")


def split_call(name: str) -> tuple[str, int] | None:
    """``("enc", 1)`` for ``"enc#1"``; None for a plain module name."""
    match = _CALL_NAME.match(name)
    return (match["module"], int(match["index"])) if match else None


def call_name(module: str, index: int) -> str:
    return f"{module}#{index}"


@dataclass
class Context:
    """What every judgement needs beyond the layer's own record."""

    probe: Probe
    grad_graph: GradGraph
    prefix_hint: int | None
    observed_grids: list[tuple[int, int]]


@dataclass(frozen=True)
class CutOff:
    """Why no gradient reaches a layer's patch tokens: the grid, and the picks on the score's path."""

    grid: tuple[int, ...]
    picks: tuple[str, ...]

    def diagnostic(
        self, names: list[str], spec_layer: str | None = None, *, severity: str | None = None
    ) -> Diagnostic:
        """HD201 for one layer, or for several that fail the same way (reported at the first);
        ``spec_layer`` is the layer the spec uses instead, when there is one."""
        variant = {
            (False, False): "default",
            (True, False): "picked",
            (False, True): "instead",
            (True, True): "picked_instead",
        }[(bool(self.picks), spec_layer is not None)]
        return Diagnostic.of(
            "HD201",
            layer=names[0],
            method=GRADCAM,
            severity=severity,
            variant=variant,
            grid="x".join(map(str, self.grid)),
            layers=" and ".join(f"`{name}`" for name in names),
            them="them" if len(names) > 1 else "it",
            picks=", ".join(self.picks),
            spec_layer=spec_layer,
        )

    def message(self, names: list[str], instead: str = "") -> str:
        """HD201's sentence for ``names``, with ``instead`` spliced in before the full stop.

        Temporary, for checks/recommend.py until it calls ``diagnostic`` (with ``spec_layer``).
        """
        return self.diagnostic(names).message[:-1] + instead + "."


@dataclass
class Judgement:
    name: str
    diagnostics: list[Diagnostic] = field(default_factory=list)
    layouts: list[Layout] = field(default_factory=list)
    call: CallRecord | None = None
    holds_only: bool = False  # a ModuleList/ModuleDict: nothing to judge in the module tree
    module_name: str = ""  # the module judged; differs from ``name`` for one call (``NAME#k``)
    call_index: int | None = None  # set when one call of a module is judged
    calls: int = 0  # how many times the module ran
    other_input: bool = False  # one call (NAME#k) that is not computed from the explained input
    cut_off: CutOff | None = None  # set with HD201

    @property
    def first_call(self) -> CallRecord:
        """The layer's (first) call; only for layers that ran."""
        if self.call is None:
            raise ValueError(f"`{self.name}` never ran")
        return self.call

    @property
    def usable(self) -> bool:
        return not any(d.severity == "error" for d in self.diagnostics)

    @property
    def layout(self) -> Layout | None:
        return self.layouts[0] if self.layouts else None

    def add(self, code: str, *, variant: str = "default", **fields: Any) -> None:
        """A finding of ``code`` at this layer, written from the code's ``variant`` template and ``fields``."""
        self.diagnostics.append(Diagnostic.of(code, layer=self.name, method=GRADCAM, variant=variant, **fields))


def observed_grids(probe: Probe) -> list[tuple[int, int]]:
    """Grids of NCHW convolution outputs (a ViT's patch embedding among them)."""
    grids: list[tuple[int, int]] = []
    for record in probe.records.values():
        if isinstance(record.module, torch.nn.modules.conv._ConvNd):
            for call in record.calls:
                if call.shape is not None and len(call.shape) == 4 and tuple(call.shape[2:]) not in grids:
                    grids.append((int(call.shape[2]), int(call.shape[3])))
    return grids


def call_out_of_range(module: str, count: int, index: int) -> Judgement:
    """HD102 for ``NAME#k`` when the module made k calls or fewer (``count``): that call never happens."""
    j = Judgement(call_name(module, index), module_name=module, call_index=index, calls=count)
    variant = "call_never_runs" if not count else "call_after_only_one" if count == 1 else "call_after_last"
    j.add("HD102", variant=variant, module=module, index=index, calls=count, last=count - 1)
    return j


def judge(record: ModuleRecord, ctx: Context, call_index: int | None = None) -> Judgement:
    """Every diagnostic that makes (or would make) ``record`` fail as a Grad-CAM target.

    With ``call_index``, only that call of the module is judged (``NAME#k``); the caller
    makes sure the call happened (``call_out_of_range`` otherwise).
    """
    name = record.name if call_index is None else call_name(record.name, call_index)
    j = Judgement(name, module_name=record.name, call_index=call_index, calls=len(record.calls))
    if not record.calls and isinstance(record.module, (torch.nn.ModuleList, torch.nn.ModuleDict)):
        j.holds_only = True
        j.add("HD102", variant="container", kind=type(record.module).__name__)
        return j
    if not record.calls:
        j.add("HD102")
        return j
    call = record.calls[call_index or 0]
    j.call = call
    if call_index is None and len(record.calls) > 1:
        j.add("HD103", calls=len(record.calls), last=len(record.calls) - 1)
    if not call.is_tensor:
        j.add("HD104", structure=call.structure)
    if call.tensor is not None and call.overwritten:
        j.add("HD105")
    shape = call.shape
    probe = ctx.probe
    axes = probe.input_axes or probe.image_hw
    if shape is None or len(shape) < 3 or spatial_extent(shape, axes) <= 1:
        j.add("HD305", structure=call.structure)
        return j
    j.layouts = infer_layouts(
        shape,
        axes,
        probe.batch,
        module=record.module,
        observed_grids=ctx.observed_grids,
        prefix_hint=ctx.prefix_hint,
        swapped_too=probe.input_kind == "spectrogram",
    )
    if not j.layouts:
        j.add("HD306", structure=call.structure, input="x".join(str(a) for a in axes))
        return j
    if not call.requires_grad and not call.grad_enabled:
        j.add("HD202", variant="no_grad_mode")
        return j
    if not call.requires_grad:
        j.add("HD306", variant="not_from_image")
        return j
    # Checked before the gradient: the probe differentiates towards the input only, so another
    # view's call has no gradient recorded although the score depends on it.
    if call_index is not None and not ctx.grad_graph.depends_on(call.grad_fn, probe.input_image):
        j.other_input = True
        j.add("HD306", variant="other_input", index=call_index, module=record.name)
        return j
    if call.grad is None:
        j.add("HD202", variant="not_used")
        return j
    layout = j.layouts[0]
    if probe.structure_only:  # no gradient values on the meta device: the graph decides
        picks = probe.cut_off_by_pick(call, shape[1]) if layout.kind == "tokens" and layout.prefix_tokens else None
        if picks is not None:
            j.cut_off = CutOff(layout.grid, picks)
            j.diagnostics.append(j.cut_off.diagnostic([name]))
        return j
    cells, prefix = call.grad.cell_energy(layout)
    if not bool(cells.max() > 0):
        if prefix is not None and prefix.numel() and bool(prefix.max() > 0):
            j.cut_off = CutOff(layout.grid, tuple(dict.fromkeys(ctx.grad_graph.picks_between(call.grad_fn))))
            j.diagnostics.append(j.cut_off.diagnostic([name]))
        else:
            j.add("HD202", variant="zero_gradient")
    return j


def layout_notes(j: Judgement, layout: Layout) -> list[Diagnostic]:
    """The layout findings a spec for this layer handles by itself (info)."""
    notes: list[Diagnostic] = []
    name = j.name
    if len(layout.grid) != 2:
        return notes  # video and signal layouts: the spec's layer is what the libraries take
    h, w = layout.grid

    def note(code: str, **fields: Any) -> None:
        notes.append(Diagnostic.of(code, layer=name, method=GRADCAM, h=h, w=w, **fields))

    if layout.kind == "tokens":
        note("HD301", prefix=layout.prefix_tokens, cells=h * w, channels=layout.channels)
        if layout.prefix_tokens > 1:
            note("HD302", prefix=layout.prefix_tokens)
    if layout.kind == "NHWC":
        note("HD304", channels=layout.channels)
    if h != w:
        note("HD303")
    return notes
