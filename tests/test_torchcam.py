"""torchcam (issue 11): ``spec.torchcam()`` and ``spec.code("torchcam")`` give pytorch-grad-cam's map.

Every map here is computed by the real torchcam and the real pytorch-grad-cam: a
channels-first CNN (plain code), an HF ViT (tokens, routed through the spec's
``[B, C, H, W]`` view), timm and torchvision ViTs, and one call of a shared module.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest
import torch
from torch import nn

import hookdoctor
from fixtures import shared_calls

pytest.importorskip("torchcam")
transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # any pytest import mode
from helpers import run_pytorch_grad_cam  # noqa: E402


class _SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def _hf_vit() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=8, num_labels=5,
    )
    return transformers.ViTForImageClassification(config).eval(), torch.randn(1, 3, 32, 32)


def _timm_vit() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=5)
    return model.eval(), torch.randn(1, 3, 32, 32)


def _torchvision_vit() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5
    )
    nn.init.normal_(model.heads.head.weight, std=0.02)  # weights=None zero-initialises the head: no gradient
    return model.eval(), torch.randn(1, 3, 32, 32)


def _cnn() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return _SmallCNN().eval(), torch.randn(1, 3, 16, 16)


def _one_call(name: str) -> tuple[nn.Module, torch.Tensor]:
    image = shared_calls.example_input(name)
    assert isinstance(image, torch.Tensor)
    return getattr(shared_calls, name)(), image


BUILDS = {
    "cnn": _cnn,
    "hf_vit": _hf_vit,
    "timm_vit": _timm_vit,
    "torchvision_vit": _torchvision_vit,
    "per_call": lambda: _one_call("recurrent_refiner"),  # one call of a module that runs several times
    "per_call_tokens": lambda: _one_call("shared_block_vit"),  # ... of a token layer: routed twice
}


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _pytorch_grad_cam_raw(spec, x: torch.Tensor, target: int) -> np.ndarray:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    kwargs = spec.pytorch_grad_cam_kwargs()
    run = run_pytorch_grad_cam(
        kwargs["model"], kwargs["target_layers"], x, kwargs["reshape_transform"], [ClassifierOutputTarget(target)]
    )
    return run.raw[0]


def _scaled(raw: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's scaling (scale_cam_image), at the layer's own grid."""
    shifted = raw - raw.min(axis=(1, 2), keepdims=True)
    return shifted / (1e-7 + shifted.max(axis=(1, 2), keepdims=True))


@pytest.mark.parametrize("name", list(BUILDS))
def test_the_torchcam_extractor_gives_pytorch_grad_cams_map(name: str) -> None:
    model, x = BUILDS[name]()
    report = hookdoctor.inspect(model, x, methods=("gradcam",))
    spec = report.gradcam
    assert spec is not None
    if name in ("hf_vit", "timm_vit", "torchvision_vit"):
        assert spec.reshape_transform is not None  # the routed case
    extractor = spec.torchcam()
    try:
        scores = extractor.model(x)
        (raw,) = extractor(class_idx=report.target, scores=scores, normalized=False)
        (heatmap,) = extractor(class_idx=report.target, scores=extractor.model(x))
    finally:
        extractor.remove_hooks()
    assert _hooks(model) == 0
    expected = _pytorch_grad_cam_raw(spec, x, report.target)
    assert tuple(raw.shape) == (1, *spec.grid) and float(raw.std()) > 0
    # The same map before scaling; after it, the libraries differ only in their epsilon (1e-8 / 1e-7).
    np.testing.assert_allclose(raw.numpy(), expected, rtol=1e-5, atol=1e-7 * float(expected.max()))
    np.testing.assert_allclose(heatmap.numpy(), _scaled(expected), atol=1e-4)


@pytest.mark.parametrize("name", ["cnn", "hf_vit", "per_call", "per_call_tokens"])
def test_the_torchcam_snippet_runs_as_pasted(name: str) -> None:
    model, x = BUILDS[name]()
    report = hookdoctor.inspect(model, x, methods=("gradcam",))
    spec = report.gradcam
    code = spec.code("torchcam")
    assert "from torchcam.methods import GradCAM" in code
    namespace = {"model": model, "x": x, "class_index": report.target}
    exec(compile(code, "<snippet>", "exec"), namespace)  # the snippet is hookdoctor's own output
    assert _hooks(model) == 0
    expected = _scaled(_pytorch_grad_cam_raw(spec, x, report.target))
    np.testing.assert_allclose(namespace["heatmap"].numpy(), expected, atol=1e-4)


def test_a_bfloat16_cnn_gets_plain_torchcam_code_with_the_spec_extractors_map() -> None:
    # torchcam computes in bfloat16 itself: only the score is cast (for pytorch-grad-cam's numpy), not the layer
    model, x = _cnn()
    model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
    report = hookdoctor.inspect(model, x, methods=("gradcam",))
    spec = report.gradcam
    code = spec.code("torchcam")
    assert "import hookdoctor" not in code and "cam = GradCAM(ScoreModel(model), target_layer=layer)" in code
    namespace = {"model": model, "x": x, "class_index": report.target}
    exec(compile(code, "<snippet>", "exec"), namespace)  # the snippet is hookdoctor's own output
    extractor = spec.torchcam()
    try:
        (expected,) = extractor(class_idx=report.target, scores=extractor.model(x))
    finally:
        extractor.remove_hooks()
    assert _hooks(model) == 0
    torch.testing.assert_close(namespace["heatmap"], expected)


def test_without_torchcam_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _cnn()
    spec = hookdoctor.inspect(model, x, methods=("gradcam",)).gradcam
    monkeypatch.setitem(sys.modules, "torchcam.methods", None)  # an import of it now fails, as when absent
    with pytest.raises(hookdoctor.MissingDependencyError, match=r"hookdoctor\[torchcam\]"):
        spec.torchcam()


def test_the_cli_prints_the_torchcam_snippet(capsys: pytest.CaptureFixture[str]) -> None:
    from hookdoctor.cli import main

    root = pathlib.Path(__file__).resolve().parents[1]
    cnn = f"{root / 'fixtures' / 'factories.py'}:tiny_cnn"
    code = main(["inspect", cnn, "--method", "gradcam", "--backend", "torchcam"])
    out = capsys.readouterr().out
    assert code == 0 and "from torchcam.methods import GradCAM" in out and "cam.remove_hooks()" in out


ZOO_NAMES = ["torchvision-resnet18", "timm-dinov2_registers", "timm-convnext", "hf-deit", "hf-swin"]


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_torchcam_on_zoo_models_gives_pytorch_grad_cams_map(name: str) -> None:
    from test_zoo import ZOO

    build, shape, _ = ZOO[name]
    torch.manual_seed(0)
    model = build()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    report = hookdoctor.inspect(model, x, methods=("gradcam",))
    spec = report.gradcam
    extractor = spec.torchcam()
    try:
        (raw,) = extractor(class_idx=report.target, scores=extractor.model(x), normalized=False)
    finally:
        extractor.remove_hooks()
    assert _hooks(model) == 0
    expected = _pytorch_grad_cam_raw(spec, x, report.target)
    assert tuple(raw.shape) == (1, *spec.grid) and float(raw.std()) > 0
    np.testing.assert_allclose(raw.numpy(), expected, rtol=1e-4, atol=1e-6 * float(expected.max()))
