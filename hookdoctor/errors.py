"""The exceptions hookdoctor raises: one base class, small documented subclasses.

Every message is one paragraph that names the problem and the fix; the command line
prints it as it is and exits with code 2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hookdoctor.report import Report


# Messages quote exceptions from user code; some are enormous (a dumped tensor, a long log).
MAX_QUOTED_CHARS = 2000


def shorten(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """``text`` cut to about ``limit`` characters: its head and tail, saying how much was left out."""
    if len(text) <= limit:
        return text
    keep = max(limit // 2, 1)
    cut = len(text) - 2 * keep
    return f"{text[:keep]} [... {cut:,} characters cut ...] {text[-keep:]}"


class HookdoctorError(Exception):
    """Base class of every error hookdoctor raises on purpose."""


class InputError(HookdoctorError, ValueError):
    """The arguments are wrong: no usable example input, an unknown method, a bad target."""


class ModelLoadError(HookdoctorError):
    """A MODEL string or file could not be turned into an ``nn.Module``."""


class ModelRunError(HookdoctorError):
    """The model raised while hookdoctor ran it once forward and backward."""


class InsufficientMemoryError(InputError):
    """A full-size pass would not fit in the memory available; the message gives the figure and the way out."""


class MissingDependencyError(HookdoctorError, ImportError):
    """An optional package is needed; the message holds the exact ``pip install`` line."""


class MethodUnsupportedError(HookdoctorError):
    """A method of an attribution library cannot work on this model; ``.code`` says why (``explain``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class UnknownCodeError(HookdoctorError, KeyError):
    """``explain`` was given a code that does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class HookCompatibilityError(HookdoctorError):
    """Raised by ``preflight`` when a requested method has no working spec; carries the report."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report
