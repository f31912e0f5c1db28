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
                f"The model returns {score.output_structure}; attribution libraries need the score tensor "
                f"{score.selector.expression('output')}.",
                "The spec's .model is a wrapper that returns it; pass spec.model, not the raw model, "
                "to the library.",
                method=GRADCAM,
            )
        )
    if score.other_heads:
        found.append(
            Diagnostic.of(
                "HD002",
                f"The model returns several score tensors; {score.selector.expression('output')} was explained "
                f"and {', '.join(score.other_heads)} passed over.",
                "If you meant another head, name it: inspect(..., output=KEY_OR_INDEX) (--output on the command "
                "line).",
                method=GRADCAM,
            )
        )
    if score.zero_head:
        found.append(
            Diagnostic.of(
                "HD003",
                f"The head `{score.zero_head}` has all-zero weights, so the score's gradient is zero for every "
                "layer; layers were judged with a surrogate score instead.",
                "Load trained weights (or re-initialise the head) before reading any map from this model.",
                layer=score.zero_head,
                method=GRADCAM,
            )
        )
    elif not score.has_gradient:
        found.append(
            Diagnostic.of(
                "HD203",
                "The model's score carries no gradient: its forward computes it with gradients disabled "
                "(torch.no_grad / inference_mode) or detaches it.",
                "Remove the no_grad, inference_mode or .detach() from the model's forward path to the score.",
                method=GRADCAM,
            )
        )
    elif probe.input_gradient_zero:
        found.append(
            Diagnostic.of(
                "HD203",
                "The explained score has no gradient with respect to the input image: the forward does not "
                "use the image, or runs the path from it under torch.no_grad / torch.inference_mode, or "
                "detaches it.",
                "Check the model's head and weights (a constant score has nothing to explain), and remove "
                "the no_grad, inference_mode or .detach() between the image and the score.",
                method=GRADCAM,
            )
        )
    found += _task_findings(probe, model_input)
    if score.pre_activation_function:
        found.append(
            Diagnostic.of(
                "HD004",
                f"The model's forward ends in a {score.pre_activation_function} call "
                f"(F.{score.pre_activation_function} / torch.{score.pre_activation_function}, seen in the "
                "autograd graph)"
                f"{', saturated at 1.0' if score.saturated else ''}; its gradient "
                f"{'vanishes' if score.saturated else 'is damped'}, so the logit before it is explained instead.",
                "The spec's .model returns the input of that call; explain logits, not probabilities.",
                method=GRADCAM,
                severity="warning" if score.saturated else "info",
            )
        )
    if score.pre_activation:
        found.append(
            Diagnostic.of(
                "HD004",
                f"The model ends in `{score.pre_activation}` (softmax/sigmoid)"
                f"{', saturated at 1.0' if score.saturated else ''}; its gradient "
                f"{'vanishes' if score.saturated else 'is damped'}, so the logit before it is explained instead.",
                "The spec's .model returns the input of that module; explain logits, not probabilities.",
                layer=score.pre_activation,
                method=GRADCAM,
                severity="warning" if score.saturated else "info",
            )
        )
    return found


def _task_findings(probe: Probe, model_input: ModelInput) -> list[Diagnostic]:
    """Which task and score were chosen, and why (classification says nothing unless it is image-text)."""
    score = probe.score
    kind = model_input.kind
    found: list[Diagnostic] = []
    if kind in BACKEND_AXIS:
        shape = "[B, T, F]" if kind == "spectrogram" else "[B, C, L]"
        view = "[B, 1, T, F]" if kind == "spectrogram" else "[B, C, 1, L]"
        found.append(
            Diagnostic.of(
                "HD015",
                f"The explained input is a 3-D {kind} {shape}; pytorch-grad-cam 1.5.7 takes only 4-D and 5-D "
                "inputs and fails on it.",
                f"Pass spec.as_backend_input(x) (the {view} view) to pytorch-grad-cam; spec.model accepts it. "
                "Captum takes x itself.",
                method=GRADCAM,
            )
        )
    code = {"segmentation": "HD010", "embedding": "HD011", "detection": "HD012"}.get(score.task)
    if score.selector.key == "logits_per_image":
        code = "HD014"
    if code is None:
        return found
    severity = "warning" if score.task == "embedding" and not score.reference_given else None
    fix = {
        "HD010": "Use spec.model and ClassifierOutputTarget(k) (or Captum's target=k) for class k; the masks are "
        "those of the example input, so inspect again for another image.",
        "HD011": "Pass reference= (the embedding of your concept or reference input) so that the map explains "
        "similarity to it; report.target is 0, the only column."
        if not score.reference_given
        else "Use spec.model and target 0: the map explains the similarity to your reference.",
        "HD012": "Use spec.model and ClassifierOutputTarget(k) for example detection k (report.target is the "
        "top-scoring one); the detections are those of the example input, so inspect again for another image.",
        "HD014": "Use spec.model and ClassifierOutputTarget(k) for text k; pass the texts you want as input_ids "
        "in the example input (explain= names the image entry).",
    }[code]
    found.append(
        Diagnostic.of(
            code,
            f"Task: {score.task}, because {score.why}; the explained score (spec.model(x)[:, k]) is "
            f"{score.score_text}.",
            fix,
            method=GRADCAM,
            severity=severity,
        )
    )
    return found
