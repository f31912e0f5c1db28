"""Fault injection: whatever the model does while hookdoctor runs it, it comes back bit-for-bit.

Models that raise in forward or backward on each pass, hooks that raise (also
``KeyboardInterrupt``), and models that change themselves while they run (fixtures in
``fixtures/mutating.py``). Each test checks the model, its hooks, flags and attributes and
the global RNGs against a snapshot taken before, and that the right exception surfaced.
"""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import hookdoctor
from fixtures import mutating as fx
from hookdoctor.errors import InputError, ModelRunError
from hookdoctor.model.guard import preserved

GRADCAM = ("gradcam",)
X = fx.example_input()

warnings.filterwarnings("ignore", message="Lazy modules are a new feature")


def assert_untouched(before: dict, model: nn.Module) -> None:
    changed = fx.differences(before, model)
    assert not changed, f"the model (or an RNG) changed: {changed}"


def user_exception(excinfo: pytest.ExceptionInfo[BaseException]) -> BaseException:
    """The model's own exception: raised as it is, or the cause of a ModelRunError."""
    error = excinfo.value
    return error.__cause__ if isinstance(error, ModelRunError) and error.__cause__ is not None else error


def forward_passes(methods: tuple[str, ...]) -> int:
    """How many forwards ``inspect`` runs on the plain CNN."""
    model = fx.RaisesOnForward(fail_on=0)
    hookdoctor.inspect(model, X, methods=methods)
    return model.calls.n


@pytest.mark.parametrize("methods", [GRADCAM, ("gradcam", "rollout")])
def test_a_forward_raising_on_any_pass_leaves_the_model_whole(methods):
    passes = forward_passes(methods)
    assert passes == 1  # one recorded pass, whatever the methods
    for fail_on in range(1, passes + 1):
        model = fx.RaisesOnForward(fail_on)
        model.register_forward_hook(lambda module, inputs, output: None)  # the user's own hook stays
        before = fx.state_of(model)
        with pytest.raises(Exception) as excinfo:
            hookdoctor.inspect(model, X, methods=methods)
        assert isinstance(user_exception(excinfo), fx.Boom), (fail_on, repr(excinfo.value))
        if fail_on == 1:
            assert excinfo.type is ModelRunError and "forward raised Boom" in str(excinfo.value)
        assert_untouched(before, model)


@pytest.mark.parametrize("fail_on", [1, 2])
def test_a_backward_raising_on_any_pass_is_a_model_run_error_and_leaves_the_model_whole(fail_on):
    model = fx.RaisesOnBackward(fail_on)
    before = fx.state_of(model)
    with pytest.raises(ModelRunError, match="backward pass raised Boom") as excinfo:
        hookdoctor.inspect(model, X, methods=GRADCAM)
    assert isinstance(excinfo.value.__cause__, fx.Boom)
    assert_untouched(before, model)


def test_the_backward_fixture_passes_when_it_never_fails():
    assert hookdoctor.inspect(fx.RaisesOnBackward(fail_on=0), X, methods=GRADCAM).gradcam is not None


@pytest.mark.parametrize("fail_on", [1])  # inspect runs one forward: a hook fires once
def test_a_user_hook_raising_is_a_model_run_error_and_stays_registered(fail_on):
    model = fx.SmallCNN()
    model.conv2.register_forward_hook(fx.hook_raising(ValueError("the user's hook"), fail_on))
    before = fx.state_of(model)
    with pytest.raises(Exception) as excinfo:
        hookdoctor.inspect(model, X, methods=GRADCAM)
    assert isinstance(user_exception(excinfo), ValueError)
    assert_untouched(before, model)
    assert len(model.conv2._forward_hooks) == 1


@pytest.mark.parametrize("fail_on", [1])  # inspect runs one forward: a hook fires once
def test_keyboard_interrupt_in_a_hook_propagates_and_the_model_comes_back(fail_on):
    model = fx.SmallCNN()
    model.conv2.register_forward_hook(fx.hook_raising(KeyboardInterrupt(), fail_on))
    before = fx.state_of(model)
    with pytest.raises(KeyboardInterrupt):
        hookdoctor.inspect(model, X, methods=GRADCAM)
    assert_untouched(before, model)


