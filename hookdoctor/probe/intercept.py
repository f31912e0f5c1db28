"""See every attention computation of one model's forward, whatever implementation runs it.

Three things compute token-to-token attention in today's vision libraries:

* ``F.scaled_dot_product_attention`` (transformers ``sdpa``, timm ``fused_attn=True``):
  the probabilities are never materialised, so they are computed here beside the call
  as ``softmax(q kᵀ · scale + mask)``;
* a softmax over the last dim of a ``[..., Tq, Tk]`` score matrix (eager paths, timm
  unfused, Swin, XCiT): the probabilities are the softmax output itself;
* ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``, torchvision ViT): the
  call is repeated with ``need_weights=True, average_attn_weights=False`` and the caller
  gets back exactly what it asked for.

A ``TorchFunctionMode`` sees these calls; forward pre-hooks and hooks on every module keep
a stack of running module names, so each event knows which module computed it. Only ops
that run while one of the model's modules is on the stack are recorded. Everything is
installed by ``intercepting`` and removed when it exits, also when the forward raises.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack

_SDPA = torch._C._nn.scaled_dot_product_attention
_SOFTMAXES = {
    F.softmax, torch.softmax, torch.Tensor.softmax, torch._C.TensorBase.softmax, torch.special.softmax,
}
_MHA = F.multi_head_attention_forward
_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)
_SDPA_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


@dataclass
class AttentionEvent:
    """One attention computation seen during a forward.

    ``probs`` is ``[batch, heads, Tq, Tk]``. ``on_path`` says whether it feeds the model's
    output in autograd (so gradients with respect to it exist). ``module_input`` is the
    shape of the first tensor the owning module received, used to tell tokens from
    channels. ``dropout_p`` is the dropout the op applied (0 in eval).
    """

    kind: str
    module: str
    probs: torch.Tensor
    heads: int
    on_path: bool
    module_input: tuple[int, ...] | None
    dropout_p: float = 0.0
    weights_requested: bool = True


EventSink = Callable[[AttentionEvent], None]
# (name, module, shape of its first tensor input) for each module running right now.
_Frame = tuple[str, nn.Module, "tuple[int, ...] | None"]


def _bind_sdpa(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound: dict[str, Any] = dict.fromkeys(_SDPA_PARAMS)
    bound.update(dropout_p=0.0, is_causal=False, enable_gqa=False)
    bound.update(zip(_SDPA_PARAMS, args, strict=False))
    bound.update(kwargs)
    return bound


def sdpa_probabilities(
    query: torch.Tensor,
    key: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """``softmax(q kᵀ · scale + mask)`` exactly as ``scaled_dot_product_attention`` defines it.

    Grouped-query layouts (fewer key heads than query heads) repeat each key head over
    its group, as ``enable_gqa=True`` does. Computed in float32 at least, like the eager
    paths of transformers, then cast back to the query's dtype.
    """
    q_heads, k_heads = query.shape[-3] if query.dim() >= 3 else 1, key.shape[-3] if key.dim() >= 3 else 1
    if query.dim() >= 3 and q_heads != k_heads and q_heads % k_heads == 0:
        key = key.repeat_interleave(q_heads // k_heads, dim=-3)
    compute = torch.promote_types(query.dtype, torch.float32)
    q, k = query.to(compute), key.to(compute)
    factor = scale if scale is not None else 1.0 / math.sqrt(query.shape[-1])
    scores = (q @ k.transpose(-2, -1)) * factor
    length, source = scores.shape[-2], scores.shape[-1]
    if is_causal:
        causal = torch.ones(length, source, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.to(compute)
    probs = torch.softmax(scores, dim=-1)
    # A fully masked row is NaN in the softmax; SDPA gives it no weight, so neither do we.
    probs = torch.nan_to_num(probs, nan=0.0)
    return probs.to(query.dtype)


def _as_4d(probs: torch.Tensor, heads: int) -> torch.Tensor:
    if probs.dim() == 4:
        return probs
    if probs.dim() == 3:
        return probs.reshape(probs.shape[0] // heads, heads, *probs.shape[-2:])
    return probs.reshape(-1, probs.shape[-3], *probs.shape[-2:])


class _AttentionMode(TorchFunctionMode):
    """Reports every attention op made inside the model to ``sink``; returns what the op returns."""

    def __init__(self, stack: list[_Frame], sink: EventSink, *, on_path: bool, mha_on_path: bool = False) -> None:
        super().__init__()
        self._stack = stack
        self._sink = sink
        self._keep_on_path = on_path
        self._mha_on_path = mha_on_path

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if not self._stack or not (func is _SDPA or func is _MHA or func in _SOFTMAXES):
            return func(*args, **kwargs)
        if func is _SDPA:
            return self._sdpa(func, args, kwargs)
        if func is _MHA:
            return self._mha(func, args, kwargs)
        return self._softmax(func, args, kwargs)

    def _owner(self) -> _Frame:
        # An nn.Softmax module is a step of the attention, not the attention itself.
        for name, module, shape in reversed(self._stack):
            if not isinstance(module, nn.Softmax):
                return name, module, shape
        return self._stack[-1]

    def _sdpa(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        output = func(*args, **kwargs)
        p = _bind_sdpa(args, kwargs)
        query, key, value = p["query"], p["key"], p["value"]
        if query.dim() < 3:
            return output
        probs = sdpa_probabilities(query, key, p["attn_mask"], bool(p["is_causal"]), p["scale"])
        on_path = False
        if self._keep_on_path and torch.is_grad_enabled() and output.requires_grad:
            # Straight-through: the value is the fused kernel's output bit for bit (adding an
            # exact zero), the gradient flows through probs @ v, so the captured
            # probabilities are on the gradient path like an eager implementation's.
            if value.shape[-3] != probs.shape[-3] and probs.shape[-3] % value.shape[-3] == 0:
                value = value.repeat_interleave(probs.shape[-3] // value.shape[-3], dim=-3)
            recomputed = probs.to(value.dtype) @ value
            output = output.detach() + (recomputed - recomputed.detach())
            on_path = True
        name, _, shape = self._owner()
        self._sink(
            AttentionEvent("sdpa", name, _as_4d(probs, 1), int(_as_4d(probs, 1).shape[1]), on_path, shape,
                           float(p["dropout_p"] or 0.0))
        )
        return output

    def _softmax(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        output = func(*args, **kwargs)
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if not isinstance(output, torch.Tensor) or output.dim() < 3 or dim is None:
            return output
        if dim not in (-1, output.dim() - 1):
            return output
        name, module, shape = self._owner()
        heads = int(output.shape[1]) if output.dim() == 4 else int(getattr(module, "num_heads", 1) or 1)
        if output.dim() == 3 and output.shape[0] % heads:
            heads = 1
        probs = _as_4d(output, heads)
        self._sink(AttentionEvent("softmax", name, probs, heads, output.requires_grad, shape))
        if probs is not output:
            # A softmax over [B*heads, T, T] (transformers 4.x CLIP/SigLIP eager) is recorded as a
            # reshaped view; hand the caller a view of that view (same values, same storage) so
            # the recorded tensor is the one the forward goes on with and gradients reach it.
            return probs.reshape(output.shape)
        return output

    def _mha(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        bound = _MHA_SIGNATURE.bind(*args, **kwargs)
        bound.apply_defaults()
        wanted_weights = bool(bound.arguments["need_weights"])
        wanted_average = bool(bound.arguments["average_attn_weights"])
        bound.arguments["need_weights"] = True
        bound.arguments["average_attn_weights"] = False
        output, weights = func(*bound.args, **bound.kwargs)
        if weights is not None:
            name, _, shape = self._owner()
            heads = int(bound.arguments["num_heads"])
            probs = weights if weights.dim() == 4 else weights.unsqueeze(0)
            dropout = float(bound.arguments["dropout_p"]) if bound.arguments["training"] else 0.0
            # The returned weights are a view made after the value product: not on the path,
            # unless asked for (gradient-weighted rollout), when A @ V is recomputed from them.
            on_path = False
            if self._mha_on_path and torch.is_grad_enabled() and output.requires_grad:
                recomputed = _mha_output_from(probs, bound.arguments)
                if recomputed is not None:
                    output = output.detach() + (recomputed - recomputed.detach())
                    on_path = True
            self._sink(AttentionEvent("mha", name, probs, heads, on_path, shape, dropout, wanted_weights))
        if not wanted_weights:
            return output, None
        if wanted_average and weights is not None:
            weights = weights.mean(dim=-3)
        return output, weights


def _mha_output_from(probs: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor | None:
    """``multi_head_attention_forward``'s output recomputed as ``out_proj(probs @ V)``, or None.

    The straight-through form (the kernel's value, this gradient) puts ``probs`` on the
    gradient path, as an eager implementation has it. Variants whose value path is more
    than one projection (added key/value biases, zero attention, static values, dropout in
    training, unbatched calls) are left off the path rather than recomputed wrongly.
    """
    a = arguments
    value: torch.Tensor = a["value"]
    if (
        value.dim() != 3
        or probs.dim() != 4
        or a["bias_v"] is not None
        or a["add_zero_attn"]
        or a["static_v"] is not None
        or (a["training"] and float(a["dropout_p"]) > 0.0)
    ):
        return None
    embed = int(a["embed_dim_to_check"])
    heads = int(a["num_heads"])
    bias = a["in_proj_bias"]
    if a["use_separate_proj_weight"]:
        weight = a["v_proj_weight"]
    else:
        weight = a["in_proj_weight"][2 * embed :]
    v = F.linear(value, weight, bias[2 * embed :] if bias is not None else None)  # [S, N, E]
    sources, batch = v.shape[0], v.shape[1]
    v = v.reshape(sources, batch, heads, embed // heads).permute(1, 2, 0, 3)  # [N, heads, S, head_dim]
    context = probs.to(v.dtype) @ v  # [N, heads, L, head_dim]
    context = context.permute(2, 0, 1, 3).reshape(context.shape[2], batch, embed)  # [L, N, E]
    return F.linear(context, a["out_proj_weight"], a["out_proj_bias"])


def _first_tensor_shape(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, ...] | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return tuple(int(s) for s in value.shape)
    return None


@contextmanager
def intercepting(
    model: nn.Module,
    sink: EventSink,
    *,
    on_path: bool = True,
    module_sink: Callable[[str, nn.Module, tuple[Any, ...], Any], None] | None = None,
    mha_on_path: bool = False,
) -> Iterator[None]:
    """Within the block, every attention op run inside ``model`` is reported to ``sink``.

    ``module_sink(name, module, args, output)`` is called after each module's forward when
    given: the probe records every module call through it, so one set of hooks serves
    both. ``mha_on_path`` puts ``nn.MultiheadAttention``'s weights on the gradient path too
    (its output recomputed from them, the same values). Hooks and the mode are gone when
    the block exits.

    The mode is also active whenever one of the model's modules runs inside the block while
    it is not - a checkpointed model recomputes its forward inside ``torch.autograd.grad``,
    where torch has popped the mode, and must see the same operations as the first time.
    """
    stack: list[_Frame] = []
    handles = []
    mode = _AttentionMode(stack, sink, on_path=on_path, mha_on_path=mha_on_path)
    reentered: list[nn.Module] = []  # modules whose pre-hook had to re-enter the mode

    def push(name: str) -> Callable[..., None]:
        def pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if mode not in _get_current_function_mode_stack():
                mode.__enter__()
                reentered.append(module)
            stack.append((name, module, _first_tensor_shape(args, kwargs)))

        return pre_hook

    def pop(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            # Pop back to this module: a forward that raised inside a child left it there.
            while stack and stack[-1][1] is not module:
                stack.pop()
            if stack:
                stack.pop()
            if reentered and reentered[-1] is module:
                reentered.pop()
                mode.__exit__(None, None, None)
            if module_sink is not None:
                module_sink(name, module, args, output)

        return hook

    seen: set[int] = set()
    try:
        for name, module in model.named_modules():
            if id(module) in seen:
                continue
            seen.add(id(module))
            handles.append(module.register_forward_pre_hook(push(name), with_kwargs=True))
            handles.append(module.register_forward_hook(pop(name), always_call=True))
        with mode:
            yield
    finally:
        for handle in handles:
            handle.remove()
