"""Leave the user's model exactly as it was found.

Every pass hookdoctor makes over a model runs inside ``preserved(model)``: on the way out,
also when the forward or backward raised, it restores each module's ``training`` flag,
each parameter's ``requires_grad`` and ``.grad``, every hook dictionary, buffers (batch
norm statistics), ``fused_attn`` switches, the transformers attention settings and the
global RNG state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

# Every per-module dictionary that holds hooks in torch 2.x (missing ones are skipped).
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)
# Settings transformers reads at call time; hookdoctor never changes them, but a forward
# with ``output_attentions`` can, so they are put back all the same.
_CONFIG_FIELDS = ("_attn_implementation", "output_attentions", "output_hidden_states", "return_dict")
# transformers 5 installs its output-capturing hooks (hidden states, attentions) at a model's
# first forward and marks the model with this flag. When that first forward is hookdoctor's,
# the hooks are removed with the others on the way out, so the flag must go too: otherwise
# the next forward finds the flag, installs nothing, and Segformer's decode head receives no
# hidden states at all.
_HOOKS_INSTALLED_FLAG = "_output_capturing_hooks_installed"


def _configs(model: nn.Module) -> list[Any]:
    seen: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and not isinstance(config, (dict, str)) and id(config) not in seen:
            seen[id(config)] = config
    return list(seen.values())


@contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    modules = list(model.modules())
    params = list(model.parameters())
    training = [m.training for m in modules]
    requires_grad = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    hooks = [
        {name: dict(getattr(m, name)) for name in _HOOK_DICTS if isinstance(getattr(m, name, None), dict)}
        for m in modules
    ]
    fused = [(m, m.fused_attn) for m in modules if hasattr(m, "fused_attn")]
    configs = [
        (c, {f: getattr(c, f) for f in _CONFIG_FIELDS if f in getattr(c, "__dict__", {})}) for c in _configs(model)
    ]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    flagged = {id(m) for m in modules if _HOOKS_INSTALLED_FLAG in m.__dict__}
    rng = torch.random.get_rng_state()
    try:
        yield
    finally:
        torch.random.set_rng_state(rng)
        for m, flag in zip(modules, training, strict=True):
            m.training = flag
        for p, flag, grad in zip(params, requires_grad, grads, strict=True):
            p.requires_grad_(flag)
            p.grad = grad
        for m, saved in zip(modules, hooks, strict=True):
            for name, entries in saved.items():
                current = getattr(m, name)
                if current.keys() != entries.keys():
                    current.clear()
                    current.update(entries)
        for m in modules:
            if id(m) not in flagged and _HOOKS_INSTALLED_FLAG in m.__dict__:
                del m.__dict__[_HOOKS_INSTALLED_FLAG]
        for m, was_fused in fused:
            m.fused_attn = was_fused
        for config, values in configs:
            for key, value in values.items():
                if getattr(config, key, None) != value:
                    config.__dict__[key] = value
        with torch.no_grad():
            for buffer, saved_value in buffers:
                if buffer.shape == saved_value.shape and not torch.equal(buffer, saved_value):
                    buffer.copy_(saved_value)
