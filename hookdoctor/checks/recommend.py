"""The Grad-CAM side of ``inspect``: judge every layer from one probe, recommend one, build its spec.

The recommended layer is the last one, in execution order, that runs once, returns a
plain tensor no later in-place operation rewrites, is laid out as a grid or a token
sequence over the input, receives gradient from the score at every image cell, lies
outside the attention internals, and - checked on the probe's own graph - has cells that
line up with the input and a working map. Among modules returning the same tensor, the
deepest one with children (a block boundary) is named.

A module that runs several times (a shared encoder, a recurrent block, a weight-tied
decoder) offers each of its calls as a candidate of its own, ``NAME#k``; the spec for one
call routes that call alone to the libraries (``CallRouter``). Where a module that runs
once returns the same tensor, that module is named instead: it needs no routing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import nn

from hookdoctor.checks.confirm import Confirmer
from hookdoctor.checks.layers import (
    GRADCAM,
    NO_GRADIENT_FIX,
    Context,
    Judgement,
    call_name,
    call_out_of_range,
    judge,
    layout_notes,
    observed_grids,
    split_call,
)
from hookdoctor.geometry.layout import Layout, ReshapeTransform, prefix_token_hint
from hookdoctor.model.inputs import BACKEND_AXIS, ModelInput
from hookdoctor.model.tree import module_kind
from hookdoctor.model.unwrap import without_compile
from hookdoctor.probe.run import Probe
from hookdoctor.report import Diagnostic, LayerSummary, LayerVerdict
from hookdoctor.specs.gradcam import CallRouter, Float32Maps, GradCAMSpec, ScoreModel

STRUCTURE_ONLY_REASON = (
    "chosen on structure alone (structure-only, meta device): the locality probe and the working-map check "
    "need values and did not run"
)
# The HD203 finding names this many of the layers tried (and counts the rest).
_LISTED_TRIES = 8


def call_verdict(
    name: str, verdicts: dict[str, LayerVerdict], aliases: dict[str, str], calls: dict[str, int]
) -> LayerVerdict | None:
    """The verdict for ``NAME#k`` from the verdicts ``inspect`` kept; None when NAME is no module.

    Works after the probe is gone: every call of a module that ran several times has a
    verdict already; call 0 of a module that ran once is the module itself; any other k
    gets HD102 with the number of calls the module made.
    """
    split = split_call(name)
    if split is None:
        return None
    module, index = split
    module = aliases.get(module, module)  # the same module object under a second name
    if module not in calls:
        return None
    judged = call_name(module, index)
    if judged in verdicts:
        return dataclasses.replace(verdicts[judged], name=name)
    if index == 0 and calls[module] == 1:
        return dataclasses.replace(verdicts[module], name=name)
    j = call_out_of_range(module, calls[module], index)
    return LayerVerdict(name=name, usable=False, diagnostics=list(j.diagnostics))


class GradCAMAnalysis:
    """Judges every module from one probe and picks the layer to recommend."""

    def __init__(
        self,
        model: nn.Module,
        inner: nn.Module,
        model_input: ModelInput,
        probe: Probe,
        attention_sites: list[str],
        modules: Mapping[str, nn.Module] | None = None,
    ) -> None:
        # The modules specs name, by (prefixed) name: the user's own when the pass ran on a meta copy.
        self.modules = modules
        self.spec_model = without_compile(model)  # what pytorch-grad-cam can differentiate more than once
        self.model_input = model_input
        self.probe = probe
        self.attention_sites = attention_sites
        self.context = Context(
            probe=probe,
            grad_graph=probe.graph,
            prefix_hint=prefix_token_hint(inner),
            observed_grids=observed_grids(probe),
        )
        self.judgements = {name: judge(record, self.context) for name, record in probe.records.items()}
        # Each call of a module that runs several times, judged on its own (cheap: no locality probe).
        self.call_judgements = {
            call_name(name, index): judge(record, self.context, index)
            for name, record in probe.records.items()
            if len(record.calls) > 1
            for index in range(len(record.calls))
        }
        self.confirmer = Confirmer(self.context)  # the one judging path beyond judge(): map, then locality

    @property
    def negative_evidence(self) -> list[str]:
        """Layers confirmed so far whose map is empty only because the class has negative evidence there."""
        return [name for name, c in self.confirmer.confirmed().items() if c.negative_evidence]

    @property
    def coarse(self) -> list[str]:
        """Layers confirmed so far whose cells keep the image's order only (the relaxed locality test)."""
        return [name for name, c in self.confirmer.confirmed().items() if c.coarse]

    # -- model-level findings -------------------------------------------------------------
    def model_diagnostics(self) -> list[Diagnostic]:
        score = self.probe.score
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
        elif self.probe.input_gradient_zero:
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
        found += self._task_diagnostics()
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

    def _task_diagnostics(self) -> list[Diagnostic]:
        """Which task and score were chosen, and why (classification says nothing unless it is image-text)."""
        score = self.probe.score
        kind = self.model_input.kind
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

    # -- layer names ----------------------------------------------------------------------
    def judgement(self, name: str) -> Judgement | None:
        """The judgement for a module name or one call of it (``NAME#k``); None for an unknown module."""
        if name in self.judgements:
            return self.judgements[name]
        split = split_call(name)
        if split is None or split[0] not in self.probe.records:
            return None
        if name in self.call_judgements:
            return self.call_judgements[name]
        module, index = split
        record = self.probe.records[module]
        if index == 0 and len(record.calls) == 1:
            return self.judgements[module]  # the only call: the module itself, no routing needed
        return call_out_of_range(module, len(record.calls), index)

    def verdict_names(self) -> list[str]:
        """Every module, and every call of the modules that run several times."""
        return [*self.judgements, *self.call_judgements]

    # -- recommendation -------------------------------------------------------------------
    def _is_attention_internal(self, name: str) -> bool:
        return any(name == site or name.startswith(site + ".") for site in self.attention_sites)

    def _candidates(self) -> list[Judgement]:
        found = []
        for j in [*self.judgements.values(), *self.call_judgements.values()]:
            if not j.usable or j.layout is None or j.call is None:
                continue
            kind = module_kind(self.probe.records[j.module_name].module)
            if kind in ("pooling", "dropout") or self._is_attention_internal(j.module_name):
                continue
            found.append(j)
        return sorted(found, key=lambda j: j.first_call.order, reverse=True)

    def _representative(self, group: list[Judgement]) -> Judgement:
        """Of the modules returning the same tensor, the deepest one with children (a block), else the creator.

        Modules that run once come first: naming one of them needs no per-call routing.
        """
        once = [j for j in group if j.call_index is None]
        group = once or group
        blocks = [j for j in group if next(self.probe.records[j.module_name].module.children(), None) is not None]
        if blocks:
            return max(blocks, key=lambda j: (j.name.count("."), -j.first_call.order))
        return min(group, key=lambda j: j.first_call.order)

    def _confirm(self, j: Judgement) -> Layout | None:
        """The layout of ``j`` whose map works and whose cells line up (``Confirmer``), or None."""
        return self.confirmer.confirm(j).layout

    def recommend(self, requested: list[str]) -> tuple[GradCAMSpec | None, list[Diagnostic]]:
        found: list[Diagnostic] = []
        for name in requested:
            j = self.judgement(name)
            if j is not None and j.usable and j.layout is not None:
                layout = self._confirm(j)
                if layout is not None:
                    reasons: tuple[str, ...] = (f"`{name}` was named and works",)
                    if self.probe.structure_only:
                        reasons = (f"`{name}` was named and passes every structural check", STRUCTURE_ONLY_REASON)
                    if j.call_index is not None:
                        reasons += (self._routing(j),)
                    spec, notes = self._spec(j, layout, reasons, why="it is the call you named")
                    return spec, found + notes
        candidates = self._candidates()
        tried: dict[int, Judgement] = {}  # every candidate tensor, latest first: no cap on the search
        for j in candidates:
            key = id(j.first_call.output_tensor)
            if key in tried:
                continue
            group = [c for c in candidates if id(c.first_call.output_tensor) == key]
            choice = self._representative(group)
            tried[key] = choice
            layout = self._confirm(choice)
            if layout is not None:
                first = "the last layer (in execution order) that runs once and returns a plain tensor"
                why = self._why_call(choice) if choice.call_index is not None else ""
                if why:
                    first = f"{self._routing(choice)}: {why}"
                reasons = (first, *self._layout_reasons(layout))
                spec, notes = self._spec(choice, layout, reasons, why)
                return spec, found + self._negative_evidence_notes(spec.layer_name) + notes
        found += self._negative_evidence_notes(None)
        found.append(self._nothing_works(list(tried.values())))
        return None, found

    def _nothing_works(self, tried: list[Judgement]) -> Diagnostic:
        """HD203, naming the layers tried and why each failed (the first few, and how many more)."""
        if not tried:
            message = (
                "No layer gives a working Grad-CAM map on this input: no layer runs once, returns a plain tensor "
                "laid out over the image, receives gradient from the score and lies outside the attention "
                "internals (the layer table says which check each one fails)."
            )
        else:
            reasons = []
            for j in tried[:_LISTED_TRIES]:
                confirmation = self.confirmer.confirm(j)
                codes = [d.code for d in j.diagnostics if d.severity == "error"]
                reasons.append(f"`{j.name}` ({confirmation.failure}{', ' + codes[0] if codes else ''})")
            more = f", and {len(tried) - _LISTED_TRIES} more" if len(tried) > _LISTED_TRIES else ""
            message = (
                f"No layer gives a working Grad-CAM map on this input. Tried every candidate ({len(tried)}), "
                f"latest first: {'; '.join(reasons)}{more}."
            )
        return Diagnostic.of("HD203", message, "Read the layer findings; hookdoctor explain HD203.", method=GRADCAM)

    def _layout_reasons(self, layout: Layout) -> tuple[str, ...]:
        if self.probe.structure_only:
            return (
                f"laid out as {layout.describe()} over the input, read from its shape alone",
                "the score's autograd path reaches its image cells and nothing rewrites it in place",
                STRUCTURE_ONLY_REASON,
            )
        return (
            f"laid out as {layout.describe()} over the input, confirmed by a locality probe",
            "receives gradient from the score at every image cell and is not rewritten in place",
        )

    @staticmethod
    def _routing(j: Judgement) -> str:
        return (
            f"`{j.module_name}` runs {j.calls} times per forward pass; the spec routes call {j.call_index} "
            "alone to the library"
        )

    def _why_call(self, j: Judgement) -> str:
        """Why the recommended call of a shared module: which call it is, and what the other calls lack."""
        index = j.call_index or 0
        others = [self.call_judgements[call_name(j.module_name, c)] for c in range(j.calls) if c != index]
        elsewhere = [str(o.call_index) for o in others if o.other_input]
        failing = [o for o in others if not o.other_input and (o.call_index or 0) > index]
        why = []
        if elsewhere:
            listed = ", ".join(elsewhere)
            why.append(f"it is the call that sees the explained input (call {listed} processes another input)")
        if failing:
            codes = sorted({d.code for o in failing for d in o.diagnostics if d.severity == "error"})
            listed = ", ".join(str(o.call_index) for o in failing)
            why.append(f"the later call {listed} gives no working map ({', '.join(codes) or 'an empty map'})")
        if not why:
            why.append("it is the last call (in execution order) that gives a working map")
        return "; ".join(why)

    def _negative_evidence_notes(self, chosen: str | None, only: str | None = None) -> list[Diagnostic]:
        target = self.probe.score.target
        instead = f"; the spec uses `{chosen}` instead" if chosen else ""
        return [
            Diagnostic.of(
                "HD204",
                f"Grad-CAM at `{name}` is all zeros for class {target}: the layer holds only negative "
                f"evidence for it{instead}.",
                "Explain the predicted class or the negative score, or read the signed map; hookdoctor explain HD204.",
                layer=name,
                method=GRADCAM,
            )
            for name in self.negative_evidence
            if only is None or name == only
        ]

    def _coarse_notes(self, name: str) -> list[Diagnostic]:
        if name not in self.coarse:
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

    def _call_note(self, j: Judgement, why: str = "") -> list[Diagnostic]:
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

    def _grad_note(self, j: Judgement) -> Diagnostic | None:
        """HD005 when the layer's output would not require grad in the user's own call."""
        trainable_path = self.context.grad_graph.needs_trainable_parameters(j.first_call.grad_fn)
        if trainable_path and self.probe.grad_enabled_by_user:
            return None
        why = "its parameters up to this layer are frozen" if not trainable_path else "grad mode was off"
        return Diagnostic.of(
            "HD005",
            f"The output of `{j.name}` would not require grad ({why}); pytorch-grad-cam would skip its gradient hook.",
            "The spec's .model enables grad and makes its input require grad.",
            layer=j.name,
            method=GRADCAM,
        )

    def verdict(self, name: str) -> LayerVerdict:
        """Everything known about one layer (or one call, ``NAME#k``): its failures, and what a spec would handle."""
        j = self.judgement(name)
        if j is None:
            raise KeyError(name)
        # The locality test costs two backward passes: the verdict reads it where it ran (the
        # layers the recommendation tried, the layers named in layer=) and says so where it did not.
        confirmation = self.confirmer.known(j)
        layout = (confirmation.layout if confirmation else None) or j.layout
        notes: list[Diagnostic] = []
        if j.usable and layout is not None:
            grad_note = self._grad_note(j)
            notes = layout_notes(j, layout) + ([grad_note] if grad_note else []) + self._call_note(j)
        if name in self.negative_evidence:
            notes += self._negative_evidence_notes(None, only=name)
        notes += self._coarse_notes(name)
        return LayerVerdict(
            name=name,
            usable=j.usable,
            diagnostics=[*j.diagnostics, *notes],
            layout=layout.kind if layout else None,
            grid=layout.grid if layout else None,
            prefix_tokens=layout.prefix_tokens if layout else None,
            cells_confirmed=confirmation.cells_confirmed if confirmation else None,
        )

    def _spec(
        self, j: Judgement, layout: Layout, reasons: tuple[str, ...], why: str = ""
    ) -> tuple[GradCAMSpec, list[Diagnostic]]:
        score = self.probe.score
        grad_note = self._grad_note(j)
        extra_args = len(self.model_input.args) > 1 or bool(self.model_input.kwargs)
        pre_activation = self._module(score.pre_activation) if score.pre_activation else None
        backend_axis = BACKEND_AXIS.get(self.model_input.kind)
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
        if plain and grad_note is None and not extra_args:
            score_model: nn.Module = self.spec_model
        else:
            template = self.model_input if extra_args else None
            score_model = ScoreModel(
                self.spec_model,
                score.selector,
                pre_activation=pre_activation,
                call_template=template,
                head=score.head,
                pre_activation_function=score.pre_activation_function,
                backend_axis=backend_axis,
                input_dims=self.model_input.image.dim(),
                float_scores=float_scores,
            )
        transform: ReshapeTransform | Float32Maps | None = layout.transform()
        if j.first_call.output_tensor.dtype == torch.bfloat16:
            transform = Float32Maps(layout.transform())
        notes = (
            layout_notes(j, layout)
            + ([grad_note] if grad_note else [])
            + self._coarse_notes(j.name)
            + self._call_note(j, why)
        )
        score_text = score.score_text or score.selector.expression("model(x)")
        if score.pre_activation:
            score_text = f"the input of `{score.pre_activation}` (the logit)"
        elif score.pre_activation_function:
            score_text = f"the input of the final {score.pre_activation_function} call in forward (the logit)"
        layer = self._module(j.module_name)
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
            reasons=reasons,
            score=score_text,
            call_index=j.call_index,
            task=score.task,
            input_kind=self.model_input.kind,
            input_shape=tuple(int(n) for n in self.model_input.image.shape),
        )
        return spec, notes

    def _module(self, name: str) -> nn.Module:
        if self.modules is not None:
            return self.modules[name]
        return self.probe.records[name].module

    def pitfalls(self, spec: GradCAMSpec | None) -> list[Diagnostic]:
        """The dead layers people usually pick (the last block, the final norm), said up front.

        Every module after a ViT's last attention step fails with HD201; listing all of
        them would bury the point. The outermost dead blocks of a block stack and dead norms
        outside them are the layers tutorials name, so those are reported (as info: the
        spec avoids them).
        """
        dead = [name for name, j in self.judgements.items() if j.cut_off is not None]
        instead = f"; the spec uses `{spec.layer_name}` instead" if spec is not None else ""
        live = spec.module_name if spec is not None else ""
        included: list[str] = []
        for name in sorted(dead, key=lambda n: (n.count("."), n)):
            if module_kind(self.probe.records[name].module) not in ("block", "norm"):
                continue
            # The inner model of a wrapper (`module.`, `_orig_mod.`) is not a record: it is the root.
            parent = self.probe.records.get(name.rsplit(".", 1)[0]) if "." in name else None
            in_a_stack = parent is not None and module_kind(parent.module) == "container"
            if live.startswith(name + ".") and not in_a_stack:
                continue  # the backbone as a whole: it holds the live layer too
            if any(name.startswith(block + ".") for block in included):
                continue
            included.append(name)
        if not included:
            return []
        included.sort(key=lambda n: self.judgements[n].first_call.order)  # in the order they run
        # One finding for all of them: they fail for the same reason, and the report stays one screen.
        cut_off = self.judgements[included[0]].cut_off
        assert cut_off is not None  # every layer in `dead` has HD201, which sets it
        return [
            Diagnostic.of(
                "HD201",
                cut_off.message(included, instead),
                NO_GRADIENT_FIX,
                layer=included[0],
                method=GRADCAM,
                severity="info",
            )
        ]

    # -- summaries ------------------------------------------------------------------------
    def summaries(self) -> list[LayerSummary]:
        out = []
        for name, j in self.judgements.items():
            record = self.probe.records[name]
            confirmation = self.confirmer.known(j)
            layout = (confirmation.layout if confirmation else None) or j.layout
            out.append(
                LayerSummary(
                    name=name,
                    type=type(record.module).__name__,
                    kind="attention" if name in self.attention_sites else module_kind(record.module),
                    calls=len(record.calls),
                    output=record.calls[0].structure if record.calls else "-",
                    layout=layout.kind if layout and j.usable else None,
                    grid=layout.grid if layout and j.usable else None,
                    usable=None if j.holds_only else j.usable,
                    codes=() if j.holds_only else tuple(dict.fromkeys(d.code for d in j.diagnostics)),
                )
            )
        return out
