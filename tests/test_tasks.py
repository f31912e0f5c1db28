"""Beyond image classification: each task's score and each input kind, through the real libraries.

Every test runs the real pytorch-grad-cam and Captum: first as a user would without
hookdoctor (the naive use fails, or explains nothing), then with the spec, whose map must
be finite, not constant, of ``spec.grid`` size (Captum: ``[B, 1, *grid]``).
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget
from torch import nn
from versions import transformers_major

import hookdoctor
from fixtures import tasks
from hookdoctor.errors import InputError
from hookdoctor.geometry.layout import Layout
from hookdoctor.geometry.locality import is_working_map, lines_up
from hookdoctor.model.inputs import infer_input_shape

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # any pytest import mode
from helpers import run_pytorch_grad_cam, spec_gradcam  # noqa: E402


class SimilarityToConceptTarget:
    """pytorch-grad-cam's embedding target, as its tutorial writes it (1.5.7 does not ship it)."""

    def __init__(self, features: torch.Tensor) -> None:
        self.features = features

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return torch.nn.CosineSimilarity(dim=0)(model_output, self.features)


def _codes(report: hookdoctor.Report) -> set[str]:
    return {d.code for d in report.diagnostics}


def _assert_spec_works(report: hookdoctor.Report, x: torch.Tensor) -> None:
    """The spec's map, from the real pytorch-grad-cam and Captum, works for report.target."""
    spec = report.gradcam
    assert spec is not None, [d.message for d in report.errors()]
    scores = spec.model(x)
    assert scores.dim() == 2 and scores.shape[0] == x.shape[0], "spec.model(x) is [B, N]"
    cam = GradCAM(**spec.pytorch_grad_cam_kwargs())(
        input_tensor=spec.as_backend_input(x), targets=[ClassifierOutputTarget(report.target)]
    )
    assert np.isfinite(cam).all() and cam.std() > 1e-3, "pytorch-grad-cam's map is empty or constant"
    attribution = spec.captum().attribute(x, target=report.target).detach()
    assert tuple(attribution.shape) == (x.shape[0], 1, *spec.grid)
    assert is_working_map(attribution[:, 0])


# -- segmentation ---------------------------------------------------------------------------


def test_segmentation_unet_naive_use_fails_and_the_spec_explains_class_masks() -> None:
    torch.manual_seed(0)
    model, x = tasks.TinyUNet().eval(), torch.randn(1, 3, 32, 32)
    with pytest.raises(RuntimeError, match="only for scalar outputs"):  # ClassifierOutputTarget on a [K, H, W] map
        GradCAM(model=model, target_layers=[model.encoder])(input_tensor=x, targets=[ClassifierOutputTarget(0)])
    with pytest.raises(AssertionError, match="Target not provided"):
        LayerGradCam(model, model.encoder).attribute(x, target=0)

    report = hookdoctor.inspect(model, x, methods="gradcam")
    assert report.task == "segmentation" and "HD010" in _codes(report)
    logits = model(x).detach()
    predicted = logits[0].argmax(0)
    assert report.target == int(predicted.flatten().mode().values)  # the class on the most pixels
    _assert_spec_works(report, x)
    # Column k is SemanticSegmentationTarget's score for class k and the example's mask.
    for k in range(logits.shape[1]):
        mask = (predicted == k).float().numpy()
        expected = SemanticSegmentationTarget(k, mask)(logits[0])
        assert torch.allclose(report.gradcam.model(x)[0, k].detach(), expected, atol=1e-4)


def test_segmentation_torchvision_fcn_dict_output() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=4, aux_loss=False
    ).eval()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(AttributeError):  # the {"out": ...} dict: pytorch-grad-cam calls outputs.cpu()
        GradCAM(model=model, target_layers=[model.backbone.layer4])(input_tensor=x, targets=None)
    report = hookdoctor.inspect(model, x, methods="gradcam")
    assert report.task == "segmentation"
    assert {"HD001", "HD010"} <= _codes(report)
    _assert_spec_works(report, x)


