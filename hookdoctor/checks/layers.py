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

import torch

from hookdoctor.geometry.layout import Layout, infer_layouts, spatial_extent
from hookdoctor.probe.gradpath import GradGraph
from hookdoctor.probe.run import CallRecord, ModuleRecord, Probe
from hookdoctor.report import Diagnostic

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


NO_GRADIENT_FIX = "Hook a layer before the last token-mixing (attention) step, such as the last block's first norm."


@dataclass(frozen=True)
class CutOff:
    """Why no gradient reaches a layer's patch tokens: the grid, and the picks on the score's path."""

    grid: tuple[int, ...]
    picks: tuple[str, ...]

    def message(self, names: list[str], instead: str = "") -> str:
        """HD201's sentence for one layer, or for several that fail the same way."""
        listed = " and ".join(f"`{name}`" for name in names)
        via = f" (the path from the score picks them with {', '.join(self.picks)})" if self.picks else ""
        after = "them" if len(names) > 1 else "it"
        return (
            f"No gradient reaches the {self.grid[0]}x{self.grid[1]} patch tokens of {listed}: after {after} the "
            f"classifier reads only the prefix token(s){via}, so Grad-CAM there is all zeros{instead}."
        )


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

    def add(self, code: str, message: str, fix: str) -> None:
        self.diagnostics.append(Diagnostic.of(code, message, fix, layer=self.name, method=GRADCAM))


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
    made = "never runs" if not count else "runs once" if count == 1 else f"runs {count} times"
    valid = f" (`{module}#0`" + (f" to `{module}#{count - 1}`)" if count > 1 else ")") if count else ""
    j.add(
        "HD102",
        f"`{module}` {made} per forward pass, so its call {index} never happens and a hook on it would never "
        "fire.",
        f"Name a call that happens{valid}; calls count from 0 in execution order."
        if count
        else "Choose a module that runs; the report lists each module with its call count.",
    )
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
        j.add(
            "HD102",
            f"`{name}` is a {type(record.module).__name__}: it holds modules but never runs itself, so a hook on it "
            "never fires.",
            f"Hook one of its entries (`{name}.0` ... ) or a layer inside one.",
        )
        return j
    if not record.calls:
        j.add(
            "HD102",
            f"`{name}` never runs in the forward pass, so a hook on it never fires.",
            "Choose a module that runs; the report lists each module with its call count.",
        )
        return j
    call = record.calls[call_index or 0]
    j.call = call
    if call_index is None and len(record.calls) > 1:
        j.add(
            "HD103",
            f"`{name}` runs {len(record.calls)} times per forward pass; pytorch-grad-cam would use the "
            "first call and Captum the last.",
            f"Hook a module that runs once, such as the block that contains it, or one call of it: "
            f"`{name}#k` (k from 0 to {len(record.calls) - 1}) gives a spec that routes that call alone.",
        )
    if not call.is_tensor:
        j.add(
            "HD104",
            f"`{name}` returns {call.structure}, not a tensor; pytorch-grad-cam fails on it and its "
            "gradient hook would be skipped.",
            "Hook the tensor-producing module inside it, or the next module whose output is a plain tensor.",
        )
    if call.tensor is not None and call.overwritten:
        j.add(
            "HD105",
            f"A later in-place operation rewrites the output of `{name}`, so the stored activation "
            "is not the one the gradient belongs to.",
            "Hook a module whose output is not modified in place, such as the enclosing block.",
        )
    shape = call.shape
    probe = ctx.probe
    axes = probe.input_axes or probe.image_hw
    if shape is None or len(shape) < 3 or spatial_extent(shape, axes) <= 1:
        j.add(
            "HD305",
            f"`{name}` outputs {call.structure}, which has no spatial grid to draw a map on.",
            "Hook the last layer before global pooling.",
        )
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
        j.add(
            "HD306",
            f"`{name}` outputs {call.structure}, whose dimensions do not follow the "
            f"{'x'.join(str(a) for a in axes)} input's geometry.",
            "Hook a layer whose output is a grid or a token sequence over the image.",
        )
        return j
    if not call.requires_grad and not call.grad_enabled:
        j.add(
            "HD202",
            f"`{name}` runs with gradients disabled inside the model's forward (torch.no_grad or "
            "inference_mode), so no gradient can reach it.",
            "Remove the no_grad / inference_mode around this part of the model's forward.",
        )
        return j
    if not call.requires_grad:
        j.add(
            "HD306",
            f"`{name}` does not depend on the input image (its output needs no gradient even when the image does).",
            "Hook a layer computed from the image.",
        )
        return j
    # Checked before the gradient: the probe differentiates towards the input only, so another
    # view's call has no gradient recorded although the score depends on it.
    if call_index is not None and not ctx.grad_graph.depends_on(call.grad_fn, probe.input_image):
        j.other_input = True
        j.add(
            "HD306",
            f"Call {call_index} of `{record.name}` does not see the explained input: its output is not computed "
            "from it (it processes another input, such as the other view of a siamese model).",
            f"Name the call of `{record.name}` that processes the explained input, or explain the other input.",
        )
        return j
    if call.grad is None:
        j.add(
            "HD202",
            f"`{name}` runs, but the explained score does not depend on its output.",
            "Hook a layer on the path from the input to the score.",
        )
        return j
    layout = j.layouts[0]
    if probe.structure_only:  # no gradient values on the meta device: the graph decides
        picks = probe.cut_off_by_pick(call, shape[1]) if layout.kind == "tokens" and layout.prefix_tokens else None
        if picks is not None:
            j.cut_off = CutOff(layout.grid, picks)
            j.add("HD201", j.cut_off.message([name]), NO_GRADIENT_FIX)
        return j
    cells, prefix = call.grad.cell_energy(layout)
    if not bool(cells.max() > 0):
        if prefix is not None and prefix.numel() and bool(prefix.max() > 0):
            j.cut_off = CutOff(layout.grid, tuple(dict.fromkeys(ctx.grad_graph.picks_between(call.grad_fn))))
            j.add("HD201", j.cut_off.message([name]), NO_GRADIENT_FIX)
        else:
            j.add(
                "HD202",
                f"The explained score's gradient at `{name}` is zero everywhere.",
                "Hook a layer on the path from the input to the score.",
            )
    return j


