"""The recommended Grad-CAM spec works on real zoo models, judged by the real backends.

For each model: ``inspect`` leaves the model untouched, and the spec it returns gives,
through pytorch-grad-cam and through Captum, a finite, non-constant map of size
``spec.grid`` whose cells line up with the input. Random weights throughout; inputs are
non-square where the model allows, to catch swapped grids.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from helpers import (
    assert_aligned,
    assert_working_map,
    marked_by_library,
    spec_captum,
    spec_gradcam,
    timm_builder,
    torchvision_builder,
)
from torch import nn
from versions import has_transformers_class, vit_block

import hookdoctor
from hookdoctor.model.guard import preserved

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

CNN_INPUT = (1, 3, 64, 96)
TINY_VIT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
    num_labels=5,
)


def _torchvision(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        model = torchvision_builder(name, **kwargs)()
        if name.startswith("vit"):
            # weights=None zero-initialises the head; a trained model's head is not zero.
            nn.init.normal_(model.heads.head.weight, std=0.02)
        return model

    return build


def _hf(model_class: str, config_class: str, **config) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return getattr(transformers, model_class)(getattr(transformers, config_class)(**config)).eval()

    return build


# name: (builder, input shape, locality tolerance in cells: 0 for tokens, 1 for convolutions)
ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    "torchvision-resnet18": (_torchvision("resnet18"), CNN_INPUT, 1),
    "torchvision-resnet50": (_torchvision("resnet50"), CNN_INPUT, 1),
    "torchvision-vgg11": (_torchvision("vgg11"), CNN_INPUT, 1),
    "torchvision-densenet121": (_torchvision("densenet121"), CNN_INPUT, 1),
    "torchvision-mobilenet_v3_small": (_torchvision("mobilenet_v3_small"), CNN_INPUT, 1),
    "torchvision-efficientnet_b0": (_torchvision("efficientnet_b0"), CNN_INPUT, 1),
    "torchvision-convnext_tiny": (_torchvision("convnext_tiny"), CNN_INPUT, 1),
    "torchvision-vit_b_16": (_torchvision("vit_b_16", image_size=64), (1, 3, 64, 64), 0),
    "torchvision-swin_t": (_torchvision("swin_t"), CNN_INPUT, 1),
    "timm-resnet18": (timm_builder("resnet18"), CNN_INPUT, 1),
    "timm-vit_tiny": (timm_builder("vit_tiny_patch16_224", depth=2, img_size=(64, 96)), (1, 3, 64, 96), 0),
    "timm-deit_distilled": (timm_builder("deit_tiny_distilled_patch16_224", depth=2), (1, 3, 224, 224), 0),
    "timm-dinov2_registers": (timm_builder("vit_small_patch14_reg4_dinov2", depth=2, img_size=56), (1, 3, 56, 56), 0),
    "timm-gap_vit": (
        timm_builder("vit_tiny_patch16_224", depth=2, global_pool="avg", class_token=False, img_size=64),
        (1, 3, 64, 64),
        0,
    ),
    "timm-swin": (timm_builder("swin_tiny_patch4_window7_224", depths=(1, 1, 1, 1)), (1, 3, 224, 224), 1),
    "timm-convnext": (timm_builder("convnext_atto"), CNN_INPUT, 1),
    "hf-vit": (_hf("ViTForImageClassification", "ViTConfig", **TINY_VIT), (1, 3, 32, 32), 0),
    "hf-deit": (_hf("DeiTForImageClassificationWithTeacher", "DeiTConfig", **TINY_VIT), (1, 3, 32, 32), 0),
    "hf-dinov2": (_hf("Dinov2ForImageClassification", "Dinov2Config", **TINY_VIT), (1, 3, 32, 32), 0),
    "hf-dinov2_registers": (
        _hf(
            "Dinov2WithRegistersForImageClassification", "Dinov2WithRegistersConfig", num_register_tokens=4, **TINY_VIT
        ),
        (1, 3, 32, 32),
        0,
    ),
    "hf-swin": (
        _hf(
            "SwinForImageClassification",
            "SwinConfig",
            image_size=32,
            patch_size=2,
            embed_dim=16,
            depths=[2, 2],
            num_heads=[2, 2],
            window_size=4,
            num_labels=5,
        ),
        (1, 3, 32, 32),
        1,
    ),
    "hf-convnext": (
        _hf(
            "ConvNextForImageClassification",
            "ConvNextConfig",
            hidden_sizes=[16, 32],
            depths=[1, 1],
            num_stages=2,
            num_labels=5,
        ),
        (1, 3, 64, 64),
        1,
    ),
    "hf-resnet": (
        _hf(
            "ResNetForImageClassification",
            "ResNetConfig",
            hidden_sizes=[16, 32],
            depths=[1, 1],
            embedding_size=16,
            num_labels=5,
        ),
        (1, 3, 64, 64),
        1,
    ),
}

# What the layout must be for models whose layout is the point of the test.
EXPECTED_LAYOUT = {
    "timm-deit_distilled": ("tokens", 2, (14, 14)),
    "timm-dinov2_registers": ("tokens", 5, (4, 4)),
    "timm-vit_tiny": ("tokens", 1, (4, 6)),
    "timm-gap_vit": ("tokens", 0, (4, 4)),
    "hf-deit": ("tokens", 2, (4, 4)),
    "hf-dinov2_registers": ("tokens", 5, (4, 4)),
    "timm-swin": ("NHWC", 0, (7, 7)),
    "torchvision-resnet18": ("NCHW", 0, (2, 3)),
}


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize(
    "name",
    marked_by_library(
        ZOO,
        extra={"hf-dinov2_registers": has_transformers_class("Dinov2WithRegistersForImageClassification", "4.48")},
    ),
)
def test_recommended_spec_works_with_pytorch_grad_cam_and_captum(name: str) -> None:
    build, shape, tolerance = ZOO[name]
    model = build()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = _hook_count(model)

    report = hookdoctor.inspect(model, x, methods=("gradcam",))

    assert _hook_count(model) == hooks and not model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    spec = report.gradcam
    assert spec is not None, [d.message for d in report.diagnostics]
    assert dict(model.named_modules())[spec.layer_name] is spec.layer
    if name in EXPECTED_LAYOUT:
        assert (spec.layout.kind, spec.layout.prefix_tokens, tuple(spec.grid)) == EXPECTED_LAYOUT[name]
    assert_working_map(spec_gradcam(spec, x), spec.grid)
    target = int(report.target)
    attribution = spec_captum(spec, x, target)
    assert attribution.shape == (1, 1, *spec.grid)
    assert torch.isfinite(attribution).all() and attribution.std() > 0
    assert_aligned(spec, x, tolerance=tolerance)


@pytest.mark.timm
def test_vit_without_token_mixing_after_the_block_keeps_the_block_output() -> None:
    """A GAP ViT reads every patch at the end: the last block itself is recommended (G1's control)."""
    build, shape, _ = ZOO["timm-gap_vit"]
    model = build()
    report = hookdoctor.inspect(model, torch.randn(*shape), methods=("gradcam",))
    assert report.gradcam.layer_name == "blocks.1"


@pytest.mark.timm
@pytest.mark.transformers
def test_cls_vit_recommends_the_norm_before_the_last_attention() -> None:
    for name, expected in (
        ("timm-vit_tiny", "blocks.1.norm1"),
        ("hf-vit", f"{vit_block(1)}.layernorm_before"),
        ("torchvision-vit_b_16", "encoder.layers.encoder_layer_11.ln_1"),
    ):
        build, shape, _ = ZOO[name]
        model = build()
        assert hookdoctor.inspect(model, torch.randn(*shape), methods=("gradcam",)).gradcam.layer_name == expected


@pytest.mark.transformers
def test_preserved_restores_everything_after_a_raising_forward() -> None:
    model = ZOO["hf-vit"][0]()
    model.train()
    model.get_submodule(vit_block(0)).requires_grad_(False)

    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom), preserved(model):
        model.eval()
        model.requires_grad_(True)
        model.register_forward_hook(lambda *a: None)
        raise Boom
    assert model.training and all(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.get_submodule(vit_block(0)).parameters())
    assert _hook_count(model) == 0
