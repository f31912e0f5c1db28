"""Attention capture and rollout: find the attention, capture real probabilities, roll them out.

    from hookdoctor.attention import AttentionSpec, analyse_attention, find_attention_sites

``find_attention_sites`` says where a model computes attention (structurally, one forward);
``analyse_attention`` judges it for rollout and builds an ``AttentionSpec``;
``capture_attention`` is the context manager behind ``AttentionSpec.capturing``.
"""

from __future__ import annotations

from hookdoctor.checks.attention import analyse_attention
from hookdoctor.probe.intercept import sdpa_probabilities
from hookdoctor.probe.sites import AttentionSite, attention_modules, find_attention_sites
from hookdoctor.specs.attention import AttentionRecord, AttentionSpec, capture_attention
from hookdoctor.specs.rollout import rollout_map, rollout_matrix

__all__ = [
    "AttentionRecord",
    "AttentionSite",
    "AttentionSpec",
    "analyse_attention",
    "attention_modules",
    "capture_attention",
    "find_attention_sites",
    "rollout_map",
    "rollout_matrix",
    "sdpa_probabilities",
]
