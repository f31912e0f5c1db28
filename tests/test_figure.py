"""Pictures (issue 11): ``report.figure(x)``, ``--figure``/``--image`` and the terminal preview.

The figure is checked by reading the PNG back: the input is drawn in gray and each map is
laid over it in colour, so a panel whose map is all zero has no colour at all. On the seed
ViT the layer picked by habit (its last block) is blank, with HD201, and the spec's layer and
the rollout are not.
"""

from __future__ import annotations

import gc
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import hookdoctor
from fixtures.attention_checks import assert_untouched, snapshot
from hookdoctor.cli import main
from hookdoctor.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, load_image, preprocessing_for
from hookdoctor.render.maps import habit_layer

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")
transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

ROOT = Path(__file__).resolve().parents[1]
VIT = str(ROOT / "fixtures" / "report_vit")


def _panels(path: Path) -> tuple[np.ndarray, list[dict]]:
    with Image.open(path) as png:
        pixels = np.asarray(png.convert("RGB"), dtype=np.int16)
        boxes = json.loads(png.text["hookdoctor:panels"])
    return pixels, boxes


def _colour_in(pixels: np.ndarray, box: list[int]) -> np.ndarray:
    """Per pixel inside the panel's image area: how far from gray (max - min over R, G, B)."""
    left, top, right, bottom = box
    inside = pixels[top + 2 : bottom - 2, left + 2 : right - 2]  # clear of the frame's antialiasing
    assert inside.size > 0
    return inside.max(axis=-1) - inside.min(axis=-1)


def test_the_seed_vit_figure_shows_the_blank_habit_map_and_the_working_ones(tmp_path, capsys) -> None:
    out = tmp_path / "maps.png"
    assert main(["inspect", VIT, "--figure", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    assert out.stat().st_size < 100_000
    pixels, panels = _panels(out)
    assert [p["kind"] for p in panels] == ["habit", "spec", "rollout"]
    habit, spec, rollout = panels
    assert "vit.layers.5" in habit["title"] and "HD201" in habit["title"] and "all-zero" in habit["title"]
    assert "vit.layers.5.layernorm_before" in spec["title"]
    # The habit panel is the gray input alone; the others carry the map's colours.
    assert int(_colour_in(pixels, habit["box"]).max()) <= 2
    for working in (spec, rollout):
        colour = _colour_in(pixels, working["box"])
        assert float((colour > 40).mean()) > 0.2, working["kind"]


def test_figure_with_an_image_uses_the_models_preprocessing(tmp_path, capsys) -> None:
    picture = np.zeros((48, 80, 3), dtype=np.uint8)
    picture[:, :40] = (250, 30, 30)
    source = tmp_path / "photo.png"
    Image.fromarray(picture).save(source)
    out = tmp_path / "maps.png"
    tiny_vit = f"{ROOT / 'fixtures' / 'factories.py'}:tiny_torchvision_vit"
    code = main(["inspect", tiny_vit, "--image", str(source), "--figure", str(out), "--method", "gradcam"])
    assert code in (0, 1)
    _, panels = _panels(out)
    assert [p["kind"] for p in panels] == ["habit", "spec"]
    with Image.open(out) as png:
        assert png.size[0] > png.size[1]


def test_a_picture_is_resized_and_normalised_as_timm_says() -> None:
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=3)
    prep = preprocessing_for(model, (1, 3, 32, 32))
    assert prep.source == "timm pretrained_cfg" and prep.size == (32, 32)
    assert prep.mean == tuple(model.pretrained_cfg["mean"]) and prep.std == tuple(model.pretrained_cfg["std"])
    assert "timm pretrained_cfg: 32x32" in prep.describe()


def test_torchvision_defaults_and_a_uniform_picture(tmp_path) -> None:
    model = torchvision.models.resnet18(weights=None)
    prep = preprocessing_for(model, None)
    assert prep.source.startswith("torchvision") and prep.size == (224, 224)
    assert (prep.mean, prep.std) == (IMAGENET_MEAN, IMAGENET_STD)
    source = tmp_path / "red.png"
    Image.new("RGB", (300, 260), (255, 0, 0)).save(source)
    x, picture = load_image(source, prep)
    assert x.shape == (1, 3, 224, 224) and picture.shape == (224, 224, 3)
    expected = torch.tensor([(1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], -IMAGENET_MEAN[1] / IMAGENET_STD[1],
                             -IMAGENET_MEAN[2] / IMAGENET_STD[2]])
    torch.testing.assert_close(x[0, :, 100, 100], expected, atol=1e-5, rtol=0)


def test_an_hf_image_processor_config_in_the_model_folder_is_used(tmp_path) -> None:
    config = transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                    image_size=32, patch_size=8, num_labels=3)
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3, "size": {"height": 32, "width": 32}})
    )
    model = transformers.ViTForImageClassification.from_pretrained(tmp_path)
    prep = preprocessing_for(model, None)
    assert prep.source.startswith("HF image processor") and prep.size == (32, 32)
    assert prep.mean == (0.5, 0.5, 0.5) and prep.std == (0.25, 0.25, 0.25)


