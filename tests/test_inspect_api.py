"""The library call: arguments, inferred inputs, wrappers, errors, snippets, pickling, JSON."""

from __future__ import annotations

import json
import pickle
import sys

import numpy as np
import pytest
import torch
import transformers
from torch import nn
from versions import default_attention, transformers_major, vit_block

import hookdoctor
from hookdoctor import InputError, ModelRunError


def _tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=5,
    )
    return transformers.ViTForImageClassification(config).eval()


class _SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


class _Raising(_SmallCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.features(x)
        raise RuntimeError("boom in forward")


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.transformers
def test_input_is_inferred_from_a_transformers_config() -> None:
    report = hookdoctor.inspect(_tiny_vit(), methods=("gradcam",))
    assert report.input_shape == (1, 3, 32, 32)
    assert report.gradcam is not None and report.gradcam.grid == (4, 4)


def test_a_plain_module_without_an_input_is_a_clear_error() -> None:
    with pytest.raises(InputError, match=r"example_input=torch.randn\(1, 3, H, W\)"):
        hookdoctor.inspect(_SmallCNN())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(example_input=torch.randn(3, 32, 32)), "without its batch dimension.*unsqueeze\\(0\\)"),
        (dict(example_input=torch.randn(32, 32)), "floating-point tensor of 3 to 5 dimensions"),
        (dict(example_input=torch.randn(1, 3, 32, 32), input_shape=(1, 3, 32, 32)), "pass one of them"),
        (dict(input_shape=(1, 3)), "three, four or five positive sizes"),
        (dict(example_input=torch.randn(1, 3, 32, 32), methods=("gradcam", "lime")), "Unknown method"),
        (dict(example_input=torch.randn(1, 3, 32, 32), target=99), "out of range"),
    ],
)
def test_bad_arguments_are_input_errors(kwargs, match) -> None:
    model = _SmallCNN()
    with pytest.raises(InputError, match=match):
        hookdoctor.inspect(model, **kwargs)
    assert _hooks(model) == 0


def test_a_raising_forward_is_reported_and_the_model_is_restored() -> None:
    model = _Raising().train()
    model.features[0].requires_grad_(False)
    with pytest.raises(ModelRunError, match="boom in forward"):
        hookdoctor.inspect(model, torch.randn(1, 3, 16, 16))
    assert _hooks(model) == 0 and model.training and all(m.training for m in model.modules())
    assert not model.features[0].weight.requires_grad and model.features[2].weight.requires_grad


def test_torchscript_is_refused_with_the_reason() -> None:
    scripted = torch.jit.script(_SmallCNN())
    with pytest.raises(InputError, match="TorchScript"):
        hookdoctor.inspect(scripted, torch.randn(1, 3, 16, 16))


def test_dataparallel_names_carry_the_prefix_and_the_spec_works() -> None:
    model = nn.DataParallel(_SmallCNN().eval())
    x = torch.randn(1, 3, 16, 16)
    report = hookdoctor.inspect(model, x, methods=("gradcam",))
    spec = report.gradcam
    assert spec.layer_name.startswith("module.")
    assert dict(model.named_modules())[spec.layer_name] is spec.layer
    assert any(d.code == "HD601" for d in report.diagnostics)
    assert report.check_layer("module.head").usable is False


def test_torch_compile_wrapper_is_unwrapped_without_compiling() -> None:
    model = _SmallCNN().eval()
    compiled = torch.compile(model)
    report = hookdoctor.inspect(compiled, torch.randn(1, 3, 16, 16), methods=("gradcam",))
    assert report.gradcam.layer_name.startswith("_orig_mod.")
    assert dict(compiled.named_modules())[report.gradcam.layer_name] is report.gradcam.layer


@pytest.mark.transformers
def test_unknown_layer_names_get_exact_suggestions_not_substring_matches() -> None:
    report = hookdoctor.inspect(_tiny_vit(), torch.randn(1, 3, 32, 32), methods=("gradcam",))
    # The name the other transformers major gives the last block's first norm.
    other = "vit.encoder.layer.1" if transformers_major() >= 5 else "vit.layers.1"
    verdict = report.check_layer(f"{other}.layernorm_before")
    assert verdict.usable is False and verdict.diagnostics[0].code == "HD101"
    assert f"{vit_block(1)}.layernorm_before" in verdict.suggestions


