"""What the one recorded pass saw: per module call, per attention computation, and the score.

Checks read these records and never run the model. Gradients are kept only as the
statistics Grad-CAM and the checks need (energy per position, mean per channel, the
leading tokens); activations and the graph are held only while ``inspect`` runs, for the
locality test, and ``Probe.release`` drops them before it returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hookdoctor.geometry.layout import MAX_PREFIX_TOKENS, Layout
from hookdoctor.model.outputs import OutputSelector
from hookdoctor.probe.gradpath import GradGraph
from hookdoctor.probe.sites import AttentionSite


def stat_shapes(shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """The statistics ``GradStats`` keeps of a gradient of ``shape``, and the shape of each (none for 1-D/2-D)."""
    if len(shape) == 5:  # video: 3-D convolution outputs [B, C, T, H, W]
        b, c, t, h, w = shape
        return {"energy.NCTHW": (t, h, w), "mean.NCTHW": (b, c)}
    if len(shape) == 4:
        b, c, h, w = shape
        return {"energy.NCHW": (h, w), "energy.NHWC": (c, h), "mean.NCHW": (b, c), "mean.NHWC": (b, w)}
    if len(shape) == 3:  # a token sequence [B, T, C] or a 1-D convolution's [B, C, L]
        b, t, c = shape
        return {
            "energy.tokens": (t,), "energy.NCL": (c,), "mean.tokens": (b, c), "mean.NCL": (b, t),
            "leading": (b, min(MAX_PREFIX_TOKENS, t), c),
        }
    return {}


def stat_buffers(requests: list[tuple[int, ...]], like: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Room for the statistics of each gradient (shape ``requests[i]``, dtype and device of ``like[i]``).

    One flat allocation per dtype and device, made before the backward, holds them all:
    hundreds of small tensors kept while large gradients come and go during the backward
    would scatter the heap (the process's resident set grew by more than the activations).
    """
    sizes: dict[tuple[torch.dtype, torch.device], int] = {}
    for shape, tensor in zip(requests, like, strict=True):
        key = (tensor.dtype, tensor.device)
        sizes[key] = sizes.get(key, 0) + sum(math.prod(s) for s in stat_shapes(shape).values())
    flat = {key: torch.empty(total, dtype=key[0], device=key[1]) for key, total in sizes.items() if total}
    offsets = dict.fromkeys(flat, 0)
    found = []
    for shape, tensor in zip(requests, like, strict=True):
        key = (tensor.dtype, tensor.device)
        views = {}
        for name, stat in stat_shapes(shape).items():
            size = math.prod(stat)
            views[name] = flat[key][offsets[key] : offsets[key] + size].view(stat)
            offsets[key] += size
        found.append(views)
    return found


