"""Failure modes G1-G16 (DESIGN.md section 1), each shown three ways with the real libraries.

For every failure mode: (1) the naive usage fails with pytorch-grad-cam and/or Captum,
with the precise symptom users report; (2) hookdoctor names the failure with the right
code on the right layer; (3) the spec hookdoctor returns works through pytorch-grad-cam
and Captum - a finite, non-constant map of size ``spec.grid`` whose cells line up with
the input. The models are in ``fixtures/pathological.py``.
"""

from __future__ import annotations

import functools
import pathlib
import sys
import warnings

import numpy as np
import pytest
import torch

import hookdoctor
from fixtures import pathological as fx

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # any pytest import mode
from helpers import (  # noqa: E402
    aligned_cells,
    assert_aligned,
    assert_working_map,
    captum_map,
    corner_cells,
    corr,
    run_pytorch_grad_cam,
    spec_captum,
    spec_gradcam,
    tokens_to_grid,
)
from versions import transformers_major, vit_block  # noqa: E402

GRADCAM = ("gradcam",)

warnings.filterwarnings("ignore", category=UserWarning, module="captum")


@functools.cache
def built(name: str):
    """(model, input) for a fixture, built once per process: tests that change the model use ``fresh``."""
    return getattr(fx, name)(), fx.example_input(name)


@functools.cache
def inspected(name: str, layer: str | tuple[str, ...] | None = None):
    """(model, input, report) for a fixture; inspect leaves the model as it was, so it is shared."""
    model, x = built(name)
    named = list(layer) if isinstance(layer, tuple) else layer
    report = hookdoctor.inspect(model, x, methods=GRADCAM, layer=named)
    return model, x, report


def fresh(name: str):
    """A new model and its input, for tests that change the model."""
    return getattr(fx, name)(), fx.example_input(name)


def module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    return dict(model.named_modules())[name]


def assert_diagnosed(report, layer: str | None, code: str, severity: str) -> None:
    """``code`` is reported for ``layer`` (by check_layer), or in the diagnostics when ``layer`` is None."""
    if layer is not None:
        verdict = report.check_layer(layer)
        found = [d for d in verdict.diagnostics if d.code == code]
        if severity == "error":
            assert verdict.usable is False, f"`{layer}` usable: {[d.code for d in verdict.diagnostics]}"
    else:
        found = [d for d in report.diagnostics if d.code == code]
    assert found, f"{code} not reported for {layer!r}: " + repr(
        [(d.code, d.layer) for d in (report.check_layer(layer).diagnostics if layer else report.diagnostics)])
    for diagnostic in found:
        assert diagnostic.severity == severity, (diagnostic.code, diagnostic.severity)
        if layer is not None:
            assert diagnostic.layer == layer, (diagnostic.code, diagnostic.layer)
        assert diagnostic.message.strip() and diagnostic.fix.strip()
    assert hookdoctor.explain(code).strip()


def assert_spec_works(report, x: torch.Tensor, tolerance: int | None = 0) -> None:
    """The spec gives a working map through pytorch-grad-cam and Captum, lined up with the input.

    Both libraries explain the top class (pytorch-grad-cam's ``targets=None``); Grad-CAM is
    the same formula in both, so Captum's map after a ReLU must equal pytorch-grad-cam's raw
    map cell for cell - which catches a view that Captum reads in another order.
    """
    spec = report.gradcam
    assert spec is not None, [(d.code, d.layer, d.message) for d in report.diagnostics]
    raw = spec_gradcam(spec, x)
    assert_working_map(raw, spec.grid)
    target = int(spec.model(x).detach().argmax(1)[0])
    attribution = spec_captum(spec, x, target)
    assert tuple(attribution.shape) == (x.shape[0], 1, *spec.grid)
    assert torch.isfinite(attribution).all() and float(attribution.std()) > 0
    np.testing.assert_allclose(attribution.clamp(min=0)[:, 0].numpy(), raw,
                               rtol=1e-3, atol=1e-4 * float(raw.max()))
    if tolerance is not None:
        assert_aligned(spec, x, tolerance=tolerance)


# ================================================================================= G1
# ViT with a CLS-only classifier, hooked at the last block output or the final norm.


