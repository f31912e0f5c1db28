"""``hookdoctor.inspect``: load -> probe -> checks -> specs, leaving the model as it was."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import numbers
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import networkx as nx
import torch
from torch import nn

from hookdoctor import arguments
from hookdoctor.checks.attention import analyse_attention, tokens_shuffled
from hookdoctor.checks.build import build_spec
from hookdoctor.checks.confirm import Confirmer
from hookdoctor.checks.judgements import judge_all, judging_context
from hookdoctor.checks.layers import GRADCAM
from hookdoctor.checks.pitfalls import pitfalls
from hookdoctor.checks.recommend import Recommendation, recommend
from hookdoctor.checks.score import score_findings
from hookdoctor.checks.structure import NOT_RUN_WITHOUT_VALUES
from hookdoctor.checks.verdicts import call_verdict, layer_verdicts
from hookdoctor.errors import InputError, ModelRunError
from hookdoctor.model.environment import environment
from hookdoctor.model.fits import guard_pass
from hookdoctor.model.guard import preserved, refuse_lazy_modules
from hookdoctor.model.inputs import ExampleImage, ModelInput, resolve_input
from hookdoctor.model.memory import releasing_freed_memory
from hookdoctor.model.meta import is_meta, meta_copy, meta_input
from hookdoctor.model.tasks import TaskRefusal
from hookdoctor.model.tree import build_tree
from hookdoctor.model.unwrap import unwrap
from hookdoctor.probe.record import Probe
from hookdoctor.probe.run import recorded_pass
from hookdoctor.report import Diagnostic, LayerVerdict, Report, sort_diagnostics
from hookdoctor.specs.gradcam import GradCAMSpec

# Rollout refusals that mean the model has no image-wide token attention at all: under
# methods="auto" rollout does not apply to such a model, rather than failing on it.
NO_TOKEN_ATTENTION = ("HD506", "HD507", "HD508")


@releasing_freed_memory  # the pass's activations are gone once it returns: their pages go back too
def inspect(
    model: nn.Module,
    example_input: Any = None,
    *,
    input_shape: Sequence[int] | None = None,
    target: int | None = None,
    methods: str | Iterable[str] = arguments.DEFAULT_METHODS,
    layer: str | Sequence[str] | None = None,
    output: str | int | None = None,
    explain: str | int | None = None,
    task: str | None = None,
    reference: torch.Tensor | None = None,
    structure_only: bool = False,
) -> Report:
    """Run ``model`` once with hooks and say which attribution methods would work, and how.

    See the Report, GradCAMSpec and AttentionSpec docs (and ../API.md). ``methods="auto"``
    (the default) judges Grad-CAM, plus rollout where the model computes image-wide token
    attention; elsewhere rollout is reported as not applicable (HD514, info) and ``report.ok``
    depends on Grad-CAM alone. Arguments are checked first (``hookdoctor.arguments``): a
    wrong one raises InputError saying what to pass. ``output`` names
    the score in a model that returns several (a ModelOutput field or dict key, or a tuple
    index); by default the ``logits`` field, else the first 2-D tensor, is explained.
    ``explain`` names the entry of a dict (or tuple) example input that the map covers;
    ``task`` overrides the task read off the output (classification, segmentation,
    embedding, detection); ``reference`` is the embedding an embedding model's similarity
    is explained to. The model comes back untouched: hooks, training flags, requires_grad, .grad, attention
    settings and parameters are as they were, also when its forward raises.

    ``structure_only=True`` runs the pass on the meta device (no weights, no values): a
    model built under ``torch.device("meta")`` is run as it is, a model on a real device
    through a weightless copy (its own modules are untouched, and the spec names them).
    Specs come back with ``verified=False`` and the report lists the checks that need
    values (``report.not_run``). Without it, a model whose pass would not fit in memory
    raises ``InsufficientMemoryError`` suggesting it.
    """
    chosen = arguments.parse_methods(methods)
    wanted = chosen.wanted
    target = arguments.parse_target(target)
    output = arguments.parse_output(output)
    requested = arguments.parse_layer(layer)
    inner, prefix, wrappers = unwrap(model)
    shape = arguments.parse_input_shape(input_shape)
    # Before anything reads the parameters (the memory guard, the meta copy): a Lazy one cannot be read.
    refuse_lazy_modules(inner)
    built_on_meta = is_meta(inner)
    if built_on_meta and not structure_only:
        raise InputError(
            f"{type(inner).__name__} lives on the meta device: it has shapes but no weights, so it cannot run "
            "at full size. Pass structure_only=True (--structure-only) to inspect its structure, or build it "
            "on a real device."
        )
    # The pass runs on `runner`: the model itself, or its weightless copy for a structure-only look.
    runner = meta_copy(inner) if structure_only and not built_on_meta else inner
    model_input = _normal_tensors(resolve_input(runner, example_input, shape, explain=explain))
    # Kept before the move to the meta device: report.figure() needs the user's own input back.
    example = ExampleImage.of(model_input, made_here=example_input is None)
    if structure_only:
        model_input = meta_input(model_input)
    else:
        guard_pass(inner, model_input)
    # Specs name the user's modules, also when the pass ran on the copy.
    modules = {prefix + name: module for name, module in inner.named_modules() if name} if runner is not inner else None
    diagnostics: list[Diagnostic] = []
    if wrappers:
        diagnostics.append(Diagnostic.of("HD601", wrappers=" and ".join(wrappers), prefix=prefix))
    if len(requested) > 1:
        diagnostics.append(Diagnostic.of("HD401", count=len(requested)))

    gradcam_spec: GradCAMSpec | None = None
    rollout_spec = None
    # A structure-only pass on a weightless copy leaves the user's model alone: guarding the copy
    # avoids a CPU copy of every weight (the memory structure-only is there to save).
    with preserved(model if runner is inner else runner), _outside_inference_mode():
        was_training = inner.training
        runner.eval()
        try:
            pass_ = recorded_pass(runner, model_input, target, prefix, output, task=task, reference=reference)
            probe = pass_.__enter__()  # the one recorded pass
        except TaskRefusal as refusal:
            return _refused(model, inner, model_input, wanted, diagnostics, refusal, example, structure_only)
        with contextlib.ExitStack() as scope:
            scope.push(pass_)
            _refuse_non_finite_scores(probe)
            sites = sorted({prefix + seen.site.module for seen in probe.attention if seen.site.module})
            if probe.consumed_randomness:
                diagnostics.append(_shuffled_tokens() if tokens_shuffled(probe) else _nondeterministic())
            context = judging_context(probe, runner)
            judgements = judge_all(context)
            recommendation = Recommendation()  # nothing confirmed where Grad-CAM was not asked about
            if "gradcam" in wanted or requested:  # Grad-CAM's findings only where Grad-CAM was asked about
                recommendation = recommend(judgements, Confirmer(context), probe, sites, requested)
                gradcam_spec, notes = build_spec(
                    recommendation, model=model, model_input=model_input, probe=probe, modules=modules
                )
                diagnostics += (
                    score_findings(probe, model_input)
                    + recommendation.diagnostics
                    + notes
                    + pitfalls(judgements, probe, gradcam_spec)
                )
            if "rollout" in wanted:
                rollout_spec, found = analyse_attention(
                    runner,
                    model_input,
                    probe=probe,
                    name_prefix=prefix,
                    prefix_hint=context.prefix_hint,
                    was_training=was_training,
                )
                if not chosen.named("rollout"):
                    wanted, found = _rollout_not_applicable(wanted, found)
                diagnostics += found
            # the top class, or `target`; a structure-only pass has no top class
            target_index = probe.score.target if not structure_only or target is not None else None
            task_name = probe.score.task
            # Every module's verdict and every call's (NAME#k), from the confirmations the search made.
            all_verdicts = layer_verdicts(judgements, recommendation.confirmations, probe, sites)
            module_names = list(judgements.modules)
            layers = [all_verdicts[name] for name in module_names]
            call_counts = judgements.call_counts
        aliases = _aliases(build_tree(runner, prefix), all_verdicts)

    def judged(name: str) -> LayerVerdict:
        if name in all_verdicts:
            return all_verdicts[name]
        if name in aliases:  # the same module object under a second name
            return dataclasses.replace(all_verdicts[aliases[name]], name=name)
        per_call = call_verdict(name, all_verdicts, aliases, call_counts)  # NAME#k: one call of a module
        return per_call or _unknown_layer(name, module_names)

    # The locality test needs the pass's autograd graph, which does not outlive inspect: a usable
    # layer this pass did not test is tested on demand by a pass that names it, so check_layer
    # and inspect(layer=...) give one answer.
    again = _AgainNamed(
        model,
        example_input=example_input,
        input_shape=input_shape,
        target=target,
        output=output,
        explain=explain,
        task=task,
        reference=reference,
    )
    retested: dict[str, LayerVerdict] = {}

    def check_layer(name: str) -> LayerVerdict:
        name = arguments.layer_name(name)
        verdict = judged(name)
        if structure_only or name in requested or not verdict.usable or verdict.cells_confirmed is not None:
            return verdict
        if name not in retested:
            retested[name] = again.verdict(name) or verdict
        return retested[name]

    verdicts = {name: check_layer(name) for name in requested}
    # A named layer's findings, except what the pass already reported of that layer (HD204 says
    # the spec's layer instead of the named one: one finding, not two).
    reported = {(d.code, d.layer) for d in diagnostics}
    named_findings = [d for verdict in verdicts.values() for d in verdict.diagnostics]
    diagnostics += [d for d in named_findings if (d.code, d.layer) not in reported]
    if structure_only:  # nothing was run on values: every spec says so
        gradcam_spec = dataclasses.replace(gradcam_spec, verified=False) if gradcam_spec is not None else None
        rollout_spec = dataclasses.replace(rollout_spec, verified=False) if rollout_spec is not None else None

    return Report(
        methods=wanted,
        diagnostics=sort_diagnostics(_dedupe(diagnostics)),
        gradcam=gradcam_spec,
        rollout=rollout_spec,
        model_class=type(model).__name__,
        input_shape=tuple(int(s) for s in model_input.image.shape),
        target=target_index,
        task=task_name,
        environment=environment(inner),
        layers=layers,
        layer_verdicts=verdicts,
        _judge=check_layer,
        structure_only=structure_only,
        not_run=NOT_RUN_WITHOUT_VALUES if structure_only else (),
        _model=model,
        _example=example,
    )


def _refused(
    model: nn.Module,
    inner: nn.Module,
    model_input: ModelInput,
    wanted: tuple[str, ...],
    diagnostics: list[Diagnostic],
    refusal: TaskRefusal,
    example: ExampleImage,
    structure_only: bool,
) -> Report:
    """The report for an output whose task cannot be explained on this input: the coded reason, no spec."""
    found = Diagnostic.of(refusal.code, method=GRADCAM, variant=refusal.variant)

    def unjudged(name: str) -> LayerVerdict:
        return LayerVerdict(name=name, usable=False, diagnostics=[found])

    return Report(
        methods=wanted,
        diagnostics=sort_diagnostics(_dedupe([*diagnostics, found])),
        gradcam=None,
        rollout=None,
        model_class=type(model).__name__,
        input_shape=tuple(int(s) for s in model_input.image.shape),
        target=None,
        environment=environment(inner),
        layers=[],
        layer_verdicts={},
        _judge=unjudged,
        task=refusal.task,
        structure_only=structure_only,
        not_run=NOT_RUN_WITHOUT_VALUES if structure_only else (),
        _model=model,
        _example=example,
    )


@contextmanager
def _outside_inference_mode() -> Iterator[None]:
    """Run the passes with autograd able to record, in the caller's grad mode.

    Under ``torch.inference_mode()`` nothing can be differentiated; leaving it (and
    putting back the grad mode it turned off) lets the probe run as it would under
    ``torch.no_grad()``, which the specs are made for (HD005).
    """
    grad_enabled = torch.is_grad_enabled()
    with torch.inference_mode(False), torch.set_grad_enabled(grad_enabled):
        yield


def _normal_tensors(model_input: ModelInput) -> ModelInput:
    """The input with tensors made under ``inference_mode`` copied: autograd cannot save those."""

    def normal(value: Any) -> Any:
        return value.clone() if isinstance(value, torch.Tensor) and value.is_inference() else value

    with torch.inference_mode(False):  # a copy made inside inference_mode would be an inference tensor
        return ModelInput(
            tuple(normal(a) for a in model_input.args),
            {k: normal(v) for k, v in model_input.kwargs.items()},
            model_input.image_slot,
            model_input.kind,
        )


def _rollout_not_applicable(
    wanted: tuple[str, ...], found: list[Diagnostic]
) -> tuple[tuple[str, ...], list[Diagnostic]]:
    """Under methods="auto": a model without token attention gets HD514 (info), and no rollout to judge."""
    refusal = next((d for d in found if d.code in NO_TOKEN_ATTENTION and d.severity == "error"), None)
    if refusal is None:
        return wanted, found
    note = Diagnostic.of(
        "HD514", layer=refusal.layer, method=arguments.ROLLOUT, reason=refusal.message, refused_as=refusal.code
    )
    rest = [d for d in found if d is not refusal and d.method != arguments.ROLLOUT]
    return tuple(m for m in wanted if m != arguments.ROLLOUT), [note, *rest]


def _dedupe(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    return list(dict.fromkeys(diagnostics))


def _nondeterministic() -> Diagnostic:
    """HD006: the eval-mode forward drew random numbers (read off the RNG state, at no extra cost)."""
    return Diagnostic.of("HD006")


def _shuffled_tokens() -> Diagnostic:
    """HD007: random numbers drawn and tokens gathered by an index computed from the image (ViTMAE)."""
    return Diagnostic.of("HD007")


def _refuse_non_finite_scores(probe: Probe) -> None:
    """NaN or inf scores on a finite input: no gradient and no map would mean anything."""
    value = probe.score_value
    if value is None or value.is_meta or bool(torch.isfinite(value.detach()).all()):
        return
    raise ModelRunError(
        f"The model's scores contain NaN or inf on a finite input of shape {tuple(probe.input_image.shape)}, so no "
        "gradient and no map means anything. Check the weights (a checkpoint holding NaN), float16 "
        "overflow, or a division by zero in the forward, then rerun."
    )


class _AgainNamed:
    """The arguments of one inspect call, to run it again with ``layer=`` (no tensor held strongly).

    The example input and the reference are the user's: they are held by weak references, so
    a layer can be tested again while the user keeps them; a random example input is made
    again from its seed. Inputs that cannot be referenced weakly (a dict) are not kept.
    """

    def __init__(self, model: nn.Module, **arguments: Any) -> None:
        self.model = model
        self.arguments = {name: _weak(value) for name, value in arguments.items()}

    def verdict(self, name: str) -> LayerVerdict | None:
        """The verdict of an inspect that names ``name`` (and so tests its cells), or None when the input is gone."""
        values = {key: _recalled(value) for key, value in self.arguments.items()}
        if any(value is _GONE for value in values.values()):
            return None
        report = inspect(self.model, methods=GRADCAM, layer=name, **values)
        return report.layer_verdicts.get(name)


_GONE = object()


def _weak(value: Any) -> Any:
    """A tensor as a weak reference; a value without tensors (None, a name, a shape) as it is; else _GONE."""
    if isinstance(value, torch.Tensor):
        return weakref.ref(value)
    if value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, numbers.Number) for v in value):  # a shape
        return value
    return _GONE


def _recalled(value: Any) -> Any:
    if isinstance(value, weakref.ref):
        held = value()
        return _GONE if held is None else held
    return value


def _aliases(tree: nx.DiGraph, verdicts: dict[str, LayerVerdict]) -> dict[str, str]:
    """Second names of shared modules (which ``named_modules()`` hides) -> the name judged."""
    aliases: dict[str, str] = {}
    for key in tree.nodes:
        names = tree.nodes[key]["node"].names
        judged = next((n for n in names if n in verdicts), None)
        if judged is not None:
            aliases.update({n: judged for n in names if n != judged})
    return aliases


def _unknown_layer(name: str, names: list[str]) -> LayerVerdict:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    diagnostic = Diagnostic.of(
        "HD101",
        layer=name,
        method=GRADCAM,
        variant="close_matches" if close else "default",
        matches=", ".join(f"`{c}`" for c in close),
    )
    return LayerVerdict(name=name, usable=False, diagnostics=[diagnostic], suggestions=close)
