"""Attention capture and rollout on transformers vision models.

transformers 5.x and the newest 4.x run these models with SDPA by default; 4.41 (the
declared floor) runs ViT and DeiT with SDPA and the others eager. The reference is each
model's own eager attention, switched in the test only (on a copy) where the model is not
eager already; the library never switches the implementation.
"""

from __future__ import annotations

import copy
import json
import tempfile

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.transformers

from versions import (  # noqa: E402
    default_attention,
    has_transformers_class,
    swin_attention,
    transformers_major,
    vit_attention,
)

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


def _eager_copy(model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """The model with eager attention, and the switch that worked: the one HD501's fix must name.

    ``set_attn_implementation`` does not exist in 4.41 and only warns for BEiT in 4.57; a
    model loaded with ``attn_implementation='eager'`` is eager in every version.
    """
    if model.config._attn_implementation == "eager":
        return model, "already eager"
    if hasattr(model, "set_attn_implementation"):
        reference = copy.deepcopy(model)
        reference.set_attn_implementation("eager")
        if reference.config._attn_implementation == "eager":
            return reference, "model.set_attn_implementation('eager')"
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        reference = type(model).from_pretrained(folder, attn_implementation="eager").eval()
    assert reference.config._attn_implementation == "eager"
    return reference, "from_pretrained(..., attn_implementation='eager')"


def _eager_attentions(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    reference, _ = _eager_copy(model)
    with torch.no_grad():
        return reference(x, output_attentions=True).attentions


# name, layers, prefix tokens, query, query tokens
CASES = [
    ("vit", 6, 1, "cls", (0,)),
    ("deit", 2, 2, "cls", (0, 1)),
    ("beit", 2, 1, "mean", ()),
    ("dinov2", 2, 1, "cls", (0,)),
    pytest.param("dinov2_registers", 2, 5, "cls", (0,), id="dinov2_registers",
                 marks=has_transformers_class("Dinov2WithRegistersModel", "4.48")),
    ("clip", 2, 1, "cls", (0,)),
    ("siglip", 2, 0, "pool", ()),
]


@pytest.mark.parametrize(
    ("name", "layers", "prefix", "query", "query_tokens"),
    CASES,
    ids=[c[0] if isinstance(c, tuple) else c.id for c in CASES],
)
def test_capture_equals_eager_and_rolls_out(name, layers, prefix, query, query_tokens):
    model = _build(name).eval()
    implementation = default_attention(model)
    assert model.config._attn_implementation == implementation
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
    # HD501 (fused kernel) exactly when the model runs SDPA: all of them from 4.57, ViT and DeiT at 4.41.
    fused = [d for d in diagnostics if d.code == "HD501"]
    assert len(fused) == (implementation == "sdpa")
    if fused:  # its fix names the switch that works for this model in this version
        assert f"{_eager_copy(model)[1]} makes output_attentions work" in fused[0].fix
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
        # transformers 4 keeps SiglipVisionModel's modules under vision_model; 5.x flattened it.
        root = "" if transformers_major() >= 5 else "vision_model."
        assert spec.pool_layer == root + "head.attention"
    assert_untouched(before, model)
    with torch.no_grad():
        assert torch.equal(logits(model(x)), expected)
    json.dumps(spec.to_dict())


def test_default_model_report_says_what_output_attentions_gives():
    model = report_vit()
    x = torch.randn(1, 3, 64, 64)
    spec, diagnostics = analyse_attention(model, ModelInput((x,)))
    assert spec is not None and len(spec.layer_names) == 6
    assert spec.layer_names[0] == vit_attention(0)
    fused = [d for d in diagnostics if d.code == "HD501"]
    assert not [d for d in diagnostics if d.severity == "error"]
    # What the user would get; asked last, as transformers 5 leaves recording hooks behind (HD512).
    with torch.no_grad():
        given = model(x, output_attentions=True).attentions
    assert default_attention(model) == "sdpa"  # ViT has SDPA from 4.41, the declared floor
    (fused,) = fused
    assert fused.layer == vit_attention(0) and fused.severity == "info"
    assert "never materialises" in fused.message and "'sdpa'" in fused.message
    assert "softmax(q·kᵀ·scale + mask) beside each scaled_dot_product_attention call" in fused.fix
    if transformers_major() >= 5:
        assert given == ()
        assert "output_attentions=True returns an empty tuple ()" in fused.message
    else:
        # 4.41 gives one None per layer, 4.57 None for the whole tuple.
        assert given is None or given == (None,) * 6
        assert "output_attentions=True returns None in their place" in fused.message
    # The switch the fix names exists in this version and makes output_attentions work.
    assert f"{_eager_copy(model)[1]} makes output_attentions work" in fused.fix
    assert len(_eager_attentions(model, x)) == 6


# What output_attentions=True gives under SDPA in transformers 4.x (4.57; at 4.41 both
# run eager): CLIP one None per layer, while BEiT's BeitSdpaSelfAttention re-runs eager for
# that call. transformers 5 returns () for both.
GIVES_IN_4X = {"beit": "eager", "clip": "None per layer"}


@pytest.mark.parametrize("name", list(GIVES_IN_4X))
def test_fused_attention_report_matches_what_output_attentions_gives(name):
    model = _build(name).eval()
    x = torch.randn(1, 3, 32, 32)
    _, diagnostics = analyse_attention(model, ModelInput((x,)))
    fused = [d for d in diagnostics if d.code == "HD501"]
    with torch.no_grad():
        given = model(x, output_attentions=True).attentions
    materialised = len(given) == 2 and all(isinstance(a, torch.Tensor) for a in given)
    if default_attention(model) == "eager":  # transformers 4.41: no SDPA path for BEiT or CLIP yet
        assert fused == [] and materialised
        return
    (fused,) = fused
    if transformers_major() >= 5:
        assert given == () and "output_attentions=True returns an empty tuple ()" in fused.message
    else:
        assert "output_attentions=True returns None in their place" in fused.message
        assert "such as BEiT, re-run that call eager instead" in fused.message
        assert materialised if GIVES_IN_4X[name] == "eager" else given == (None, None)


def test_capture_keeps_attention_on_the_gradient_path_without_changing_outputs():
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
    _, diagnostics = analyse_attention(model, ModelInput((torch.randn(1, 3, 32, 32),)))
    assert model.config._attn_implementation == "sdpa"
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
    assert error.code == "HD506" and error.layer == swin_attention(0, 0)
    assert_untouched(before, model)


def test_output_attentions_leaves_recording_hooks_in_transformers_5_only():
    """HD512's claim, per version; hookdoctor's own capture leaves no hook in either."""
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(transformers.ViTConfig(**SMALL)).eval()
    x = torch.randn(1, 3, 32, 32)

    def hooks() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    spec, _ = analyse_attention(model, ModelInput((x,)))
    with torch.no_grad():
        spec.capture(model, x)
    assert hooks() == 0
    with torch.no_grad():
        model(x, output_attentions=True)
    # transformers 5 records the 2 attention modules' outputs with hooks it never removes.
    assert hooks() == (4 if transformers_major() >= 5 else 0)
