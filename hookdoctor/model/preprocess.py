"""A picture as the model expects it: size and normalisation from the model's own description.

The recipe comes, in this order, from timm's ``pretrained_cfg`` (input size, mean, std,
crop fraction), from a Hugging Face image-processor config found locally (the model's
folder or the hub cache; nothing is downloaded), or from torchvision's classification
transforms (resize to 256/224 of the input, centre crop, ImageNet mean and std). A model
that states none of them gets its image resized and scaled to [0, 1], and the recipe says
so: ``Preprocessing.source`` is printed with every picture.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hookdoctor.errors import InputError, MissingDependencyError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_CROP = 224 / 256  # ImageClassification's default resize_size=256 for crop_size=224


@dataclass(frozen=True)
class Preprocessing:
    """Resize (shorter side to ``size / crop``), centre-crop to ``size``, scale to [0, 1], normalise."""

    size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop: float
    source: str

    def describe(self) -> str:
        h, w = self.size
        if self.mean == (0.0,) * len(self.mean) and self.std == (1.0,) * len(self.std):
            return f"{self.source}: {h}x{w}, scaled to [0, 1]"
        mean = ", ".join(f"{m:.3g}" for m in self.mean)
        std = ", ".join(f"{s:.3g}" for s in self.std)
        return f"{self.source}: {h}x{w}, mean ({mean}), std ({std})"

    def normalise(self, picture: np.ndarray) -> torch.Tensor:
        """``[H, W, C]`` floats in [0, 1] -> the ``[1, C, H, W]`` input tensor."""
        tensor = torch.from_numpy(np.ascontiguousarray(picture, dtype=np.float32)).permute(2, 0, 1)
        mean = torch.tensor(self.mean[: tensor.shape[0]], dtype=torch.float32).reshape(-1, 1, 1)
        std = torch.tensor(self.std[: tensor.shape[0]], dtype=torch.float32).reshape(-1, 1, 1)
        return ((tensor - mean) / std).unsqueeze(0)


def preprocessing_for(model: nn.Module, input_shape: Sequence[int] | None) -> Preprocessing:
    """The model's own recipe, at ``input_shape``'s size when given."""
    channels, size = 3, None
    if input_shape is not None:
        channels, size = int(input_shape[1]), (int(input_shape[2]), int(input_shape[3]))
    timm_cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(timm_cfg, Mapping) and timm_cfg.get("mean") and timm_cfg.get("input_size"):
        c, h, w = timm_cfg["input_size"]
        return Preprocessing(
            size=size or (int(h), int(w)),
            channels=channels if input_shape is not None else int(c),
            mean=tuple(float(m) for m in timm_cfg["mean"]),
            std=tuple(float(s) for s in timm_cfg["std"]),
            crop=float(timm_cfg.get("crop_pct") or 1.0),
            source="timm pretrained_cfg",
        )
    processor = _hf_processor_config(model)
    if processor is not None:
        found_size, config_path = processor
        return Preprocessing(
            size=size or found_size[0],
            channels=channels,
            mean=tuple(float(m) for m in found_size[1]),
            std=tuple(float(s) for s in found_size[2]),
            crop=1.0,
            source=f"HF image processor ({config_path})",
        )
    if type(model).__module__.startswith("torchvision.models"):
        side = int(getattr(model, "image_size", 224))
        return Preprocessing(
            size=size or (side, side),
            channels=channels,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            crop=TORCHVISION_CROP,
            source="torchvision ImageClassification defaults",
        )
    if size is None:
        from hookdoctor.model.inputs import infer_input_shape

        shape = infer_input_shape(model)
        if shape is None:
            raise InputError(
                f"hookdoctor cannot tell what image size {type(model).__name__} expects; pass "
                "--input-shape 1,3,H,W together with --image."
            )
        channels, size = int(shape[1]), (int(shape[2]), int(shape[3]))
    return Preprocessing(
        size=size, channels=channels, mean=(0.0,) * channels, std=(1.0,) * channels, crop=1.0,
        source="no preprocessing stated by the model; resized",
    )


def _hf_processor_config(
    model: nn.Module,
) -> tuple[tuple[tuple[int, int], Sequence[float], Sequence[float]], str] | None:
    """((size, mean, std), where) from a local ``preprocessor_config.json``, or None."""
    config = getattr(model, "config", None)
    name = str(getattr(config, "_name_or_path", "") or "")
    if not name:
        return None
    local = Path(name) / "preprocessor_config.json"
    path: Path | None = local if local.is_file() else None
    if path is None:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "preprocessor_config.json")  # the cache only, never the network
            path = Path(cached) if isinstance(cached, str) else None
        except (ImportError, ValueError):
            path = None
    if path is None:
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if "image_mean" not in data or "image_std" not in data:
        return None
    raw = data.get("size") or data.get("crop_size") or {}
    if isinstance(raw, int):
        size = (raw, raw)
    elif "height" in raw and "width" in raw:
        size = (int(raw["height"]), int(raw["width"]))
    elif "shortest_edge" in raw:
        size = (int(raw["shortest_edge"]), int(raw["shortest_edge"]))
    else:
        image_size = getattr(config, "image_size", 224)
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)[-2:]
    return (size, data["image_mean"], data["image_std"]), str(path)


def _resize_and_crop(image: Any, prep: Preprocessing) -> np.ndarray:
    from PIL import Image

    h, w = prep.size
    scale = max(h / prep.crop / image.height, w / prep.crop / image.width)
    resized = image.resize(
        (max(w, math.ceil(image.width * scale)), max(h, math.ceil(image.height * scale))),
        Image.Resampling.BICUBIC,
    )
    left, top = (resized.width - w) // 2, (resized.height - h) // 2
    cropped = resized.crop((left, top, left + w, top + h))
    picture = np.asarray(cropped, dtype=np.float32) / 255.0
    return picture[..., None] if picture.ndim == 2 else picture


def load_image(path: str | Path, prep: Preprocessing) -> tuple[torch.Tensor, np.ndarray]:
    """The ``[1, C, H, W]`` input and the ``[H, W, C]`` picture in [0, 1] of an image file."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:
        raise MissingDependencyError(
            "--image needs Pillow, which is not installed. Install it with `pip install 'hookdoctor[plot]'` "
            "(or `pip install Pillow`)."
        ) from exc
    file = Path(path)
    if not file.is_file():
        raise InputError(f"The image {file} does not exist; pass the path of a PNG or JPEG file to --image.")
    try:
        with Image.open(file) as opened:
            image = opened.convert("L" if prep.channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(
            f"Pillow cannot read {file} as an image ({exc}); pass a PNG or JPEG file to --image."
        ) from exc
    if prep.channels not in (1, 3):
        raise InputError(
            f"The model takes {prep.channels} input channels; --image reads RGB or grayscale pictures only. "
            "Call report.figure(x) with your own tensor instead."
        )
    picture = _resize_and_crop(image, prep)
    return prep.normalise(picture), picture


def synthetic_picture(prep: Preprocessing) -> tuple[torch.Tensor, np.ndarray]:
    """A made-up picture (a bright disc and a dark square on a soft gradient), as ``load_image`` returns it.

    Shapes with edges give a random-weight model something spatial to respond to, unlike
    noise, and the picture is the same on every run.
    """
    h, w = prep.size
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    rows, cols = rows / max(h - 1, 1), cols / max(w - 1, 1)
    picture = np.stack([0.35 + 0.3 * cols, 0.45 + 0.2 * rows, 0.6 - 0.25 * cols], axis=-1)
    disc = (rows - 0.35) ** 2 + (cols - 0.3) ** 2 < 0.18**2
    picture[disc] = (0.95, 0.8, 0.2)
    square = (np.abs(rows - 0.68) < 0.14) & (np.abs(cols - 0.7) < 0.14)
    picture[square] = (0.15, 0.2, 0.55)
    if prep.channels == 1:
        picture = picture.mean(axis=-1, keepdims=True)
    elif prep.channels != 3:
        picture = np.repeat(picture.mean(axis=-1, keepdims=True), prep.channels, axis=-1)
    return prep.normalise(picture), picture
