"""Codes for loading and wrapping the model (HD6xx)."""

from __future__ import annotations

from hookdoctor.codes._code import Code, Template

_LOAD = "loading"

CODES = (
    Code(
        "HD601", "wrapper-unwrapped", _LOAD, "info",
        "The model is wrapped (DataParallel, DistributedDataParallel or torch.compile); "
        "its inner module was inspected.",
        """Wrappers prefix every module name (`module.`, `_orig_mod.`) and `torch.compile` ignores
hooks added after the first compiled call. hookdoctor inspects the wrapped module and
reports layer names as `named_modules()` of the model you passed spells them, prefix
included, so the spec's `layer` is the very module object your model holds.""",
        applies="spec",
        # Fields: wrappers (" and "-joined wrapper names), prefix (what they add to every name).
        templates={
            "default": Template(
                "The model is wrapped by {wrappers}; its inner module was inspected and layer names carry the prefix "
                "`{prefix}`.",
                "Nothing to do: the spec's layer is the module your model holds.",
            ),
        },
    ),
)
