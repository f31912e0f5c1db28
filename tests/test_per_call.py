"""Per-call specs (issue 13): Grad-CAM on one call of a module that runs several times.

For each model of ``fixtures/shared_calls.py`` - a two-view siamese encoder, a recurrent
refinement block, a weight-tied decoder - the naive pytorch-grad-cam use draws the wrong
call's map, and the per-call spec (``NAME#k``) works through the real pytorch-grad-cam
and Captum: a finite, non-constant map of size ``spec.grid`` whose cells line up with the
input that call sees.
"""

from __future__ import annotations

import copy
import functools
import pathlib
import pickle
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import hookdoctor
from fixtures import shared_calls as fx
from fixtures.attention_checks import assert_untouched, snapshot
from hookdoctor.cli import main
from hookdoctor.errors import InputError
from hookdoctor.specs.wrappers import CallRouter

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # any pytest import mode
from helpers import (  # noqa: E402
    assert_aligned,
    assert_working_map,
    corr,
    run_pytorch_grad_cam,
    spec_captum,
    spec_gradcam,
)

GRADCAM = ("gradcam",)
ROOT = pathlib.Path(__file__).resolve().parents[1]

warnings.filterwarnings("ignore", category=UserWarning, module="captum")


@functools.cache
def inspected(name: str, layer: str | None = None):
    """(model, input, report) for a fixture; inspect leaves the model as it was, so it is shared."""
    model, x = getattr(fx, name)(), fx.example_input(name)
    return model, x, hookdoctor.inspect(model, x, methods=GRADCAM, layer=layer)


def assert_spec_works(spec, x: torch.Tensor) -> np.ndarray:
    """pytorch-grad-cam and Captum give the same working map from the spec, lined up with ``x``."""
    raw = spec_gradcam(spec, x)
    assert_working_map(raw, spec.grid)
    target = int(spec.model(x).detach().argmax(1)[0])
    attribution = spec_captum(spec, x, target)
    assert tuple(attribution.shape) == (x.shape[0], 1, *spec.grid)
    np.testing.assert_allclose(attribution.clamp(min=0)[:, 0].numpy(), raw, rtol=1e-3, atol=1e-4 * float(raw.max()))
    assert_aligned(spec, x, tolerance=1)  # convolutions: the border cells' receptive fields are clipped
    return raw


def calls_seen(layer: nn.Module, model: nn.Module, x: torch.Tensor) -> int:
    """How often a forward hook on ``layer`` fires during one ``model(x)``."""
    fired: list[int] = []
    handle = layer.register_forward_hook(lambda module, inputs, output: fired.append(1))
    try:
        model(x)
    finally:
        handle.remove()
    return len(fired)


def routed_output(spec, x: torch.Tensor) -> torch.Tensor:
    """What the libraries see at ``spec.layer`` during ``spec.model(x)``."""
    seen: dict[str, torch.Tensor] = {}
    handle = spec.layer.register_forward_hook(lambda module, inputs, output: seen.__setitem__("out", output))
    try:
        with torch.enable_grad():
            spec.model(x)
    finally:
        handle.remove()
    return seen["out"]


