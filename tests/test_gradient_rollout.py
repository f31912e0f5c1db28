"""Gradient-weighted attention rollout (issue 11): ``AttentionSpec.gradient_rollout`` against eager references.

The reference on each model is the formula computed by hand from attention that an eager
implementation materialises on the gradient path: HF ViT with ``attn_implementation="eager"``
and ``output_attentions``, timm's unfused attention (its ``attn_drop`` output is the tensor
that multiplies V), and torchvision's ViT run block by block with the attention written out.
The spec runs on the model as it is (SDPA, fused timm, ``nn.MultiheadAttention``) and must
agree to 1e-5, and leave the model as it found it.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hookdoctor
from fixtures.attention_checks import assert_untouched, snapshot

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

ATOL = 1e-5


def chefer(attentions: list[torch.Tensor], gradients: list[torch.Tensor], prefix: int, grid: tuple[int, int]):
    """The simplified Chefer rule, written out: R = I; R += mean_h((grad * A)+) @ R; CLS row, patches."""
    relevance = torch.eye(attentions[0].shape[-1]).expand(attentions[0].shape[0], -1, -1)
    for attention, gradient in zip(attentions, gradients, strict=True):
        weighted = (gradient * attention).clamp(min=0).mean(dim=1)
        relevance = relevance + torch.bmm(weighted, relevance)
    return relevance[:, 0, prefix:].reshape(-1, *grid)


def _top_score(logits: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()


# ----------------------------------------------------------------------------------- HF ViT


def _hf_config(implementation: str):
    return transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
        image_size=32, patch_size=8, num_labels=5, attn_implementation=implementation,
    )


def _hf_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(_hf_config("sdpa")).eval()
    eager = transformers.ViTForImageClassification(_hf_config("eager")).eval()
    eager.load_state_dict(model.state_dict())
    return model, eager


def _hf_reference(eager: nn.Module, x: torch.Tensor) -> torch.Tensor:
    output = eager(pixel_values=x, output_attentions=True)
    attentions = list(output.attentions)
    gradients = torch.autograd.grad(_top_score(output.logits), attentions)
    return chefer([a.detach() for a in attentions], list(gradients), 1, (4, 4))


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_hf_vit_gradient_rollout_equals_the_eager_formula(implementation: str) -> None:
    model, eager = _hf_pair()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    subject = model if implementation == "sdpa" else eager
    spec = hookdoctor.inspect(subject, x, methods=("rollout",)).rollout
    assert spec is not None and set(spec.kinds) == {"sdpa" if implementation == "sdpa" else "softmax"}
    before = snapshot(subject)
    heatmap = spec.gradient_rollout(subject, x)
    assert_untouched(before, subject)
    expected = _hf_reference(eager, x)
    assert heatmap.shape == (2, 4, 4) and float(heatmap.std()) > 0
    torch.testing.assert_close(heatmap, expected, atol=ATOL, rtol=0)
    # A named target is that column's rollout, not the top class's.
    other = int(model(x).logits.argmin(dim=1)[0])
    assert not torch.allclose(spec.gradient_rollout(subject, x[:1], target=other), heatmap[:1], atol=ATOL)


# ------------------------------------------------------------------------------------ timm


def test_timm_vit_gradient_rollout_equals_its_unfused_attention() -> None:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=5)
    model.eval()
    for block in model.blocks:
        block.attn.fused_attn = True  # the spec runs on the fused (SDPA) path
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    spec = hookdoctor.inspect(model, x, methods=("rollout",)).rollout
    assert spec is not None and set(spec.kinds) == {"sdpa"}
    before = snapshot(model)
    heatmap = spec.gradient_rollout(model, x)
    assert_untouched(before, model)

    reference = copy.deepcopy(model)
    attentions: list[torch.Tensor] = []
    for block in reference.blocks:
        block.attn.fused_attn = False
        # attn_drop's output is the attention that multiplies V (the identity in eval).
        block.attn.attn_drop.register_forward_hook(lambda module, args, out: attentions.append(out))
    gradients = torch.autograd.grad(_top_score(reference(x)), attentions)
    expected = chefer([a.detach() for a in attentions], list(gradients), 1, (4, 4))
    torch.testing.assert_close(heatmap, expected, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- torchvision


def _torchvision_eager_forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """torchvision's VisionTransformer forward with each block's attention written out."""
    tokens = model._process_input(x)
    cls = model.class_token.expand(tokens.shape[0], -1, -1)
    hidden = torch.cat([cls, tokens], dim=1) + model.encoder.pos_embedding
    attentions = []
    for layer in model.encoder.layers:
        mha = layer.self_attention
        normed = layer.ln_1(hidden)
        q, k, v = F.linear(normed, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
        heads, dim = mha.num_heads, mha.embed_dim // mha.num_heads

        def split(t: torch.Tensor, heads: int = heads, dim: int = dim) -> torch.Tensor:
            return t.reshape(t.shape[0], t.shape[1], heads, dim).transpose(1, 2)

        attention = torch.softmax(split(q) @ split(k).transpose(-2, -1) / math.sqrt(dim), dim=-1)
        attentions.append(attention)
        context = (attention @ split(v)).transpose(1, 2).reshape(hidden.shape)
        hidden = hidden + mha.out_proj(context)
        hidden = hidden + layer.mlp(layer.ln_2(hidden))
    logits = model.heads(model.encoder.ln(hidden)[:, 0])
    return logits, attentions


def test_torchvision_vit_gradient_rollout_through_multihead_attention() -> None:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=3, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=5
    )
    nn.init.normal_(model.heads.head.weight, std=0.02)  # weights=None zero-initialises the head: no gradient
    model.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    report = hookdoctor.inspect(model, x, methods=("rollout",))
    spec = report.rollout
    assert spec is not None and set(spec.kinds) == {"mha"}
    assert not spec.on_gradient_path  # the weights MHA returns are off the path (HD510) ...
    before = snapshot(model)
    with torch.no_grad():  # ... and the spec needs neither that nor grad mode from the caller
        heatmap = spec.gradient_rollout(model, x)
    assert_untouched(before, model)

    logits, attentions = _torchvision_eager_forward(model, x)
    torch.testing.assert_close(logits, model(x), atol=1e-5, rtol=1e-5)  # the reference is the same model
    gradients = torch.autograd.grad(_top_score(logits), attentions)
    expected = chefer([a.detach() for a in attentions], list(gradients), 1, (4, 4))
    torch.testing.assert_close(heatmap, expected, atol=ATOL, rtol=0)


def test_the_model_output_is_unchanged_while_multihead_weights_are_on_the_path() -> None:
    from hookdoctor.specs.attention import capture_attention

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3
    ).eval()
    x = torch.randn(1, 3, 32, 32)
    with capture_attention(model) as record:  # the capture asks MHA for its weights: its slow path
        plain = model(x)
    assert not any(record.on_path)
    with capture_attention(model, weights_on_gradient_path=True) as record:
        routed = model(x)
    assert torch.equal(plain, routed) and all(record.on_path)  # the same values, now with A on the path


def test_a_target_out_of_range_is_an_input_error() -> None:
    model, _ = _hf_pair()
    x = torch.randn(1, 3, 32, 32)
    spec = hookdoctor.inspect(model, x, methods=("rollout",)).rollout
    with pytest.raises(hookdoctor.InputError, match="target=9"):
        spec.gradient_rollout(model, x, target=9)


# ------------------------------------------------------------------------------------- zoo

ZOO_VITS = [
    "timm-vit_tiny", "timm-deit_distilled", "timm-dinov2_registers", "timm-gap_vit",
    "torchvision-vit_b_16", "hf-vit", "hf-deit", "hf-dinov2", "hf-dinov2_registers",
]


def _eager_attentions(name: str, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and the attention that multiplies V, from an eager run of a copy of ``model``."""
    if name.startswith("torchvision"):
        return _torchvision_eager_forward(model, x)
    reference = copy.deepcopy(model)
    if name.startswith("timm"):
        attentions: list[torch.Tensor] = []
        for module in reference.modules():
            if hasattr(module, "fused_attn") and isinstance(getattr(module, "attn_drop", None), nn.Dropout):
                module.fused_attn = False
                module.attn_drop.register_forward_hook(lambda m, args, out: attentions.append(out))
        return reference(x), attentions
    reference.config._attn_implementation = "eager"  # transformers reads it at every forward
    for module in reference.modules():
        if hasattr(module, "config"):
            module.config._attn_implementation = "eager"
    output = reference(pixel_values=x, output_attentions=True)
    return output.logits, list(output.attentions)


