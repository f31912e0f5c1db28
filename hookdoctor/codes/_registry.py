"""The registry: every code of every family, looked up by name."""

from __future__ import annotations

import difflib

from hookdoctor.codes._attention import CODES as ATTENTION_CODES
from hookdoctor.codes._code import Code
from hookdoctor.codes._gradcam import CODES as GRADCAM_CODES
from hookdoctor.codes._loading import CODES as LOADING_CODES
from hookdoctor.errors import InputError, UnknownCodeError


def _load() -> dict[str, Code]:
    registry: dict[str, Code] = {}
    for family in (GRADCAM_CODES, ATTENTION_CODES, LOADING_CODES):
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
    close = difflib.get_close_matches(key, list(REGISTRY), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownCodeError(
        f"There is no diagnostic code {code!r}.{hint} Run `hookdoctor codes` to list every code."
    )


def explain(code: str) -> str:
    """The long explanation of ``code``: what it means, why it breaks a method, what to do."""
    entry = get(code)
    return f"{entry.code} {entry.name} ({entry.severity}, {entry.family})\n{entry.title}\n\n{entry.explanation}\n"
