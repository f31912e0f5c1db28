"""``hookdoctor.inspect``: load -> probe -> checks -> specs, leaving the model as it was."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
from collections.abc import Iterable, Sequence
from typing import Any

import networkx as nx
import torch
from torch import nn

from hookdoctor.checks.attention import analyse_attention
from hookdoctor.checks.layers import GRADCAM
from hookdoctor.checks.recommend import GradCAMAnalysis, call_verdict
from hookdoctor.errors import InputError
from hookdoctor.model.environment import environment
from hookdoctor.model.guard import preserved
from hookdoctor.model.inputs import ModelInput, resolve_input
from hookdoctor.model.tasks import TaskRefusal
from hookdoctor.model.tree import build_tree
from hookdoctor.model.unwrap import unwrap
from hookdoctor.probe.run import recorded_pass
from hookdoctor.report import Diagnostic, LayerVerdict, Report, sort_diagnostics
from hookdoctor.specs.gradcam import GradCAMSpec

METHODS = ("gradcam", "rollout")


def _methods(methods: str | Iterable[str]) -> tuple[str, ...]:
    wanted = (methods,) if isinstance(methods, str) else tuple(methods)
    if "all" in wanted:
        wanted = METHODS
    unknown = [m for m in wanted if m not in METHODS]
    if unknown or not wanted:
        raise InputError(
            f"Unknown method(s) {unknown or wanted!r}: methods must be a tuple of "
            f"{', '.join(repr(m) for m in METHODS)} (or 'all')."
        )
    return tuple(dict.fromkeys(wanted))


def _layer_names(layer: str | Sequence[str] | None) -> list[str]:
    if layer is None:
        return []
    return [layer] if isinstance(layer, str) else list(layer)


def inspect(
    model: nn.Module,
    example_input: Any = None,
    *,
    input_shape: Sequence[int] | None = None,
    target: int | None = None,
    methods: str | Iterable[str] = METHODS,
    layer: str | Sequence[str] | None = None,
    output: str | int | None = None,
    explain: str | int | None = None,
    task: str | None = None,
    reference: torch.Tensor | None = None,
) -> Report:
    """Run ``model`` once with hooks and say which attribution methods would work, and how.

    See the Report, GradCAMSpec and AttentionSpec docs (and ../API.md). ``output`` names
    the score in a model that returns several (a ModelOutput field or dict key, or a tuple
    index); by default the ``logits`` field, else the first 2-D tensor, is explained.
    ``explain`` names the entry of a dict (or tuple) example input that the map covers;
    ``task`` overrides the task read off the output (classification, segmentation,
    embedding, detection); ``reference`` is the embedding an embedding model's similarity
    is explained to. The model comes back untouched: hooks, training flags, requires_grad, .grad, attention
    settings and parameters are as they were, also when its forward raises.
    """
    wanted = _methods(methods)
    inner, prefix, wrappers = unwrap(model)
    model_input = resolve_input(
        inner, example_input, tuple(input_shape) if input_shape is not None else None, explain=explain
    )
    diagnostics: list[Diagnostic] = []
    if wrappers:
        diagnostics.append(
            Diagnostic.of(
                "HD601",
                f"The model is wrapped by {' and '.join(wrappers)}; its inner module was inspected and layer "
                f"names carry the prefix `{prefix}`.",
                "Nothing to do: the spec's layer is the module your model holds.",
            )
        )
    requested = _layer_names(layer)
    if len(requested) > 1:
        diagnostics.append(
            Diagnostic.of(
                "HD401",
                f"{len(requested)} target layers were named; pytorch-grad-cam would pair their maps by position.",
                "Use one spec per layer: each named layer is judged on its own below.",
            )
        )

    gradcam_spec: GradCAMSpec | None = None
    rollout_spec = None
    with preserved(model):
        was_training = inner.training
        inner.eval()
        try:
            pass_ = recorded_pass(inner, model_input, target, prefix, output, task=task, reference=reference)
            probe = pass_.__enter__()  # the one recorded pass
        except TaskRefusal as refusal:
            return _refused(model, inner, model_input, wanted, diagnostics, refusal)
        with contextlib.ExitStack() as scope:
            scope.push(pass_)
            sites = sorted({prefix + seen.site.module for seen in probe.attention if seen.site.module})
            if probe.consumed_randomness:
                diagnostics.append(_nondeterministic())
            analysis = GradCAMAnalysis(model, inner, model_input, probe, sites)
            if "gradcam" in wanted or requested:  # Grad-CAM's findings only where Grad-CAM was asked about
                gradcam_spec, found = analysis.recommend(requested)
                diagnostics += analysis.model_diagnostics() + found + analysis.pitfalls(gradcam_spec)
            if "rollout" in wanted:
                rollout_spec, found = analyse_attention(
                    inner,
                    model_input,
                    probe=probe,
                    name_prefix=prefix,
                    prefix_hint=analysis.context.prefix_hint,
                    was_training=was_training,
                )
                diagnostics += found
            summaries = analysis.summaries()
            target_index = probe.score.target  # the top class, or `target`
            task_name = probe.score.task
            all_verdicts = {name: analysis.verdict(name) for name in analysis.verdict_names()}  # NAME#k too
            call_counts = {name: len(record.calls) for name, record in probe.records.items()}
            module_names = list(analysis.judgements)
        aliases = _aliases(build_tree(inner, prefix), all_verdicts)

    def check_layer(name: str) -> LayerVerdict:
        if name in all_verdicts:
            return all_verdicts[name]
        if name in aliases:  # the same module object under a second name
            return dataclasses.replace(all_verdicts[aliases[name]], name=name)
        per_call = call_verdict(name, all_verdicts, aliases, call_counts)  # NAME#k: one call of a module
        return per_call or _unknown_layer(name, module_names)

    verdicts = {name: check_layer(name) for name in requested}
    diagnostics += [d for verdict in verdicts.values() for d in verdict.diagnostics]

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
        layers=summaries,
        layer_verdicts=verdicts,
        _judge=check_layer,
    )


def _refused(
    model: nn.Module,
    inner: nn.Module,
    model_input: ModelInput,
    wanted: tuple[str, ...],
    diagnostics: list[Diagnostic],
    refusal: TaskRefusal,
) -> Report:
    """The report for an output whose task cannot be explained on this input: the coded reason, no spec."""
    found = Diagnostic.of(refusal.code, refusal.message, refusal.fix, method=GRADCAM)

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
    )


def _dedupe(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    return list(dict.fromkeys(diagnostics))


def _nondeterministic() -> Diagnostic:
    """HD006: the eval-mode forward drew random numbers (read off the RNG state, at no extra cost)."""
    return Diagnostic.of(
        "HD006",
        "The forward pass draws random numbers in eval mode (the global random number generator advanced): "
        "something random runs at inference, so every map changes from call to call.",
        "Make the forward deterministic (fixed masking noise, dropout that respects eval()) before "
        "explaining it; hookdoctor explain HD006.",
    )


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
    hint = f" Close matches: {', '.join(f'`{c}`' for c in close)}." if close else ""
    diagnostic = Diagnostic.of(
        "HD101",
        f"No module is named exactly `{name}`.{hint}",
        "Use the exact dotted name from model.named_modules(); hookdoctor never matches substrings.",
        layer=name,
        method=GRADCAM,
    )
    return LayerVerdict(name=name, usable=False, diagnostics=[diagnostic], suggestions=close)