def layout_notes(j: Judgement, layout: Layout) -> list[Diagnostic]:
    """The layout findings a spec for this layer handles by itself (info)."""
    notes: list[Diagnostic] = []
    name = j.name
    if len(layout.grid) != 2:
        return notes  # video and signal layouts: the spec's layer is what the libraries take
    h, w = layout.grid

    def note(code: str, message: str, fix: str) -> None:
        notes.append(Diagnostic.of(code, message, fix, layer=name, method=GRADCAM))

    if layout.kind == "tokens":
        note(
            "HD301",
            f"`{name}` outputs tokens [B, {layout.prefix_tokens}+{h * w}, {layout.channels}], not a [B, C, H, W] map.",
            f"The spec's reshape_transform drops {layout.prefix_tokens} prefix token(s), reshapes to {h}x{w} "
            "and permutes to [B, C, H, W].",
        )
        if layout.prefix_tokens > 1:
            note(
                "HD302",
                f"`{name}` has {layout.prefix_tokens} prefix tokens (CLS plus distillation or register "
                "tokens), not one.",
                f"The spec drops exactly {layout.prefix_tokens} tokens before reshaping.",
            )
    if layout.kind == "NHWC":
        note(
            "HD304",
            f"`{name}` outputs channels-last [B, {h}, {w}, {layout.channels}]; every library would read "
            f"{h} as the channel count.",
            "The spec's reshape_transform permutes it to [B, C, H, W].",
        )
    if h != w:
        note(
            "HD303",
            f"The map of `{name}` is {h}x{w} (height x width), not square.",
            f"The spec reshapes to ({h}, {w}), height first.",
        )
    return notes
