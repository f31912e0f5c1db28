"""The candidate search: which layer to recommend for Grad-CAM, from the judgements of one probe.

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

``recommend`` returns a ``Recommendation``: the layer chosen (or none, with HD203), why,
and every ``Confirmation`` the search made, which the verdicts read; nothing is kept
between calls. ``checks.build`` makes the spec of the layer chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hookdoctor.checks.confirm import Confirmation, Confirmer
from hookdoctor.checks.judgements import Judgements
from hookdoctor.checks.layers import GRADCAM, Judgement
from hookdoctor.checks.notes import negative_evidence_note
from hookdoctor.codes import Diagnostic
from hookdoctor.geometry.layout import Layout
from hookdoctor.model.tree import module_kind
from hookdoctor.probe.run import Probe

STRUCTURE_ONLY_REASON = (
    "chosen on structure alone (structure-only, meta device): the locality probe and the working-map check "
    "need values and did not run"
)
# The HD203 finding names this many of the layers tried (and counts the rest).
_LISTED_TRIES = 8


@dataclass(frozen=True)
class Recommendation:
    """What the search found: the layer to build a spec for (or None), and everything it confirmed.

    ``confirmations`` holds every layer the search confirmed, by name, in the order tried;
    ``diagnostics`` the search's own findings: HD204 for the layers met whose map holds
    only negative evidence, and HD203 when no layer works.
    """

    choice: Judgement | None = None
    confirmation: Confirmation | None = None  # the choice's, whose layout the spec uses
    reasons: tuple[str, ...] = ()
    why: str = ""  # for one call of a shared module: why that call
    confirmations: dict[str, Confirmation] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def layout(self) -> Layout | None:
        return self.confirmation.layout if self.confirmation is not None else None


def recommend(
    judgements: Judgements,
    confirmer: Confirmer,
    probe: Probe,
    attention_sites: Sequence[str],
    requested: Sequence[str],
) -> Recommendation:
    """The first named layer that works, else the latest candidate that works, else HD203."""
    confirmations: dict[str, Confirmation] = {}

    def confirm(j: Judgement) -> Confirmation:
        if j.name not in confirmations:
            confirmations[j.name] = confirmer.confirm(j)
        return confirmations[j.name]

    for name in requested:
        j = judgements.get(name)
        if j is not None and j.usable and j.layout is not None:
            confirmation = confirm(j)
            if confirmation.layout is not None:
                reasons: tuple[str, ...] = (f"`{name}` was named and works",)
                if probe.structure_only:
                    reasons = (f"`{name}` was named and passes every structural check", STRUCTURE_ONLY_REASON)
                if j.call_index is not None:
                    reasons += (_routing(j),)
                return Recommendation(j, confirmation, reasons, "it is the call you named", confirmations)
    # A named layer whose cells were found not to line up is no candidate either.
    candidates = [j for j in _candidates(judgements, probe, attention_sites) if _still_usable(j, confirmations)]
    tried: dict[int, Judgement] = {}  # every candidate tensor, latest first: no cap on the search
    for j in candidates:
        key = id(j.first_call.output_tensor)
        if key in tried:
            continue
        group = [c for c in candidates if id(c.first_call.output_tensor) == key]
        choice = _representative(group, probe)
        tried[key] = choice
        confirmation = confirm(choice)
        if confirmation.layout is not None:
            first = "the last layer (in execution order) that runs once and returns a plain tensor"
            why = _why_call(choice, judgements, confirmations) if choice.call_index is not None else ""
            if why:
                first = f"{_routing(choice)}: {why}"
            reasons = (first, *_layout_reasons(confirmation, probe))
            found = _negative_evidence_notes(confirmations, probe, chosen=choice.name)
            return Recommendation(choice, confirmation, reasons, why, confirmations, found)
    found = _negative_evidence_notes(confirmations, probe)
    found.append(_nothing_works([(j, confirm(j)) for j in tried.values()]))
    return Recommendation(confirmations=confirmations, diagnostics=found)


def _errors(j: Judgement, confirmation: Confirmation | None) -> list[Diagnostic]:
    """The errors found in judging ``j`` and, where it was confirmed, in confirming it."""
    found = [*j.diagnostics, *(confirmation.diagnostics if confirmation is not None else ())]
    return [d for d in found if d.severity == "error"]


def _still_usable(j: Judgement, confirmations: dict[str, Confirmation]) -> bool:
    confirmation = confirmations.get(j.name)
    return confirmation is None or confirmation.usable


def _is_attention_internal(name: str, attention_sites: Sequence[str]) -> bool:
    return any(name == site or name.startswith(site + ".") for site in attention_sites)


def _candidates(judgements: Judgements, probe: Probe, attention_sites: Sequence[str]) -> list[Judgement]:
    found = []
    for j in judgements.all():
        if not j.usable or j.layout is None or j.call is None:
            continue
        kind = module_kind(probe.records[j.module_name].module)
        if kind in ("pooling", "dropout") or _is_attention_internal(j.module_name, attention_sites):
            continue
        found.append(j)
    return sorted(found, key=lambda j: j.first_call.order, reverse=True)


def _representative(group: list[Judgement], probe: Probe) -> Judgement:
    """Of the modules returning the same tensor, the deepest one with children (a block), else the creator.

    Modules that run once come first: naming one of them needs no per-call routing.
    """
    once = [j for j in group if j.call_index is None]
    group = once or group
    blocks = [j for j in group if next(probe.records[j.module_name].module.children(), None) is not None]
    if blocks:
        return max(blocks, key=lambda j: (j.name.count("."), -j.first_call.order))
    return min(group, key=lambda j: j.first_call.order)


def _nothing_works(tried: list[tuple[Judgement, Confirmation]]) -> Diagnostic:
    """HD203, naming the layers tried and why each failed (the first few, and how many more)."""
    if not tried:
        return Diagnostic.of("HD203", method=GRADCAM, variant="nothing_works")
    reasons = []
    for j, confirmation in tried[:_LISTED_TRIES]:
        codes = [d.code for d in _errors(j, confirmation)]
        reasons.append(f"`{j.name}` ({confirmation.failure}{', ' + codes[0] if codes else ''})")
    more = f", and {len(tried) - _LISTED_TRIES} more" if len(tried) > _LISTED_TRIES else ""
    return Diagnostic.of(
        "HD203", method=GRADCAM, variant="nothing_works_tried", count=len(tried), tried="; ".join(reasons) + more
    )


def _layout_reasons(confirmation: Confirmation, probe: Probe) -> tuple[str, ...]:
    layout = confirmation.layout
    assert layout is not None  # only a confirmed layer is recommended
    if probe.structure_only:
        return (
            f"laid out as {layout.describe()} over the input, read from its shape alone",
            "the score's autograd path reaches its image cells and nothing rewrites it in place",
            STRUCTURE_ONLY_REASON,
        )
    if confirmation.by_graph:
        evidence = "each cell's input position read from the autograd graph"
    else:
        evidence = "confirmed by a locality probe"
    return (
        f"laid out as {layout.describe()} over the input, {evidence}",
        "receives gradient from the score at every image cell and is not rewritten in place",
    )


def _routing(j: Judgement) -> str:
    return (
        f"`{j.module_name}` runs {j.calls} times per forward pass; the spec routes call {j.call_index} "
        "alone to the library"
    )


def _why_call(j: Judgement, judgements: Judgements, confirmations: dict[str, Confirmation]) -> str:
    """Why the recommended call of a shared module: which call it is, and what the other calls lack.

    A later call was tried first (latest first): its confirmation's findings (HD306) count too.
    """
    index = j.call_index or 0
    others = [judgements.of_call(j.module_name, c) for c in range(j.calls) if c != index]
    elsewhere = [str(o.call_index) for o in others if o.other_input]
    failing = [o for o in others if not o.other_input and (o.call_index or 0) > index]
    why = []
    if elsewhere:
        listed = ", ".join(elsewhere)
        why.append(f"it is the call that sees the explained input (call {listed} processes another input)")
    if failing:
        codes = sorted({d.code for o in failing for d in _errors(o, confirmations.get(o.name))})
        listed = ", ".join(str(o.call_index) for o in failing)
        why.append(f"the later call {listed} gives no working map ({', '.join(codes) or 'an empty map'})")
    if not why:
        why.append("it is the last call (in execution order) that gives a working map")
    return "; ".join(why)


def _negative_evidence_notes(
    confirmations: dict[str, Confirmation], probe: Probe, chosen: str | None = None
) -> list[Diagnostic]:
    """HD204 for every layer confirmed so far whose map holds only negative evidence for the class."""
    target = probe.score.target
    return [negative_evidence_note(name, target, chosen) for name, c in confirmations.items() if c.negative_evidence]
