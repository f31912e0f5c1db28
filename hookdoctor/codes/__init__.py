"""The registry of diagnostic codes: each code's title, fix and explanation, written once.

``hookdoctor explain CODE``, ``hookdoctor codes``, the JSON report and the docs all read
this registry. Codes never change meaning; a retired code stays registered.

Families (the hundreds digit):
  HD0xx  the model as a whole: its output, its head, its weights
  HD1xx  the hook site: where a hook is placed and what it sees
  HD2xx  gradient flow from the score to the layer
  HD3xx  layout: how a layer's output maps onto the image
  HD4xx  how a layer is named or chosen
  HD5xx  attention capture and rollout
  HD6xx  loading and wrapping the model
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hookdoctor.errors import InputError, UnknownCodeError

Severity = Literal["error", "warning", "info"]
SEVERITY_ORDER: dict[str, int] = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Code:
    """One diagnostic code.

    ``applies`` says how the fix reaches the user, as ruff's fix availability does:
    ``"spec"`` when the returned spec already carries it, ``"manual"`` when the user has
    to change something.
    """

    code: str
    name: str
    family: str
    severity: Severity
    title: str
    explanation: str
    applies: Literal["spec", "manual"] = "manual"

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


def _load() -> dict[str, Code]:
    from hookdoctor.codes import _attention, _gradcam, _loading

    registry: dict[str, Code] = {}
    for family in (_gradcam.CODES, _attention.CODES, _loading.CODES):
        for entry in family:
            if entry.code in registry:
                raise RuntimeError(f"diagnostic code {entry.code} is registered twice")
            registry[entry.code] = entry
    return dict(sorted(registry.items()))


REGISTRY: dict[str, Code] = _load()


def get(code: str) -> Code:
    """The registered code, case-insensitively; ``UnknownCodeError`` with suggestions otherwise."""
    if not isinstance(code, str) or not code.strip():
        raise InputError(
            f"{code!r} is not a diagnostic code: pass the code as a string, e.g. explain('HD201'); "
            "`hookdoctor codes` lists every code."
        )
    key = code.strip().upper()
    if key in REGISTRY:
        return REGISTRY[key]
    import difflib

    close = difflib.get_close_matches(key, list(REGISTRY), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownCodeError(
        f"There is no diagnostic code {code!r}.{hint} Run `hookdoctor codes` to list every code."
    )


def explain(code: str) -> str:
    """The long explanation of ``code``: what it means, why it breaks a method, what to do."""
    entry = get(code)
    return f"{entry.code} {entry.name} ({entry.severity}, {entry.family})\n{entry.title}\n\n{entry.explanation}\n"
