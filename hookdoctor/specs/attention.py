"""AttentionSpec: which attention to capture, how the tokens map onto the image, and rollout.

Capture never switches the model's attention implementation: fused calls get their
probabilities computed beside them, ``nn.MultiheadAttention`` is asked for per-head
weights for the duration of one call, eager softmaxes are read as they are. Everything
runs inside a context that leaves the model as it was found.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hookdoctor.errors import InputError
from hookdoctor.geometry.layout import token_candidates
from hookdoctor.model.guard import preserved
from hookdoctor.model.inputs import ModelInput, resolve_input
from hookdoctor.model.outputs import find_score
from hookdoctor.model.unwrap import unwrap
from hookdoctor.probe.intercept import AttentionEvent, intercepting
from hookdoctor.specs.rollout import (
    check_rollout_arguments,
    gradient_rollout_matrix,
    pool_row_weights,
    read_map,
    rollout_map,
)


@dataclass
class AttentionRecord:
    """What one ``capturing`` block collected, in call order.

    ``attentions`` holds one ``[B, heads, T, T]`` tensor per call of a captured layer,
    ``pool`` the ``[B, heads, q, T]`` attention of an attention-pooling head (if any),
    ``on_path[i]`` whether ``attentions[i]`` feeds the model's output in autograd.
    """

    attentions: list[torch.Tensor] = field(default_factory=list)
    pool: list[torch.Tensor] = field(default_factory=list)
    on_path: list[bool] = field(default_factory=list)

    def clear(self) -> None:
        self.attentions.clear()
        self.pool.clear()
        self.on_path.clear()


def _relative(names: Sequence[str], prefix: str) -> list[str]:
    return [n[len(prefix):] if prefix and n.startswith(prefix) else n for n in names]


@contextmanager
def capture_attention(
    model: nn.Module,
    layers: Sequence[str] | None = None,
    *,
    pool_layer: str | None = None,
    eval_mode: bool = True,
    keep_on_gradient_path: bool = True,
    weights_on_gradient_path: bool = False,
) -> Iterator[AttentionRecord]:
    """Collect real attention probabilities during your own forward calls.

        with capture_attention(model, spec.layer_names) as record:
            logits = model(x)
        record.attentions   # [B, heads, T, T] per layer

    ``layers`` are module names of ``model`` (None: every token self-attention found).
    Wrappers (DataParallel, ``torch.compile``) are looked through: hooks go on the inner
    module, so call the model you passed or its inner module. With ``eval_mode`` the
    model runs in eval mode inside the block (dropout would change the probabilities);
    every module's mode is put back afterwards, and no hook or setting is left behind.
    ``weights_on_gradient_path`` also puts ``nn.MultiheadAttention``'s per-head weights on
    the gradient path (its output recomputed from them), for gradient-weighted rollout.
    """
    inner, prefix, _ = unwrap(model)
    wanted = set(_relative(layers, prefix)) if layers is not None else None
    pool_name = _relative([pool_layer], prefix)[0] if pool_layer else None
    record = AttentionRecord()

    def on_event(event: AttentionEvent) -> None:
        _, _, tq, tk = event.probs.shape
        if pool_name is not None and event.module == pool_name:
            record.pool.append(event.probs)
        elif (wanted is None and tq == tk) or (wanted is not None and event.module in wanted):
            record.attentions.append(event.probs)
            record.on_path.append(event.on_path)

    modes = [(m, m.training) for m in inner.modules()]
    try:
        if eval_mode:
            inner.eval()
        with intercepting(
            inner, on_event, on_path=keep_on_gradient_path, mha_on_path=weights_on_gradient_path
        ):
            yield record
    finally:
        for module, flag in modes:
            module.training = flag


@dataclass(frozen=True)
class AttentionSpec:
    """Per-layer attention that is really captured, and how to roll it out.

    ``layer_names`` are the self-attention modules, input to output order, named as in
    the model that was inspected. ``prefix_tokens`` tokens (CLS, distillation, registers)
    precede the ``grid`` of patch tokens. ``query`` says which row rollout reads:
    ``"cls"`` (the prefix tokens in ``query_tokens``), ``"mean"`` (the mean of the patch
    rows, for average pooling) or ``"pool"`` (the attention of ``pool_layer``).
    ``on_gradient_path`` is True when captured attentions feed the output in autograd, so
    gradient-weighted rollout can differentiate with respect to them.
    """

    layer_names: tuple[str, ...]
    prefix_tokens: int
    grid: tuple[int, int]
    query: str = "cls"
    query_tokens: tuple[int, ...] = (0,)
    pool_layer: str | None = None
    on_gradient_path: bool = True
    heads: tuple[int, ...] = ()
    tokens: int = 0
    kinds: tuple[str, ...] = ()
    image_hw: tuple[int, int] | None = None
    name_prefix: str = ""
    verified: bool = True  # False after a structure-only (meta device) pass: nothing was captured

    # -- capture -------------------------------------------------------------------------------
    def capturing(self, model: nn.Module, *, eval_mode: bool = True) -> Any:
        """A ``with`` block that collects this spec's attention during your own forward calls."""
        return self._capture(model, eval_mode=eval_mode)

    def _capture(self, model: nn.Module, **options: bool) -> Any:
        """``capture_attention`` on this spec's layers (and pooling layer), named as in ``model`` (unwrapped)."""
        pool_layer = _relative([self.pool_layer], self.name_prefix)[0] if self.pool_layer else None
        return capture_attention(model, _relative(self.layer_names, self.name_prefix), pool_layer=pool_layer, **options)

    def _record(self, model: nn.Module, x: Any) -> tuple[AttentionRecord, ModelInput]:
        inner, _, _ = unwrap(model)
        model_input = resolve_input(inner, x)
        with preserved(inner), self.capturing(inner) as record:
            model_input.call(inner)
        if not record.attentions:
            raise InputError(
                f"No attention was captured from {type(inner).__name__}: none of the layers "
                f"{', '.join(self.layer_names[:3])}{'...' if len(self.layer_names) > 3 else ''} ran. Pass "
                "the model this spec was made for (hookdoctor.inspect(model, x).rollout)."
            )
        return record, model_input

    def capture(self, model: nn.Module, x: Any) -> list[torch.Tensor]:
        """One ``[B, heads, T, T]`` tensor per layer call, rows summing to 1, model left untouched.

        Runs in eval mode; under ``torch.no_grad()`` the tensors carry no graph, otherwise
        they are on the gradient path where ``on_gradient_path`` says so.
        """
        return list(self._record(model, x)[0].attentions)

    # -- rollout -------------------------------------------------------------------------------
    def grid_for(self, image_hw: tuple[int, int], tokens: int) -> tuple[int, int]:
        """The patch grid of an input of ``image_hw`` whose attention has ``tokens`` tokens."""
        if self.image_hw is not None and tuple(image_hw) == tuple(self.image_hw) and tokens == self.tokens:
            return self.grid
        for prefix, grid in token_candidates(tokens, image_hw, prefix_hint=self.prefix_tokens):
            if prefix == self.prefix_tokens:
                return grid
        raise InputError(
            f"An input of size {image_hw[0]}x{image_hw[1]} gives {tokens} tokens, which no patch grid plus "
            f"{self.prefix_tokens} prefix tokens explains; use an input size the model accepts."
        )

    def rollout(
        self, model: nn.Module, x: Any, head_fusion: str = "mean", discard_ratio: float = 0.0
    ) -> torch.Tensor:
        """Attention rollout map ``[B, H, W]`` for input ``x`` (Abnar & Zuidema, residual included)."""
        check_rollout_arguments(head_fusion, discard_ratio)
        with torch.no_grad():
            record, model_input = self._record(model, x)
        tokens = int(record.attentions[0].shape[-1])
        return rollout_map(
            record.attentions,
            prefix_tokens=self.prefix_tokens,
            grid=self.grid_for(model_input.image_hw, tokens),
            query=self.query,
            query_tokens=self.query_tokens,
            pool=record.pool[-1] if record.pool else None,
            head_fusion=head_fusion,
            discard_ratio=discard_ratio,
        )

    def gradient_rollout(self, model: nn.Module, x: Any, target: int | None = None) -> torch.Tensor:
        """Gradient-weighted attention rollout ``[B, H, W]`` (Chefer et al., 2021, simplified form).

        Each layer's attention is multiplied by its gradient with respect to the score of
        ``target`` (None: each sample's top class), its positive part averaged over heads,
        and rolled out with the residual (``R ← R + Ā R``). Works on whatever attention the
        spec captures: fused (SDPA) calls and ``nn.MultiheadAttention`` get their
        probabilities put on the gradient path for the duration of one forward, with the
        same values; the model is left as it was.
        """
        inner, _, _ = unwrap(model)
        model_input = resolve_input(inner, x)
        with preserved(inner), torch.enable_grad():
            image = model_input.image.detach().requires_grad_(True)  # frozen models still get a graph
            with self._capture(inner, weights_on_gradient_path=True) as record:
                output = model_input.with_image(image).call(inner)
            if not record.attentions:
                raise InputError(
                    f"No attention was captured from {type(inner).__name__}: none of the layers "
                    f"{', '.join(self.layer_names[:3])} ran. Pass the model this spec was made for."
                )
            scores = _scores(output)
            if target is not None and not 0 <= target < scores.shape[1]:
                raise InputError(f"target={target} is not a column of the model's {scores.shape[1]} scores.")
            top = scores.argmax(dim=1)
            columns = top if target is None else torch.full_like(top, target)
            picked = scores.gather(1, columns.reshape(-1, 1)).sum()
            gradients = torch.autograd.grad(picked, record.attentions, allow_unused=True)
            missing = [i for i, g in enumerate(gradients) if g is None]
            if missing:
                raise InputError(
                    f"The attention of {self.layer_names[min(missing[0], len(self.layer_names) - 1)]} does not "
                    "feed the score, so it has no gradient (HD510) and gradient-weighted rollout cannot weigh "
                    "it; use plain rollout (spec.rollout) or Grad-CAM for this model."
                )
            matrix = gradient_rollout_matrix(record.attentions, [g for g in gradients if g is not None])
            pool = record.pool[-1] if record.pool else None
        tokens = int(record.attentions[0].shape[-1])
        return read_map(
            matrix,
            prefix_tokens=self.prefix_tokens,
            grid=self.grid_for(model_input.image_hw, tokens),
            query=self.query,
            query_tokens=self.query_tokens,
            pool_weights=pool_row_weights(pool) if self.query == "pool" and pool is not None else None,
        )

    # -- description ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "layer_names": list(self.layer_names),
            "prefix_tokens": self.prefix_tokens,
            "grid": list(self.grid),
            "query": self.query,
            "query_tokens": list(self.query_tokens),
            "pool_layer": self.pool_layer,
            "on_gradient_path": self.on_gradient_path,
            "heads": list(self.heads),
            "tokens": self.tokens,
            "capture": list(self.kinds),
            "verified": self.verified,
        }

    def code(self, *, own_forward: bool = True) -> str:
        """A copy-paste snippet: capture and rollout with this spec.

        ``own_forward=False`` leaves out the second form (capturing during the user's own
        forward pass), for the compact terminal report.
        """
        h, w = self.grid
        n = len(self.layer_names)
        heads = self.heads[0] if self.heads else "heads"
        snippet = (
            "import hookdoctor\n"
            'spec = hookdoctor.inspect(model, x, methods=("rollout",)).rollout\n'
            f"attentions = spec.capture(model, x)  # {n} x [B, {heads}, {self.tokens}, {self.tokens}]\n"
            'heatmap = spec.rollout(model, x, head_fusion="mean", discard_ratio=0.0)'
            f"  # [B, {h}, {w}]\n"
        )
        if not own_forward:
            return snippet
        return snippet + (
            "\n# or during your own forward pass (hooks removed afterwards):\n"
            "with spec.capturing(model) as record:\n"
            "    output = model(x)\n"
            "attentions = record.attentions\n"
        )


def _scores(output: Any) -> torch.Tensor:
    """The ``[B, classes]`` score tensor of a model's output (a tensor, ModelOutput, dict or tuple)."""
    found = find_score(output)
    if found is None:
        raise InputError(
            "The model's output holds no [batch, classes] score tensor, so there is no score to take the "
            "gradient of; gradient-weighted rollout needs a classifier's logits (use plain rollout otherwise)."
        )
    return found[0](output)