def test_report_figure_after_inspect_and_without_the_input() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    x = torch.randn(1, 3, 64, 64)
    report = hookdoctor.inspect(model, x, methods=("gradcam",))
    assert habit_layer(report) == "layer4.1"  # the last block of the last stage, as tutorials pick
    model.train()
    before = snapshot(model)
    figure = report.figure()  # the input the user still holds
    assert_untouched(before, model)  # pytorch-grad-cam's eval() included
    titles = [axes.get_title() for axes in figure.axes]
    assert titles[0].startswith("by habit: layer4.1") and titles[1].startswith("the spec: ")
    del x
    gc.collect()
    with pytest.raises(hookdoctor.InputError, match=r"report.figure\(x\)"):
        report.figure()
    assert report.figure(torch.randn(1, 3, 64, 64)) is not None


def test_a_random_input_hookdoctor_made_is_made_again() -> None:
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                    image_size=32, patch_size=8, num_labels=3)
    model = transformers.ViTForImageClassification(config).eval()
    report = hookdoctor.inspect(model)
    _, image = report.model_and_image()
    assert image.shape == (1, 3, 32, 32)
    torch.testing.assert_close(image, report.model_and_image()[1])  # seeded: the same input every time
    assert len(report.figure().axes) == 3


def test_without_matplotlib_the_cli_says_how_to_install_it(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # an import of it now fails, as when absent
    assert main(["inspect", VIT, "--figure", str(tmp_path / "maps.png")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'hookdoctor[plot]'" in err and "Traceback" not in err


def test_a_missing_image_is_a_clear_error(tmp_path, capsys) -> None:
    assert main(["inspect", VIT, "--image", str(tmp_path / "nope.jpg")]) == 2
    # rich wraps the paragraph, and may break the long temporary path inside a word
    err = "".join(capsys.readouterr().err.split())
    assert "nope.jpgdoesnotexist" in err and "Traceback" not in err


def test_the_piped_report_shows_the_spec_map_in_shade_characters(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    for variable in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CLICOLOR_FORCE"):
        monkeypatch.delenv(variable, raising=False)
    assert main(["inspect", VIT]) == 0
    top = capsys.readouterr().out.splitlines()[:4]
    assert "\x1b[" not in "".join(top)
    assert top[3].startswith("the spec's Grad-CAM on the example input")
    shades = [line[-8:] for line in top]
    assert all(set(s) <= set(" ░▒▓█") for s in shades) and any(set(s) - {" "} for s in shades)


def test_the_preview_is_the_spec_map() -> None:
    from rich.console import Console

    from hookdoctor.render.preview import HeatPreview

    heatmap = np.zeros((64, 64), dtype=np.float32)
    heatmap[:32, 32:] = 1.0  # the top-right quarter
    console = Console(width=40, color_system=None, file=io.StringIO())
    console.print(HeatPreview(heatmap))
    lines = console.file.getvalue().splitlines()
    assert [line.rstrip() for line in lines] == ["    ████", "    ████", "", ""]  # four lines, 8 cells wide
    assert HeatPreview(np.ones((7, 14), dtype=np.float32)).width == 16  # a wide map keeps its aspect


class _NoBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1))
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def test_without_a_block_stack_the_habit_is_the_last_convolution() -> None:
    report = hookdoctor.inspect(_NoBlocks().eval(), torch.randn(1, 3, 16, 16), methods=("gradcam",))
    assert habit_layer(report) == "features.2"