@pytest.mark.transformers
def test_segmentation_segformer_logits_survive_inspect() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2],
        decoder_hidden_size=32, num_labels=4, patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2],
    )
    model, x = transformers.SegformerForSemanticSegmentation(config).eval(), torch.randn(1, 3, 64, 64)
    report = hookdoctor.inspect(model, x, methods="gradcam")  # the model's first forward is hookdoctor's
    assert report.task == "segmentation"
    # transformers installs its hidden-state hooks at the first forward; inspect must not leave them half removed.
    assert model(x).logits.shape == (1, 4, 16, 16)
    _assert_spec_works(report, x)


# -- embeddings -----------------------------------------------------------------------------


def test_embedding_without_reference_is_said_and_the_own_embedding_has_no_gradient() -> None:
    torch.manual_seed(0)
    model, x = tasks.TinyEmbedder().eval(), torch.randn(1, 3, 32, 32)
    own = model(x)[0].detach()
    # Naive: the similarity of the example to its own embedding is 1 and has no gradient (rounding noise
    # only), so pytorch-grad-cam's min-max scaling blows that noise up into a map.
    naive = run_pytorch_grad_cam(model, [model.features], x, targets=[SimilarityToConceptTarget(own)])

    report = hookdoctor.inspect(model, x, methods="gradcam")
    assert report.task == "embedding" and report.target == 0
    found = next(d for d in report.diagnostics if d.code == "HD011")
    assert found.severity == "warning" and "random direction" in found.message
    _assert_spec_works(report, x)
    spec_raw = spec_gradcam(report.gradcam, x, [ClassifierOutputTarget(0)])
    assert naive.raw[0].max() < 1e-4 * spec_raw.max()


@pytest.mark.timm
def test_embedding_with_reference_is_the_cosine_similarity() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    x, other = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    reference = model(other)[0].detach()
    report = hookdoctor.inspect(model, x, methods="gradcam", reference=reference)
    assert report.task == "embedding"
    assert next(d for d in report.diagnostics if d.code == "HD011").severity == "info"
    _assert_spec_works(report, x)
    expected = SimilarityToConceptTarget(reference)(model(x)[0])
    assert torch.allclose(report.gradcam.model(x)[0, 0], expected, atol=1e-5)


@pytest.mark.timm
def test_unpooled_timm_features_are_an_embedding_not_a_crash() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=0, global_pool="").eval()
    x = torch.randn(1, 3, 32, 32)
    report = hookdoctor.inspect(model, x, methods="gradcam")
    assert report.task == "embedding"
    _assert_spec_works(report, x)


def test_task_override_and_wrong_task() -> None:
    torch.manual_seed(0)
    model, x = tasks.TinyEmbedder().eval(), torch.randn(1, 3, 32, 32)
    report = hookdoctor.inspect(model, x, methods="gradcam", task="classification")
    assert report.task == "classification"
    with pytest.raises(InputError, match="not a torchvision detector"):
        hookdoctor.inspect(model, x, methods="gradcam", task="detection")
    with pytest.raises(InputError, match="reference= has 3 values"):
        hookdoctor.inspect(model, x, methods="gradcam", reference=torch.ones(3))


# -- CLIP-style image-text models -----------------------------------------------------------


@pytest.mark.transformers
def test_clip_explains_image_text_logits_with_the_text_input() -> None:
    pytest.importorskip("transformers")
    model, inputs = tasks.tiny_clip_with_text()
    # The naive use fails either way: transformers 5 takes the image positionally and returns a
    # CLIPOutput (pytorch-grad-cam calls outputs.cpu()); 4.x reads a positional tensor as input_ids.
    with pytest.raises(AttributeError if transformers_major() >= 5 else ValueError):
        GradCAM(model=model, target_layers=[model.vision_model.encoder.layers[0]])(
            input_tensor=inputs["pixel_values"], targets=None
        )
    report = hookdoctor.inspect(model, inputs, methods="gradcam")
    assert report.task == "classification"
    assert {"HD002", "HD014"} <= _codes(report)
    heads = next(d for d in report.diagnostics if d.code == "HD002")
    assert "logits_per_image" in heads.message and "image_embeds" in heads.message
    x = inputs["pixel_values"]
    assert torch.allclose(report.gradcam.model(x), model(**inputs).logits_per_image, atol=1e-5)
    _assert_spec_works(report, x)


