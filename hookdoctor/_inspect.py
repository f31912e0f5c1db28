"""``hookdoctor.inspect``: load -> probe -> checks -> specs, leaving the model as it was."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import networkx as nx
import torch
from torch import nn

from hookdoctor.attention import analyse_attention, find_attention_sites, observe_for_rollout
from hookdoctor.checks.layers import GRADCAM
from hookdoctor.checks.recommend import GradCAMAnalysis
from hookdoctor.errors import InputError
from hookdoctor.model.environment import environment
from hookdoctor.model.guard import preserved
from hookdoctor.model.inputs import ModelInput, resolve_input
from hookdoctor.model.tree import build_tree
from hookdoctor.model.unwrap import unwrap
from hookdoctor.probe.run import Probe, run_probe
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
) -> Report:
    """Run ``model`` once with hooks and say which attribution methods would work, and how.

    See the Report, GradCAMSpec and AttentionSpec docs (and ../API.md). ``output`` names
    the score in a model that returns several (a ModelOutput field or dict key, or a tuple
    index); by default the ``logits`` field, else the first 2-D tensor, is explained. The
    model comes back untouched: hooks, training flags, requires_grad, .grad, attention
    settings and parameters are as they were, also when its forward raises.
    """
    wanted = _methods(methods)
    inner, prefix, wrappers = unwrap(model)
    model_input = _normal_tensors(
        resolve_input(inner, example_input, tuple(input_shape) if input_shape is not None else None)
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
    with preserved(model), _outside_inference_mode():
        was_training = inner.training
        inner.eval()
        probe = run_probe(inner, model_input, target, prefix, output)  # first: it reports a raising forward
        # Rollout's intercepted forward also says where the attention is; without rollout a
        # cheaper no-grad pass does.
        seen = observe_for_rollout(inner, model_input) if "rollout" in wanted else None
        found_sites = seen.sites if seen is not None else find_attention_sites(inner, model_input)
        sites = sorted({prefix + site.module for site in found_sites if site.module})
        # A second forward on the same input: rollout's, when there is one, else a plain one.
        again = seen.output if seen is not None else _forward_without_grad(inner, model_input)
        diagnostics += _determinism(probe, again)
        analysis = GradCAMAnalysis(model, inner, model_input, probe, sites)
        if "gradcam" in wanted or requested:  # Grad-CAM's findings only where Grad-CAM was asked about
            gradcam_spec, found = analysis.recommend(requested)
            diagnostics += analysis.model_diagnostics() + found + analysis.pitfalls(gradcam_spec)
        if seen is not None:
            rollout_spec, found = analyse_attention(
                inner,
                model_input,
                name_prefix=prefix,
                prefix_hint=analysis.context.prefix_hint,
                observed_grids=analysis.context.observed_grids,
                was_training=was_training,
                score=probe.score.selector,
                seen=seen,
            )
            diagnostics += found
        summaries = analysis.summaries()
        target_index = int(probe.score.target[0])  # the top class, or `target`
        all_verdicts = {name: analysis.verdict(name) for name in analysis.judgements}
        verdicts = {name: all_verdicts.get(name) or _unknown_layer(name, list(all_verdicts)) for name in requested}
        aliases = _aliases(build_tree(inner, prefix), all_verdicts)

    diagnostics += [d for verdict in verdicts.values() for d in verdict.diagnostics]

    def check_layer(name: str) -> LayerVerdict:
        if name in all_verdicts:
            return all_verdicts[name]
        if name in aliases:  # the same module object under a second name
            return dataclasses.replace(all_verdicts[aliases[name]], name=name)
        return _unknown_layer(name, list(all_verdicts))

    return Report(
        methods=wanted,
        diagnostics=sort_diagnostics(_dedupe(diagnostics)),
        gradcam=gradcam_spec,
        rollout=rollout_spec,
        model_class=type(model).__name__,
        input_shape=tuple(int(s) for s in model_input.image.shape),
        target=target_index,
        environment=environment(inner),
        layers=summaries,
        layer_verdicts=verdicts,
        _judge=check_layer,
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
        )


def _dedupe(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    return list(dict.fromkeys(diagnostics))


def _forward_without_grad(inner: nn.Module, model_input: ModelInput) -> Any:
    with torch.no_grad():
        return model_input.call(inner)


def _determinism(probe: Probe, again: Any) -> list[Diagnostic]:
    """HD006 when a second forward on the same input scored differently (randomness at inference)."""
    second = probe.score.selector(again).detach()
    first = probe.score.selected
    if second.shape == first.shape and torch.allclose(second.float(), first.float(), rtol=1e-4, atol=1e-5):
        return []
    change = float((second.float() - first.float()).abs().max())
    return [
        Diagnostic.of(
            "HD006",
            f"Two forward passes on the same input gave scores that differ by up to {change:.3g} in eval mode: "
            "something random runs at inference, so every map changes from call to call.",
            "Make the forward deterministic (fixed masking noise, dropout that respects eval()) before "
            "explaining it; hookdoctor explain HD006.",
        )
    ]


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
