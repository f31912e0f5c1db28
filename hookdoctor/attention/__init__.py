"""Attention capture and rollout: find the attention, capture real probabilities, roll them out.

    from hookdoctor.attention import find_attention_sites, analyse_attention, AttentionSpec
"""

from __future__ import annotations

from hookdoctor.attention._sites import AttentionSite, find_attention_sites

__all__ = ["AttentionSite", "find_attention_sites"]