@pytest.mark.transformers
def test_spec_pickles_and_the_score_wrapper_returns_logits() -> None:
    model = _tiny_vit()
    x = torch.randn(1, 3, 32, 32)
    spec = hookdoctor.inspect(model, x, methods=("gradcam",)).gradcam
    clone = pickle.loads(pickle.dumps(spec.reshape_transform))
    assert clone == spec.reshape_transform
    restored = pickle.loads(pickle.dumps(spec.model))
    with torch.no_grad():
        torch.testing.assert_close(restored(x), model(x).logits)
        logits = spec.model(x)  # grad stays on inside the wrapper, for frozen / no_grad callers
    assert logits.requires_grad


@pytest.mark.transformers
def test_report_json_round_trips() -> None:
    model = _tiny_vit()
    report = hookdoctor.inspect(model, torch.randn(1, 3, 32, 32))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["schema_version"] == 1 and data["ok"] is True
    assert data["gradcam"]["layer_name"] == report.gradcam.layer_name
    # HD501 (fused attention) where the model runs SDPA, as ViT does from transformers 4.41 on.
    fused = {"HD501"} if default_attention(model) == "sdpa" else set()
    assert {d["code"] for d in data["diagnostics"]} == {"HD001", "HD201", "HD301"} | fused
    assert data["environment"]["attn_implementation"] == default_attention(model)


def _exec_snippet(code: str, model: nn.Module, x: torch.Tensor, class_index: int) -> dict:
    namespace = {"model": model, "x": x, "class_index": class_index}
    exec(compile(code, "<snippet>", "exec"), namespace)  # the snippet is hookdoctor's own output
    return namespace


@pytest.mark.transformers
@pytest.mark.parametrize("build", [_tiny_vit, _SmallCNN])
def test_pytorch_grad_cam_snippet_runs_as_pasted(build) -> None:
    model = build().eval()
    size = 32 if isinstance(model, transformers.PreTrainedModel) else 16
    x = torch.randn(1, 3, size, size)
    report = hookdoctor.inspect(model, x, methods=("gradcam",))
    namespace = _exec_snippet(report.gradcam.code("pytorch-grad-cam"), model, x, report.target)
    heatmap = namespace["heatmap"]
    assert heatmap.shape == (1, size, size) and np.isfinite(heatmap).all() and heatmap.std() > 0


@pytest.mark.transformers
@pytest.mark.parametrize("build", [_tiny_vit, _SmallCNN])
def test_captum_snippet_runs_as_pasted(build) -> None:
    pytest.importorskip("captum")
    model = build().eval()
    size = 32 if isinstance(model, transformers.PreTrainedModel) else 16
    x = torch.randn(1, 3, size, size)
    report = hookdoctor.inspect(model, x, methods=("gradcam",))
    namespace = _exec_snippet(report.gradcam.code("captum"), model, x, report.target)
    assert namespace["attribution"].shape == (1, 1, *report.gradcam.grid)
    assert namespace["heatmap"].shape == (1, 1, size, size)
    assert _hooks(model) == 0


def test_without_captum_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = hookdoctor.inspect(_SmallCNN(), torch.randn(1, 3, 16, 16), methods=("gradcam",)).gradcam
    monkeypatch.setitem(sys.modules, "captum.attr", None)  # an import of it now fails, as when absent
    with pytest.raises(hookdoctor.MissingDependencyError, match=r"spec\.captum\(\) needs Captum.*hookdoctor\[captum\]"):
        spec.captum()


def test_unknown_backend_is_an_input_error() -> None:
    spec = hookdoctor.inspect(_SmallCNN(), torch.randn(1, 3, 16, 16), methods=("gradcam",)).gradcam
    with pytest.raises(InputError, match="pytorch-grad-cam"):
        spec.code("no-such-backend")


