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

from hookdoctor.codes._code import SEVERITY_ORDER, Code, Severity, Template
from hookdoctor.codes._diagnostic import Diagnostic, sort_diagnostics
from hookdoctor.codes._registry import REGISTRY, explain, get

__all__ = [
    "REGISTRY",
    "SEVERITY_ORDER",
    "Code",
    "Diagnostic",
    "Severity",
    "Template",
    "explain",
    "get",
    "sort_diagnostics",
]
