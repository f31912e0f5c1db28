"""A spinner on stderr while a slow step runs (building a large model, the probe pass).

Shown only when stderr is a terminal, so pipes, CI logs and ``--json`` consumers see nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def progress(message: str, *, enabled: bool = True) -> Iterator[None]:
    """``enabled=False`` (``--json``) shows nothing, terminal or not."""
    from rich.console import Console

    console = Console(file=sys.stderr)
    if not enabled or not console.is_terminal:
        yield
        return
    with console.status(f"{message}…", spinner="dots"):
        yield
