"""Confirm a usable layer on the probe's own graph: a working map, then cells that line up.

One path for every question about a layer: the recommendation (``checks.recommend``)
confirms the layers it tries, and returns every ``Confirmation`` it made; the verdicts
(``checks.verdicts``) read those. ``Confirmer.confirm`` returns its finding (HD306 among
them) and changes nothing it is given. The cheap check comes first - the Grad-CAM map from
the probe's gradient statistics, no backward - and the locality test (one backward per
probe cell) only for layouts whose map works; a tensor returned by several modules is
tested once per layout.

Where the autograd graph shows which input position every cell holds
(``probe.positions``: convolutions, per-position MLPs between permutes, patch merging,
residual streams around attention), a layout that reads the cells at those positions lines
up by construction and needs no backward. Otherwise the locality test decides; where no
layout lines up strictly, the relaxed test (``keeps_order``, HD307) is tried only on
layouts whose prefix count agrees with the one the model declares and whose grid one stride
explains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from hookdoctor.checks.layers import GRADCAM, Context, Judgement
from hookdoctor.codes import Diagnostic
from hookdoctor.errors import ModelRunError
from hookdoctor.geometry.layout import Layout, aligned_grid
from hookdoctor.geometry.locality import (
    cell_energies,
    contiguous_gradients,
    follows_coordinates,
    gradcam_map,
    is_working_map,
    keeps_order,
    peaks_as_laid_out,
)
from hookdoctor.probe.positions import PositionReader, coordinates

# The locality test runs on at most this many layouts per layer (most likely first), so a
# layer costs at most 2 * _MAX_LAYOUTS backward passes, however many readings its shape allows.
_MAX_LAYOUTS = 3
CELLS_MISALIGNED = "cells do not line up"


@dataclass(frozen=True)
class Confirmation:
    """What confirming one layer found: the layout to use, or why there is none.

    ``failure`` is a few words for the HD203 listing ("" when confirmed); ``coarse`` when
    only the relaxed order test passed (HD307); ``negative_evidence`` when the map is empty
    only because the class has negative evidence there (HD204); ``diagnostics`` what the
    layer's verdict adds to its judgement (HD306 when its cells do not line up).
    """

    layout: Layout | None
    failure: str = ""
    coarse: bool = False
    negative_evidence: bool = False
    structure_only: bool = False  # chosen from the shape alone: nothing about the cells was tested
    by_graph: bool = False  # the autograd graph showed every cell's input position: no backward was needed
    diagnostics: tuple[Diagnostic, ...] = ()

    @property
    def usable(self) -> bool:
        """False when confirming found an error (HD306), True otherwise."""
        return not any(d.severity == "error" for d in self.diagnostics)

    @property
    def cells_confirmed(self) -> bool | None:
        """True when the cells line up (tested, or by construction), False when not, None when never asked."""
        if self.layout is not None:
            return None if self.structure_only else True
        return False if self.failure == CELLS_MISALIGNED else None


class Confirmer:
    """Confirms layers (see the module doc); it caches locality backwards by tensor and layout only."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.probe = context.probe
        self._energies: dict[tuple[int, Layout], list[torch.Tensor] | None] = {}
        self._positions: PositionReader | None = None  # made on first use: the graph is read once
        # PyTorch 2.14 CPU: eval BatchNorm with batch 1 gets wrong input gradients from a
        # non-contiguous incoming gradient; the probe's locality backwards get contiguous ones.
        self._batchnorm_outputs = [
            call.tensor
            for record in self.probe.records.values()
            if isinstance(record.module, torch.nn.modules.batchnorm._BatchNorm) and not record.module.training
            for call in record.calls
            if call.tensor is not None and call.tensor.device.type == "cpu" and self.probe.batch == 1
        ]

    def confirm(self, j: Judgement) -> Confirmation:
        """Confirm ``j``: a layer whose cells do not line up gets HD306 in the confirmation."""
        result = self._confirm(j)
        if result.failure != CELLS_MISALIGNED:
            return result
        misaligned = Diagnostic.of(
            "HD306", layer=j.name, method=GRADCAM, variant="misaligned", layout=j.layouts[0].describe()
        )
        return dataclasses.replace(result, diagnostics=(misaligned,))

    def _confirm(self, j: Judgement) -> Confirmation:
        if not j.usable or not j.layouts or j.call is None:
            return Confirmation(None, failure="failed a check before the map")
        if self.probe.structure_only:
            # The meta device has no values: no map, no locality probe. The layer is chosen on
            # structure alone, with the layout its shape gives first (the reasons say so).
            return Confirmation(j.layouts[0], structure_only=True)
        call = j.first_call
        # Cheap first: the map from the probe's own statistics, for every layout.
        working: list[Layout] = []
        negative = False
        for layout in j.layouts:
            weights = call.grad_stats.channel_weights(layout)
            if is_working_map(gradcam_map(call.output_tensor, weights, layout)):
                working.append(layout)
            elif is_working_map(gradcam_map(call.output_tensor, -weights, layout)):
                negative = True
        if not working:
            why = "map empty: only negative evidence for the class" if negative else "map empty or constant"
            return Confirmation(None, failure=why, negative_evidence=negative)
        working = working[:_MAX_LAYOUTS]
        by_construction = self._laid_out_by_the_graph(call.output_tensor, working)
        if by_construction is not None:
            return Confirmation(by_construction, by_graph=True)
        for layout in working:
            found = self._cell_energies(call.output_tensor, layout)
            if found is not None and peaks_as_laid_out(found, layout):
                return Confirmation(layout)
        # The relaxed test only for the prefix the model declares, where some layout has it, and
        # only for grids one stride explains: a grid with a stride per axis needs the strict test.
        hint = self.context.prefix_hint
        declared = [lay for lay in working if lay.kind != "tokens" or lay.prefix_tokens == hint]
        for layout in declared if hint is not None and declared else working:
            if len(layout.grid) != 2 or not aligned_grid(*layout.grid, self.probe.image_hw):
                continue
            found = self._cell_energies(call.output_tensor, layout)
            if found is not None and keeps_order(found, layout):
                return Confirmation(layout, coarse=True)
        return Confirmation(None, failure=CELLS_MISALIGNED)

    def _laid_out_by_the_graph(self, tensor: torch.Tensor, layouts: list[Layout]) -> Layout | None:
        """The first of ``layouts`` under which the graph shows every cell at its own input position."""
        if self._positions is None:
            image = self.probe.input_image
            self._positions = PositionReader(
                image, self.context.grad_graph.computed_from(image), channel_axis=self.probe.channel_axis
            )
        labels = self._positions.labels(tensor)
        found = coordinates(labels, len(self.probe.image_hw)) if labels is not None else None
        if found is None:
            return None
        return next((layout for layout in layouts if follows_coordinates(found, layout)), None)

    def _cell_energies(self, tensor: torch.Tensor, layout: Layout) -> list[torch.Tensor] | None:
        key = (id(tensor), layout)
        if key not in self._energies:
            with contiguous_gradients(self._batchnorm_outputs), _user_failures_told_apart():
                self._energies[key] = cell_energies(
                    tensor, self.probe.input_image, layout, channel_axis=self.probe.channel_axis
                )
        return self._energies[key]


