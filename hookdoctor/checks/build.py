"""Build the GradCAMSpec for the layer the search chose, with the notes about what the spec handles.

The spec's ``.model`` is the user's model where the libraries can take it as it is, else a
``ScoreModel`` that returns the explained score (a dict or tuple output, a final softmax,
a detection or segmentation score, a 3-D input's 4-D view, bfloat16 scores), routed to one
call by a ``CallRouter`` for ``NAME#k``. Its reshape transform comes from the confirmed
layout.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from hookdoctor.checks.layers import layout_notes
from hookdoctor.checks.notes import call_note, coarse_notes, grad_note
from hookdoctor.checks.recommend import Recommendation
from hookdoctor.codes import Diagnostic
from hookdoctor.geometry.layout import ReshapeTransform
from hookdoctor.model.inputs import BACKEND_AXIS, ModelInput
from hookdoctor.model.unwrap import without_compile
from hookdoctor.probe.run import Probe
from hookdoctor.specs.gradcam import GradCAMSpec
from hookdoctor.specs.wrappers import CallRouter, Float32Maps, ScoreModel


def build_spec(
    recommendation: Recommendation,
    *,
    model: nn.Module,
    model_input: ModelInput,
    probe: Probe,
    modules: Mapping[str, nn.Module] | None = None,
) -> tuple[GradCAMSpec | None, list[Diagnostic]]:
    """The spec for the recommended layer (None when there is none) and the notes on what it handles.

    ``modules`` are the modules specs name, by (prefixed) name: the user's own when the pass
    ran on a meta copy; by default the modules the probe recorded.
    """
    j, confirmation, layout = recommendation.choice, recommendation.confirmation, recommendation.layout
    if j is None or confirmation is None or layout is None:
        return None, []

    def module(name: str) -> nn.Module:
        return modules[name] if modules is not None else probe.records[name].module

    spec_model = without_compile(model)  # what pytorch-grad-cam can differentiate more than once
    score = probe.score
    grad = grad_note(j, probe)
    extra_args = len(model_input.args) > 1 or bool(model_input.kwargs)
    pre_activation = module(score.pre_activation) if score.pre_activation else None
    backend_axis = BACKEND_AXIS.get(model_input.kind)
    # numpy, which pytorch-grad-cam converts maps and scores to, has no bfloat16.
    float_scores = score.dtype == torch.bfloat16
    plain = (
        score.selector.how == "tensor"
        and pre_activation is None
        and score.pre_activation_function is None
        and score.head is None
        and backend_axis is None
        and not float_scores
    )
    if plain and grad is None and not extra_args:
        score_model: nn.Module = spec_model
    else:
        template = model_input if extra_args else None
        score_model = ScoreModel(
            spec_model,
            score.selector,
            pre_activation=pre_activation,
            call_template=template,
            head=score.head,
            pre_activation_function=score.pre_activation_function,
            backend_axis=backend_axis,
            input_dims=model_input.image.dim(),
            float_scores=float_scores,
        )
    transform: ReshapeTransform | Float32Maps | None = layout.transform()
    if j.first_call.output_tensor.dtype == torch.bfloat16:
        transform = Float32Maps(layout.transform())
    notes = (
        layout_notes(j, layout)
        + ([grad] if grad else [])
        + coarse_notes(j.name, confirmation)
        + call_note(j, recommendation.why)
    )
    score_text = score.score_text or score.selector.expression("model(x)")
    if score.pre_activation:
        score_text = f"the input of `{score.pre_activation}` (the logit)"
    elif score.pre_activation_function:
        score_text = f"the input of the final {score.pre_activation_function} call in forward (the logit)"
    layer = module(j.module_name)
    if j.call_index is not None:
        score_model = CallRouter(score_model, layer, j.call_index, j.module_name)
        layer = score_model.call_view
    spec = GradCAMSpec(
        layer_name=j.name,
        layer=layer,
        reshape_transform=transform,
        model=score_model,
        grid=layout.grid,
        layout=layout,
        reasons=recommendation.reasons,
        score=score_text,
        call_index=j.call_index,
        task=score.task,
        input_kind=model_input.kind,
        input_shape=tuple(int(n) for n in model_input.image.shape),
    )
    return spec, notes