@dataclass(frozen=True)
class GradStats:
    """What Grad-CAM and the checks need of one gradient, for every layout it could have."""

    energy: dict[str, torch.Tensor]  # layout -> |grad| summed per position: [H*W] or [T]
    channel_mean: dict[str, torch.Tensor]  # layout -> grad averaged over positions: [B, C]
    leading_tokens: torch.Tensor | None  # tokens: grad of the first MAX_PREFIX_TOKENS tokens [B, k, C]
    num_tokens: int = 0

    @classmethod
    def of(cls, grad: torch.Tensor, into: dict[str, torch.Tensor] | None = None) -> GradStats:
        """The statistics of ``grad``, written into ``into`` (from ``stat_buffers``) when it fits."""
        grad = grad.detach()
        if grad.is_meta:  # structure only: that the gradient arrived is all there is to know
            return cls(energy={}, channel_mean={}, leading_tokens=None, num_tokens=int(grad.shape[1]))
        shapes = stat_shapes(tuple(grad.shape))
        if into is None or any(
            name not in into or into[name].shape != shape or into[name].dtype != grad.dtype
            or into[name].device != grad.device
            for name, shape in shapes.items()
        ):
            into = {name: grad.new_empty(shape) for name, shape in shapes.items()}
        magnitude = grad.abs()  # once, for every layout's energy
        if grad.dim() == 5:
            return cls(
                energy={"NCTHW": torch.sum(magnitude, (0, 1), out=into["energy.NCTHW"]).flatten()},
                channel_mean={"NCTHW": torch.mean(grad, (2, 3, 4), out=into["mean.NCTHW"])},
                leading_tokens=None,
            )
        if grad.dim() == 4:
            return cls(
                energy={
                    "NCHW": torch.sum(magnitude, (0, 1), out=into["energy.NCHW"]).flatten(),
                    "NHWC": torch.sum(magnitude, (0, 3), out=into["energy.NHWC"]).flatten(),
                },
                channel_mean={
                    "NCHW": torch.mean(grad, (2, 3), out=into["mean.NCHW"]),
                    "NHWC": torch.mean(grad, (1, 2), out=into["mean.NHWC"]),
                },
                leading_tokens=None,
            )
        # A 3-D output is a token sequence [B, T, C] or a 1-D convolution's [B, C, L].
        leading = into["leading"]
        return cls(
            energy={
                "tokens": torch.sum(magnitude, (0, 2), out=into["energy.tokens"]),
                "NCL": torch.sum(magnitude, (0, 1), out=into["energy.NCL"]),
            },
            # tokens: a sum; the prefix is taken out per layout
            channel_mean={
                "tokens": torch.sum(grad, 1, out=into["mean.tokens"]),
                "NCL": torch.mean(grad, 2, out=into["mean.NCL"]),
            },
            leading_tokens=leading.copy_(grad[:, : leading.shape[1]]),
            num_tokens=int(grad.shape[1]),
        )

    def cell_energy(self, layout: Layout) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gradient energy per image cell, and per prefix token (token layouts only)."""
        energy = self.energy[layout.kind]
        if layout.kind != "tokens":
            return energy, None
        return energy[layout.prefix_tokens :], energy[: layout.prefix_tokens]

    def channel_weights(self, layout: Layout) -> torch.Tensor:
        """Grad-CAM's weights: the gradient averaged over the layer's image cells, ``[B, C]``."""
        if layout.kind != "tokens":
            return self.channel_mean[layout.kind]
        assert self.leading_tokens is not None  # set for every token (3-D) gradient
        prefix = self.leading_tokens[:, : layout.prefix_tokens].sum(1)
        return (self.channel_mean["tokens"] - prefix) / (self.num_tokens - layout.prefix_tokens)


@dataclass
class CallRecord:
    """One call of one module."""

    order: int
    structure: str
    is_tensor: bool
    tensor: torch.Tensor | None  # held during inspect only (see Probe.release)
    shape: tuple[int, ...] | None
    version_at_hook: int
    requires_grad: bool
    grad_fn: Any = None
    grad_enabled: bool = True  # False when the forward ran this module under no_grad / inference_mode
    version_after: int = -1
    grad: GradStats | None = None

    @property
    def output_tensor(self) -> torch.Tensor:
        """The tensor this call returned (or the first one it returned); only while inspect runs."""
        if self.tensor is None:
            raise ValueError("this call returned no tensor, or its record was released")
        return self.tensor

    @property
    def grad_stats(self) -> GradStats:
        """The gradient statistics; only for calls the score's gradient reached."""
        if self.grad is None:
            raise ValueError("no gradient reached this call")
        return self.grad

    @property
    def overwritten(self) -> bool:
        return self.version_after != self.version_at_hook


@dataclass
class ModuleRecord:
    name: str
    module: nn.Module
    calls: list[CallRecord] = field(default_factory=list)
    first_input: torch.Tensor | None = None


@dataclass
class AttentionCall:
    """One attention computation of the pass: where it ran, and whether the score's gradient reached it.

    ``row_energy`` is the gradient energy per query row ``[Tq]`` (which tokens the head
    reads through this attention); None when no gradient reached the probabilities.
    ``on_path`` says whether the probabilities feed the output in autograd at all.
    """

    site: AttentionSite
    probs: torch.Tensor | None  # held during inspect only
    on_path: bool
    row_energy: torch.Tensor | None = None
    module_calls_before: int = 0  # module calls recorded before this attention ran (CallRecord.order)

    @property
    def reached(self) -> bool:
        return self.row_energy is not None


