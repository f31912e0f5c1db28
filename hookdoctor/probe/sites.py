"""Where a model computes attention, found by watching one forward (never by class names).

An attention site is one softmax-attention computation: which module ran it, through
which implementation, with how many heads, over how many query and key tokens, and
whether it mixes image tokens, tokens inside local windows, or feature channels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from hookdoctor.model.guard import preserved
from hookdoctor.model.inputs import ModelInput
from hookdoctor.probe.intercept import AttentionEvent, intercepting

Mixes = Literal["tokens", "windows", "channels"]


@dataclass(frozen=True)
class AttentionSite:
    """One attention computation seen in a forward pass.

    ``module`` is the dotted name (as in ``model.named_modules()``) of the innermost module
    that was running when the op ran (an ``nn.Softmax`` child counts as its parent).
    ``kind`` is ``"sdpa"`` (fused: probabilities never materialised), ``"softmax"`` (an
    eager softmax over a score matrix) or ``"mha"`` (``nn.MultiheadAttention``).
    ``batch`` is the leading dim the op saw (B·windows for window attention). ``order`` is
    the position among all sites, ``call_index`` which call of ``module`` this was.
    ``weights_requested`` is False when the caller asked ``nn.MultiheadAttention`` for no
    weights (torchvision's ``need_weights=False``).
    """

    module: str
    kind: str
    heads: int
    query_tokens: int
    key_tokens: int
    batch: int
    mixes: Mixes
    call_index: int
    order: int
    dropout_p: float = 0.0
    weights_requested: bool = True

    @property
    def is_self_attention(self) -> bool:
        return self.query_tokens == self.key_tokens

    @property
    def reduces_keys(self) -> bool:
        """Keys pooled from the queries' tokens (spatial-reduction attention): fewer keys than queries."""
        return self.mixes == "tokens" and 1 < self.key_tokens < self.query_tokens

    @property
    def materialised(self) -> bool:
        """Whether the model itself produces the probabilities (a hook could read them)."""
        return self.kind == "softmax" or (self.kind == "mha" and self.weights_requested)

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "kind": self.kind,
            "heads": self.heads,
            "query_tokens": self.query_tokens,
            "key_tokens": self.key_tokens,
            "batch": self.batch,
            "mixes": self.mixes,
            "call_index": self.call_index,
            "order": self.order,
        }


def _sequence_length(shape: tuple[int, ...] | None, batch: int) -> tuple[int, int] | None:
    """(tokens, channels) of a module input ``[b, N, C]``, ``[N, b, C]`` or ``[b, H, W, C]``."""
    if shape is None:
        return None
    if len(shape) == 3:
        if shape[0] == batch or shape[1] != batch:
            return shape[1], shape[2]
        return shape[0], shape[2]
    if len(shape) == 4:
        return shape[1] * shape[2], shape[3]
    return None


def classify(event: AttentionEvent, image_batch: int) -> Mixes | None:
    """What an event mixes, or None when a softmax is not attention at all."""
    op_batch, heads, tq, tk = (int(s) for s in event.probs.shape)
    sequence = _sequence_length(event.module_input, op_batch)
    if sequence is not None and tq == tk:
        tokens, channels = sequence
        # Cross-covariance / channel attention: a [d, d] map with d = channels per head.
        if tk != tokens and tk * heads == channels or (tk != tokens and tk == channels):
            return "channels"
    if event.kind == "softmax" and tq != tk and (sequence is None or tk != sequence[0]):
        # Spatial-reduction attention (PVT, Segformer, CvT): queries are the module's tokens,
        # keys and values a pooled version of them - fewer keys than queries, still attention.
        if sequence is not None and tq == sequence[0] and 1 < tk < tq:
            return "tokens"
        return None  # a softmax over something other than the module's tokens (e.g. class scores)
    if op_batch > image_batch and op_batch % max(image_batch, 1) == 0:
        return "windows"
    if sequence is not None and tq == tk and tk < sequence[0]:
        return "windows"
    return "tokens"


class SiteNamer:
    """Turns the attention events of one forward into ``AttentionSite``s, counting calls per module."""

    def __init__(self, image_batch: int) -> None:
        self.image_batch = image_batch
        self.calls: Counter[str] = Counter()
        self.count = 0

    def site(self, event: AttentionEvent) -> AttentionSite | None:
        """The site of ``event``, or None when its softmax is not attention at all."""
        mixes = classify(event, self.image_batch)
        if mixes is None:
            return None
        op_batch, heads, tq, tk = (int(s) for s in event.probs.shape)
        site = AttentionSite(
            event.module, event.kind, heads, tq, tk, op_batch, mixes, self.calls[event.module], self.count,
            event.dropout_p, event.weights_requested,
        )
        self.calls[event.module] += 1
        self.count += 1
        return site


def find_attention_sites(model: nn.Module, model_input: ModelInput) -> list[AttentionSite]:
    """Every attention computation of one eval-mode forward of ``model``, in call order.

    Found structurally: ``scaled_dot_product_attention`` calls, softmaxes over the last dim
    of a score matrix, and ``multi_head_attention_forward`` calls, each attributed to the
    module running it. The model is left as it was (hooks, mode, settings).
    """
    namer = SiteNamer(model_input.batch)
    sites: list[AttentionSite] = []

    def on_event(event: AttentionEvent) -> None:
        site = namer.site(event)
        if site is not None:
            sites.append(site)

    with preserved(model):
        model.eval()
        with torch.no_grad(), intercepting(model, on_event, on_path=False):
            model_input.call(model)
    return sites


def attention_modules(sites: Sequence[AttentionSite]) -> list[str]:
    """The distinct modules owning ``sites``, in first-call order."""
    return list(dict.fromkeys(site.module for site in sites))
