"""The dead layers people usually pick (the last block, the final norm), said up front (HD201, info).

Every module after a ViT's last attention step fails with HD201; listing all of them would
bury the point. The outermost dead blocks of a block stack and dead norms outside them are
the layers tutorials name, so those are reported, in one finding (as info: the spec avoids
them).
"""

from __future__ import annotations

from hookdoctor.checks.judgements import Judgements
from hookdoctor.checks.layers import GRADCAM, NO_GRADIENT_FIX
from hookdoctor.codes import Diagnostic
from hookdoctor.model.tree import module_kind
from hookdoctor.probe.run import Probe
from hookdoctor.specs.gradcam import GradCAMSpec


def pitfalls(judgements: Judgements, probe: Probe, spec: GradCAMSpec | None) -> list[Diagnostic]:
    """HD201 (info) for the dead blocks and norms a user would hook by habit; none when there are none."""
    modules = judgements.modules
    dead = [name for name, j in modules.items() if j.cut_off is not None]
    instead = f"; the spec uses `{spec.layer_name}` instead" if spec is not None else ""
    live = spec.module_name if spec is not None else ""
    included: list[str] = []
    for name in sorted(dead, key=lambda n: (n.count("."), n)):
        if module_kind(probe.records[name].module) not in ("block", "norm"):
            continue
        # The inner model of a wrapper (`module.`, `_orig_mod.`) is not a record: it is the root.
        parent = probe.records.get(name.rsplit(".", 1)[0]) if "." in name else None
        in_a_stack = parent is not None and module_kind(parent.module) == "container"
        if live.startswith(name + ".") and not in_a_stack:
            continue  # the backbone as a whole: it holds the live layer too
        if any(name.startswith(block + ".") for block in included):
            continue
        included.append(name)
    if not included:
        return []
    included.sort(key=lambda n: modules[n].first_call.order)  # in the order they run
    # One finding for all of them: they fail for the same reason, and the report stays one screen.
    cut_off = modules[included[0]].cut_off
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