@pytest.mark.timm
@pytest.mark.parametrize("naive_layer", ["blocks.1", "norm"])
def test_g1_naive_cls_only_vit_gives_all_zero_map(naive_layer):
    model, x = built("cls_only_vit")
    run = run_pytorch_grad_cam(model, [module(model, naive_layer)], x, tokens_to_grid(1, 4, 4))
    assert run.raw[0].shape[-2:] == (4, 4)
    assert float(np.abs(run.raw[0]).max()) == 0.0, "expected an all-zero map"
    patch_gradients = run.gradients[0][:, 1:, :]
    assert float(patch_gradients.abs().max()) == 0.0, "no gradient may reach the patch tokens"


@pytest.mark.timm
@pytest.mark.parametrize("naive_layer", ["blocks.1", "norm"])
def test_g1_diagnosed_no_gradient_to_patches(naive_layer):
    _, _, report = inspected("cls_only_vit")
    assert_diagnosed(report, naive_layer, "HD201", "error")


@pytest.mark.timm
def test_g1_spec_hooks_before_the_last_attention_and_works():
    _, x, report = inspected("cls_only_vit")
    assert report.gradcam.layer_name == "blocks.1.norm1"
    assert_spec_works(report, x)


# ================================================================================= G2
# A token layer [B, T, C] handed to the libraries without a reshape.


@pytest.mark.timm
def test_g2_naive_token_layer_fails_in_pytorch_grad_cam():
    model, x = built("gap_vit")
    with pytest.raises(ValueError, match="Invalid grads shape"):
        run_pytorch_grad_cam(model, [model.blocks[-1]], x)


@pytest.mark.timm
def test_g2_naive_token_layer_gives_captum_a_one_dimensional_map():
    model, x = built("gap_vit")
    attribution = captum_map(model, model.blocks[-1], x, target=0)
    # Tokens read as channels: a "map" over the 32 embedding dims, not a 4x4 grid.
    assert tuple(attribution.shape) == (1, 1, 32)


@pytest.mark.timm
def test_g2_diagnosed_token_layout():
    _, _, report = inspected("gap_vit")
    verdict = report.check_layer("blocks.1")
    assert verdict.usable is True  # the average-pooled ViT is fine at the block output, once reshaped
    assert_diagnosed(report, "blocks.1", "HD301", "info")


@pytest.mark.timm
def test_g2_spec_carries_a_reshape_and_works():
    _, x, report = inspected("gap_vit")
    assert report.gradcam.reshape_transform is not None
    assert tuple(report.gradcam.grid) == (4, 4)
    assert_spec_works(report, x)


# ================================================================================= G3
# Prefix tokens other than one CLS: DeiT distillation token, register tokens.

PREFIX_CASES = [("distilled_deit", 2), ("register_token_vit", 5)]


@pytest.mark.timm
@pytest.mark.parametrize("name", [name for name, _ in PREFIX_CASES])
def test_g3_naive_one_token_reshape_fails(name):
    from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

    model, x = built(name)
    with pytest.raises(RuntimeError, match="is invalid for input of size"):
        run_pytorch_grad_cam(model, [model.blocks[-1].norm1], x,
                             lambda t: vit_reshape_transform(t, height=4, width=4))


@pytest.mark.timm
@pytest.mark.parametrize("name", [name for name, _ in PREFIX_CASES])
def test_g3_diagnosed_prefix_tokens(name):
    _, _, report = inspected(name)
    assert report.check_layer("blocks.1.norm1").usable is True
    assert_diagnosed(report, "blocks.1.norm1", "HD302", "info")


@pytest.mark.timm
@pytest.mark.parametrize(("name", "prefix_tokens"), PREFIX_CASES)
def test_g3_spec_drops_every_prefix_token_and_works(name, prefix_tokens):
    model, x, report = inspected(name)
    assert model.num_prefix_tokens == prefix_tokens
    assert report.check_layer("blocks.1.norm1").prefix_tokens == prefix_tokens
    assert_spec_works(report, x)


# ================================================================================= G4
# Non-square input: the grid is 4x8, a square or swapped reshape is wrong.


@pytest.mark.timm
def test_g4_naive_swapped_grid_runs_silently_with_wrong_geometry():
    model, x = built("non_square_vit")
    swapped = tokens_to_grid(1, 8, 4)  # token count matches 4x8, so nothing errors
    run = run_pytorch_grad_cam(model, [model.blocks[-1].norm1], x, swapped)
    assert run.raw[0].shape[-2:] == (8, 4), "the swapped map has the transposed shape"
    cells = corner_cells((8, 4))
    hits = aligned_cells(model, model.blocks[-1].norm1, swapped, (8, 4), x, cells)
    assert hits < len(cells), "a swapped grid cannot line up with the input"


