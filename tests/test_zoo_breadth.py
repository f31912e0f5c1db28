"""Breadth: inspect answers on many more architectures than the ones it was designed on.

For each model: no crash, the model comes back untouched, and each method either has a
spec that works through the real pytorch-grad-cam (Grad-CAM) or captures one attention
tensor per layer (rollout), or is refused with an error code that has an explanation.
Expected answers are pinned where they are the point (refusal codes, the layout found).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from helpers import assert_working_map, marked_by_library, spec_gradcam, timm_builder, torchvision_builder
from torch import nn

import hookdoctor

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")


def _trained_head(model: nn.Module) -> nn.Module:
    """timm zero-initialises some heads (HD003); a trained model's head is not zero."""
    nn.init.normal_(model.get_classifier().weight, std=0.02)
    return model


# name: (builder, input shape, expected gradcam layout or refusal code, expected rollout refusal or None)
BREADTH: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], str, str | None]] = {
    "torchvision-googlenet": (
        torchvision_builder("googlenet", init_weights=True, aux_logits=False),
        (1, 3, 64, 96),
        "NCHW",
        "HD508",
    ),
    "torchvision-inception_v3": (
        torchvision_builder("inception_v3", init_weights=True, aux_logits=False),
        (1, 3, 299, 299),
        "NCHW",
        "HD508",
    ),
    "torchvision-squeezenet": (torchvision_builder("squeezenet1_0"), (1, 3, 64, 96), "NCHW", "HD508"),
    "torchvision-shufflenet": (torchvision_builder("shufflenet_v2_x0_5"), (1, 3, 64, 96), "NCHW", "HD508"),
    "torchvision-maxvit": (torchvision_builder("maxvit_t"), (1, 3, 224, 224), "NCHW", "HD506"),
    "timm-beit": (
        timm_builder("beit_base_patch16_224", depth=1, embed_dim=64, num_heads=2, img_size=64),
        (1, 3, 64, 64),
        "tokens",
        None,
    ),
    "timm-eva02": (timm_builder("eva02_tiny_patch14_224", depth=1, img_size=56), (1, 3, 56, 56), "tokens", None),
    "timm-deit3": (timm_builder("deit3_small_patch16_224", depth=1, img_size=64), (1, 3, 64, 64), "tokens", None),
    "timm-siglip_map": (
        timm_builder("vit_base_patch16_siglip_224", depth=1, embed_dim=64, num_heads=2, img_size=64),
        (1, 3, 64, 64),
        "tokens",
        None,
    ),
    "timm-xcit": (timm_builder("xcit_nano_12_p16_224", depth=2), (1, 3, 224, 224), "tokens", "HD507"),
    "timm-cait": (timm_builder("cait_xxs24_224", depth=1, img_size=64), (1, 3, 64, 64), "tokens", "HD513"),
    "timm-mixer": (
        lambda: _trained_head(timm_builder("mixer_s16_224", img_size=64)()), (1, 3, 64, 64), "tokens", "HD508"
    ),
    "timm-poolformer": (timm_builder("poolformer_s12"), (1, 3, 64, 96), "NCHW", "HD508"),
    "timm-mobilevit": (timm_builder("mobilevit_xxs"), (1, 3, 64, 96), "NCHW", "HD506"),
    "timm-davit": (timm_builder("davit_tiny", depths=(1, 1, 1, 1)), (1, 3, 96, 96), "NCHW", "HD507"),
    # Its batch-1 BatchNorm stem once hid its layout from the locality probe (issue 10, item 7).
    "timm-levit": (timm_builder("levit_128s"), (1, 3, 224, 224), "tokens", "HD513"),
}


def _untouched(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
        "fused": [getattr(m, "fused_attn", None) for m in model.modules()],
    }


@pytest.mark.parametrize("name", marked_by_library(BREADTH))
def test_every_method_has_a_working_spec_or_a_coded_refusal(name: str) -> None:
    build, shape, gradcam_expected, rollout_refusal = BREADTH[name]
    torch.manual_seed(0)  # the random weights, and so borderline verdicts, must not depend on test order
    model = build()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    before = _untouched(model)
    report = hookdoctor.inspect(model, x, methods="all")  # named: a refusal is an error, not HD514
    after = _untouched(model)
    assert before["hooks"] == after["hooks"] and before["fused"] == after["fused"]
    assert all(torch.equal(before["state"][k], v) for k, v in after["state"].items())

    errors = {d.code for d in report.diagnostics if d.severity == "error"}
    assert all(hookdoctor.explain(code).strip() for code in errors)
    if gradcam_expected.startswith("HD"):
        assert report.gradcam is None and gradcam_expected in errors
    else:
        assert report.gradcam is not None, [d.message for d in report.diagnostics]
        assert report.gradcam.layout.kind == gradcam_expected
        assert_working_map(spec_gradcam(report.gradcam, x), report.gradcam.grid)
    if rollout_refusal:
        assert report.rollout is None and rollout_refusal in errors
    else:
        attentions = report.rollout.capture(model, x)
        assert len(attentions) == len(report.rollout.layer_names)
        assert all(torch.allclose(a.sum(-1), torch.ones_like(a.sum(-1)), atol=1e-3) for a in attentions)
