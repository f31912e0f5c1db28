"""The result types of ``inspect``: Diagnostic, LayerVerdict and Report.

They know nothing of rich or of the command line; ``Report.__rich_console__`` imports the
renderer lazily so that ``import hookdoctor`` stays light.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hookdoctor import codes

if TYPE_CHECKING:
    from hookdoctor.attention import AttentionSpec
    from hookdoctor.specs.gradcam import GradCAMSpec

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Diagnostic:
    """One finding: a stable code, how bad it is, where, why, and what to do instead."""

    code: str
    severity: str
    layer: str | None
    message: str
    fix: str
    method: str | None = None

    @classmethod
    def of(
        cls,
        code: str,
        message: str,
        fix: str,
        *,
        layer: str | None = None,
        method: str | None = None,
        severity: str | None = None,
    ) -> Diagnostic:
        """A diagnostic whose severity defaults to the one registered for ``code``."""
        entry = codes.get(code)
        return cls(entry.code, severity or entry.severity, layer, message, fix, method)

    @property
    def title(self) -> str:
        return codes.get(self.code).title

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "layer": self.layer,
            "method": self.method,
            "message": self.message,
            "fix": self.fix,
        }


def sort_diagnostics(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Most severe first; within a severity, by code, then in the order found."""
    return sorted(diagnostics, key=lambda d: (codes.SEVERITY_ORDER[d.severity], d.code))


@dataclass(frozen=True)
class LayerVerdict:
    """Whether one named layer can be a Grad-CAM target, and why not."""

    name: str
    usable: bool
    diagnostics: list[Diagnostic]
    layout: str | None = None
    grid: tuple[int, ...] | None = None
    prefix_tokens: int | None = None
    suggestions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "usable": self.usable,
            "layout": self.layout,
            "grid": list(self.grid) if self.grid else None,
            "prefix_tokens": self.prefix_tokens,
            "suggestions": list(self.suggestions),
            "diagnostics": [d.to_dict() for d in self.diagnostics],
        }


@dataclass(frozen=True)
class LayerSummary:
    """What the probe saw of one module, for the report's tree and JSON."""

    name: str
    type: str
    kind: str
    calls: int
    output: str
    layout: str | None
    grid: tuple[int, ...] | None
    usable: bool | None
    codes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "kind": self.kind,
            "calls": self.calls,
            "output": self.output,
            "layout": self.layout,
            "grid": list(self.grid) if self.grid else None,
            "usable": self.usable,
            "codes": list(self.codes),
        }


@dataclass(frozen=True)
class Report:
    """What ``hookdoctor.inspect`` found. ``ok`` is True when every requested method has a spec."""

    methods: tuple[str, ...]
    diagnostics: list[Diagnostic]
    gradcam: GradCAMSpec | None
    rollout: AttentionSpec | None
    model_class: str
    input_shape: tuple[int, ...]
    target: int | None
    environment: dict[str, Any]
    layers: list[LayerSummary]
    layer_verdicts: dict[str, LayerVerdict]
    _judge: Callable[[str], LayerVerdict] = field(repr=False, compare=False)
    task: str = "classification"  # classification, segmentation, embedding or detection (what target indexes)

    @property
    def ok(self) -> bool:
        wanted = {"gradcam": self.gradcam, "rollout": self.rollout}
        if any(wanted[m] is None for m in self.methods):
            return False
        return all(v.usable for v in self.layer_verdicts.values())

    def check_layer(self, name: str) -> LayerVerdict:
        """The verdict for any module name (exact dotted name; close matches suggested on a miss)."""
        return self._judge(name)

    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "ok": self.ok,
            "methods": list(self.methods),
            "model": {
                "class": self.model_class,
                "input_shape": list(self.input_shape),
                "target": self.target,
                "task": self.task,
            },
            "environment": dict(self.environment),
            "diagnostics": [d.to_dict() for d in self.diagnostics],
            "gradcam": self.gradcam.to_dict() if self.gradcam is not None else None,
            "rollout": self.rollout.to_dict() if self.rollout is not None else None,
            "checked_layers": {n: v.to_dict() for n, v in self.layer_verdicts.items()},
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def __rich_console__(self, console: Any, options: Any) -> Any:
        """Compact on a terminal, in full elsewhere (a file, a pipe, Jupyter), as the CLI prints it."""
        from hookdoctor.render.terminal import render_report

        yield from render_report(self, console=console)
