"""Structure-only inspection (the meta device): the same structural verdicts as a full inspect.

Every zoo model is inspected twice, at full size on random weights and structure-only;
where structure decides them - the recommended Grad-CAM layer, its layout, grid and
prefix tokens, the attention sites, the rollout query and the refusals - the two agree.
The structure-only specs are marked unverified, name the user's own modules, and the
report lists the checks that need values. The spec from a structure-only pass is then
run for real with pytorch-grad-cam on the real model: it works.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import assert_working_map, marked_by_library, spec_gradcam
from packaging.version import Version
from test_zoo import ZOO
from versions import has_transformers_class, vit_block

import hookdoctor
from hookdoctor.errors import InputError, InsufficientMemoryError
from hookdoctor.model.guard import preserved
from hookdoctor.model.memory import MemoryEstimate, ensure_fits

# The models whose structure is compared (each one covers a family; the rest of the zoo repeats them).
COMPARED = (
    "torchvision-resnet18",
    "torchvision-vgg11",
    "torchvision-mobilenet_v3_small",
    "torchvision-convnext_tiny",
    "torchvision-vit_b_16",
    "torchvision-swin_t",
    "timm-resnet18",
    "timm-vit_tiny",
    "timm-deit_distilled",
    "timm-dinov2_registers",
    "timm-gap_vit",
    "timm-convnext",
    "hf-vit",
    "hf-deit",
    "hf-dinov2_registers",
    "hf-swin",
    "hf-resnet",
)


def _structure(report: hookdoctor.Report) -> dict[str, Any]:
    gradcam, rollout = report.gradcam, report.rollout
    refusals = sorted(d.code for d in report.errors() if d.method == "rollout")
    return {
        "gradcam": gradcam and (gradcam.layer_name, gradcam.layout.kind, gradcam.grid, gradcam.layout.prefix_tokens),
        "rollout": rollout
        and (rollout.layer_names, rollout.prefix_tokens, rollout.grid, rollout.query, rollout.query_tokens),
        "rollout_refusals": refusals,
        "attention_sites": sorted(layer.name for layer in report.layers if layer.kind == "attention"),
        "cut_off": sorted(d.layer or "" for d in report.diagnostics if d.code == "HD201"),
    }


@pytest.mark.parametrize(
    "name",
    marked_by_library(
        COMPARED,
        extra={"hf-dinov2_registers": has_transformers_class("Dinov2WithRegistersForImageClassification", "4.48")},
    ),
)
def test_structure_only_agrees_with_a_full_inspect(name: str) -> None:
    build, shape, _ = ZOO[name]
    # Seeded: which layer a full inspect confirms can depend on the random weights (a working
    # map), and earlier tests in the same worker leave the global RNG anywhere.
    torch.manual_seed(0)
    model = build()
    full = hookdoctor.inspect(model, input_shape=shape)
    with preserved(model):
        state = {k: v.clone() for k, v in model.state_dict().items()}
    meta = hookdoctor.inspect(model, input_shape=shape, structure_only=True)
    assert _structure(meta) == _structure(full)
    assert meta.structure_only and not full.structure_only
    assert meta.not_run and not full.not_run
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # the real model is untouched
    for spec in (meta.gradcam, meta.rollout):
        assert spec is None or spec.verified is False
    for spec in (full.gradcam, full.rollout):
        assert spec is None or spec.verified is True
    if meta.gradcam is not None:  # the spec names the user's module, not the weightless copy's
        assert meta.gradcam.layer is model.get_submodule(meta.gradcam.module_name)


@pytest.mark.timm
def test_a_structure_only_spec_works_on_the_real_model() -> None:
    """Chosen without values, the layer still gives a working map on real weights (pytorch-grad-cam)."""
    build, shape, _ = ZOO["timm-vit_tiny"]
    model = build()
    spec = hookdoctor.inspect(model, input_shape=shape, structure_only=True).gradcam
    assert spec is not None
    heatmap = spec_gradcam(spec, torch.randn(shape))
    assert_working_map(heatmap, spec.grid)


@pytest.mark.timm
def test_a_model_built_on_the_meta_device() -> None:
    timm = pytest.importorskip("timm")
    try:
        with torch.device("meta"):
            model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=64).eval()
    except RuntimeError as exc:
        # Older timm reads values while it builds (drop-path rates through .item()), which the
        # meta device has none of: the library's own limit, before hookdoctor is involved.
        assert "meta" in str(exc) and Version(timm.__version__) < Version("1.0.31")
        return
    report = hookdoctor.inspect(model, input_shape=(1, 3, 64, 64), structure_only=True)
    assert report.gradcam is not None and report.gradcam.layer_name == "blocks.1.norm1"
    assert report.gradcam.layer is model.blocks[1].norm1
    assert report.rollout is not None and report.rollout.query == "cls"
    assert report.target is None  # no values, no top class
    found = report.to_dict()
    assert found["structure_only"] is True and found["not_run"] == list(report.not_run)
    assert found["gradcam"]["verified"] is False and found["rollout"]["verified"] is False
    assert any("structure alone" in reason for reason in report.gradcam.reasons)
    assert {"HD201", "HD501"} <= {d.code for d in report.diagnostics}
    with pytest.raises(InputError, match="structure_only=True"):
        hookdoctor.inspect(model, input_shape=(1, 3, 64, 64))


@pytest.mark.timm
def test_structure_only_keeps_the_graph_findings() -> None:
    """HD005 (frozen parameters) comes from the autograd graph: the meta pass sees it too."""
    build, shape, _ = ZOO["timm-resnet18"]
    model = build()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    full = hookdoctor.inspect(model, input_shape=shape)
    meta = hookdoctor.inspect(model, input_shape=shape, structure_only=True)
    assert "HD005" in {d.code for d in full.diagnostics}
    assert {d.code for d in meta.diagnostics} == {d.code for d in full.diagnostics}
    assert all(not p.requires_grad for p in model.parameters())


def test_the_memory_guard_names_the_figure_and_the_way_out() -> None:
    estimate = MemoryEstimate(parameters=1_100_000_000, weight_bytes=4_400_000_000, activation_bytes=2**62)
    with pytest.raises(InsufficientMemoryError, match=r"--structure-only") as raised:
        ensure_fits(estimate, torch.device("cpu"), "VisionTransformer")
    assert "1,100 million parameters" in str(raised.value) and "GiB" in str(raised.value)
    ensure_fits(MemoryEstimate(1000, 4000, 4000), torch.device("cpu"), "tiny")  # fits: no error


@pytest.mark.timm
def test_inspect_refuses_a_pass_that_would_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard measures the pass on a weightless copy; with little memory left, inspect stops first."""
    from hookdoctor.model import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 1_000)
    model = ZOO["timm-resnet18"][0]()
    with pytest.raises(InsufficientMemoryError, match="structure-only"):
        hookdoctor.inspect(model, input_shape=(1, 3, 64, 96))
    assert hookdoctor.inspect(model, input_shape=(1, 3, 64, 96), structure_only=True).gradcam is not None