@pytest.mark.timm
def test_g4_naive_square_default_reshape_fails():
    from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

    model, x = built("non_square_vit")
    with pytest.raises(RuntimeError, match="is invalid for input of size"):
        run_pytorch_grad_cam(model, [model.blocks[-1].norm1], x, vit_reshape_transform)  # 14x14 default


@pytest.mark.timm
def test_g4_diagnosed_non_square_grid():
    _, _, report = inspected("non_square_vit")
    assert_diagnosed(report, "blocks.1.norm1", "HD303", "info")
    assert report.check_layer("blocks.1.norm1").grid == (4, 8)


@pytest.mark.timm
def test_g4_spec_grid_is_height_first_and_lines_up():
    _, x, report = inspected("non_square_vit")
    assert tuple(report.gradcam.grid) == (4, 8)
    assert_spec_works(report, x)


# ================================================================================= G5
# The model returns a tuple, a dict or a Hugging Face ModelOutput instead of logits.

OUTPUT_CASES = [
    ("tuple_output_model", "features", "'tuple' object has no attribute 'cpu'"),
    ("dict_output_model", "features", "'dict' object has no attribute 'cpu'"),
    pytest.param("hf_vit", vit_block(1) + ".layernorm_before",
                 "'ImageClassifierOutput' object has no attribute 'cpu'", marks=pytest.mark.transformers, id="hf_vit"),
]


@pytest.mark.parametrize(("name", "layer", "message"), OUTPUT_CASES)
def test_g5_naive_non_tensor_output_fails_in_pytorch_grad_cam(name, layer, message):
    model, x = built(name)
    reshape = tokens_to_grid(1, 4, 4) if name.startswith("hf_") else None
    with pytest.raises(AttributeError, match=message):
        run_pytorch_grad_cam(model, [module(model, layer)], x, reshape)


@pytest.mark.parametrize(("name", "layer", "message"), OUTPUT_CASES)
def test_g5_naive_non_tensor_output_fails_in_captum(name, layer, message):
    model, x = built(name)
    with pytest.raises(AttributeError, match="has no attribute 'shape'"):
        captum_map(model, module(model, layer), x, target=0)


def test_g5_naive_tuple_output_with_explicit_target_explains_the_aux_head():
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x = built("tuple_output_model")
    class_0 = [ClassifierOutputTarget(0)]
    naive = run_pytorch_grad_cam(model, [model.features], x, targets=class_0)
    aux = run_pytorch_grad_cam(HeadPicker(model, 0), [model.features], x, targets=class_0)
    main = run_pytorch_grad_cam(HeadPicker(model, 1), [model.features], x, targets=class_0)
    # zip(targets, outputs) pairs target 0 with outputs[0], the auxiliary head.
    np.testing.assert_allclose(naive.raw[0], aux.raw[0], rtol=1e-5, atol=1e-7)
    assert not np.allclose(naive.raw[0], main.raw[0])


@pytest.mark.parametrize(("name", "layer", "message"), OUTPUT_CASES)
def test_g5_diagnosed_output_not_a_tensor(name, layer, message):
    _, _, report = inspected(name)
    assert_diagnosed(report, None, "HD001", "info")


def test_g5_diagnosed_several_heads():
    _, _, report = inspected("tuple_output_model")
    assert_diagnosed(report, None, "HD002", "warning")
    (several,) = [d for d in report.diagnostics if d.code == "HD002"]
    assert "[1]" in several.message  # it says which head was passed over


@pytest.mark.parametrize(("name", "layer", "message"), OUTPUT_CASES)
def test_g5_spec_model_returns_the_logits_tensor_and_works(name, layer, message):
    model, x, report = inspected(name)
    spec = report.gradcam
    scores = spec.model(x)
    assert isinstance(scores, torch.Tensor) and scores.dim() == 2
    expected = model(x)
    expected = expected[0] if isinstance(expected, tuple) else expected["logits"]
    torch.testing.assert_close(scores.detach(), expected.detach())
    assert_spec_works(report, x, tolerance=0 if name.startswith("hf_") else 1)


class HeadPicker(torch.nn.Module):
    """The wrapper a user writes by hand: return one element of a tuple-returning model."""

    def __init__(self, model: torch.nn.Module, index: int) -> None:
        super().__init__()
        self.model = model
        self.index = index

    def forward(self, x):
        return self.model(x)[self.index]


# ================================================================================= G6
# The natural target layer returns a tuple (hidden, None).