def _read(spec, relevance: torch.Tensor) -> torch.Tensor:
    """The row the spec reads (CLS tokens, or the mean of the patch rows), patches on the grid."""
    prefix = spec.prefix_tokens
    row = relevance[:, prefix:].mean(dim=1) if spec.query == "mean" else relevance[:, list(spec.query_tokens)].mean(1)
    return row[:, prefix:].reshape(-1, *spec.grid)


@pytest.mark.parametrize("name", ZOO_VITS)
def test_gradient_rollout_on_the_zoo_vits_equals_an_eager_reference(name: str) -> None:
    from test_zoo import ZOO

    build, shape, _ = ZOO[name]
    torch.manual_seed(0)
    model = build()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    spec = hookdoctor.inspect(model, x, methods=("rollout",)).rollout
    assert spec is not None
    before = snapshot(model)
    heatmap = spec.gradient_rollout(model, x)
    assert_untouched(before, model)

    logits, attentions = _eager_attentions(name, model, x)
    assert len(attentions) == len(spec.layer_names)
    gradients = torch.autograd.grad(_top_score(logits), attentions)
    relevance = torch.eye(attentions[0].shape[-1]).expand(x.shape[0], -1, -1)
    for attention, gradient in zip(attentions, gradients, strict=True):
        relevance = relevance + torch.bmm((gradient * attention.detach()).clamp(min=0).mean(dim=1), relevance)
    expected = _read(spec, relevance)
    assert heatmap.shape == expected.shape and float(heatmap.std()) > 0
    torch.testing.assert_close(heatmap, expected, atol=ATOL, rtol=0)
