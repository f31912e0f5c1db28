"""Judge every module once from the probe, and each call of the modules that run several times.

``judge_all`` is the judging step: ``checks.layers.judge`` on every record, and on every
call ``NAME#k`` of a module that runs more than once (cheap: no locality test). The
``Judgements`` it returns look any layer name up without judging anything again. A
``Judgement`` holds the probe's call record (its tensors), so it never leaves ``checks/``:
the verdicts (``checks.verdicts``) are what the report keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from hookdoctor.checks.layers import Context, Judgement, call_name, call_out_of_range, judge, observed_grids, split_call
from hookdoctor.geometry.layout import prefix_token_hint
from hookdoctor.probe.run import Probe


@dataclass(frozen=True)
class Judgements:
    """Every module's judgement (``modules``, in the probe's order) and every call's (``calls``, ``NAME#k``)."""

    modules: dict[str, Judgement]
    calls: dict[str, Judgement]  # only for the modules that run more than once
    call_counts: dict[str, int]  # how many times each module ran

    def get(self, name: str) -> Judgement | None:
        """The judgement for a module name or one call of it (``NAME#k``); None for an unknown module."""
        if name in self.modules:
            return self.modules[name]
        split = split_call(name)
        if split is None or split[0] not in self.call_counts:
            return None
        if name in self.calls:
            return self.calls[name]
        module, index = split
        if index == 0 and self.call_counts[module] == 1:
            return self.modules[module]  # the only call: the module itself, no routing needed
        return call_out_of_range(module, self.call_counts[module], index)

    def of_call(self, module: str, index: int) -> Judgement:
        """Call ``index`` of a module that runs several times."""
        return self.calls[call_name(module, index)]

    def names(self) -> list[str]:
        """Every module, and every call of the modules that run several times."""
        return [*self.modules, *self.calls]

    def all(self) -> list[Judgement]:
        return [*self.modules.values(), *self.calls.values()]


def judging_context(probe: Probe, inner: nn.Module) -> Context:
    """What every judgement reads beyond its own record: the graph, the declared prefix, the conv grids."""
    return Context(
        probe=probe,
        grad_graph=probe.graph,
        prefix_hint=prefix_token_hint(inner),
        observed_grids=observed_grids(probe),
    )


def judge_all(context: Context) -> Judgements:
    records = context.probe.records
    return Judgements(
        modules={name: judge(record, context) for name, record in records.items()},
        calls={
            call_name(name, index): judge(record, context, index)
            for name, record in records.items()
            if len(record.calls) > 1
            for index in range(len(record.calls))
        },
        call_counts={name: len(record.calls) for name, record in records.items()},
    )
