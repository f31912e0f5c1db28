"""What a diagnostic code is: its identity, its texts, and the templates its findings are written from."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning", "info"]
SEVERITY_ORDER: dict[str, int] = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Template:
    """One way a finding of a code reads: ``str.format`` templates filled with the call site's fields."""

    message: str
    fix: str

    @property
    def fields(self) -> frozenset[str]:
        """The names the message and fix read (``{name}``, ``{name!r}``, ``{name:>4}``)."""
        names: set[str] = set()
        for text in (self.message, self.fix):
            for _, name, _, _ in string.Formatter().parse(text):
                if name is not None:
                    names.add(re.split(r"[.\[]", name, maxsplit=1)[0])
        return frozenset(names)


@dataclass(frozen=True)
class Code:
    """One diagnostic code.

    ``applies`` says how the fix reaches the user, as ruff's fix availability does:
    ``"spec"`` when the returned spec already carries it, ``"manual"`` when the user has
    to change something. ``templates`` holds the code's message and fix, written once
    here: a call site names the variant (``"default"`` unless the code reads differently
    in different situations) and passes the fields. ``layer`` is always a field (the
    finding's layer); the fields each variant reads are listed in the code's entry.
    """

    code: str
    name: str
    family: str
    severity: Severity
    title: str
    explanation: str
    applies: Literal["spec", "manual"] = "manual"
    templates: Mapping[str, Template] = field(default_factory=dict)

    def render(self, variant: str, fields: Mapping[str, Any]) -> tuple[str, str]:
        """The message and fix of ``variant`` filled with ``fields``."""
        template = self.templates.get(variant)
        if template is None:
            known = ", ".join(sorted(self.templates)) or "none"
            raise ValueError(f"{self.code} has no message template {variant!r} (templates: {known})")
        missing = sorted(name for name in template.fields if name not in fields)
        if missing:
            passed = ", ".join(sorted(fields)) or "none"
            raise ValueError(
                f"{self.code} template {variant!r} needs the field(s) {', '.join(missing)} (passed: {passed})"
            )
        return template.message.format(**fields), template.fix.format(**fields)

    def to_dict(self) -> dict[str, str]:
        return {
            "code": self.code,
            "name": self.name,
            "family": self.family,
            "severity": self.severity,
            "title": self.title,
            "applies": self.applies,
            "explanation": self.explanation,
        }
