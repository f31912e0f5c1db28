"""`python -m hookdoctor` runs the command line."""

from __future__ import annotations

import sys

from hookdoctor.cli import main

sys.exit(main())