def test_g6_naive_tuple_layer_fails_in_pytorch_grad_cam():
    model, x = built("tuple_output_layer")
    with pytest.raises(AttributeError, match="'tuple' object has no attribute 'cpu'"):
        run_pytorch_grad_cam(model, [model.block], x)


def test_g6_naive_unpacking_reshape_silently_skips_the_gradient_hook():
    model, x = built("tuple_output_layer")
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'shape'"):
        run_pytorch_grad_cam(model, [model.block], x, lambda output: output[0])


def test_g6_naive_tuple_layer_fails_in_captum():
    model, x = built("tuple_output_layer")
    with pytest.raises(AssertionError, match="not a torch.Tensor"):
        captum_map(model, model.block, x, target=0)


def test_g6_diagnosed_tuple_output():
    _, _, report = inspected("tuple_output_layer")
    assert_diagnosed(report, "block", "HD104", "error")


def test_g6_spec_hooks_a_tensor_producing_layer_and_works():
    model, x, report = inspected("tuple_output_layer")
    spec = report.gradcam
    assert spec.layer_name != "block"
    captured = []
    handle = spec.layer.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        model(x)
    finally:
        handle.remove()
    assert len(captured) == 1 and isinstance(captured[0], torch.Tensor)
    assert_spec_works(report, x, tolerance=1)


# ================================================================================= G7
# Channels-last activations [B, H, W, C] (timm Swin).

SWIN_NAIVE_LAYER = "layers.1.blocks.0"


@pytest.mark.timm
def test_g7_naive_channels_last_map_is_drawn_over_width_and_channels():
    model, x = built("channels_last_swin")
    layer = module(model, SWIN_NAIVE_LAYER)
    run = run_pytorch_grad_cam(model, [layer], x)
    assert tuple(run.activations[0].shape) == (1, 4, 4, 64)
    assert run.raw[0].shape[-2:] == (4, 64), "H read as channels: the map is over (W, C)"
    assert tuple(captum_map(model, layer, x, target=0).shape) == (1, 1, 4, 64)


@pytest.mark.timm
def test_g7_naive_library_swin_reshape_fails_on_channels_last():
    from pytorch_grad_cam.utils.reshape_transforms import swinT_reshape_transform

    model, x = built("channels_last_swin")
    with pytest.raises(RuntimeError, match="is invalid for input of size"):
        run_pytorch_grad_cam(model, [module(model, SWIN_NAIVE_LAYER)], x,
                             lambda t: swinT_reshape_transform(t, height=4, width=4))


@pytest.mark.timm
def test_g7_diagnosed_channels_last():
    _, _, report = inspected("channels_last_swin")
    assert_diagnosed(report, SWIN_NAIVE_LAYER, "HD304", "info")


@pytest.mark.timm
def test_g7_spec_permutes_to_nchw_and_works():
    model, x, report = inspected("channels_last_swin")
    spec = report.gradcam
    assert spec.reshape_transform is not None
    captured = []
    handle = spec.layer.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        model(x)
    finally:
        handle.remove()
    (height, width) = spec.grid
    assert tuple(captured[0].shape[1:3]) == (height, width), "the hooked layer is channels-last"
    assert tuple(spec.reshape_transform(captured[0]).shape[-2:]) == (height, width)
    assert_spec_works(report, x)


# ================================================================================= G8
# A target after global pooling ([B, C, 1, 1]) or a vector ([B, C]).


def test_g8_naive_pooled_layer_gives_zero_map_and_constant_captum():
    model, x = built("pooled_cnn")
    run = run_pytorch_grad_cam(model, [model.pool], x)
    assert run.raw[0].shape[-2:] == (1, 1)
    assert float(run.final.max()) == 0.0, "min-max of a single cell is all zeros"
    attribution = captum_map(model, model.pool, x, target=0)
    assert tuple(attribution.shape) == (1, 1, 1, 1)
    from captum.attr import LayerAttribution

    upsampled = LayerAttribution.interpolate(attribution, (16, 16))
    assert float(upsampled.std()) == 0.0, "one value stretched over the image"


def test_g8_naive_vector_layer_fails_in_pytorch_grad_cam():
    model, x = built("pooled_cnn")
    with pytest.raises(ValueError, match="Invalid"):
        run_pytorch_grad_cam(model, [model.flatten], x)


