"""Attention rollout (Abnar & Zuidema, 2020) over captured probabilities: pure tensor math.

Each layer's heads are fused, the residual connection is modelled by adding the
identity, rows are renormalised, and the layers are multiplied from input to output.
The map is the row of the token the head reads (CLS, the mean of patch rows for
average pooling, or the pooling attention for attention-pool heads), patch part only.

Gradient-weighted rollout (Chefer et al., 2021, in the simplified form of their
follow-up "Generic Attention-model Explainability") weighs each layer's attention by its
gradient instead: ``Ā = mean_heads((∇A ⊙ A)⁺)``, ``R ← R + Ā R`` from ``R = I``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hookdoctor.errors import InputError

HEAD_FUSIONS = ("mean", "max", "min")


def check_rollout_arguments(head_fusion: str, discard_ratio: float) -> None:
    if head_fusion not in HEAD_FUSIONS:
        raise InputError(
            f"head_fusion must be one of {', '.join(repr(h) for h in HEAD_FUSIONS)}, not {head_fusion!r}: "
            "it says how the heads of each layer are combined before rolling out."
        )
    if not 0.0 <= float(discard_ratio) < 1.0:
        raise InputError(
            f"discard_ratio must be in [0, 1), not {discard_ratio!r}: it is the fraction of the weakest "
            "attention entries dropped in each layer (0.0 keeps all, 0.9 keeps the strongest tenth)."
        )


def fuse_heads(attention: torch.Tensor, head_fusion: str) -> torch.Tensor:
    """``[B, heads, Tq, Tk]`` -> ``[B, Tq, Tk]``."""
    if head_fusion == "mean":
        return attention.mean(dim=1)
    if head_fusion == "max":
        return attention.amax(dim=1)
    return attention.amin(dim=1)


def _discard(fused: torch.Tensor, discard_ratio: float) -> torch.Tensor:
    """Zero the weakest ``discard_ratio`` of each sample's off-diagonal entries."""
    if discard_ratio <= 0.0:
        return fused
    batch, tokens, _ = fused.shape
    eye = torch.eye(tokens, dtype=torch.bool, device=fused.device)
    flat = fused.masked_fill(eye, float("inf")).reshape(batch, -1)
    count = int(flat.shape[-1] * discard_ratio)
    if count == 0:
        return fused
    weakest = flat.topk(count, dim=-1, largest=False).indices
    keep = torch.ones_like(flat, dtype=torch.bool).scatter_(-1, weakest, False)
    return fused * keep.reshape(fused.shape)


def rollout_matrix(
    attentions: Sequence[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0
) -> torch.Tensor:
    """``[B, T, T]``: how much each output token draws on each input token through all layers."""
    result: torch.Tensor | None = None
    for attention in attentions:
        fused = _discard(fuse_heads(attention.detach().float(), head_fusion), discard_ratio)
        eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
        step = fused + eye
        step = step / step.sum(dim=-1, keepdim=True)
        result = step if result is None else step @ result
    if result is None:
        raise InputError("Rollout needs at least one attention tensor; none was captured.")
    return result


def gradient_rollout_matrix(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[B, T, T]``: Chefer's relevance ``R``, input to output, rows not renormalised."""
    result: torch.Tensor | None = None
    for attention, gradient in zip(attentions, gradients, strict=True):
        weighted = (gradient.detach().float() * attention.detach().float()).clamp(min=0).mean(dim=1)
        if result is None:
            result = torch.eye(weighted.shape[-1], dtype=weighted.dtype, device=weighted.device).expand_as(weighted)
        result = result + weighted @ result
    if result is None:
        raise InputError("Gradient-weighted rollout needs at least one attention tensor; none was captured.")
    return result


def read_map(
    matrix: torch.Tensor,
    *,
    prefix_tokens: int,
    grid: tuple[int, int],
    query: str,
    query_tokens: Sequence[int] = (0,),
    pool_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The row of a ``[B, T, T]`` rollout matrix the head reads, patch part, as ``[B, H, W]``."""
    if query == "pool" and pool_weights is not None:
        row = (pool_weights.unsqueeze(1) @ matrix).squeeze(1)
    elif query == "mean":
        row = matrix[:, prefix_tokens:, :].mean(dim=1)
    else:
        row = matrix[:, list(query_tokens), :].mean(dim=1)
    height, width = grid
    patches = row[:, prefix_tokens:]
    if patches.shape[-1] != height * width:
        raise InputError(
            f"The captured attention has {row.shape[-1]} tokens, which is not {prefix_tokens} prefix tokens "
            f"plus a {height}x{width} grid; pass an input of the size the spec was made for, or inspect "
            "the model again with this input."
        )
    return patches.reshape(patches.shape[0], height, width)


def pool_row_weights(pool: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """``[B, T]``: an attention-pooling head's weights over the tokens, its queries averaged."""
    weights = fuse_heads(pool.detach().float(), head_fusion).mean(dim=1)
    return weights / weights.sum(dim=-1, keepdim=True)


def rollout_map(
    attentions: Sequence[torch.Tensor],
    *,
    prefix_tokens: int,
    grid: tuple[int, int],
    query: str,
    query_tokens: Sequence[int] = (0,),
    pool: torch.Tensor | None = None,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
) -> torch.Tensor:
    """The rollout map ``[B, H, W]`` read from the token(s) the head reads."""
    check_rollout_arguments(head_fusion, discard_ratio)
    matrix = rollout_matrix(attentions, head_fusion, discard_ratio)
    return read_map(
        matrix,
        prefix_tokens=prefix_tokens,
        grid=grid,
        query=query,
        query_tokens=query_tokens,
        pool_weights=pool_row_weights(pool, head_fusion) if query == "pool" and pool is not None else None,
    )
