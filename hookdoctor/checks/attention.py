"""Judge a model for attention rollout: what its settings would give a user, and a spec that works.

Everything comes from the probe's one recorded pass: the attention sites, the effective
implementation of each (whatever the config claims), the token layout, whether the
captured probabilities are on the gradient path, and which token rows the head actually
reads (the rows of the last attention that the score's gradient reaches).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
from torch import nn

from hookdoctor.checks.layers import observed_grids
from hookdoctor.codes import Diagnostic
from hookdoctor.geometry.layout import prefix_token_hint, token_candidates
from hookdoctor.model.guard import preserved
from hookdoctor.model.inputs import ModelInput
from hookdoctor.probe.record import AttentionCall, Probe
from hookdoctor.probe.run import recorded_pass
from hookdoctor.probe.sites import AttentionSite
from hookdoctor.specs.attention import AttentionSpec

_METHOD = "rollout"


def _more(sites: Sequence[AttentionSite]) -> str:
    return f" and {len(sites) - 1} more" if len(sites) > 1 else ""


def _named(prefix: str, name: str) -> str:
    return prefix + name


def _owner_module(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        return None


def _attn_implementation(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    value = getattr(config, "_attn_implementation", None)
    return value if isinstance(value, str) else None


def _transformers_major() -> int | None:
    transformers = sys.modules.get("transformers")  # loaded already when the model is a transformers one
    version = getattr(transformers, "__version__", None)
    return int(version.split(".")[0]) if isinstance(version, str) else None


def _sdpa_config_variant() -> str:
    """HD501's variant for an SDPA model: what ``output_attentions=True`` gives differs by transformers version."""
    major = _transformers_major()
    # 4.x: ViT 4.41 gives one None per layer, 4.57 None for the whole tuple; BEiT's
    # BeitSdpaSelfAttention re-runs eager when asked.
    return "sdpa_config" if major is None or major >= 5 else "sdpa_config_4x"


def _eager_switch(model: nn.Module) -> str:
    """How a user switches this transformers model to eager attention, in their installed version."""
    # 4.41 has no set_attn_implementation; in 4.57 it only logs a warning for models that do
    # not use AttentionInterface (BEiT), and transformers' own check says which those are.
    if not hasattr(model, "set_attn_implementation"):
        return "from_pretrained(..., attn_implementation='eager')"
    can_switch = getattr(model, "_can_set_attn_implementation", None)
    try:
        # It reads the model class's source file, which a class defined at run time lacks.
        dynamic = can_switch is None or bool(can_switch())
    except (OSError, TypeError, KeyError, AttributeError):
        dynamic = True
    return "model.set_attn_implementation('eager')" if dynamic else "from_pretrained(..., attn_implementation='eager')"


# -- refusals ------------------------------------------------------------------------------------
def _refusal(model: nn.Module, sites: Sequence[AttentionSite], prefix: str) -> Diagnostic | None:
    if not sites:
        return Diagnostic.of("HD508", method=_METHOD, model=type(model).__name__)
    channels = [s for s in sites if s.mixes == "channels"]
    if channels:
        first = channels[0]
        return Diagnostic.of(
            "HD507",
            layer=_named(prefix, first.module),
            method=_METHOD,
            more=_more(channels),
            channels=first.key_tokens,
        )
    reduced = [s for s in sites if s.reduces_keys]
    if reduced:
        first = reduced[0]
        return Diagnostic.of(
            "HD513",
            layer=_named(prefix, first.module),
            method=_METHOD,
            variant="reduced_keys",
            more=_more(reduced),
            queries=first.query_tokens,
            keys=first.key_tokens,
        )
    windows = [s for s in sites if s.mixes == "windows"]
    if windows:
        first = windows[0]
        return Diagnostic.of(
            "HD506",
            layer=_named(prefix, first.module),
            method=_METHOD,
            more=_more(windows),
            windows=first.batch,
            tokens=first.key_tokens,
            batch=_tokens_batch(sites),
        )
    blocks = [s for s in sites if s.is_self_attention]
    counts = sorted({s.key_tokens for s in blocks})
    strays = [s for s in sites if not s.is_self_attention and s.order != sites[-1].order]
    if not blocks or len(counts) > 1 or strays:
        odd = strays[0] if strays else (blocks[-1] if blocks else sites[0])
        return Diagnostic.of(
            "HD513",
            layer=_named(prefix, odd.module),
            method=_METHOD,
            variant="token_count_changes" if len(counts) > 1 else "stray_attention" if strays else "no_self_attention",
            model=type(model).__name__,
            counts=", ".join(map(str, counts)),
            queries=odd.query_tokens,
            keys=odd.key_tokens,
        )
    return None


def _tokens_batch(sites: Sequence[AttentionSite]) -> int:
    return sites[0].batch if sites and sites[0].mixes == "tokens" else 1


