"""``hookdoctor.inspect``: load -> probe -> checks -> specs, leaving the model as it was."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import networkx as nx
import torch
from torch import nn

from hookdoctor import arguments
from hookdoctor.attention import analyse_attention, find_attention_sites, observe_for_rollout
from hookdoctor.checks.layers import GRADCAM
from hookdoctor.checks.recommend import GradCAMAnalysis
from hookdoctor.errors import HookdoctorError, ModelRunError, shorten
from hookdoctor.model.environment import environment
from hookdoctor.model.guard import preserved
from hookdoctor.model.inputs import ModelInput, resolve_input
from hookdoctor.model.tree import build_tree
from hookdoctor.model.unwrap import unwrap
from hookdoctor.probe.run import Probe, run_probe
from hookdoctor.report import Diagnostic, LayerVerdict, Report, sort_diagnostics
from hookdoctor.specs.gradcam import GradCAMSpec

# Rollout refusals that mean the model has no image-wide token attention at all: under
# methods="auto" rollout does not apply to such a model, rather than failing on it.
NO_TOKEN_ATTENTION = ("HD506", "HD507", "HD508")


def inspect(
    model: nn.Module,
    example_input: Any = None,
    *,
    input_shape: Sequence[int] | None = None,
    target: int | None = None,
    methods: str | Iterable[str] = arguments.DEFAULT_METHODS,
    layer: str | Sequence[str] | None = None,
    output: str | int | None = None,
) -> Report:
    """Run ``model`` once with hooks and say which attribution methods would work, and how.

    See the Report, GradCAMSpec and AttentionSpec docs (and ../API.md). ``methods="auto"``
    (the default) judges Grad-CAM, plus rollout where the model computes image-wide token
    attention; elsewhere rollout is reported as not applicable (HD514, info) and ``report.ok``
    depends on Grad-CAM alone. Arguments are checked first (``hookdoctor.arguments``): a
    wrong one raises InputError saying what to pass. ``output`` names
    the score in a model that returns several (a ModelOutput field or dict key, or a tuple
    index); by default the ``logits`` field, else the first 2-D tensor, is explained. The
    model comes back untouched: hooks, training flags, requires_grad, .grad, attention
    settings and parameters are as they were, also when its forward raises.
    """
    chosen = arguments.parse_methods(methods)
    wanted = chosen.wanted
    target = arguments.parse_target(target)
    output = arguments.parse_output(output)
    requested = arguments.parse_layer(layer)
    inner, prefix, wrappers = unwrap(model)
    model_input = resolve_input(inner, example_input, arguments.parse_input_shape(input_shape))
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
    with preserved(model), _later_passes_blame_the_model(inner):
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
            if not chosen.named("rollout"):
                wanted, found = _rollout_not_applicable(wanted, found)
            diagnostics += found
        summaries = analysis.summaries()
        target_index = int(probe.score.target[0])  # the top class, or `target`
        all_verdicts = {name: analysis.verdict(name) for name in analysis.judgements}
        verdicts = {name: all_verdicts.get(name) or _unknown_layer(name, list(all_verdicts)) for name in requested}
        aliases = _aliases(build_tree(inner, prefix), all_verdicts)

    diagnostics += [d for verdict in verdicts.values() for d in verdict.diagnostics]

    def check_layer(name: str) -> LayerVerdict:
        name = arguments.layer_name(name)
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


def _rollout_not_applicable(
    wanted: tuple[str, ...], found: list[Diagnostic]
) -> tuple[tuple[str, ...], list[Diagnostic]]:
    """Under methods="auto": a model without token attention gets HD514 (info), and no rollout to judge."""
    refusal = next((d for d in found if d.code in NO_TOKEN_ATTENTION and d.severity == "error"), None)
    if refusal is None:
        return wanted, found
    note = Diagnostic.of(
        "HD514",
        refusal.message,
        "Nothing to do: Grad-CAM alone is judged. Ask for rollout by name (methods=('rollout',), "
        f"--method rollout) to see it refused as {refusal.code}.",
        layer=refusal.layer,
        method=arguments.ROLLOUT,
    )
    rest = [d for d in found if d is not refusal and d.method != arguments.ROLLOUT]
    return tuple(m for m in wanted if m != arguments.ROLLOUT), [note, *rest]


@contextmanager
def _later_passes_blame_the_model(model: nn.Module) -> Iterator[None]:
    """A forward that raises on a pass after the probe is the model's failure, not hookdoctor's.

    The probe reports a forward that raises on its first call; the attention, determinism
    and locality passes run the model again, and a model that works only once (state
    consumed in forward, a counter that trips) raises there. An exception raised inside
    one of the model's own modules is that model's; anything else is left as it is.
    """
    try:
        yield
    except HookdoctorError:
        raise
    except Exception as exc:
        if not _raised_inside(model, exc):
            raise
        raise ModelRunError(
            f"The model's forward raised {type(exc).__name__}: {shorten(str(exc), 500)} on a later pass, "
            "after a first forward and backward had worked. hookdoctor runs the model a few times on the "
            "same input (the probe, attention capture, a determinism check); a forward that works only "
            "once (it consumes or changes state, counts calls) cannot be explained reliably either, since "
            "every attribution method runs it again. Make repeated calls on the same input work."
        ) from exc


def _raised_inside(model: nn.Module, exc: BaseException) -> bool:
    """True when the exception came out of the model's own code.

    That is: a frame of the traceback runs a method of one of the model's modules, and no
    hookdoctor code runs below it (our attention interception is called from inside the
    model's forward; its failures are ours). ``Module.__call__``'s frames are left out too:
    hookdoctor's hooks run inside them.
    """
    modules = {id(m) for m in model.modules()}
    call_machinery = nn.Module._call_impl.__code__.co_filename
    ours = str(Path(__file__).resolve().parent)
    inside = False
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        filename = frame.f_code.co_filename
        owner = frame.f_locals.get("self")
        if owner is not None and id(owner) in modules and filename != call_machinery:
            inside = True
        elif inside and str(Path(filename).resolve()).startswith(ours):
            inside = False
        tb = tb.tb_next
    return inside


def _dedupe(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    return list(dict.fromkeys(diagnostics))


def _forward_without_grad(inner: nn.Module, model_input: ModelInput) -> Any:
    with torch.no_grad():
        return model_input.call(inner)


def _determinism(probe: Probe, again: Any) -> list[Diagnostic]:
    """HD006 when a second forward on the same input scored differently (randomness at inference)."""
    second = probe.score.selector(again).detach()
    first = probe.score.selected
    if not bool(torch.isfinite(first).all()):
        # NaN compares unequal to itself: without this, a broken model would read as a random one.
        raise ModelRunError(
            f"The model's scores contain NaN or inf on a finite input of shape {tuple(probe.image.shape)}, so "
            "no gradient and no map means anything. Check the weights (a checkpoint holding NaN), "
            "float16 overflow, or a division by zero in the forward, then rerun."
        )
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