@pytest.mark.parametrize("naive_layer", ["pool", "flatten"])
def test_g8_diagnosed_no_spatial_extent(naive_layer):
    _, _, report = inspected("pooled_cnn")
    assert_diagnosed(report, naive_layer, "HD305", "error")


def test_g8_spec_hooks_before_pooling_and_works():
    _, x, report = inspected("pooled_cnn")
    assert report.gradcam.layer_name not in ("pool", "flatten", "head")
    assert_spec_works(report, x, tolerance=1)


# ================================================================================= G9
# Frozen parameters, or grad mode off.


def test_g9_naive_frozen_model_fails():
    model, x = built("frozen_cnn")
    with pytest.raises(RuntimeError, match="does not require grad"):
        run_pytorch_grad_cam(model, [model.features], x)


def test_g9_naive_linear_probe_skips_the_gradient_hook():
    model, x = built("linear_probe_cnn")
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'shape'"):
        run_pytorch_grad_cam(model, [model.features], x)


def test_g9_naive_no_grad_context_fails():
    model, x = built("pooled_cnn")
    with torch.no_grad(), pytest.raises(RuntimeError, match="does not require grad"):
        run_pytorch_grad_cam(model, [model.features], x)


@pytest.mark.parametrize("name", ["frozen_cnn", "linear_probe_cnn"])
def test_g9_diagnosed_gradients_disabled(name):
    _, _, report = inspected(name)
    found = [d for d in report.diagnostics if d.code == "HD005"]
    assert found and found[0].layer == report.gradcam.layer_name and found[0].severity == "info"
    assert "frozen" in found[0].message and found[0].fix.strip() and hookdoctor.explain("HD005").strip()


def test_g9_diagnosed_grad_mode_off():
    model, x = built("pooled_cnn")
    with torch.no_grad():
        report = hookdoctor.inspect(model, x, methods=GRADCAM)
    found = [d for d in report.diagnostics if d.code == "HD005"]
    assert found and found[0].layer == report.gradcam.layer_name and "grad mode" in found[0].message


@pytest.mark.parametrize("name", ["frozen_cnn", "linear_probe_cnn"])
def test_g9_spec_works_without_unfreezing(name):
    model, x, report = inspected(name)
    assert_spec_works(report, x, tolerance=1)
    assert not any(p.requires_grad for p in model.features.parameters()), "the spec must not unfreeze"


# ================================================================================= G10
# A module called more than once per forward.


def test_g10_naive_reused_relu_first_call_in_pytorch_grad_cam_last_in_captum():
    model, x = built("reused_relu_block")
    relu_run = run_pytorch_grad_cam(model, [model.block.relu], x)
    block_run = run_pytorch_grad_cam(model, [model.block], x)
    assert len(relu_run.activations) == 2, "the hook fires on both calls"
    # pytorch-grad-cam silently uses the first call (after conv1), not the block output...
    assert not np.allclose(relu_run.raw[0], block_run.raw[0])
    # ...while Captum silently uses the last call, which IS the block output.
    relu_captum = captum_map(model, model.block.relu, x, target=0)
    block_captum = captum_map(model, model.block, x, target=0)
    torch.testing.assert_close(relu_captum, block_captum)


def test_g10_naive_shared_encoder_libraries_disagree():
    model, x = built("shared_encoder")
    run = run_pytorch_grad_cam(model, [model.enc], x)
    assert len(run.activations) == 2
    target = int(model(x).argmax())
    captum_last_call = captum_map(model, model.enc, x, target=target)[0, 0].clamp(min=0).numpy()
    # Each library keeps a different half of the image and stretches it over the whole.
    assert run.raw[0].shape[-2:] == (8, 8)
    assert corr(run.raw[0][0], captum_last_call) < 0.5


def test_g10_naive_torchvision_basic_block_relu_is_the_post_bn1_call():
    model, x = built("torchvision_resnet18")
    block = model.layer4[-1]
    relu_run = run_pytorch_grad_cam(model, [block.relu], x)
    block_run = run_pytorch_grad_cam(model, [block], x)
    assert len(relu_run.activations) == 2
    # The first call is relu(bn1(conv1(x))), not the block output that the second call returns.
    assert not torch.allclose(relu_run.activations[0], block_run.activations[0])
    torch.testing.assert_close(relu_run.activations[1], block_run.activations[0])


@pytest.mark.parametrize(("name", "layer"), [
    ("reused_relu_block", "block.relu"),
    ("shared_encoder", "enc"),
    ("torchvision_resnet18", "layer4.1.relu"),
])
def test_g10_diagnosed_called_several_times(name, layer):
    _, _, report = inspected(name)
    assert_diagnosed(report, layer, "HD103", "error")


