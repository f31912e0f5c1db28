"""Attention capture and rollout on transformers 5.x vision models (SDPA by default).

The reference is each model's own eager attention, switched on a deep copy in the test
only; the library never switches the implementation.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fixtures.attention_checks import (  # noqa: E402
    assert_probabilities,
    assert_rollout,
    assert_untouched,
    logits,
    snapshot,
)
from hookdoctor.attention import analyse_attention  # noqa: E402
from hookdoctor.model.inputs import ModelInput  # noqa: E402

SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             image_size=32, patch_size=8)


def report_vit() -> torch.nn.Module:
    """The 6-layer ViT of the original report (SDPA default), small and random."""
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=64, num_hidden_layers=6, num_attention_heads=4,
                                 intermediate_size=128, image_size=64, patch_size=8, num_labels=10)
    return transformers.ViTForImageClassification(cfg).eval()


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "vit":
        return report_vit()
    if name == "deit":
        return transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**SMALL))
    if name == "beit":
        config = transformers.BeitConfig(**SMALL, use_mean_pooling=True)
        return transformers.BeitForImageClassification(config)
    if name == "dinov2":
        return transformers.Dinov2Model(transformers.Dinov2Config(**SMALL))
    if name == "dinov2_registers":
        return transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(**SMALL, num_register_tokens=4))
    if name == "clip":
        return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**SMALL))
    if name == "siglip":
        return transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**SMALL))
    raise KeyError(name)


def _eager_attentions(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    reference = copy.deepcopy(model)
    reference.set_attn_implementation("eager")
    with torch.no_grad():
        return reference(x, output_attentions=True).attentions


# name, layers, prefix tokens, query, query tokens
CASES = [
    ("vit", 6, 1, "cls", (0,)),
    ("deit", 2, 2, "cls", (0, 1)),
    ("beit", 2, 1, "mean", ()),
    ("dinov2", 2, 1, "cls", (0,)),
    ("dinov2_registers", 2, 5, "cls", (0,)),
    ("clip", 2, 1, "cls", (0,)),
    ("siglip", 2, 0, "pool", ()),
]


@pytest.mark.parametrize(
    ("name", "layers", "prefix", "query", "query_tokens"), CASES, ids=[c[0] for c in CASES]
)
def test_sdpa_capture_equals_eager_and_rolls_out(name, layers, prefix, query, query_tokens):
    model = _build(name).eval()
    assert model.config._attn_implementation == "sdpa"
    size = 64 if name == "vit" else 32
    grid = (size // 8, size // 8)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    before = snapshot(model)
    with torch.no_grad():
        expected = logits(model(x))

    spec, diagnostics = analyse_attention(model, ModelInput((x,)))
    assert spec is not None, [d.message for d in diagnostics]
    assert (spec.prefix_tokens, spec.grid, spec.query) == (prefix, grid, query)
    assert spec.query_tokens == query_tokens and spec.on_gradient_path
    assert "HD501" in {d.code for d in diagnostics}
    tokens = prefix + grid[0] * grid[1]
    with torch.no_grad():
        attentions = spec.capture(model, x)
    assert_probabilities(attentions, layers, (2, 4, tokens, tokens))
    eager = _eager_attentions(model, x)
    assert len(eager) == layers
    for mine, theirs in zip(attentions, eager, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-5)
    assert_rollout(spec.rollout(model, x), 2, grid)
    if query == "pool":
        assert spec.pool_layer == "head.attention"
    assert_untouched(before, model)
    with torch.no_grad():
        assert torch.equal(logits(model(x)), expected)
    json.dumps(spec.to_dict())


def test_default_model_report_says_why_output_attentions_is_empty():
    model = report_vit()
    spec, diagnostics = analyse_attention(model, ModelInput((torch.randn(1, 3, 64, 64),)))
    assert spec is not None and len(spec.layer_names) == 6
    assert spec.layer_names[0] == "vit.layers.0.attention"
    (fused,) = [d for d in diagnostics if d.code == "HD501"]
    assert fused.layer == "vit.layers.0.attention" and fused.severity == "info"
    assert "output_attentions=True returns an empty tuple ()" in fused.message
    assert "never materialises" in fused.message and "'sdpa'" in fused.message
    assert "softmax(q·kᵀ·scale + mask) beside each scaled_dot_product_attention call" in fused.fix
    assert not [d for d in diagnostics if d.severity == "error"]


def test_capture_keeps_sdpa_attention_on_the_gradient_path_without_changing_outputs():
    model = report_vit()
    x = torch.randn(1, 3, 64, 64)
    spec, _ = analyse_attention(model, ModelInput((x,)))
    expected = model(x).logits
    with spec.capturing(model) as record:
        out = model(x).logits
    assert torch.equal(out, expected)  # bit for bit, also with a graph
    grads = torch.autograd.grad(out[0, 3], record.attentions)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_misleading_settings_are_reported_with_the_effective_one():
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(**SMALL, output_attentions=True)
    model = transformers.ViTForImageClassification(cfg).eval()
    model.config.attn_implementation = "eager"  # no underscore: ignored by transformers
    assert model.config._attn_implementation == "sdpa"
    _, diagnostics = analyse_attention(model, ModelInput((torch.randn(1, 3, 32, 32),)))
    (misleading,) = [d for d in diagnostics if d.code == "HD503"]
    assert "attn_implementation='eager'" in misleading.message
    assert "output_attentions=True" in misleading.message and "still run fused" in misleading.message


def test_swin_window_attention_is_refused():
    torch.manual_seed(0)
    cfg = transformers.SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                                  window_size=4)
    model = transformers.SwinForImageClassification(cfg).eval()
    before = snapshot(model)
    spec, diagnostics = analyse_attention(model, ModelInput((torch.randn(1, 3, 32, 32),)))
    assert spec is None
    (error,) = [d for d in diagnostics if d.severity == "error"]
    assert error.code == "HD506" and error.layer == "swin.encoder.layers.0.blocks.0.attention"
    assert_untouched(before, model)
