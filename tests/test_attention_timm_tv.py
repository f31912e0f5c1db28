"""Attention capture and rollout on timm (fused attention) and torchvision (MHA) models.

References: timm's own unfused path (``fused_attn=False`` per module on a deep copy, read
from ``attn_drop``), torchvision's MHA asked for per-head weights in the test.
"""

from __future__ import annotations

import copy

import pytest
import torch

from fixtures.attention_checks import assert_probabilities, assert_rollout, assert_untouched, snapshot
from hookdoctor.attention import analyse_attention
from hookdoctor.model.inputs import ModelInput

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")


def _timm_eager_attentions(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    reference = copy.deepcopy(model)
    seen: list[torch.Tensor] = []
    for module in reference.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
        if hasattr(module, "attn_drop") and isinstance(module.attn_drop, torch.nn.Module):
            module.attn_drop.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        reference(x)
    return seen


# name, kwargs, input size, prefix, grid, query, query tokens
TIMM_CASES = [
    ("vit_tiny_patch16_224", dict(img_size=64), 64, 1, (4, 4), "cls", (0,)),
    ("deit_tiny_distilled_patch16_224", dict(img_size=64), 64, 2, (4, 4), "cls", (0, 1)),
    ("vit_tiny_patch16_224", dict(img_size=64, reg_tokens=4), 64, 5, (4, 4), "cls", (0,)),
    (
        "vit_tiny_patch16_224",
        dict(img_size=64, class_token=False, global_pool="avg"),
        64,
        0,
        (4, 4),
        "mean",
        (),
    ),
    (
        "vit_tiny_patch16_224",
        dict(img_size=64, class_token=False, global_pool="map"),
        64,
        0,
        (4, 4),
        "pool",
        (),
    ),
    ("eva02_tiny_patch14_224", dict(img_size=56), 56, 1, (4, 4), "mean", ()),  # global_pool="avg"
]


@pytest.mark.timm
@pytest.mark.parametrize(
    ("name", "kwargs", "size", "prefix", "grid", "query", "query_tokens"),
    TIMM_CASES,
    ids=["vit", "deit_distilled", "registers", "gap", "map", "eva02"],
)
def test_timm_fused_capture_equals_unfused_and_rolls_out(
    name, kwargs, size, prefix, grid, query, query_tokens
):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, depth=2, **kwargs).eval()
    assert all(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    before = snapshot(model)
    with torch.no_grad():
        expected = model(x)
    spec, diagnostics = analyse_attention(model, ModelInput((x,)))
    assert spec is not None, [d.message for d in diagnostics]
    assert (spec.prefix_tokens, spec.grid, spec.query, spec.query_tokens) == (
        prefix,
        grid,
        query,
        query_tokens,
    )
    assert spec.layer_names == ("blocks.0.attn", "blocks.1.attn") and spec.on_gradient_path
    assert "fused_attn=True" in next(d.message for d in diagnostics if d.code == "HD501")
    tokens = prefix + grid[0] * grid[1]
    heads = model.blocks[0].attn.num_heads
    with torch.no_grad():
        attentions = spec.capture(model, x)
    assert_probabilities(attentions, 2, (2, heads, tokens, tokens))
    eager = _timm_eager_attentions(model, x)
    assert len(eager) == 2
    for mine, theirs in zip(attentions, eager, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-5)
    assert_rollout(spec.rollout(model, x, head_fusion="max", discard_ratio=0.5), 2, grid)
    if query == "pool":
        assert spec.pool_layer == "attn_pool"
    assert_untouched(before, model)
    with torch.no_grad():
        assert torch.equal(model(x), expected)


@pytest.mark.timm
@pytest.mark.parametrize(
    ("name", "kwargs", "size", "code"),
    [
        (
            "swin_tiny_patch4_window7_224",
            dict(depths=(1, 1, 1, 1), embed_dim=24, num_heads=(1, 1, 1, 1)),
            224,
            "HD506",
        ),
        ("convnext_atto", {}, 64, "HD508"),
        ("xcit_nano_12_p16_224", dict(depth=2), 64, "HD507"),
    ],
    ids=["swin", "convnext", "xcit"],
)
def test_timm_models_without_global_token_attention_are_refused(name, kwargs, size, code):
    import hookdoctor

    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    before = snapshot(model)
    spec, diagnostics = analyse_attention(model, ModelInput((torch.randn(1, 3, size, size),)))
    assert spec is None
    (error,) = [d for d in diagnostics if d.severity == "error"]
    assert error.code == code and error.method == "rollout"
    assert hookdoctor.explain(error.code).strip()
    assert_untouched(before, model)


def _outputs_of(model: torch.nn.Module, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def test_torchvision_vit_b_16_rolls_out():
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None, image_size=112).eval()
    x = torch.randn(1, 3, 112, 112)
    spec, _ = analyse_attention(model, ModelInput((x,)))
    assert spec is not None and len(spec.layer_names) == 12 and spec.grid == (7, 7)
    assert_rollout(spec.rollout(model, x), 1, (7, 7))


def test_torchvision_vit_capture_equals_per_head_mha_weights():
    # torchvision's VisionTransformer class (that of vit_b_16), small.
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=56, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128
    ).eval()
    x = torch.randn(2, 3, 56, 56)
    # The zero-initialised head makes the logits 0: compare the encoder's output instead.
    expected = _outputs_of(model, model.encoder.ln, x)
    first_input = _outputs_of(model, model.encoder.layers[0].ln_1, x)
    before = snapshot(model)
    spec, diagnostics = analyse_attention(model, ModelInput((x,)))
    assert spec is not None
    assert (spec.prefix_tokens, spec.grid, spec.query, spec.heads) == (1, (7, 7), "cls", (4, 4))
    assert spec.layer_names[0] == "encoder.layers.encoder_layer_0.self_attention"
    codes = {d.code for d in diagnostics}
    assert {"HD502", "HD510"} <= codes and not spec.on_gradient_path
    with torch.no_grad():
        attentions = spec.capture(model, x)
        _, weights = model.encoder.layers[0].self_attention(
            first_input, first_input, first_input, need_weights=True, average_attn_weights=False
        )
    assert_probabilities(attentions, 2, (2, 4, 50, 50))
    assert torch.allclose(attentions[0], weights, atol=1e-5)
    assert_rollout(spec.rollout(model, x), 2, (7, 7))
    assert_untouched(before, model)
    assert torch.allclose(_outputs_of(model, model.encoder.ln, x), expected, atol=1e-5)


@pytest.mark.parametrize(("name", "code"), [("swin_t", "HD506"), ("resnet18", "HD508")])
def test_torchvision_swin_and_resnet_are_refused(name, code):
    model = getattr(torchvision.models, name)(weights=None).eval()
    spec, diagnostics = analyse_attention(model, ModelInput((torch.randn(1, 3, 64, 96),)))
    assert spec is None
    assert [d.code for d in diagnostics if d.severity == "error"] == [code]


@pytest.mark.timm
def test_set_fused_attn_after_creation_is_reported_as_misleading():
    from timm.layers import config as timm_config

    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, depth=1, img_size=32, patch_size=8
    ).eval()
    saved = timm_config._USE_FUSED_ATTN
    timm.layers.set_fused_attn(False)
    try:
        _, diagnostics = analyse_attention(model, ModelInput((torch.randn(1, 3, 32, 32),)))
    finally:
        timm_config._USE_FUSED_ATTN = saved
    (misleading,) = [d for d in diagnostics if d.code == "HD503"]
    assert "set_fused_attn(False)" in misleading.message and misleading.layer == "blocks.0.attn"