@pytest.mark.transformers
def test_clip_without_an_input_gets_token_ids_and_explain_picks_the_entry() -> None:
    pytest.importorskip("transformers")
    model, inputs = tasks.tiny_clip_with_text()
    report = hookdoctor.inspect(model, methods="gradcam")
    assert report.input_shape == (1, 3, 32, 32) and report.gradcam is not None
    with pytest.raises(InputError, match="explain='input_ids' names a torch.int64 tensor"):
        hookdoctor.inspect(model, inputs, methods="gradcam", explain="input_ids")
    with pytest.raises(InputError, match="explain='text' names no entry"):
        hookdoctor.inspect(model, inputs, methods="gradcam", explain="text")


# -- detection ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector() -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=5, min_size=64, max_size=64
    ).eval()


def test_detection_per_detection_scores_work_in_both_libraries(detector: nn.Module) -> None:
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(AttributeError):  # a list of dicts: pytorch-grad-cam calls outputs.cpu()
        GradCAM(model=detector, target_layers=[detector.backbone.body])(input_tensor=x, targets=None)
    report = hookdoctor.inspect(detector, x, methods="gradcam")
    assert report.task == "detection" and report.target == 0 and "HD012" in _codes(report)
    _assert_spec_works(report, x)
    found = detector(x)[0]
    scores = report.gradcam.model(x)[0].detach()
    assert scores.shape == found["scores"].shape
    assert torch.allclose(scores, found["scores"].detach(), atol=1e-5)  # each detection matches itself


def test_a_detector_that_keeps_nothing_is_a_coded_refusal(detector: nn.Module) -> None:
    threshold = detector.roi_heads.score_thresh
    detector.roi_heads.score_thresh = 1.0  # no box scores above 1
    try:
        report = hookdoctor.inspect(detector, torch.rand(1, 3, 64, 64), methods="gradcam")
    finally:
        detector.roi_heads.score_thresh = threshold
    assert report.gradcam is None and not report.ok and report.task == "detection"
    refusal = report.errors()[0]
    assert refusal.code == "HD013" and "box_score_thresh" in refusal.fix


# -- video, spectrograms, signals -----------------------------------------------------------


def test_video_gets_a_three_axis_grid() -> None:
    torch.manual_seed(0)
    model, x = tasks.TinyVideoCNN().eval(), torch.randn(1, 3, 4, 16, 16)
    report = hookdoctor.inspect(model, x, methods="gradcam")
    assert report.gradcam is not None and report.gradcam.grid == (4, 8, 8)
    assert report.gradcam.layout.kind == "NCTHW"
    _assert_spec_works(report, x)


def test_torchvision_video_models_infer_a_clip_and_work() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.video.r3d_18(weights=None, num_classes=4).eval()
    assert infer_input_shape(model) == (1, 3, 16, 112, 112)  # not (1, 3, 224, 224)
    x = torch.randn(1, 3, 4, 32, 32)
    report = hookdoctor.inspect(model, x, methods="gradcam")
    assert len(report.gradcam.grid) == 3
    _assert_spec_works(report, x)


def test_spectrogram_needs_the_4d_view_for_pytorch_grad_cam() -> None:
    torch.manual_seed(0)
    model, x = tasks.SpectrogramCNN().eval(), torch.randn(1, 40, 24)
    with pytest.raises(ValueError, match="Invalid input_tensor shape"):
        GradCAM(model=model, target_layers=[model.features])(input_tensor=x, targets=[ClassifierOutputTarget(0)])
    report = hookdoctor.inspect(model, x, methods="gradcam")  # a correct 3-D input: no batch-dimension hint
    assert "HD015" in _codes(report) and report.gradcam.grid == (20, 12)
    assert report.gradcam.as_backend_input(x).shape == (1, 1, 40, 24)
    _assert_spec_works(report, x)


