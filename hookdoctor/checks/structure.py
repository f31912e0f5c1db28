"""What a structure-only inspection (the meta device: shapes and graph, no values) leaves unchecked."""

from __future__ import annotations

# Every check that reads values, with the codes it would raise; listed in the report as not run.
NOT_RUN_WITHOUT_VALUES: tuple[str, ...] = (
    "locality: whether a layer's cells line up with the input (HD306, HD307)",
    "the recommended layer's map: working, or negative evidence only (HD203, HD204)",
    "gradient values: a connected layer whose gradient is zero (HD202), a score that ignores the input (HD203)",
    "saturation of a final softmax or sigmoid (HD004)",
    "zero-initialised head (HD003)",
    "determinism of the eval-mode forward (HD006)",
    "which token rows the head reads, from gradient energy (read from the graph's token picks instead; HD504)",
)

FULL_RUN_ADDS = (
    "Inspecting without --structure-only (real weights, where the model fits) confirms the recommended layer's "
    "map and where its cells lie (from the autograd graph or a locality probe), and checks saturation, zero "
    "heads, negative evidence and determinism."
)
