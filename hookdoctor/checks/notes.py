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
    why = "its parameters up to this layer are frozen" if not trainable_path else "grad mode was off"
    return Diagnostic.of(
        "HD005",
        f"The output of `{j.name}` would not require grad ({why}); pytorch-grad-cam would skip its gradient hook.",
        "The spec's .model enables grad and makes its input require grad.",
        layer=j.name,
        method=GRADCAM,
    )


def call_note(j: Judgement, why: str = "") -> list[Diagnostic]:
    """HD103 as info for one call (``NAME#k``): the spec routes that call alone, so the reuse is handled."""
    if j.call_index is None:
        return []
    chosen = f"; the spec explains call {j.call_index}: {why}" if why else ""
    return [
        Diagnostic.of(
            "HD103",
            f"`{j.module_name}` runs {j.calls} times per forward pass and a hook on it fires on every call "
            f"(pytorch-grad-cam keeps the first, Captum the last){chosen}.",
            f"The spec's .model routes call {j.call_index} alone through an identity module, the spec's .layer, "
            "so the library hooks that call and nothing else.",
            layer=j.name,
            method=GRADCAM,
            severity="info",
        )
    ]


def negative_evidence_note(name: str, target: int | None, chosen: str | None = None) -> Diagnostic:
    """HD204 for a layer whose map is empty only because the class has negative evidence there."""
    instead = f"; the spec uses `{chosen}` instead" if chosen else ""
    return Diagnostic.of(
        "HD204",
        f"Grad-CAM at `{name}` is all zeros for class {target}: the layer holds only negative "
        f"evidence for it{instead}.",
        "Explain the predicted class or the negative score, or read the signed map; hookdoctor explain HD204.",
        layer=name,
        method=GRADCAM,
    )


def coarse_notes(name: str, confirmation: Confirmation | None) -> list[Diagnostic]:
    """HD307 when only the relaxed locality test passed: the cells keep the image's order, no more."""
    if confirmation is None or not confirmation.coarse:
        return []
    return [
        Diagnostic.of(
            "HD307",
            f"The cells of `{name}` keep the image's order, but their input gradients peak more than a cell "
            "away from them: each cell looks at much of the image, so the map is coarse.",
            "Prefer an earlier layer for a sharper map (--layer), or check the map on a batch of two inputs.",
            layer=name,
            method=GRADCAM,
        )
    ]