# -- what the model's settings would give a user ----------------------------------------------------
def _setting_diagnostics(model: nn.Module, blocks: Sequence[AttentionSite], prefix: str) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    fused = [s for s in blocks if s.kind == "sdpa"]
    implementation = _attn_implementation(model)
    if fused:
        first = _named(prefix, fused[0].module)
        owner = _owner_module(model, fused[0].module)
        # What the user's own settings give: a transformers config naming SDPA, timm's fused_attn, or neither.
        sdpa_config = implementation is not None and implementation != "eager"
        variant = (
            _sdpa_config_variant()
            if sdpa_config
            else "fused_attn"
            if owner is not None and getattr(owner, "fused_attn", False)
            else "default"
        )
        out.append(Diagnostic.of(
            "HD501",
            layer=first,
            method=_METHOD,
            variant=variant,
            more=_more(fused),
            implementation=implementation,
            switch=_eager_switch(model) if sdpa_config else None,
        ))
        out.extend(_misleading_settings(model, fused, prefix, implementation))
    hidden = [s for s in blocks if s.kind == "mha" and not s.weights_requested]
    if hidden:
        first = _named(prefix, hidden[0].module)
        out.append(Diagnostic.of("HD502", layer=first, method=_METHOD, more=_more(hidden)))
    return out


def _misleading_settings(
    model: nn.Module, fused: Sequence[AttentionSite], prefix: str, implementation: str | None
) -> list[Diagnostic]:
    """Settings that look as if they materialised attention while the modules still run fused."""
    first = _named(prefix, fused[0].module)
    claims: list[str] = []
    config = getattr(model, "config", None)
    if config is not None:
        public = getattr(config, "__dict__", {}).get("attn_implementation")
        if isinstance(public, str) and public != implementation:
            claims.append(f"config.attn_implementation={public!r} (no underscore; transformers ignores it)")
        if getattr(config, "output_attentions", False):
            claims.append("config.output_attentions=True (does not switch the implementation)")
        if implementation == "eager":
            claims.append("config._attn_implementation='eager' (not propagated to these modules)")
    # Only a timm model can have met timm's global switch; never import timm for this.
    timm_config = sys.modules.get("timm.layers.config")
    if timm_config is not None and not getattr(timm_config, "_USE_FUSED_ATTN", 1):
        owners = [_owner_module(model, s.module) for s in fused]
        if any(getattr(o, "fused_attn", False) for o in owners):
            claims.append("timm.layers.set_fused_attn(False) (called after the model was built)")
    if not claims:
        return []
    return [Diagnostic.of(
        "HD503", layer=first, method=_METHOD, claims="; ".join(claims), more=_more(fused), switch=_eager_switch(model)
    )]


# -- which rows the head reads -------------------------------------------------------------------
def _read_rows(blocks: Sequence[AttentionCall], *, backward_ran: bool) -> tuple[torch.Tensor | None, list[bool]]:
    """Gradient energy per query row of the last self-attention, and which captures are on the path.

    A capture is on the path when it feeds the output in autograd and the score's gradient
    reached it; without a backward (a score with no gradient) only the first is known.
    """
    captured = [seen.on_path for seen in blocks]
    if not backward_ran or not all(captured):
        return None, captured
    return blocks[-1].row_energy, [seen.reached for seen in blocks]


def _query(rows: torch.Tensor | None, prefix: int, has_pool: bool) -> tuple[str, tuple[int, ...]]:
    if has_pool:
        return "pool", ()
    if rows is None or float(rows.max()) == 0.0:
        return ("cls", (0,)) if prefix else ("mean", ())
    active = [int(i) for i in torch.nonzero(rows > 1e-6 * rows.max()).flatten()]
    if prefix and all(i < prefix for i in active):
        return "cls", tuple(active)
    return "mean", ()


def tokens_shuffled(probe: Probe) -> bool:
    """True when the forward drew random numbers and a gather by index lies between the image and the
    last token sequence the score depends on (ViTMAE's random masking: argsort(noise), then gather)."""
    if not probe.consumed_randomness or probe.image is None:
        return False
    tokens = [
        call
        for record in probe.records.values()
        for call in record.calls
        if call.shape is not None and len(call.shape) == 3 and probe.graph.reaches(call.grad_fn)
    ]
    last = max(tokens, key=lambda call: call.order, default=None)
    return last is not None and probe.graph.gathers_between(last.grad_fn, probe.image)


def _explained_sequence(probe: Probe, name_prefix: str) -> list[AttentionCall]:
    """The attention calls over the token sequence made from the explained input.

    A model with several towers (CLIP: an image and a text transformer) runs attention over
    several token sequences; rollout chains the layers of one of them, the one computed from
    the image being explained. A call belongs to it when the output of the module that ran it
    is computed from the input image (the probe's autograd graph says so). When the graph
    cannot tell (no gradient, or no call computed from the image), every call is kept.
    """
    image = probe.image

    def sees_image(seen: AttentionCall) -> bool | None:
        record = probe.records.get(name_prefix + seen.site.module)
        if image is None or record is None or seen.site.call_index >= len(record.calls):
            return None
        grad_fn = record.calls[seen.site.call_index].grad_fn
        return probe.graph.depends_on(grad_fn, image) if grad_fn is not None else None

    verdicts = [sees_image(seen) for seen in probe.attention]
    if not any(verdicts):
        return list(probe.attention)
    return [seen for seen, sees in zip(probe.attention, verdicts, strict=True) if sees is not False]