@pytest.mark.timm
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_model_on_cuda_is_inspected_where_it_lives() -> None:
    build, shape, _ = ZOO["timm-vit_tiny"]
    model = build().cuda()
    report = hookdoctor.inspect(model, input_shape=shape)
    assert report.gradcam is not None and report.rollout is not None
    assert all(p.is_cuda for p in model.parameters())
    heatmap = spec_gradcam(report.gradcam, torch.randn(shape, device="cuda"))
    assert_working_map(heatmap, report.gradcam.grid)
    meta = hookdoctor.inspect(model, input_shape=shape, structure_only=True)
    assert meta.gradcam is not None and meta.gradcam.layer_name == report.gradcam.layer_name


# --- the command line -------------------------------------------------------------------------


@pytest.fixture
def at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])


@pytest.mark.transformers
def test_cli_structure_only_json(
    at_root: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--structure-only builds on the meta device; under --json nothing but the JSON, even on a terminal."""
    import json

    from hookdoctor.cli import main

    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich's switch: stderr counts as a terminal
    assert main(["inspect", "fixtures/report_vit", "--structure-only", "--json"]) == 0
    out, err = capsys.readouterr()
    found = json.loads(out)
    assert found["structure_only"] is True and found["not_run"]
    assert found["gradcam"]["verified"] is False and found["rollout"]["verified"] is False
    assert found["gradcam"]["layer_name"] == vit_block(5) + ".layernorm_before"
    assert err == ""  # no progress line under --json


@pytest.mark.transformers
def test_cli_structure_only_report_says_what_a_full_run_adds(at_root: None, capsys: pytest.CaptureFixture[str]) -> None:
    from hookdoctor.checks.structure import FULL_RUN_ADDS
    from hookdoctor.cli import main

    assert main(["inspect", "fixtures/report_vit", "--structure-only"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "structure only (meta device)" in out and "Not run" in out
    assert " ".join(FULL_RUN_ADDS.split()) in out


@pytest.mark.transformers
def test_cli_memory_guard_exits_2_before_building(
    at_root: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from hookdoctor.cli import main
    from hookdoctor.model import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 100_000)
    assert main(["inspect", "fixtures/report_vit"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--structure-only" in err and "GiB" in err and "Traceback" not in err


@pytest.mark.transformers
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--structure-only", "--device", "cpu"], "no effect with --structure-only"),
        (["--device", "nonsense"], "not a device"),
        (["--device", "meta"], "--structure-only"),
    ],
)
def test_cli_device_errors(
    at_root: None, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    from hookdoctor.cli import main

    assert main(["inspect", "fixtures/report_vit", *arguments]) == 2
    assert message in " ".join(capsys.readouterr().err.split())


@pytest.mark.transformers
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cli_device_cuda_without_cuda(at_root: None, capsys: pytest.CaptureFixture[str]) -> None:
    from hookdoctor.cli import main

    assert main(["inspect", "fixtures/report_vit", "--device", "cuda"]) == 2
    assert "no CUDA device" in " ".join(capsys.readouterr().err.split())


@pytest.mark.transformers
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cli_device_cuda(at_root: None) -> None:
    from hookdoctor.cli import main

    assert main(["inspect", "fixtures/report_vit", "--device", "cuda", "--json"]) == 0