class ExplainSecondView(nn.Module):
    """How users explain the reference image of a two-input model: the query held fixed."""

    def __init__(self, model: nn.Module, query: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.query = query

    def forward(self, reference: torch.Tensor) -> torch.Tensor:
        return self.model(self.query, reference)


# ============================================================================ two-view siamese


def test_siamese_naive_gradcam_draws_the_query_when_the_reference_is_explained():
    model = fx.two_view_siamese()
    query, reference = fx.example_input("two_view_siamese")
    naive = run_pytorch_grad_cam(ExplainSecondView(model, query), [model.enc], reference)
    assert len(naive.activations) == 2  # one per call of `enc`
    with torch.no_grad():
        # The map it draws is built from the query's features, not the reference's...
        torch.testing.assert_close(naive.activations[0], model.enc(query))
        assert not torch.allclose(naive.activations[0], model.enc(reference))
    # ...so another reference image gives the very same activation: the map ignores what it explains.
    other = run_pytorch_grad_cam(ExplainSecondView(model, query), [model.enc], torch.randn_like(reference))
    torch.testing.assert_close(other.activations[0], naive.activations[0])


def test_siamese_recommends_the_call_that_sees_the_explained_input():
    _, _, report = inspected("two_view_siamese")
    spec = report.gradcam
    assert spec is not None, [(d.code, d.layer, d.message) for d in report.diagnostics]
    assert (spec.layer_name, spec.module_name, spec.call_index) == ("enc#0", "enc", 0)
    assert "routes call 0 alone" in spec.reasons[0]
    assert "the call that sees the explained input (call 1 processes another input)" in spec.reasons[0]
    assert isinstance(spec.model, CallRouter) and spec.layer is spec.model.call_view
    assert not report.errors() and report.ok
    note = [d for d in report.diagnostics if d.code == "HD103"]
    assert note and note[0].severity == "info" and note[0].layer == "enc#0"
    # The report itself says which call and why, not only the spec's reasons.
    assert "the spec explains call 0: it is the call that sees the explained input" in note[0].message


def test_siamese_each_call_lines_up_with_its_own_input_and_not_the_other():
    model = fx.two_view_siamese()
    query, reference = fx.example_input("two_view_siamese")
    # The other view requires grad too, so that "does not depend on it" is measured, not assumed.
    query_report = hookdoctor.inspect(model, (query, reference.clone().requires_grad_(True)), methods=GRADCAM)
    # A dict input with `reference` first explains the reference.
    reference_report = hookdoctor.inspect(
        model, {"reference": reference, "query": query.clone().requires_grad_(True)}, methods=GRADCAM
    )
    q_spec, r_spec = query_report.gradcam, reference_report.gradcam
    assert (q_spec.layer_name, r_spec.layer_name) == ("enc#0", "enc#1")
    maps = []
    for spec, own in ((q_spec, query), (r_spec, reference)):
        maps.append(assert_spec_works(spec, own))
        x = own.clone().requires_grad_(True)
        out = routed_output(spec, x)
        # The one input the explained view's call is computed from is its own image.
        fixed = spec.model.score_model.call_template
        others = [t for t in [*fixed.args, *fixed.kwargs.values()] if isinstance(t, torch.Tensor) and t.requires_grad]
        assert len(others) == 1
        cell = out[0, :, 2, 2].sum()
        grad_own, grad_other = torch.autograd.grad(cell, [x, others[0]], allow_unused=True)
        assert grad_own is not None and float(grad_own.abs().sum()) > 0
        assert grad_other is None or float(grad_other.abs().sum()) == 0
    # The two views' maps are different maps, not one map drawn twice.
    assert not np.allclose(maps[0], maps[1])


def test_siamese_the_other_views_call_is_diagnosed():
    _, _, report = inspected("two_view_siamese")
    verdict = report.check_layer("enc#1")
    assert verdict.usable is False
    found = [d for d in verdict.diagnostics if d.code == "HD306"]
    assert found and "does not see the explained input" in found[0].message
    assert report.check_layer("enc#0").usable is True
    assert report.check_layer("enc").usable is False  # the module as a whole: HD103, as before


# ============================================================================ recurrent block


def test_recurrent_naive_gradcam_draws_the_first_step_not_the_features_the_head_reads():
    model, x, report = inspected("recurrent_refiner")
    naive = run_pytorch_grad_cam(model, [model.block], x)
    assert len(naive.activations) == 3
    spec = report.gradcam
    assert spec.layer_name == "block#2"
    routed = run_pytorch_grad_cam(**{**spec.pytorch_grad_cam_kwargs(), "x": x})
    assert len(routed.activations) == 1
    # The naive map is the first call's: its activation, and a map unlike the last call's.
    torch.testing.assert_close(naive.activations[0], run_pytorch_grad_cam(
        **{**inspected("recurrent_refiner", "block#0")[2].gradcam.pytorch_grad_cam_kwargs(), "x": x}
    ).activations[0])
    torch.testing.assert_close(routed.activations[0], naive.activations[2])
    assert not np.allclose(naive.raw[0], routed.raw[0], atol=1e-3 * float(routed.raw[0].max()))
    assert corr(naive.raw[0], routed.raw[0]) < 0.99


def test_recurrent_spec_hooks_the_last_call_only_and_works():
    model, x, report = inspected("recurrent_refiner")
    spec = report.gradcam
    assert (spec.module_name, spec.call_index, spec.grid) == ("block", 2, (8, 8))
    assert "`block` runs 3 times per forward pass" in spec.reasons[0]
    assert calls_seen(model.block, model, x) == 3
    assert calls_seen(spec.layer, spec.model, x) == 1
    assert_spec_works(spec, x)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_recurrent_every_call_gets_its_own_working_spec(index):
    _, x, report = inspected("recurrent_refiner", f"block#{index}")
    assert report.ok and report.check_layer(f"block#{index}").usable
    assert report.gradcam.layer_name == f"block#{index}"
    assert_spec_works(report.gradcam, x)


def test_recurrent_unknown_call_says_how_many_calls_there_were():
    model, x = fx.recurrent_refiner(), fx.example_input("recurrent_refiner")
    report = hookdoctor.inspect(model, x, methods=GRADCAM, layer="block#3")
    verdict = report.check_layer("block#3")
    assert verdict.usable is False and report.ok is False
    assert [d.code for d in verdict.diagnostics] == ["HD102"]
    assert "runs 3 times" in verdict.diagnostics[0].message and "`block#2`" in verdict.diagnostics[0].fix
    once = report.check_layer("head#1")
    assert not once.usable and "runs once" in once.diagnostics[0].message
    assert report.check_layer("head#0").usable is report.check_layer("head").usable
    assert report.check_layer("nope#0").diagnostics[0].code == "HD101"


def test_router_refuses_an_input_on_which_the_call_does_not_happen():
    model, x = fx.recurrent_refiner(), fx.example_input("recurrent_refiner")
    spec = hookdoctor.inspect(model, x, methods=GRADCAM).gradcam
    model.steps = 2  # a shorter recurrence: call 2 of `block` no longer happens
    with pytest.raises(InputError, match="ran 2 time"):
        spec.model(x)
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


# ============================================================================ weight-tied decoder


def test_decoder_naive_gradcam_draws_the_coarse_first_stage():
    model, x, report = inspected("weight_tied_decoder")
    naive = run_pytorch_grad_cam(model, [model.up], x)
    assert [tuple(a.shape[-2:]) for a in naive.activations] == [(8, 8), (16, 16)]
    assert naive.raw[0].shape[-2:] == (8, 8)  # the first stage's map, stretched over the image
    assert report.gradcam.layer_name == "up#1" and report.gradcam.grid == (16, 16)


def test_decoder_spec_routes_the_full_resolution_call_and_works():
    model, x, report = inspected("weight_tied_decoder")
    spec = report.gradcam
    assert calls_seen(spec.layer, spec.model, x) == 1
    raw = assert_spec_works(spec, x)
    assert raw.shape[-2:] == (16, 16)
    first = inspected("weight_tied_decoder", "up#0")[2].gradcam
    assert first.grid == (8, 8)
    assert_spec_works(first, x)


# ============================================================================ shared transformer block


def test_shared_block_vit_naive_gradcam_draws_the_first_depth():
    model, x, report = inspected("shared_block_vit")
    spec = report.gradcam
    assert spec.layer_name == "block.norm1#2" and spec.grid == (4, 4)
    naive = run_pytorch_grad_cam(model, [model.block.norm1], x, spec.reshape_transform)
    routed = run_pytorch_grad_cam(**{**spec.pytorch_grad_cam_kwargs(), "x": x})
    assert len(naive.activations) == 3 and len(routed.activations) == 1
    torch.testing.assert_close(routed.activations[0], naive.activations[2])
    assert corr(naive.raw[0], routed.raw[0]) < 0.99


def test_shared_block_vit_per_call_token_spec_works():
    _, x, report = inspected("shared_block_vit")
    spec = report.gradcam
    assert spec.reshape_transform is not None  # tokens: the reshape and the routing together
    assert_spec_works(spec, x)


# ============================================================================ the spec as an object


@pytest.mark.parametrize("name", ["two_view_siamese", "recurrent_refiner", "weight_tied_decoder"])
def test_inspect_and_the_spec_leave_the_model_as_it_was(name):
    model, x = getattr(fx, name)(), fx.example_input(name)
    before = snapshot(model)
    spec = hookdoctor.inspect(model, x, methods=GRADCAM).gradcam
    assert_untouched(before, model)
    assert "call_view" not in dict(model.named_modules()) and not hasattr(model, "call_view")
    image = x[0] if isinstance(x, tuple) else x
    spec_gradcam(spec, image)
    spec_captum(spec, image, 0)
    assert_untouched(before, model)


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))])
def test_the_router_copies_with_its_model(clone):
    model, x, report = inspected("recurrent_refiner")
    spec = report.gradcam
    copied = clone(spec.model)
    inner = copied.score_model  # the user's model itself: it returns logits
    assert copied.module is inner.block and copied.module is not model.block
    torch.testing.assert_close(copied(x), spec.model(x))
    assert calls_seen(copied.call_view, copied, x) == 1
    # The copy routes the copy's call: the original's identity never fires.
    assert calls_seen(spec.layer, copied, x) == 0