def test_signal_gets_a_one_axis_grid() -> None:
    torch.manual_seed(0)
    model, x = tasks.SignalCNN().eval(), torch.randn(1, 2, 64)
    with pytest.raises(ValueError, match="Invalid input_tensor shape"):
        GradCAM(model=model, target_layers=[model.features])(input_tensor=x, targets=[ClassifierOutputTarget(0)])
    report = hookdoctor.inspect(model, x, methods="gradcam")
    assert report.gradcam.grid == (32,) and report.gradcam.layout.kind == "NCL"
    assert report.gradcam.as_backend_input(x).shape == (1, 2, 1, 64)
    _assert_spec_works(report, x)
    # Pictures overlay [H, W] maps on an image: a signal's report says so instead of drawing nonsense.
    with pytest.raises(InputError, match="takes a signal input, and pictures are drawn for image inputs only"):
        report.figure()


@pytest.mark.parametrize("axes", [(6, 8, 8), (20,)])
def test_locality_tells_a_reversed_axis_on_video_and_signals(axes: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    conv = nn.Conv3d(3, 4, 3, padding=1) if len(axes) == 3 else nn.Conv1d(3, 4, 3, padding=1)
    x = torch.randn(1, 3, *axes, requires_grad=True)
    out = conv(x)
    kind = "NCTHW" if len(axes) == 3 else "NCL"
    layout = Layout(kind, axes, 4)
    assert lines_up(out, x, layout)
    assert not lines_up(out.flip(2), x, layout)  # time (or the signal) reversed
    if len(axes) == 3:
        assert not lines_up(out.flip(4), x, layout)  # mirrored in width


def test_inputs_of_three_and_five_dimensions_and_wrong_hints() -> None:
    with pytest.raises(InputError, match="without its batch dimension") as info:  # [C, H, W] for a 2-D CNN
        hookdoctor.inspect(tasks.TinyUNet(), torch.randn(3, 32, 32))
    assert "unsqueeze(0)" in str(info.value)
    report = hookdoctor.inspect(tasks.TinyVideoCNN(), input_shape=(1, 3, 4, 16, 16), methods="gradcam")
    assert report.input_shape == (1, 3, 4, 16, 16) and report.ok
    report = hookdoctor.inspect(tasks.SignalCNN(), input_shape=(1, 2, 64), methods="gradcam")
    assert report.ok


# -- a final softmax or sigmoid written as a function ---------------------------------------


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_functional_final_activation_is_found_through_the_graph(activation: str) -> None:
    torch.manual_seed(0)
    model, x = tasks.FunctionalActivationCNN(activation).eval(), torch.randn(1, 3, 32, 32)
    target = int(model(x).argmax())
    # Naive: the saturated probability's gradient vanishes, so the map is (numerically) black.
    cam = GradCAM(model=model, target_layers=[model.features])(input_tensor=x, targets=[ClassifierOutputTarget(target)])
    assert not cam.max() > 1e-6 or not np.isfinite(cam).all()
    report = hookdoctor.inspect(model, x, methods="gradcam")
    assert "HD203" not in _codes(report)
    saturated = next(d for d in report.diagnostics if d.code == "HD004")
    assert saturated.severity == "warning" and activation in saturated.message
    assert torch.allclose(report.gradcam.model(x), model.logits(x))  # the logits, not the probabilities
    _assert_spec_works(report, x)


def test_functional_softmax_that_is_not_saturated_is_info() -> None:
    class Soft(tasks.FunctionalActivationCNN):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.softmax(self.logits(x) / 1e6, dim=1)

    torch.manual_seed(0)
    report = hookdoctor.inspect(Soft().eval(), torch.randn(1, 3, 32, 32), methods="gradcam")
    assert next(d for d in report.diagnostics if d.code == "HD004").severity == "info"


# -- the command line -----------------------------------------------------------------------

_FACTORIES = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "tasks.py"


@pytest.mark.parametrize(
    ("factory", "shape", "grid"),
    [("tiny_video_cnn", "1,3,4,16,16", [4, 8, 8]), ("tiny_signal_cnn", "1,2,64", [32])],
)
def test_cli_takes_five_and_three_dimensional_shapes(capsys, factory: str, shape: str, grid: list[int]) -> None:
    from hookdoctor.cli import main

    code = main(["inspect", f"{_FACTORIES}:{factory}", "--input-shape", shape, "--method", "gradcam", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["model"]["input_shape"] == [int(s) for s in shape.split(",")]
    assert report["gradcam"]["grid"] == grid
    # The terminal report leaves out the map preview, an [H, W] picture, for these inputs.
    assert main(["inspect", f"{_FACTORIES}:{factory}", "--input-shape", shape, "--method", "gradcam"]) == 0
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.transformers
def test_cli_factory_may_return_the_model_and_its_inputs(capsys) -> None:
    pytest.importorskip("transformers")
    from hookdoctor.cli import main

    code = main(["inspect", f"{_FACTORIES}:tiny_clip_with_text", "--method", "gradcam", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["model"]["task"] == "classification"
    assert "HD014" in {d["code"] for d in report["diagnostics"]}
    assert report["gradcam"]["score"].startswith("the image-text logit")


@pytest.mark.transformers
def test_audio_spectrogram_transformer_frequency_major_patches() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ASTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_length=64, num_mel_bins=32, frequency_stride=16, time_stride=16, num_labels=3,
    )
    model = transformers.ASTForAudioClassification(config).eval()
    assert infer_input_shape(model) == (1, 64, 32)  # [B, T, F] from the audio config
    x = torch.randn(1, 64, 32)
    with pytest.raises(AttributeError):  # the ModelOutput first; the 3-D input would fail next
        GradCAM(model=model, target_layers=[model.audio_spectrogram_transformer.embeddings])(
            input_tensor=x, targets=[ClassifierOutputTarget(0)]
        )
    report = hookdoctor.inspect(model, x, methods="gradcam")  # a correct [B, T, F]: no batch-dimension hint
    spec = report.gradcam
    assert spec is not None and spec.grid == (4, 2)  # (time, frequency) patches, in the input's order
    assert spec.layout.transposed  # AST lays its patches out frequency first
    _assert_spec_works(report, x)


@pytest.mark.parametrize("build", ["unet", "signal", "video"])
@pytest.mark.parametrize("backend", ["pytorch-grad-cam", "captum"])
def test_pasted_snippets_run(build: str, backend: str) -> None:
    torch.manual_seed(0)
    model, x = {
        "unet": (tasks.TinyUNet, (1, 3, 32, 32)),
        "signal": (tasks.SignalCNN, (1, 2, 64)),
        "video": (tasks.TinyVideoCNN, (1, 3, 4, 16, 16)),
    }[build]
    model, x = model().eval(), torch.randn(*x)
    report = hookdoctor.inspect(model, x, methods="gradcam")
    namespace = {"model": model, "x": x, "example_input": x, "class_index": report.target}
    exec(report.gradcam.code(backend), namespace)  # noqa: S102 - the snippet a user would paste
    result = namespace["heatmap"] if backend == "pytorch-grad-cam" else namespace["attribution"]
    values = np.asarray(result.detach() if isinstance(result, torch.Tensor) else result)
    assert np.isfinite(values).all() and values.std() > 0


def test_two_dimensional_inputs_get_a_hint_only_where_it_is_right() -> None:
    with pytest.raises(InputError, match=r"one signal \[C, L\] without its batch dimension: pass x.unsqueeze\(0\)"):
        hookdoctor.inspect(tasks.SignalCNN(), torch.randn(2, 64))  # its first conv takes 2 channels
    with pytest.raises(InputError, match="3 to 5 dimensions") as info:  # [B, L]? [C, L]? not for us to guess
        hookdoctor.inspect(tasks.SpectrogramCNN(), torch.randn(4, 100))
    assert "unsqueeze" not in str(info.value) and "wrapper" in str(info.value)