@dataclass(frozen=True)
class ScoreRequest:
    """What the caller asked to explain: the input's axes, and target / output / task / reference."""

    axes: tuple[int, ...]
    target: int | None
    output_key: str | int | None
    task: str | None
    reference: torch.Tensor | None


@dataclass
class Score:
    """What the probe differentiated, and what the spec's model wrapper must return."""

    selector: OutputSelector
    other_heads: list[str]
    output_structure: str
    dtype: torch.dtype  # of the score as the model returns it
    target: int  # the class explained for the first sample
    pre_activation: str | None  # name of a final Softmax/Sigmoid module whose input is explained
    saturated: bool
    zero_head: str | None  # name of a zero-initialised head (surrogate score used)
    has_gradient: bool  # False when the model computes its score with gradients disabled or detaches it
    task: str = "classification"
    head: nn.Module | None = None  # makes the selected output a [B, N] score (segmentation, embedding, detection)
    why: str = ""  # why this task and score
    score_text: str = ""  # what column k of the score is
    reference_given: bool = True  # embedding: False when a seeded random direction stands in
    columns: int = 0  # N
    pre_activation_function: str | None = None  # "softmax" / "sigmoid" called as a function at the end of forward


@dataclass
class Probe:
    records: dict[str, ModuleRecord]
    attention: list[AttentionCall]
    score: Score
    image: torch.Tensor | None  # the input that required grad (held during inspect only)
    image_hw: tuple[int, int]
    batch: int
    input_gradient_zero: bool
    grad_enabled_by_user: bool
    consumed_randomness: bool  # the eval-mode forward drew from the global RNG (HD006)
    graph: GradGraph  # the autograd graph below the score, by node id (holds no tensor)
    score_value: torch.Tensor | None = None  # the differentiated scalar (held during inspect only)
    input_axes: tuple[int, ...] = ()  # the positional axes of the explained input: (H, W), (T, H, W), (L,)
    channel_axis: int | None = 1  # the input's channel axis (None for a spectrogram [B, T, F])
    input_kind: str = "image"  # image, video, spectrogram or signal
    structure_only: bool = False  # the pass ran on meta tensors: shapes and graph, no values

    def cut_off_by_pick(self, call: CallRecord, num_tokens: int) -> tuple[str, ...] | None:
        """Structure's answer to "does gradient reach this token output's patch tokens?" (meta device).

        The score's gradient cannot reach a token sequence's patch tokens when every path
        from the score to it picks single tokens (``SelectBackward0`` on the token
        dimension) and no attention mixes tokens after the call: the gradient from a pick
        lands on the picked token only. Returns the picks then (HD201), else None.
        """
        # Any attention after the call mixes tokens (captured on the gradient path or beside it).
        attention_after = any(seen.module_calls_before > call.order for seen in self.attention)
        if attention_after or call.grad_fn is None or not self.graph.reaches(call.grad_fn):
            return None
        if self.graph.reaches_without_token_picks(call.grad_fn, num_tokens):
            return None
        return self.graph.token_picks(num_tokens) or None

    def reads_patch_tokens(self, num_tokens: int) -> bool:
        """Whether the head reads the patch tokens after the last attention, from structure alone.

        True when some ``[B, num_tokens, C]`` output after the last attention reaches the
        score by a path that picks no single token (mean pooling, CLS and mean concatenated).
        """
        last = max((seen.module_calls_before for seen in self.attention), default=0)
        after = [
            call
            for record in self.records.values()
            for call in record.calls
            if call.order >= last and call.shape is not None and len(call.shape) == 3 and call.shape[1] == num_tokens
        ]
        return any(self.graph.reaches_without_token_picks(call.grad_fn, num_tokens) for call in after)

    @property
    def input_image(self) -> torch.Tensor:
        if self.image is None:
            raise ValueError("the probe was released")
        return self.image

    def release(self) -> None:
        """Drop every tensor of the model (activations, graph, probabilities): only statistics remain."""
        for record in self.records.values():
            record.first_input = None
            for call in record.calls:
                call.tensor = None
                call.grad_fn = None
        for seen in self.attention:
            seen.probs = None
        self.image = None
        self.score_value = None
