"""One recorded pass: inspect runs the model's forward once, and keeps nothing of it afterwards."""

from __future__ import annotations

import gc
import warnings

import pytest
import torch
from torch import nn
from versions import vit_block

import hookdoctor
from fixtures import pathological

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")
pytestmark = [pytest.mark.transformers, pytest.mark.timm]


def _tiny_hf_vit() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=8, num_labels=5,
    )
    return transformers.ViTForImageClassification(config).eval(), torch.randn(1, 3, 32, 32)


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on torch's deprecated module objects warns
        warnings.simplefilter("ignore")
        return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def _checkpoint_is_reentrant(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether the installed timm checkpoints with use_reentrant=True (torch.autograd.grad refuses it)."""
    image = x.clone().requires_grad_(True)
    try:
        torch.autograd.grad(model(image).sum(), image)
    except RuntimeError as exc:
        return "use_reentrant" in str(exc)
    return False


def _count_forwards(model: nn.Module) -> list[int]:
    calls = [0]

    def count(module: nn.Module, args: tuple[object, ...]) -> None:
        calls[0] += 1

    model.register_forward_pre_hook(count)
    return calls


@pytest.mark.parametrize("build", ["hf_vit", "cnn"])
def test_no_tensor_of_the_model_survives_inspect(build: str) -> None:
    if build == "hf_vit":
        model, x = _tiny_hf_vit()
    else:
        model, x = pathological.pooled_cnn(), pathological.example_input("pooled_cnn")
    report = hookdoctor.inspect(model, x)  # warm-up: lazy imports and caches settle
    before = _live_tensors()
    for _ in range(3):
        report = hookdoctor.inspect(model, x)
    assert report.gradcam is not None
    assert _live_tensors() - before <= 0


def test_no_tensor_survives_a_forward_that_raises() -> None:
    model, x = _tiny_hf_vit()
    block = model.get_submodule(vit_block(1))
    original = block.forward

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("injected failure in the last block")

    hookdoctor.inspect(model, x)
    before = _live_tensors()
    block.forward = broken  # an instance attribute, removed below
    try:
        for _ in range(3):
            with pytest.raises(hookdoctor.ModelRunError, match="injected failure"):
                hookdoctor.inspect(model, x)
    finally:
        del block.forward
    assert block.forward.__func__ is original.__func__
    assert _live_tensors() - before <= 0


def test_inspect_runs_the_forward_once_for_both_methods() -> None:
    model, x = _tiny_hf_vit()
    calls = _count_forwards(model)
    report = hookdoctor.inspect(model, x, methods=("gradcam", "rollout"))
    assert report.gradcam is not None and report.rollout is not None
    assert calls[0] == 1


def test_a_checkpointed_timm_vit_gets_its_rollout_spec_and_the_spec_works() -> None:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=5)
    model.eval().set_grad_checkpointing(True)
    x = torch.randn(1, 3, 32, 32)
    if _checkpoint_is_reentrant(model, x):
        # Older timm checkpoints with use_reentrant=True, which cannot differentiate towards a
        # chosen input (torch.autograd.grad): a clear ModelRunError that names the way out.
        with pytest.raises(hookdoctor.ModelRunError, match="use_reentrant"):
            hookdoctor.inspect(model, x)
        return
    calls = _count_forwards(model)
    report = hookdoctor.inspect(model, x)
    assert calls[0] == 1  # the recomputations inside backward are not forwards of the model
    assert report.ok and report.rollout is not None and report.gradcam is not None
    assert report.rollout.grid == (4, 4) and report.rollout.on_gradient_path
    # The same blocks are found as without checkpointing, and the spec's rollout runs.
    model.set_grad_checkpointing(False)
    plain = hookdoctor.inspect(model, x)
    assert plain.rollout is not None and plain.rollout.layer_names == report.rollout.layer_names
    assert plain.gradcam is not None and plain.gradcam.layer_name == report.gradcam.layer_name
    model.set_grad_checkpointing(True)
    rollout = report.rollout.rollout(model, x)
    assert rollout.shape == (1, 4, 4) and bool(torch.isfinite(rollout).all()) and float(rollout.std()) > 0


def test_randomness_is_read_off_the_rng_without_a_second_forward() -> None:
    model, x = pathological.mc_dropout_cnn(), pathological.example_input("mc_dropout_cnn")
    calls = _count_forwards(model)
    rng = torch.random.get_rng_state()
    report = hookdoctor.inspect(model, x, methods=("gradcam",))
    assert "HD006" in [d.code for d in report.diagnostics]
    assert calls[0] == 1
    assert torch.equal(torch.random.get_rng_state(), rng)  # the draw itself was put back
