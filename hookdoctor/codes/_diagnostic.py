"""A finding: one code, where it was found, and its message and fix written from the code's template."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hookdoctor.codes._code import SEVERITY_ORDER
from hookdoctor.codes._registry import get


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
        *,
        layer: str | None = None,
        method: str | None = None,
        severity: str | None = None,
        variant: str = "default",
        **fields: Any,
    ) -> Diagnostic:
        """A finding of ``code``: its message and fix from the code's ``variant`` template and ``fields``.

        The severity defaults to the one registered for the code. There is no way to pass a
        message or fix of one's own: every finding reads as its code's templates say.
        """
        entry = get(code)
        message, fix = entry.render(variant, {"layer": layer, **fields})
        return cls(entry.code, severity or entry.severity, layer, message, fix, method)

    @property
    def title(self) -> str:
        return get(self.code).title

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
    return sorted(diagnostics, key=lambda d: (SEVERITY_ORDER[d.severity], d.code))