def _structural_query(probe: Probe, tokens: int, prefix: int, has_pool: bool) -> tuple[str, tuple[int, ...]]:
    """The rollout query without gradient values (meta device): a head that picks a token reads it."""
    if has_pool:
        return "pool", ()
    picked = [index for index in probe.graph.picked_tokens(tokens) if index < prefix]
    if prefix and picked and not probe.reads_patch_tokens(tokens):
        return "cls", tuple(picked)
    return "mean", ()


def analyse_attention(
    model: nn.Module,
    model_input: ModelInput,
    *,
    probe: Probe | None = None,
    name_prefix: str = "",
    prefix_hint: int | None = None,
    was_training: bool | None = None,
) -> tuple[AttentionSpec | None, list[Diagnostic]]:
    """An AttentionSpec for ``model`` (already unwrapped) and what its settings would do to a user.

    Refusals (window, channel, no or irregular attention) come back as one error
    diagnostic and spec None. Layer names get ``name_prefix`` so they are valid on the
    model the user passed. ``was_training`` is the user's mode when the caller has already
    switched the model to eval (default: ``model.training``). ``probe`` is the recorded pass
    of ``model`` on ``model_input`` that ``inspect`` made; without one, this runs its own
    (the model is restored afterwards).
    """
    if probe is None:
        with preserved(model):
            was_training = model.training if was_training is None else was_training
            model.eval()
            with recorded_pass(model, model_input, None, name_prefix) as own:
                return analyse_attention(
                    model, model_input, probe=own, name_prefix=name_prefix, prefix_hint=prefix_hint,
                    was_training=was_training,
                )
    diagnostics: list[Diagnostic] = []
    if "_orig_mod" in name_prefix:
        diagnostics.append(Diagnostic.of("HD511", method=_METHOD))
    if tokens_shuffled(probe):
        return None, [
            Diagnostic.of("HD007", method=_METHOD, severity="error", variant="rollout", model=type(model).__name__),
            *diagnostics,
        ]
    attention = _explained_sequence(probe, name_prefix)
    sites = [seen.site for seen in attention]
    refusal = _refusal(model, sites, name_prefix)
    if refusal is not None:
        return None, [refusal, *diagnostics]

    block_calls = [seen for seen in attention if seen.site.is_self_attention]
    blocks = [seen.site for seen in block_calls]
    last = sites[-1]
    tokens = blocks[0].key_tokens
    pool = last if not last.is_self_attention and last.key_tokens == tokens else None
    diagnostics.extend(_setting_diagnostics(model, blocks, name_prefix))

    hint = prefix_hint if prefix_hint is not None else prefix_token_hint(model)
    candidates = token_candidates(tokens, model_input.image_hw, observed_grids(probe), hint)
    if not candidates:
        return None, [
            Diagnostic.of(
                "HD513",
                layer=_named(name_prefix, blocks[0].module),
                method=_METHOD,
                variant="no_grid",
                tokens=tokens,
                input="x".join(map(str, model_input.image_hw)),
            ),
            *diagnostics,
        ]
    prefix, grid = candidates[0]

    rows, on_path = _read_rows(block_calls, backward_ran=probe.score.has_gradient)
    if probe.structure_only:
        query, query_tokens = _structural_query(probe, tokens, prefix, pool is not None)
    else:
        query, query_tokens = _query(rows, prefix, pool is not None)
    on_gradient_path = all(on_path)
    first = _named(name_prefix, blocks[0].module)
    if query != "cls":  # "mean" or "pool"
        diagnostics.append(Diagnostic.of(
            "HD504",
            method=_METHOD,
            variant=query,
            model=type(model).__name__,
            pool=_named(name_prefix, pool.module) if pool else None,
        ))
    if prefix > 1:
        diagnostics.append(Diagnostic.of(
            "HD505", layer=first, method=_METHOD, prefix=prefix, grid="x".join(map(str, grid)), kept=prefix - 1
        ))
    if model.training if was_training is None else was_training:
        diagnostics.append(Diagnostic.of("HD509", method=_METHOD, model=type(model).__name__))
    if not on_gradient_path:
        off = next((blocks[k] for k, ok in enumerate(on_path) if not ok), blocks[0])
        diagnostics.append(Diagnostic.of("HD510", layer=_named(name_prefix, off.module), method=_METHOD))
    spec = AttentionSpec(
        layer_names=tuple(dict.fromkeys(_named(name_prefix, s.module) for s in blocks)),
        prefix_tokens=prefix,
        grid=grid,
        query=query,
        query_tokens=query_tokens,
        pool_layer=_named(name_prefix, pool.module) if pool else None,
        on_gradient_path=on_gradient_path,
        heads=tuple(s.heads for s in blocks),
        tokens=tokens,
        kinds=tuple(s.kind for s in blocks),
        image_hw=model_input.image_hw,
        name_prefix=name_prefix,
    )
    return spec, diagnostics