def test_g10_spec_hooks_a_module_called_once_and_works():
    model, x, report = inspected("reused_relu_block")
    assert report.gradcam.layer_name != "block.relu"
    calls = []
    handle = report.gradcam.layer.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        model(x)
    finally:
        handle.remove()
    assert len(calls) == 1
    assert_spec_works(report, x, tolerance=1)


def test_g10_shared_encoder_gets_no_spec_rather_than_a_half_image_map():
    # No layer of the siamese model has a grid over the whole 16x32 input.
    _, _, report = inspected("shared_encoder")
    assert report.gradcam is None
    assert any(d.code == "HD203" and d.severity == "error" for d in report.diagnostics)


def test_g10_named_block_containing_the_reused_relu_is_the_spec():
    _, x, report = inspected("reused_relu_block", layer="block")
    assert report.check_layer("block").usable is True
    assert report.gradcam.layer_name == "block"


# ================================================================================= G11
# A layer that never runs, or runs off the score's path.


def test_g11_naive_never_called_layer_fails():
    model, x = built("never_called_branch")
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'shape'"):
        run_pytorch_grad_cam(model, [model.unused], x)
    with pytest.raises(AssertionError, match="Forward hook did not obtain any outputs"):
        captum_map(model, model.unused, x, target=0)


def test_g11_naive_off_path_layer_fails():
    model, x = built("aux_head_off_path")
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'shape'"):
        run_pytorch_grad_cam(model, [model.aux], x)
    with pytest.raises(RuntimeError, match="not have been used in the graph"):
        captum_map(model, model.aux, x, target=0)


@pytest.mark.parametrize(("name", "layer", "code"), [
    ("never_called_branch", "unused", "HD102"),
    ("aux_head_off_path", "aux", "HD202"),
])
def test_g11_diagnosed(name, layer, code):
    _, _, report = inspected(name)
    assert_diagnosed(report, layer, code, "error")


@pytest.mark.parametrize("name", ["never_called_branch", "aux_head_off_path"])
def test_g11_spec_is_on_the_score_path_and_works(name):
    _, x, report = inspected(name)
    assert report.gradcam.layer_name not in ("unused", "aux")
    assert_spec_works(report, x, tolerance=1)


# ================================================================================= G12
# An in-place operation after the target rewrites the stored activation.


