"""Specs that work in the user's real runtime: wrappers, torch.compile, no_grad, inference_mode, bfloat16.

Every spec is run through the real pytorch-grad-cam (and the pasted snippet through
``exec``), in the mode the user's code runs in.
"""

from __future__ import annotations

import pathlib
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import hookdoctor
from fixtures import mutating as fx
from hookdoctor.specs.wrappers import Float32Maps, GradEnabledScore, ScoreModel

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # any pytest import mode
from helpers import assert_working_map, run_pytorch_grad_cam, spec_gradcam  # noqa: E402

GRADCAM = ("gradcam",)
X = fx.example_input()

warnings.filterwarnings("ignore", category=UserWarning, module="captum")


def timm_vit() -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=5
    ).eval()


def hf_vit() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
        patch_size=8, num_labels=5,
    )
    return transformers.ViTForImageClassification(config).eval()


def resnet18() -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=5).eval()


def targets(index: int) -> list:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return [ClassifierOutputTarget(index)]


def run_snippet(code: str, model: nn.Module, x: torch.Tensor, class_index: int) -> np.ndarray:
    namespace = {"model": model, "x": x, "class_index": class_index}
    exec(compile(code, "<snippet>", "exec"), namespace)  # the snippet is hookdoctor's own output
    heatmap = namespace["heatmap"]
    assert heatmap.shape == (x.shape[0], *x.shape[-2:]) and np.isfinite(heatmap).all() and heatmap.std() > 0
    return heatmap


# -- wrappers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("wrap", [nn.DataParallel, torch.compile], ids=["DataParallel", "compile"])
@pytest.mark.parametrize("build", [timm_vit, hf_vit], ids=["timm", "hf"])
def test_wrapped_vits_are_inspected_and_their_spec_works(build, wrap):
    inner = build()
    model = wrap(inner)
    x = torch.randn(1, 3, 32, 32)
    report = hookdoctor.inspect(model, x, methods=GRADCAM)
    spec = report.gradcam
    prefix = "module." if isinstance(model, nn.DataParallel) else "_orig_mod."
    assert spec is not None and spec.layer_name.startswith(prefix)
    assert dict(model.named_modules())[spec.layer_name] is spec.layer
    assert "HD601" in {d.code for d in report.diagnostics}
    # The dead blocks are still named, with the wrapper's prefix (this raised KeyError before).
    dead = [d for d in report.diagnostics if d.code == "HD201"]
    assert dead and all(d.layer.startswith(prefix) for d in dead)
    assert_working_map(spec_gradcam(spec, x, targets(report.target)), spec.grid)


def test_a_compiled_cnn_gets_the_eager_module_as_its_model():
    """pytorch-grad-cam on the compiled module fails ("donated buffers ... retain_graph"); on the eager
    module it works and computes the same function. (Not compiling keeps the test fast.)"""
    inner = resnet18()
    model = torch.compile(inner)
    x = torch.randn(1, 3, 32, 32)
    report = hookdoctor.inspect(model, x, methods=GRADCAM)
    spec = report.gradcam
    assert spec.model is inner
    assert spec.layer_name.startswith("_orig_mod.") and dict(model.named_modules())[spec.layer_name] is spec.layer
    assert_working_map(spec_gradcam(spec, x, targets(report.target)), spec.grid)
    code = spec.code()
    assert "GradCAM(model=model._orig_mod," in code
    run_snippet(code, model, x, report.target)


def test_a_compiled_model_under_a_score_wrapper_wraps_the_eager_module():
    inner = resnet18()
    model = torch.compile(inner)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():  # HD005: the spec's model is a ScoreModel
        spec = hookdoctor.inspect(model, x, methods=GRADCAM).gradcam
    assert isinstance(spec.model, ScoreModel) and spec.model.model is inner
    assert "ScoreModel(model._orig_mod)" in spec.code()


# -- no_grad and inference_mode -------------------------------------------------------------------
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
@pytest.mark.parametrize("build", [fx.SmallCNN, timm_vit], ids=["cnn", "vit"])
def test_callers_without_grad_get_a_spec_that_works_in_their_mode(build, mode):
    model = build().eval()
    with mode():
        x = torch.randn(1, 3, 32, 32)
        report = hookdoctor.inspect(model, x, methods=GRADCAM)
        spec = report.gradcam
        assert "HD005" in {d.code for d in report.diagnostics}
        assert isinstance(spec.model, ScoreModel)
        assert isinstance(spec.model(x), GradEnabledScore)
        assert_working_map(spec_gradcam(spec, x, targets(report.target)), spec.grid)
        assert_working_map(spec_gradcam(spec, x, None), spec.grid)  # the library picks the class itself
        if mode is torch.no_grad:
            run_snippet(spec.code(), model, x, report.target)


def test_the_plain_snippet_works_when_pasted_under_no_grad():
    """A spec made with grad on (the user's model itself) pasted into evaluation code under no_grad."""
    model = fx.SmallCNN().eval()
    report = hookdoctor.inspect(model, X, methods=GRADCAM)
    assert report.gradcam.model is model
    with torch.no_grad():
        run_snippet(report.gradcam.code(), model, X, report.target)


def test_score_model_gives_plain_tensors_when_grad_is_on():
    model = fx.SmallCNN().eval()
    with torch.no_grad():
        spec = hookdoctor.inspect(model, X, methods=GRADCAM).gradcam
    score = spec.model(X)
    assert type(score) is torch.Tensor and score.requires_grad


def test_a_forward_running_part_of_the_model_in_inference_mode_gets_a_coded_answer():
    report = hookdoctor.inspect(fx.InferenceModeBackbone().eval(), X, methods=GRADCAM)
    codes = [d.code for d in report.diagnostics]
    assert report.gradcam is None and "HD203" in codes
    assert any("inference_mode" in d.message for d in report.diagnostics if d.code == "HD203")


# -- bfloat16 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("build", [fx.SmallCNN, timm_vit], ids=["cnn", "vit"])
def test_bfloat16_models_get_a_spec_that_works_in_pytorch_grad_cam(build):
    model = build().eval().to(torch.bfloat16)
    x = torch.randn(1, 3, 32, 32, dtype=torch.bfloat16)
    report = hookdoctor.inspect(model, x, methods=GRADCAM)
    spec = report.gradcam
    with pytest.raises(TypeError, match="unsupported ScalarType BFloat16"):  # the naive use
        run_pytorch_grad_cam(model, [spec.layer], x, spec.layout.transform(), targets(report.target))
    assert isinstance(spec.reshape_transform, Float32Maps)
    assert_working_map(spec_gradcam(spec, x, targets(report.target)), spec.grid)
    assert_working_map(spec_gradcam(spec, x, None), spec.grid)
    run_snippet(spec.code(), model, x, report.target)
    attribution = spec.captum().attribute(x, target=report.target)
    assert attribution.shape == (1, 1, *spec.grid) and torch.isfinite(attribution.float()).all()
