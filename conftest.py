"""Put the repository root on sys.path so tests import `fixtures` as a package."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One intra-op thread per xdist worker: `-n 2` on 2 cores would otherwise run four
    # threads on two cores and spend its time switching between them.
    import torch

    torch.set_num_threads(1)
