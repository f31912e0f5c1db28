"""The notes about a layer that a spec handles, or that qualify its map: shared by its verdict and its spec.

HD005 (its output would not require grad), HD103 as info (one call of a shared module,
routed alone), HD204 (the map is empty: only negative evidence for the class) and HD307
(the cells keep the image's order only: a coarse map). The layout notes (HD301-HD304) are
``checks.layers.layout_notes``.
"""

from __future__ import annotations

from hookdoctor.checks.confirm import Confirmation
from hookdoctor.checks.layers import GRADCAM, Judgement
from hookdoctor.codes import Diagnostic
from hookdoctor.probe.run import Probe


def grad_note(j: Judgement, probe: Probe) -> Diagnostic | None:
    """HD005 when the layer's output would not require grad in the user's own call."""
    trainable_path = probe.graph.needs_trainable_parameters(j.first_call.grad_fn)
    if trainable_path and probe.grad_enabled_by_user:
        return None
    variant = "frozen" if not trainable_path else "grad_mode_off"
    return Diagnostic.of("HD005", layer=j.name, method=GRADCAM, variant=variant)


def call_note(j: Judgement, why: str = "") -> list[Diagnostic]:
    """HD103 as info for one call (``NAME#k``): the spec routes that call alone, so the reuse is handled."""
    if j.call_index is None:
        return []
    return [
        Diagnostic.of(
            "HD103",
            layer=j.name,
            method=GRADCAM,
            severity="info",
            variant="per_call_chosen" if why else "per_call",
            module=j.module_name,
            calls=j.calls,
            index=j.call_index,
            why=why,
        )
    ]


def negative_evidence_note(name: str, target: int | None, chosen: str | None = None) -> Diagnostic:
    """HD204 for a layer whose map is empty only because the class has negative evidence there."""
    return Diagnostic.of(
        "HD204",
        layer=name,
        method=GRADCAM,
        variant="instead" if chosen else "default",
        target=target,
        spec_layer=chosen,
    )


def coarse_notes(name: str, confirmation: Confirmation | None) -> list[Diagnostic]:
    """HD307 when only the relaxed locality test passed: the cells keep the image's order, no more."""
    if confirmation is None or not confirmation.coarse:
        return []
    return [Diagnostic.of("HD307", layer=name, method=GRADCAM)]