@pytest.mark.parametrize(
    "build",
    [fx.CountingBuffer, fx.ReplacedParameter, fx.DataEditedWeight, fx.CachingAttribute, fx.AddsAttributes,
     fx.UsesGlobalRandom],
    ids=lambda b: b.__name__,
)
def test_a_self_mutating_model_comes_back_bit_for_bit(build):
    model = build().eval()
    before = fx.state_of(model)
    report = hookdoctor.inspect(model, X, methods=("gradcam", "rollout"))
    assert report.gradcam is not None
    assert_untouched(before, model)


def test_a_filled_cache_would_have_kept_the_probe_graph():
    """Why the cache must go: after inspect it would hold a tensor from hookdoctor's probe graph."""
    model = fx.CachingAttribute().eval()
    hookdoctor.inspect(model, X, methods=GRADCAM)
    assert model.bias_cache == {}
    model(X)  # the user's own first call fills it, with the user's graph
    assert set(model.bias_cache) == {"cpu"}


def test_python_and_numpy_rng_states_come_back():
    model = fx.UsesGlobalRandom().eval()  # built first: the fixtures seed torch
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    hookdoctor.inspect(model, X, methods=GRADCAM)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_a_forward_editing_a_weight_in_place_before_use_is_inspected_in_its_one_pass():
    """Each forward invalidates the previous one's graph; one pass never differentiates a stale graph."""
    from helpers import spec_gradcam

    model = fx.InPlaceWeight().eval()
    before = fx.state_of(model)
    report = hookdoctor.inspect(model, X, methods=GRADCAM)
    assert report.gradcam is not None
    assert_untouched(before, model)
    cam = spec_gradcam(report.gradcam, X)  # the real pytorch-grad-cam: one forward, one backward
    assert np.isfinite(cam).all() and float(cam.std()) > 0


def test_a_forward_editing_a_weight_in_place_after_use_is_a_model_run_error():
    model = fx.InPlaceWeightAfterUse().eval()
    before = fx.state_of(model)
    with pytest.raises(ModelRunError, match="backward pass raised") as excinfo:
        hookdoctor.inspect(model, X, methods=GRADCAM)
    assert "modified by an inplace operation" in str(excinfo.value.__cause__)
    assert_untouched(before, model)


def test_lazy_modules_are_refused_before_anything_runs():
    model = fx.LazyHead()
    before = fx.state_of(model)
    with pytest.raises(InputError, match=r"Lazy modules that have not run yet \(`fc`\).*Run the model once"):
        hookdoctor.inspect(model, X, methods=GRADCAM)
    assert_untouched(before, model)
    assert isinstance(model.fc, nn.LazyLinear)
    model(X)  # once materialised, the model is inspected as any other
    assert hookdoctor.inspect(model, X, methods=GRADCAM).gradcam is not None


def test_preserved_rebinds_parameters_buffers_and_attributes():
    model = fx.CountingBuffer()
    model.note = "kept"
    before = fx.state_of(model)
    with preserved(model):
        model.count = model.count + 5
        model.fc.weight = nn.Parameter(torch.zeros_like(model.fc.weight))
        model.conv1.bias.data = torch.ones(3)
        model.conv2.weight.data.mul_(2)
        model.fc.register_forward_hook(lambda *args: None)
        model.extra = nn.Linear(1, 1)
        model.note = "changed"
        model.train()
    assert_untouched(before, model)


def test_timm_levit_attention_bias_cache_is_emptied_again():
    timm = pytest.importorskip("timm")
    model = timm.create_model("levit_128s", pretrained=False, img_size=32, num_classes=3).eval()
    caches = [m for m in model.modules() if hasattr(m, "attention_bias_cache")]
    assert caches and all(m.attention_bias_cache == {} for m in caches)
    x = torch.randn(1, 3, 32, 32)
    with preserved(model):
        model(x.requires_grad_(True)).sum().backward()
        assert any(m.attention_bias_cache for m in caches)  # filled, with this graph
    assert all(m.attention_bias_cache == {} for m in caches)