@contextmanager
def _user_failures_told_apart() -> Iterator[None]:
    """The locality probe's backward passes, with failures of the user's model told apart from hookdoctor's own.

    They differentiate the probe's graph again: a forward that edits its weights in place
    invalidates that graph, and a backward that fails only when repeated fails here.
    """
    try:
        yield
    except Exception as exc:
        if "modified by an inplace operation" in str(exc):
            raise ModelRunError(
                "The model's forward edits its own parameters or buffers in place (for example "
                "`self.weight.add_(...)` under no_grad): the second forward hookdoctor ran changed tensors "
                "the first one's gradient needs, so autograd refused to differentiate it. Every gradient "
                "method fails the same way once the model runs twice; move the update out of forward (into "
                "the training step) or apply it to a copy."
            ) from exc
        if _raised_by_user_code(exc):
            raise ModelRunError(
                f"The model's backward pass raised {type(exc).__name__} on a later pass: {exc}. hookdoctor "
                "differentiates the explained score several times over one forward; a backward that fails "
                "when repeated breaks every gradient method that retains the graph (pytorch-grad-cam does)."
            ) from exc
        raise


def _raised_by_user_code(exc: BaseException) -> bool:
    """True when the innermost frame of ``exc`` is neither hookdoctor's nor torch's: the model's own code."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename.replace("\\", "/")
    return not any(f"/{package}/" in filename for package in ("hookdoctor", "torch"))