def _true_output(layer: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's output as it was when the layer returned (cloned before anything can rewrite it)."""
    kept = []
    handle = layer.register_forward_hook(lambda m, i, o: kept.append(o.detach().clone()))
    try:
        model(x)
    finally:
        handle.remove()
    return kept[0]


def test_g12_naive_inplace_rewrites_the_stored_activation():
    model, x = built("inplace_after_target")
    true_bn = _true_output(model.block.bn, model, x)
    run = run_pytorch_grad_cam(model, [model.block.bn], x)
    stored = run.activations[0]
    assert float(true_bn.min()) < 0, "bn's real output has negative values"
    assert float(stored.min()) >= 0, "the stored 'activation' is the post-ReLU tensor"
    assert not torch.allclose(stored, true_bn)


def test_g12_naive_torchvision_bn2_stored_activation_is_rewritten():
    model, x = built("torchvision_resnet18")
    bn2 = model.layer4[-1].bn2
    true_bn2 = _true_output(bn2, model, x)
    stored = run_pytorch_grad_cam(model, [bn2], x).activations[0]
    assert float(true_bn2.min()) < 0 <= float(stored.min())


@pytest.mark.parametrize(("name", "layer"), [
    ("inplace_after_target", "block.bn"),
    ("torchvision_resnet18", "layer4.1.bn2"),
])
def test_g12_diagnosed_overwritten_in_place(name, layer):
    _, _, report = inspected(name)
    assert_diagnosed(report, layer, "HD105", "error")


@pytest.mark.parametrize(("name", "naive_layer"), [
    ("inplace_after_target", "block.bn"),
    ("torchvision_resnet18", "layer4.1.bn2"),
])
def test_g12_spec_activation_is_not_rewritten_and_works(name, naive_layer):
    model, x, report = inspected(name)
    spec = report.gradcam
    assert spec.layer_name != naive_layer
    run = run_pytorch_grad_cam(spec.model, [spec.layer], x, spec.reshape_transform)
    torch.testing.assert_close(run.activations[0], _true_output(spec.layer, model, x))
    assert_spec_works(report, x, tolerance=1)


# ================================================================================= G13
# Substring / prefix matching of layer names.


@pytest.mark.timm
def test_g13_naive_prefix_selector_averages_three_layers():
    model, x = built("deep_vit")
    picked = [n for n, _ in model.named_modules() if n.startswith("blocks.1") and n.endswith("norm1")]
    assert picked == ["blocks.1.norm1", "blocks.10.norm1", "blocks.11.norm1"]
    reshape = tokens_to_grid(1, 4, 4)
    naive = run_pytorch_grad_cam(model, [module(model, n) for n in picked], x, reshape)
    intended = run_pytorch_grad_cam(model, [model.blocks[1].norm1], x, reshape)
    assert len(naive.raw) == 3, "three layers' maps are averaged"
    assert not np.allclose(naive.final, intended.final, atol=1e-3)


@pytest.mark.timm
@pytest.mark.parametrize(("typed", "expected_match"), [
    ("blocks.1.norm", "blocks.1.norm1"),
    ("blocks1.norm1", "blocks.1.norm1"),
])
def test_g13_diagnosed_unknown_layer_with_close_matches(typed, expected_match):
    _, _, report = inspected("deep_vit", layer=typed)
    assert_diagnosed(report, typed, "HD101", "error")
    assert any(d.code == "HD101" and d.layer == typed for d in report.diagnostics)
    assert expected_match in report.check_layer(typed).suggestions


@pytest.mark.timm
def test_g13_exact_name_is_judged_alone():
    _, _, report = inspected("deep_vit")
    verdict = report.check_layer("blocks.1")
    assert all(d.layer == "blocks.1" for d in verdict.diagnostics)


@pytest.mark.timm
def test_g13_spec_for_the_exact_name_has_exactly_that_layer():
    model, x, report = inspected("deep_vit", layer="blocks.1.norm1")
    spec = report.gradcam
    assert spec.layer_name == "blocks.1.norm1"
    (only,) = spec.pytorch_grad_cam_kwargs()["target_layers"]
    assert only is model.blocks[1].norm1
    assert_spec_works(report, x)


# ================================================================================= G14
# The score, not the layer: a saturated softmax, a zero-initialised head.


def test_g14_naive_saturated_softmax_gives_a_black_map():
    model, x = built("saturated_softmax")
    assert float(model(x).detach().max()) == 1.0, "fp32 softmax saturated"
    run = run_pytorch_grad_cam(model, [model[0].features], x)
    assert float(run.gradients[0].abs().max()) < 1e-10
    assert float(run.final.max()) < 0.01, "pytorch-grad-cam's 1e-7 eps swamps the map: black"


def test_g14_naive_zero_init_head_gives_zero_maps_everywhere():
    model, x = built("zero_init_head_vit")
    layer = model.encoder.layers[-1].ln_1
    run = run_pytorch_grad_cam(model, [layer], x, tokens_to_grid(1, 4, 4))
    assert float(np.abs(run.raw[0]).max()) == 0.0
    assert float(captum_map(model, layer, x, target=0).abs().max()) == 0.0


def test_g14_naive_negative_evidence_gives_an_all_zero_map():
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    model, x = built("negative_evidence_binary")
    naive = run_pytorch_grad_cam(model, [model.features], x)  # targets=None: argmax of one logit = +logit
    assert float(naive.raw[0].max()) == 0.0, "every weight negative: ReLU leaves nothing"
    negated = run_pytorch_grad_cam(model, [model.features], x, targets=[BinaryClassifierOutputTarget(0)])
    assert_working_map(negated.raw[0], (8, 8))


def test_g14_diagnosed_negative_evidence_only():
    _, _, report = inspected("negative_evidence_binary")
    found = [d for d in report.diagnostics if d.code == "HD204"]
    assert found and found[0].severity == "warning" and found[0].layer == "features"
    assert found[0].message.strip() and found[0].fix.strip() and hookdoctor.explain("HD204").strip()


def test_g14_negative_evidence_spec_gives_a_non_empty_map():
    _, x, report = inspected("negative_evidence_binary")
    assert_spec_works(report, x, tolerance=1)


def test_g14_diagnosed_saturated_output():
    _, _, report = inspected("saturated_softmax")
    found = [d for d in report.diagnostics if d.code == "HD004"]
    assert found and found[0].severity == "warning" and found[0].layer == "1"
    assert found[0].message.strip() and found[0].fix.strip() and hookdoctor.explain("HD004").strip()


def test_g14_diagnosed_zero_initialised_head():
    _, _, report = inspected("zero_init_head_vit")
    found = [d for d in report.diagnostics if d.code == "HD003"]
    assert found and found[0].severity == "warning" and found[0].layer == "heads.head"
    assert found[0].message.strip() and found[0].fix.strip() and hookdoctor.explain("HD003").strip()


def test_g14_spec_explains_the_logit_and_works():
    model, x, report = inspected("saturated_softmax")
    logits = report.gradcam.model(x)
    torch.testing.assert_close(logits.softmax(1).detach(), model(x).detach())
    assert float(logits.detach().abs().max()) > 1.0, "logits, not probabilities"
    assert_spec_works(report, x, tolerance=1)


def test_g14_zero_head_spec_works_once_the_head_is_reinitialised():
    model, x = fresh("zero_init_head_vit")
    report = hookdoctor.inspect(model, x, methods=GRADCAM)
    assert report.gradcam.layer_name == "encoder.layers.encoder_layer_1.ln_1"
    with torch.no_grad():  # what HD003's fix says: a head with non-zero weights
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    assert_spec_works(report, x)


# ================================================================================= G15
# Several target layers, paired with each other's tensors by position.


def test_g15_naive_two_target_layers_pair_mix_with_enc_second_call():
    model, x = built("shared_encoder")
    both = run_pytorch_grad_cam(model, [model.enc, model.mix], x)
    mix_alone = run_pytorch_grad_cam(model, [model.mix], x)
    assert len(both.activations) == 3, "enc twice, mix once, for two target layers"
    target = int(model(x).argmax())
    enc_second_call = captum_map(model, model.enc, x, target=target)[0, 0].clamp(min=0).numpy()
    # The 'mix' slot holds enc's second call, not mix.
    assert corr(both.raw[1][0], enc_second_call) > 0.99
    assert not np.allclose(both.raw[1], mix_alone.raw[0])


def test_g15_diagnosed_several_target_layers():
    _, _, report = inspected("pooled_cnn", layer=("features.1", "features.3"))
    found = [d for d in report.diagnostics if d.code == "HD401"]
    assert found and found[0].severity == "warning" and found[0].message.strip() and found[0].fix.strip()
    assert hookdoctor.explain("HD401").strip()


def test_g15_spec_has_one_target_layer_and_works():
    _, x, report = inspected("pooled_cnn", layer=("features.1", "features.3"))
    (only,) = report.gradcam.pytorch_grad_cam_kwargs()["target_layers"]
    assert only is report.gradcam.layer
    assert report.gradcam.layer_name in ("features.1", "features.3")
    assert_spec_works(report, x, tolerance=1)


# ================================================================================= G16
# Library drift: transformers 5 renamed the ViT blocks (vit.encoder.layer.N -> vit.layers.N);
# timm Swin went channels-last. A path written for the other transformers major is the
# naive usage, on either side of the rename.


def _last_norm_names() -> tuple[str, str]:
    """(name under the installed transformers, name under the other major) of the last block's first norm."""
    five, four = "vit.layers.1.layernorm_before", "vit.encoder.layer.1.layernorm_before"
    return (five, four) if transformers_major() >= 5 else (four, five)


@pytest.mark.transformers
def test_g16_naive_path_of_the_other_major_is_gone():
    model, _ = built("hf_vit")
    if transformers_major() >= 5:
        with pytest.raises(AttributeError, match="encoder"):
            model.vit.encoder.layer[-1].layernorm_before  # noqa: B018 - the transformers 4 tutorial's path
    else:
        with pytest.raises(AttributeError, match="layers"):
            model.vit.layers[-1].layernorm_before  # noqa: B018 - the transformers 5 path


@pytest.mark.transformers
def test_g16_diagnosed_renamed_layer_with_the_installed_name_suggested():
    installed, other = _last_norm_names()
    _, _, report = inspected("hf_vit", layer=other)
    assert_diagnosed(report, other, "HD101", "error")
    verdict = report.check_layer(other)
    assert verdict.suggestions[0] == installed


@pytest.mark.transformers
def test_g16_spec_found_structurally_and_works():
    model, x, report = inspected("hf_vit")
    spec = report.gradcam
    assert spec.layer is model.get_submodule(_last_norm_names()[0])
    assert spec.layer_name == _last_norm_names()[0]
    assert_spec_works(report, x)