def test_hf_segformer_whose_first_forward_runs_inside_inspect_still_works():
    transformers = pytest.importorskip("transformers")
    config = transformers.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=32, num_labels=3,
    )
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    x = torch.randn(1, 3, 64, 64)
    before = fx.state_of(model)
    report = hookdoctor.inspect(model, x, methods=GRADCAM)  # a segmenter: its class masks are explained
    assert report.task == "segmentation"
    assert_untouched(before, model)
    assert not getattr(model, "_output_capturing_hooks_installed", False)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)  # the library installs its hooks now, and they work
    assert out.logits.shape == (1, 3, 16, 16) and len(out.hidden_states) == 2


# The guard copies nothing up front: it keeps a tensor's values just before something writes into
# its memory. Each way of writing into a weight from a forward must come back all the same.


class _EditsEveryWay(fx.SmallCNN):
    """Writes into its weights every way Python can, then (optionally) raises."""

    def __init__(self, raise_after: bool) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(16).eval()
        self.raise_after = raise_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        # batch norm forced to training: the kernel updates the running statistics it is given
        features = nn.functional.batch_norm(
            features, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias, True
        )
        self.bn.num_batches_tracked += 1
        out = self.fc(features.mean((2, 3)))
        with torch.no_grad():
            self.conv2.weight.mul_(2)  # in place under no_grad (moves the version counter)
            self.conv1.weight[0].zero_()  # through a view
        self.fc.weight.data[1:3] = 5.0  # through .data (leaves the version counter as it was)
        torch.add(self.fc.bias.data, 1.0, out=self.fc.bias.data)  # out=
        nn.functional.relu(self.conv1.bias.data.sub_(9.0), True)  # inplace=True on an alias
        if self.raise_after:
            raise fx.Boom("after editing the weights")
        return out


@pytest.mark.parametrize("raise_after", [False, True], ids=["returns", "raises"])
def test_weights_written_every_way_in_forward_come_back(raise_after):
    model = _EditsEveryWay(raise_after).eval()
    before = fx.state_of(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # every write was seen (no "could not put back")
        if raise_after:
            with pytest.raises(ModelRunError, match="forward raised Boom"):
                hookdoctor.inspect(model, X, methods=GRADCAM)
        else:
            with pytest.raises(ModelRunError):  # its graph needs conv2's weight as it was: every method fails
                hookdoctor.inspect(model, X, methods=GRADCAM)
    assert_untouched(before, model)


def test_only_the_tensors_written_to_are_copied(monkeypatch):
    from hookdoctor.model import guard

    copied: list[tuple[int, ...]] = []
    save = guard._TensorState.save

    def counting(state: guard._TensorState) -> None:
        copied.append(tuple(state.tensor.shape))
        save(state)

    monkeypatch.setattr(guard._TensorState, "save", counting)
    model = fx.DataEditedWeight().eval()
    before = fx.state_of(model)
    hookdoctor.inspect(model, X, methods=GRADCAM)
    assert_untouched(before, model)
    assert copied == [(10,)]  # fc.bias, once: no other weight was copied
    copied.clear()
    with preserved(model), torch.no_grad():
        model.conv1.weight.detach()[0, 0].fill_(3.0)  # a detached view shares the weight's memory
        model.conv1.weight.add_(1.0)  # a second write: no second copy
    assert copied == [(8, 3, 3, 3)]
    assert_untouched(before, model)


def test_a_write_the_guard_cannot_see_is_reported():
    """Under DisableTorchFunction no mode sees the write: the version counter tells, and a warning says so."""
    model = fx.SmallCNN()
    with pytest.warns(RuntimeWarning, match=r"could not put back `conv2.weight`"), preserved(model):
        with torch.no_grad(), torch._C.DisableTorchFunction():
            model.conv2.weight.mul_(2)


def test_a_rebound_data_and_a_replaced_storage_come_back():
    model = fx.SmallCNN()
    before = fx.state_of(model)
    with preserved(model), torch.no_grad():
        old = model.conv1.weight.data
        model.conv1.weight.data = torch.zeros_like(old)
        old.add_(1.0)  # the storage the weight held before, written after the rebinding
        model.conv2.weight.set_(torch.ones(16, 8, 3, 3))
        model.conv2.weight.add_(1.0)
    assert_untouched(before, model)
