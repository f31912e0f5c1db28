"""The per-layer verdicts: a judgement, the confirmation the search made of it (if any), and the notes.

``layer_verdicts`` gives every module and every call ``NAME#k`` of a module that runs
several times its ``LayerVerdict``, from the judgements and the confirmations the
recommendation returned; the locality test costs two backward passes a layout, so a
verdict reads it where it ran (the layers the recommendation tried, the layers named in
``layer=``) and says where it did not (``cells_confirmed`` None). ``call_verdict`` answers
``NAME#k`` from those verdicts after the probe is gone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from hookdoctor.checks.confirm import Confirmation
from hookdoctor.checks.judgements import Judgements
from hookdoctor.checks.layers import Judgement, call_name, call_out_of_range, layout_notes, split_call
from hookdoctor.checks.notes import call_note, coarse_notes, grad_note, negative_evidence_note
from hookdoctor.codes import Diagnostic
from hookdoctor.model.tree import module_kind
from hookdoctor.probe.run import Probe
from hookdoctor.report import LayerVerdict


def layer_verdicts(
    judgements: Judgements,
    confirmations: Mapping[str, Confirmation],
    probe: Probe,
    attention_sites: Sequence[str],
) -> dict[str, LayerVerdict]:
    """The verdict of every module (in the probe's order), then of every call of the modules run several times."""
    return {
        name: verdict(j, confirmations.get(name), probe, attention_sites)
        for name, j in [*judgements.modules.items(), *judgements.calls.items()]
    }


def verdict(
    j: Judgement, confirmation: Confirmation | None, probe: Probe, attention_sites: Sequence[str]
) -> LayerVerdict:
    """Everything known about one layer (or one call): its failures, and what a spec would handle."""
    layout = (confirmation.layout if confirmation else None) or j.layout
    confirmed = confirmation.diagnostics if confirmation else ()
    usable = j.usable and not any(d.severity == "error" for d in confirmed)
    notes: list[Diagnostic] = []
    if usable and layout is not None:
        grad = grad_note(j, probe)
        notes = layout_notes(j, layout) + ([grad] if grad else []) + call_note(j)
    if confirmation is not None and confirmation.negative_evidence:
        notes.append(negative_evidence_note(j.name, probe.score.target))
    notes += coarse_notes(j.name, confirmation)
    record = probe.records[j.module_name]
    call = j.call or (record.calls[0] if record.calls else None)
    return LayerVerdict(
        name=j.name,
        usable=usable,
        diagnostics=[*j.diagnostics, *confirmed, *notes],
        layout=layout.kind if layout else None,
        grid=layout.grid if layout else None,
        prefix_tokens=layout.prefix_tokens if layout else None,
        cells_confirmed=confirmation.cells_confirmed if confirmation else None,
        type=type(record.module).__name__,
        kind="attention" if j.module_name in attention_sites else module_kind(record.module),
        calls=len(record.calls),
        output=call.structure if call is not None else "-",
        holds_only=j.holds_only,
    )


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
    return LayerVerdict(name=name, usable=False, diagnostics=list(j.diagnostics), calls=calls[module])
