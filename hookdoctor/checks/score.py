"""Findings about the model as a whole: how its score is read, what task it is, what input it takes.

HD001 (the score is not the output itself), HD002 (other heads passed over), HD003 (a
zero head), HD203 (a score with no gradient), HD004 (a final softmax or sigmoid), HD010-HD015
(the task and score chosen, a 3-D input). They read the probe's score record and the input's kind.
"""

from __future__ import annotations

from hookdoctor.checks.layers import GRADCAM
from hookdoctor.codes import Diagnostic
from hookdoctor.model.inputs import BACKEND_AXIS, ModelInput
from hookdoctor.probe.run import Probe


def score_findings(probe: Probe, model_input: ModelInput) -> list[Diagnostic]:
    """HD001-HD004 and the task findings: how the score is read from the output, and what it is."""
    score = probe.score
    found: list[Diagnostic] = []
    if score.selector.how != "tensor":
        found.append(
            Diagnostic.of(
                "HD001",
                method=GRADCAM,
                structure=score.output_structure,
                expression=score.selector.expression("output"),
            )
        )
    if score.other_heads:
        found.append(
            Diagnostic.of(
                "HD002",
                method=GRADCAM,
                expression=score.selector.expression("output"),
                others=", ".join(score.other_heads),
            )
        )
    if score.zero_head:
        found.append(Diagnostic.of("HD003", layer=score.zero_head, method=GRADCAM))
    elif not score.has_gradient:
        found.append(Diagnostic.of("HD203", method=GRADCAM, variant="no_score_gradient"))
    elif probe.input_gradient_zero:
        found.append(Diagnostic.of("HD203", method=GRADCAM, variant="input_gradient_zero"))
    found += _task_findings(probe, model_input)
    severity = "warning" if score.saturated else "info"
    if score.pre_activation_function:
        found.append(
            Diagnostic.of(
                "HD004",
                method=GRADCAM,
                severity=severity,
                variant="function_saturated" if score.saturated else "function",
                function=score.pre_activation_function,
            )
        )
    if score.pre_activation:
        found.append(
            Diagnostic.of(
                "HD004",
                layer=score.pre_activation,
                method=GRADCAM,
                severity=severity,
                variant="module_saturated" if score.saturated else "module",
            )
        )
    return found


def _task_findings(probe: Probe, model_input: ModelInput) -> list[Diagnostic]:
    """Which task and score were chosen, and why (classification says nothing unless it is image-text)."""
    score = probe.score
    kind = model_input.kind
    found: list[Diagnostic] = []
    if kind in BACKEND_AXIS:
        found.append(Diagnostic.of("HD015", method=GRADCAM, variant=kind))
    code = {"segmentation": "HD010", "embedding": "HD011", "detection": "HD012"}.get(score.task)
    if score.selector.key == "logits_per_image":
        code = "HD014"
    if code is None:
        return found
    # Without reference=, an embedding's score is a fixed random direction: a warning.
    severity = "warning" if score.task == "embedding" and not score.reference_given else None
    variant = "reference" if code == "HD011" and score.reference_given else "default"
    found.append(
        Diagnostic.of(
            code,
            method=GRADCAM,
            severity=severity,
            variant=variant,
            task=score.task,
            why=score.why,
            score=score.score_text,
        )
    )
    return found
