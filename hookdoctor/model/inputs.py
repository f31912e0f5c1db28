"""The example input: given, or inferred from the model; and how to call the model with it."""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hookdoctor.errors import InputError, InsufficientMemoryError
from hookdoctor.model import memory


@dataclass(frozen=True)
class ModelInput:
    """Positional and keyword arguments for one forward call, with the image tensor located.

    ``image_slot`` is the position (int) or keyword (str) of the ``[B, C, H, W]`` image;
    ``with_image`` swaps it for another tensor, which is how every pass makes the input
    require grad without touching the caller's tensor.
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    image_slot: int | str = 0

    @property
    def image(self) -> torch.Tensor:
        if isinstance(self.image_slot, int):
            return self.args[self.image_slot]
        return self.kwargs[self.image_slot]

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    @property
    def batch(self) -> int:
        return int(self.image.shape[0])

    def with_image(self, image: torch.Tensor) -> ModelInput:
        if isinstance(self.image_slot, int):
            args = list(self.args)
            args[self.image_slot] = image
            return ModelInput(tuple(args), dict(self.kwargs), self.image_slot)
        kwargs = dict(self.kwargs)
        kwargs[self.image_slot] = image
        return ModelInput(self.args, kwargs, self.image_slot)

    def for_batch(self, batch: int) -> ModelInput:
        """The inputs for an image batch of ``batch``: the other inputs of batch 1 repeated to it.

        AblationCAM and ScoreCAM run the model on copies of one image; the inputs held fixed
        (a two-view model's other view, a mask) must come in as many copies, or the model
        fails on mismatched batch sizes. Inputs of another batch size are left as they are.
        """
        if batch == self.batch:
            return self

        def held(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == 1:
                return value.repeat(batch, *([1] * (value.dim() - 1)))
            return value

        return ModelInput(
            tuple(held(a) for a in self.args), {k: held(v) for k, v in self.kwargs.items()}, self.image_slot
        )

    def call(self, model: nn.Module) -> Any:
        return model(*self.args, **self.kwargs)


def _is_image(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 4 and value.is_floating_point()


def _config_input_size(config: Any) -> tuple[int, int, int] | None:
    """(C, H, W) from a transformers config, looking into a vision sub-config if needed."""
    for candidate in (config, getattr(config, "vision_config", None)):
        if candidate is None:
            continue
        size = getattr(candidate, "image_size", None)
        if size is None:
            continue
        h, w = (size, size) if isinstance(size, int) else tuple(size)[-2:]
        channels = getattr(candidate, "num_channels", 3)
        return int(channels), int(h), int(w)
    return None


def infer_input_shape(model: nn.Module) -> tuple[int, int, int, int] | None:
    """(1, C, H, W) from the model's own description of its input, or None."""
    config = getattr(model, "config", None)
    if config is not None:
        size = _config_input_size(config)
        if size is not None:
            return (1, *size)
    pretrained_cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(pretrained_cfg, Mapping) and pretrained_cfg.get("input_size"):
        c, h, w = pretrained_cfg["input_size"]
        return (1, int(c), int(h), int(w))
    if type(model).__module__.startswith("torchvision.models"):
        image_size = getattr(model, "image_size", 224)  # torchvision ViT records its size
        return (1, 3, int(image_size), int(image_size))
    return None


def _device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def resolve_input(
    model: nn.Module,
    example_input: Any = None,
    input_shape: tuple[int, ...] | None = None,
) -> ModelInput:
    """Turn what the user gave (or nothing) into a ModelInput, or raise InputError."""
    model_input = _resolve(model, example_input, input_shape)
    _refuse_unusable(model_input)
    return model_input


def _resolve(model: nn.Module, example_input: Any, input_shape: tuple[int, ...] | None) -> ModelInput:
    if example_input is not None and input_shape is not None:
        raise InputError(
            "Both example_input and input_shape were given; pass one of them: the example input "
            "is used as it is, input_shape only builds a random input of that shape."
        )
    if example_input is None:
        shape = tuple(input_shape) if input_shape is not None else infer_input_shape(model)
        if shape is None:
            raise InputError(
                f"hookdoctor cannot tell what input {type(model).__name__} expects: it has no "
                "transformers config with image_size, no timm pretrained_cfg and is not a torchvision "
                "model. Pass example_input=torch.randn(1, 3, H, W) (or input_shape=(1, 3, H, W); "
                "--input-shape 1,3,H,W on the command line)."
            )
        if len(shape) != 4 or any(int(s) <= 0 for s in shape):
            raise InputError(
                f"input_shape must be four positive sizes (B, C, H, W), got {shape!r}; for example (1, 3, 224, 224)."
            )
        device, dtype = _device_and_dtype(model)
        if device.type == "meta":  # structure only: a shape, no values, no memory
            return ModelInput((torch.empty(*map(int, shape), device=device, dtype=dtype),), {}, 0)
        _refuse_oversized(tuple(int(s) for s in shape), dtype, device)
        generator = torch.Generator().manual_seed(0)
        image = torch.randn(*map(int, shape), generator=generator, dtype=torch.float32)
        return ModelInput((image.to(device=device, dtype=dtype),), {}, 0)
    if isinstance(example_input, torch.Tensor):
        if not _is_image(example_input):
            raise InputError(
                f"example_input has shape {tuple(example_input.shape)} and dtype {example_input.dtype}; "
                "hookdoctor explains image models and needs a floating-point [B, C, H, W] tensor "
                "(add the batch dimension with x.unsqueeze(0))."
            )
        return ModelInput((example_input,), {}, 0)
    if isinstance(example_input, Mapping):
        kwargs = dict(example_input)
        keys = ["pixel_values"] + [k for k in kwargs if k != "pixel_values"]
        for key in keys:
            if _is_image(kwargs.get(key)):
                return ModelInput((), kwargs, key)
        raise InputError(
            "example_input is a dict without a floating-point [B, C, H, W] tensor; put the image "
            "under 'pixel_values' (or any key) as a 4-D tensor."
        )
    if isinstance(example_input, (tuple, list)):
        args = tuple(example_input)
        for i, value in enumerate(args):
            if _is_image(value):
                return ModelInput(args, {}, i)
        raise InputError(
            "example_input is a tuple without a floating-point [B, C, H, W] tensor; hookdoctor needs "
            "one image tensor among the positional arguments."
        )
    raise InputError(
        f"example_input must be a Tensor, a tuple of Tensors or a dict of Tensors, not {type(example_input).__name__}."
    )


# One forward and backward with every activation kept holds many tensors of the input's
# size; an input whose size times this factor exceeds the free memory cannot be run.
ACTIVATION_FACTOR = 16


def _refuse_oversized(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
    """Refuse an input_shape whose tensor (and the pass around it) cannot fit, before allocating it."""
    needed = math.prod(shape) * dtype.itemsize
    # The one measure of free memory (model/memory.py), shared with the full-size pass guard.
    available = memory.available_bytes(device)
    if available is None or needed * ACTIVATION_FACTOR <= available:
        return
    raise InsufficientMemoryError(
        f"input_shape {shape} would need {_size(needed)} for the {dtype} input tensor alone, and one forward "
        f"and backward keeps many activations of that size; {_size(available)} of memory is available on "
        f"{device}. Pass a smaller input_shape such as (1, {shape[1]}, 224, 224) (--input-shape "
        f"1,{shape[1]},224,224): which layers work does not depend on the image size for most models. "
        "Or inspect the structure alone on the meta device, which needs no memory: --structure-only "
        "(inspect(..., structure_only=True))."
    )


def _size(n_bytes: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n_bytes < 1000:
            return f"{n_bytes:.0f} {unit}" if unit == "bytes" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return f"{n_bytes:.1f} TB"


def _refuse_unusable(model_input: ModelInput) -> None:
    """An empty batch or non-finite values: no map and no gradient could mean anything."""
    image = model_input.image
    if image.shape[0] == 0 or image.numel() == 0:
        raise InputError(
            f"example_input has shape {tuple(image.shape)}: it holds no image (a size is 0), so there is "
            "nothing to run or explain. Pass at least one image, e.g. torch.randn(1, 3, 224, 224)."
        )
    tensors = [*model_input.args, *model_input.kwargs.values()]
    for value in tensors:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not value.is_meta:
            if not bool(torch.isfinite(value).all()):
                kind = "NaN" if bool(torch.isnan(value).any()) else "inf"
                raise InputError(
                    f"example_input contains {kind} values (shape {tuple(value.shape)}): every score and "
                    "gradient computed from it is non-finite, so no layer can be judged. Pass finite "
                    "values, e.g. a normalised image or torch.randn(...); check the preprocessing "
                    "(division by a zero std, a log of 0)."
                )


@dataclass(frozen=True)
class ExampleImage:
    """How to get the example image back after ``inspect`` without keeping a tensor.

    A random input hookdoctor made is made again (same shape, same seed); an input the
    user gave is held by a weak reference, so it is there as long as the user keeps it.
    """

    shape: tuple[int, ...]
    made_here: bool
    given: weakref.ReferenceType[torch.Tensor] | None = None

    @classmethod
    def of(cls, model_input: ModelInput, made_here: bool) -> ExampleImage:
        image = model_input.image
        return cls(tuple(int(s) for s in image.shape), made_here, None if made_here else weakref.ref(image))

    def recall(self, model: nn.Module) -> torch.Tensor | None:
        """The example image, or None when the user's tensor is gone."""
        if self.made_here:
            return resolve_input(model, None, self.shape).image
        return self.given() if self.given is not None else None
