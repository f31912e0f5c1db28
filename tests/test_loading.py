"""Every MODEL form, and every way a MODEL string can be wrong, on real small models."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fixtures.factories import TinyCNN
from hookdoctor.errors import MissingDependencyError, ModelLoadError
from hookdoctor.model.loading import LoadOptions, load_model

ROOT = Path(__file__).resolve().parents[1]
FACTORIES = ROOT / "fixtures" / "factories.py"


def test_torchvision_name_builds_random_weights():
    loaded = load_model("torchvision:resnet18")
    assert type(loaded.model).__name__ == "ResNet" and not loaded.model.training


@pytest.mark.timm
def test_timm_name():
    loaded = load_model("timm:vit_tiny_patch16_224")
    assert type(loaded.model).__name__ == "VisionTransformer"


@pytest.mark.transformers
def test_hf_folder_is_the_default_fixture():
    loaded = load_model(str(ROOT / "fixtures" / "report_vit"))
    assert type(loaded.model).__name__ == "ViTForImageClassification"
    assert loaded.model.config.num_hidden_layers == 6


def test_random_weights_are_seeded_and_leave_the_callers_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = load_model(f"{FACTORIES}:tiny_cnn").model
    assert torch.equal(torch.rand(1), expected_next)
    b = load_model(f"{FACTORIES}:tiny_cnn").model
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_factory_file_and_module_forms_carry_the_input_shape(monkeypatch):
    monkeypatch.chdir(ROOT)
    from_file = load_model("fixtures/factories.py:tiny_cnn")
    from_module = load_model("fixtures.factories:tiny_cnn")
    assert isinstance(from_file.model, nn.Module) and from_file.input_shape == (1, 3, 32, 32)
    assert type(from_module.model).__name__ == "TinyCNN" and from_module.input_shape == (1, 3, 32, 32)


def test_pt_file_with_a_whole_module_needs_trust_pickle(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(TinyCNN(), path)
    with pytest.raises(ModelLoadError, match="--trust-pickle"):
        load_model(str(path))
    assert type(load_model(str(path), LoadOptions(trust_pickle=True)).model).__name__ == "TinyCNN"


@pytest.mark.parametrize("content", ["state_dict", "checkpoint"])
def test_state_dict_is_an_error_that_says_so(tmp_path, content):
    path = tmp_path / "weights.pth"
    weights = TinyCNN().state_dict()
    torch.save(weights if content == "state_dict" else {"model": weights, "epoch": 3}, path)
    with pytest.raises(ModelLoadError, match="is a state_dict.*FACTORY|is a state_dict.*factory"):
        load_model(str(path))


def test_torchscript_file_and_factory_are_refused(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.script(TinyCNN()).save(str(path))
    with pytest.raises(ModelLoadError, match="TorchScript.*hooks never fire"):
        load_model(str(path))
    with pytest.raises(ModelLoadError, match="TorchScript"):
        load_model(f"{FACTORIES}:scripted_cnn")


def test_corrupt_pt_file(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(ModelLoadError, match="could not be read by torch.load"):
        load_model(str(path))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("torchvision:resnet19", "no model named 'resnet19'. Did you mean resnet18"),
        ("timm:vit_tinny_patch16_224", "Did you mean vit_tiny_patch16_224"),
        ("hf:hookdoctor-tests/no-such-model", "not in the local Hugging Face cache.*--allow-download"),
        ("no-such-folder/model.pt", "does not exist"),
        ("no-such-folder", "does not exist"),
        ("resnet18", "torchvision:resnet18 or timm:resnet18"),
        ("missing.py:build", "does not exist"),
        (f"{FACTORIES}:tiny_cn", "no function 'tiny_cn'. Did you mean tiny_cnn"),
        (f"{FACTORIES}:raises", r"raises\(\) raised RuntimeError: weights file /data/ckpt.pt not found"),
        (f"{FACTORIES}:not_a_module", "gave a dict, not a torch.nn.Module"),
        ("no_such_package.models:build", "No module named 'no_such_package.models'"),
    ],
)
def test_bad_model_strings_name_the_problem_and_the_fix(model, message):
    with pytest.raises(ModelLoadError, match=message) as info:
        load_model(model)
    assert "\n" not in str(info.value)  # one paragraph


@pytest.mark.transformers
def test_hf_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model(str(tmp_path))


@pytest.mark.transformers
def test_hf_remote_code_needs_the_flag(tmp_path):
    (tmp_path / "config.json").write_text(
        '{"model_type": "custom-net", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"}}'
    )
    with pytest.raises(ModelLoadError, match="--trust-remote-code"):
        load_model(str(tmp_path))


def test_factory_file_that_fails_to_import(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nraise ImportError('needs mmcv')\n")
    with pytest.raises(ModelLoadError, match="Importing .*broken.py raised ImportError: needs mmcv"):
        load_model(f"{broken}:build")


@pytest.mark.parametrize(
    ("model", "package"), [("timm:resnet18", "timm"), ("torchvision:resnet18", "torchvision")]
)
def test_missing_optional_package_names_the_pip_command(monkeypatch, model, package):
    # A None entry in sys.modules makes `import package` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, package, None)
    monkeypatch.setitem(sys.modules, f"{package}.models", None)
    with pytest.raises(MissingDependencyError, match=rf"pip install 'hookdoctor\[{package}\]'"):
        load_model(model)