class _SharedUnderTwoNames(nn.Module):
    """One encoder held as `encoder` and as `branches.0`: named_modules() shows only the first name."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.branches = nn.ModuleList([self.encoder])
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = x.chunk(2, dim=-1)
        features = torch.cat([self.encoder(left), self.branches[0](right)], dim=-1)
        return self.head(features.mean((2, 3)))


def test_a_shared_module_is_judged_under_its_hidden_second_name() -> None:
    model = _SharedUnderTwoNames()
    assert "branches.0" not in dict(model.named_modules())
    report = hookdoctor.inspect(model, torch.randn(1, 3, 8, 16), methods=("gradcam",))
    verdict = report.check_layer("branches.0")
    assert verdict.name == "branches.0" and verdict.usable is False
    assert [d.code for d in verdict.diagnostics if d.severity == "error"][:1] == ["HD103"]


def test_check_layer_carries_the_notes_a_spec_for_that_layer_would_carry() -> None:
    from fixtures import pathological

    frozen = pathological.frozen_cnn()
    report = hookdoctor.inspect(frozen, pathological.example_input("frozen_cnn"), methods=("gradcam",))
    verdict = report.check_layer(report.gradcam.layer_name)
    assert verdict.usable and "HD005" in [d.code for d in verdict.diagnostics]

    binary = pathological.negative_evidence_binary()
    report = hookdoctor.inspect(binary, pathological.example_input("negative_evidence_binary"), methods=("gradcam",))
    empty = [d.layer for d in report.diagnostics if d.code == "HD204"]
    assert empty, "the fixture's last block holds only negative evidence"
    assert "HD204" in [d.code for d in report.check_layer(empty[0]).diagnostics]


def test_randomness_at_inference_changes_the_map_and_is_diagnosed() -> None:
    from helpers import spec_gradcam

    from fixtures import pathological

    model, x = pathological.mc_dropout_cnn(), pathological.example_input("mc_dropout_cnn")
    report = hookdoctor.inspect(model, x, methods=("gradcam",))
    # the failure, with the real backend: the same input, two different maps
    assert not np.allclose(spec_gradcam(report.gradcam, x), spec_gradcam(report.gradcam, x))
    found = [d for d in report.diagnostics if d.code == "HD006"]
    assert found and found[0].severity == "warning" and hookdoctor.explain("HD006").strip()
    # with rollout asked for too, the second forward is rollout's own: the finding stays
    assert "HD006" in [d.code for d in hookdoctor.inspect(model, x).diagnostics]
    # the fix: with dropout that respects eval(), maps repeat and the warning is gone
    fixed = pathological.pooled_cnn()
    fixed.load_state_dict(model.state_dict())
    report = hookdoctor.inspect(fixed, x, methods=("gradcam",))
    assert "HD006" not in [d.code for d in report.diagnostics]
    np.testing.assert_array_equal(spec_gradcam(report.gradcam, x), spec_gradcam(report.gradcam, x))


def test_a_grid_whose_cells_do_not_follow_the_image_is_caught_by_the_locality_probe() -> None:
    from helpers import assert_aligned, corr, run_pytorch_grad_cam

    from fixtures import pathological

    model, x = pathological.mirrored_features_cnn(), pathological.example_input("mirrored_features_cnn")
    # the failure, with the real backend: a plausible map, mirrored left-right
    mirrored = run_pytorch_grad_cam(model, [model.mirror], x).raw[0][0]
    upright = run_pytorch_grad_cam(model, [model.features], x).raw[0][0]
    assert corr(mirrored, upright[:, ::-1]) > 0.99 and corr(mirrored, upright) < 0.9
    report = hookdoctor.inspect(model, x, methods=("gradcam",), layer="mirror")
    verdict = report.check_layer("mirror")
    assert not verdict.usable and "HD306" in [d.code for d in verdict.diagnostics]
    # the fix: the spec names the upright layer, and its cells line up
    assert report.gradcam.layer_name == "features"
    assert_aligned(report.gradcam, x, tolerance=1)


def test_output_names_the_head_to_explain() -> None:
    from helpers import spec_gradcam

    from fixtures import pathological

    model, x = pathological.tuple_output_model(), pathological.example_input("tuple_output_model")
    default = hookdoctor.inspect(model, x, methods=("gradcam",))
    assert "HD002" in [d.code for d in default.diagnostics]  # (aux, main): the first head, with a warning
    report = hookdoctor.inspect(model, x, methods=("gradcam",), output=1)
    assert "HD002" not in [d.code for d in report.diagnostics]
    torch.testing.assert_close(report.gradcam.model(x).detach(), model(x)[1])
    # the spec explains the main head: its map is the one of a hand-written main-head wrapper
    assert not np.allclose(spec_gradcam(report.gradcam, x), spec_gradcam(default.gradcam, x))
    assert "output=" in next(d.fix for d in default.diagnostics if d.code == "HD002")


@pytest.mark.parametrize("bad", [2, "main"])
def test_output_that_does_not_name_a_score_is_an_input_error(bad) -> None:
    from fixtures import pathological

    model = pathological.tuple_output_model()
    with pytest.raises(InputError, match="choose one of: indices 0..1"):
        hookdoctor.inspect(model, pathological.example_input("tuple_output_model"), output=bad)
    assert _hooks(model) == 0


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("custom backward is broken")


class _BrokenBackward(_SmallCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(_FailingBackward.apply(self.features(x)).mean((2, 3)))


class _DetachedScore(_SmallCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.head(self.features(x).mean((2, 3)))


def test_a_raising_backward_is_reported_and_the_model_is_restored() -> None:
    model = _BrokenBackward()
    with pytest.raises(ModelRunError, match="custom backward is broken"):
        hookdoctor.inspect(model, torch.randn(1, 3, 16, 16))
    assert _hooks(model) == 0 and all(p.grad is None for p in model.parameters())


def test_a_score_computed_under_no_grad_is_a_finding_not_a_crash() -> None:
    report = hookdoctor.inspect(_DetachedScore(), torch.randn(1, 3, 16, 16), methods=("gradcam",))
    assert report.gradcam is None and report.ok is False
    (carries_none,) = [d for d in report.diagnostics if d.code == "HD203" and "no gradient" in d.message]
    assert "no_grad" in carries_none.message
    (layer,) = report.check_layer("features").diagnostics
    assert layer.code == "HD202" and "gradients disabled inside the model's forward" in layer.message


@pytest.mark.transformers
def test_a_bfloat16_model_gets_a_bfloat16_input_and_a_working_spec() -> None:
    model = _tiny_vit().to(torch.bfloat16)
    report = hookdoctor.inspect(model)  # the inferred input takes the model's dtype
    assert report.ok and report.gradcam.layer_name == f"{vit_block(1)}.layernorm_before"
    attentions = report.rollout.capture(model, torch.randn(1, 3, 32, 32, dtype=torch.bfloat16))
    assert attentions[0].dtype == torch.bfloat16 and attentions[0].shape == (1, 2, 17, 17)


@pytest.mark.transformers
def test_a_rollout_only_report_holds_no_grad_cam_findings() -> None:
    report = hookdoctor.inspect(_tiny_vit(), torch.randn(1, 3, 32, 32), methods=("rollout",))
    assert report.gradcam is None and report.rollout is not None and report.ok
    assert {d.method for d in report.diagnostics} <= {"rollout", None}


def test_a_named_layer_with_only_negative_evidence_is_reported_once() -> None:
    from fixtures import pathological

    binary = pathological.negative_evidence_binary()
    x = pathological.example_input("negative_evidence_binary")
    report = hookdoctor.inspect(binary, x, methods=("gradcam",), layer="features")
    found = [d for d in report.diagnostics if d.code == "HD204" and d.layer == "features"]
    assert len(found) == 1, [d.message for d in found]  # the pass's finding, not again the verdict's
    assert "HD204" in [d.code for d in report.layer_verdicts["features"].diagnostics]
