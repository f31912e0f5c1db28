"""``hookdoctor.preflight``: the pipeline's check before an attribution job runs.

report = hookdoctor.preflight(model, x, methods=("gradcam",))   # raises when it would fail
cam = GradCAM(**report.gradcam.pytorch_grad_cam_kwargs())
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from hookdoctor.arguments import DEFAULT_METHODS
from hookdoctor.errors import HookCompatibilityError
from hookdoctor.report import Diagnostic, Report

_TITLES = {"gradcam": "Grad-CAM", "rollout": "attention rollout"}


def preflight(
    model: nn.Module,
    example_input: Any = None,
    *,
    methods: str | Iterable[str] = DEFAULT_METHODS,
    strict: bool = False,
    **inspect_kwargs: Any,
) -> Report:
    """Inspect ``model``; return the report when every method works, else raise HookCompatibilityError.

    With ``strict=True`` warnings fail too, as ``hookdoctor inspect --strict`` does. The
    exception carries the report (``exc.report``) for logging or ``report.to_dict()``.
    Loading and argument problems raise InputError / ModelRunError unchanged.
    """
    from hookdoctor._inspect import inspect

    report = inspect(model, example_input, methods=methods, **inspect_kwargs)
    problems = failures(report, strict=strict)
    if problems:
        raise HookCompatibilityError(_message(report, problems), report)
    return report


def failures(report: Report, *, strict: bool = False) -> list[str]:
    """One line per reason the report fails: a method without a spec, an unusable layer, a warning."""
    lines = []
    for method in report.methods:
        spec = report.gradcam if method == "gradcam" else report.rollout
        if spec is None:
            why = _first_error([d for d in report.diagnostics if d.method == method] or report.diagnostics)
            lines.append(f"{_TITLES.get(method, method)} has no working spec{_because(why)}")
    for name, verdict in report.layer_verdicts.items():
        if not verdict.usable:
            lines.append(f"layer {name!r} is not usable{_because(_first_error(verdict.diagnostics))}")
    if strict:
        lines.extend(f"warning {d.code}{_at(d)}: {d.message}" for d in report.warnings())
    return lines


def _first_error(diagnostics: list[Diagnostic]) -> Diagnostic | None:
    return next((d for d in diagnostics if d.severity == "error"), diagnostics[0] if diagnostics else None)


def _at(d: Diagnostic) -> str:
    return f" at {d.layer}" if d.layer else ""


def _because(d: Diagnostic | None) -> str:
    return f" ({d.code}{_at(d)}: {d.message} Fix: {d.fix})" if d else ""


def _message(report: Report, problems: list[str]) -> str:
    return (
        f"hookdoctor preflight failed for {report.model_class}: "
        + "; ".join(problems)
        + ". Run `hookdoctor explain CODE` for details; exc.report holds the full report."
    )