def test_per_call_spec_json():
    _, _, report = inspected("weight_tied_decoder")
    data = report.to_dict()["gradcam"]
    assert data["layer_name"] == "up#1" and data["module_name"] == "up" and data["call_index"] == 1
    assert data["model_wrapper"] == "CallRouter"


# ============================================================================ snippets and CLI


@pytest.mark.parametrize("name", ["two_view_siamese", "recurrent_refiner", "weight_tied_decoder", "shared_block_vit"])
@pytest.mark.parametrize("backend", ["pytorch-grad-cam", "captum"])
def test_per_call_snippet_runs_as_pasted(name, backend):
    model, x, report = inspected(name)
    spec = report.gradcam
    image = x[0] if isinstance(x, tuple) else x
    code = spec.code(backend)
    if backend == "captum" and spec.reshape_transform is not None:
        assert f"layer={spec.layer_name!r}" in code  # Captum's token view comes from the spec itself
    else:
        assert "class OneCall" in code and f"[{spec.module_name!r}], {spec.call_index})" in code
    namespace = {"model": model, "x": image, "class_index": report.target, "example_input": x}
    exec(compile(code, "<snippet>", "exec"), namespace)  # the snippet is hookdoctor's own output
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    if backend == "pytorch-grad-cam":
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        with GradCAM(**spec.pytorch_grad_cam_kwargs()) as cam:
            expected = cam(input_tensor=image, targets=[ClassifierOutputTarget(report.target)])
        np.testing.assert_allclose(namespace["heatmap"], expected, atol=1e-5)
    else:
        expected = spec.captum().attribute(image, target=report.target, relu_attributions=True).detach()
        torch.testing.assert_close(namespace["attribution"].detach(), expected)


def test_cli_layer_accepts_one_call(capsys):
    factory = f"{ROOT / 'fixtures' / 'shared_calls.py'}:recurrent_refiner"
    code = main(["inspect", factory, "--input-shape", "1,3,16,16", "--method", "gradcam", "--layer", "block#1"])
    out, _ = capsys.readouterr()
    assert code == 0, out
    code = main(["inspect", factory, "--input-shape", "1,3,16,16", "--method", "gradcam", "--layer", "block#7"])
    out, _ = capsys.readouterr()
    assert code == 1 and "HD102" in out and "runs 3 times" in " ".join(out.split())


def test_explain_hd103_points_to_the_per_call_spec():
    text = hookdoctor.explain("HD103")
    assert "NAME#k" in text and "call_index" in text
