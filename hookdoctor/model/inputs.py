"""The example input: given, or inferred from the model; and how to call the model with it."""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from hookdoctor.errors import InputError, InsufficientMemoryError
from hookdoctor.model import memory

# What the explained tensor holds, by its number of dimensions; the positional axes are the
# ones a map is drawn over (``ModelInput.axes``).
InputKind = Literal["image", "video", "spectrogram", "signal"]
# The singleton axis ``as_backend_input`` adds so that pytorch-grad-cam (4-D and 5-D inputs
# only) takes a 3-D input: [B, T, F] -> [B, 1, T, F]; [B, C, L] -> [B, C, 1, L].
BACKEND_AXIS: dict[str, int] = {"spectrogram": 1, "signal": 2}
# Keyword inputs that hold the explained tensor in transformers models, most likely first.
_EXPLAINED_KEYS = ("pixel_values", "pixel_values_videos", "input_values", "input_features")


@dataclass(frozen=True)
class ModelInput:
    """Positional and keyword arguments for one forward call, with the explained tensor located.

    ``image_slot`` is the position (int) or keyword (str) of the explained tensor (an image
    ``[B, C, H, W]``, a video ``[B, C, T, H, W]``, a spectrogram ``[B, T, F]`` or a signal
    ``[B, C, L]``, as ``kind`` says); ``with_image`` swaps it for another tensor, which is how
    every pass makes the input require grad without touching the caller's tensor.
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    image_slot: int | str = 0
    kind: InputKind = "image"

    @property
    def image(self) -> torch.Tensor:
        if isinstance(self.image_slot, int):
            return self.args[self.image_slot]
        return self.kwargs[self.image_slot]

    @property
    def axes(self) -> tuple[int, ...]:
        """The sizes of the positional axes a map covers: (H, W), (T, H, W), (T, F) or (L,)."""
        return positional_axes(tuple(int(s) for s in self.image.shape), self.kind)

    @property
    def image_hw(self) -> tuple[int, int]:
        """The last two positional axes (the whole grid of an image or spectrogram)."""
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    @property
    def batch(self) -> int:
        return int(self.image.shape[0])

    def with_image(self, image: torch.Tensor) -> ModelInput:
        if isinstance(self.image_slot, int):
            args = list(self.args)
            args[self.image_slot] = image
            return ModelInput(tuple(args), dict(self.kwargs), self.image_slot, self.kind)
        kwargs = dict(self.kwargs)
        kwargs[self.image_slot] = image
        return ModelInput(self.args, kwargs, self.image_slot, self.kind)

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
            tuple(held(a) for a in self.args), {k: held(v) for k, v in self.kwargs.items()}, self.image_slot, self.kind
        )

    def call(self, model: nn.Module) -> Any:
        return model(*self.args, **self.kwargs)


def positional_axes(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    """The positional axis sizes of an input of ``shape`` and ``kind``."""
    if kind == "signal":
        return (shape[2],)
    return tuple(shape[2:]) if kind in ("image", "video") else tuple(shape[1:])


def _first_conv(model: nn.Module) -> nn.Module | None:
    return next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)


def _audio_config(model: nn.Module) -> Any:
    """A transformers audio config (AST: num_mel_bins, max_length), or None."""
    config = getattr(model, "config", None)
    return config if config is not None and hasattr(config, "num_mel_bins") else None


def input_kind(model: nn.Module, tensor: torch.Tensor) -> InputKind | None:
    """What a floating-point tensor of this rank is to this model; None when it is none of them.

    A 3-D tensor is a spectrogram [B, T, F] for a model with an audio config or whose first
    convolution is 2-D (it adds the channel axis itself, as AST does), and a signal
    [B, C, L] for a model whose first convolution is 1-D or that has none.
    """
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        return None
    if tensor.dim() == 4:
        return "image"
    if tensor.dim() == 5:
        return "video"
    if tensor.dim() == 3:
        if _audio_config(model) is not None or isinstance(_first_conv(model), nn.Conv2d):
            return "spectrogram"
        return "signal"
    return None


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


def _video_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("torchvision.models.video")


def infer_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The shape the model's own description gives its input, or None.

    (1, C, H, W) for image models; (1, 3, 16, 112, 112) for torchvision video models (the
    clip their weights were trained on); (1, T, F) for transformers audio configs (AST's
    max_length frames of num_mel_bins).
    """
    audio = _audio_config(model)
    if audio is not None and getattr(audio, "max_length", None):
        return (1, int(audio.max_length), int(audio.num_mel_bins))
    config = getattr(model, "config", None)
    if config is not None:
        size = _config_input_size(config)
        if size is not None:
            return (1, *size)
    pretrained_cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(pretrained_cfg, Mapping) and pretrained_cfg.get("input_size"):
        c, h, w = pretrained_cfg["input_size"]
        return (1, int(c), int(h), int(w))
    if _video_model(model):
        return (1, 3, 16, 112, 112)
    if type(model).__module__.startswith("torchvision.models"):
        image_size = getattr(model, "image_size", 224)  # torchvision ViT records its size
        return (1, 3, int(image_size), int(image_size))
    return None


def _text_inputs(model: nn.Module) -> dict[str, torch.Tensor]:
    """Token ids for the text tower of an image-text model (CLIP-style config), else nothing.

    Two prompts, so that the image-text logits have two columns to choose from; the ids are
    fixed and in range (structure is what matters, as with the random image).
    """
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None)
    if text is None or getattr(config, "vision_config", None) is None:
        return {}
    vocab = int(getattr(text, "vocab_size", 2))
    length = min(7, int(getattr(text, "max_position_embeddings", 7)))
    generator = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(0, vocab, (2, length), generator=generator)}


def _device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


_SHAPES = "(B, C, H, W) for images, (B, C, T, H, W) for video, (B, T, F) or (B, C, L) for audio and signals"


def _random_input(model: nn.Module, shape: tuple[int, ...]) -> ModelInput:
    if len(shape) not in (3, 4, 5) or any(int(s) <= 0 for s in shape):
        raise InputError(
            f"input_shape must be three, four or five positive sizes - {_SHAPES} - got {shape!r}; "
            "for example (1, 3, 224, 224)."
        )
    device, dtype = _device_and_dtype(model)
    if device.type == "meta":  # structure only: a shape, no values, no memory
        tensor = torch.empty(*map(int, shape), device=device, dtype=dtype)
    else:
        _refuse_oversized(shape, dtype, device)
        generator = torch.Generator().manual_seed(0)
        tensor = torch.randn(*map(int, shape), generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)
    kind = input_kind(model, tensor)
    assert kind is not None  # a floating-point tensor of 3 to 5 dimensions
    text = _text_inputs(model)
    if text and kind == "image":  # an image-text model: the image under its keyword, with the prompts
        return ModelInput((), {"pixel_values": tensor, **{k: v.to(device) for k, v in text.items()}}, "pixel_values")
    return ModelInput((tensor,), {}, 0, kind)


def _unbatched_hint(model: nn.Module, tensor: torch.Tensor) -> str | None:
    """The batch-dimension hint, only where it is right: a [C, H, W] image for a model whose first conv is 2-D."""
    conv = _first_conv(model)
    if (
        tensor.dim() == 3
        and _audio_config(model) is None
        and isinstance(conv, nn.Conv2d)
        and conv.in_channels > 1
        and conv.in_channels == int(tensor.shape[0])
    ):
        return (
            f"example_input has shape {tuple(tensor.shape)}: one image [C, H, W] without its batch dimension "
            f"(the model's first convolution takes {conv.in_channels} channels). Pass x.unsqueeze(0)."
        )
    return None


def _two_d_hint(model: nn.Module, tensor: torch.Tensor) -> str:
    """What to do with a 2-D input, only where it is sure to be right.

    A model whose first convolution is 1-D with as many channels as the tensor's first axis
    was given one signal [C, L] without its batch axis. Otherwise [B, L] may be what the
    model takes (wav2vec2 adds the channel axis itself), so the fix is a wrapper, not a reshape.
    """
    if tensor.dim() != 2 or not tensor.is_floating_point():
        return ""
    conv = _first_conv(model)
    if isinstance(conv, nn.Conv1d) and conv.in_channels > 1 and conv.in_channels == int(tensor.shape[0]):
        return " It is one signal [C, L] without its batch dimension: pass x.unsqueeze(0)."
    return (
        " If the model takes [B, L] waveforms, inspect a wrapper whose forward(x) returns model(x.squeeze(1)), "
        "with x of shape [B, 1, L]."
    )


def _explained_entry(model: nn.Module, entries: dict[Any, Any], explain: str | int | None, what: str) -> Any:
    """The key (or index) of the tensor the map covers: ``explain``, or the only candidate."""
    if explain is not None:
        if explain not in entries:
            raise InputError(
                f"explain={explain!r} names no entry of the example input; its entries are "
                f"{', '.join(repr(k) for k in entries)}."
            )
        if input_kind(model, entries[explain]) is None:
            raise InputError(
                f"explain={explain!r} names {_describe_value(entries[explain])}; the map covers a floating-point "
                f"tensor of 3 to 5 dimensions - {_SHAPES}."
            )
        return explain
    candidates = [k for k, v in entries.items() if input_kind(model, v) is not None]
    if not candidates:
        raise InputError(
            f"example_input is a {what} without a floating-point tensor to explain - {_SHAPES}; put the image "
            "(or video, spectrogram, signal) among the inputs."
        )
    # Several images (a two-view model): pixel_values where it is there, else the first one;
    # explain= names another.
    preferred = [k for k in _EXPLAINED_KEYS if k in candidates]
    return preferred[0] if preferred else candidates[0]


def _describe_value(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def resolve_input(
    model: nn.Module,
    example_input: Any = None,
    input_shape: tuple[int, ...] | None = None,
    explain: str | int | None = None,
) -> ModelInput:
    """Turn what the user gave (or nothing) into a ModelInput, or raise InputError."""
    model_input = _resolve(model, example_input, input_shape, explain)
    _refuse_unusable(model_input)
    return model_input


def _resolve(
    model: nn.Module, example_input: Any, input_shape: tuple[int, ...] | None, explain: str | int | None
) -> ModelInput:
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
                "--input-shape 1,3,H,W on the command line; 5 sizes for video, 3 for audio and signals)."
            )
        return _random_input(model, tuple(int(s) for s in shape))
    if isinstance(example_input, torch.Tensor):
        hint = _unbatched_hint(model, example_input)
        if hint is not None:
            raise InputError(hint)
        kind = input_kind(model, example_input)
        if kind is None:
            batch_hint = _two_d_hint(model, example_input)
            raise InputError(
                f"example_input has shape {tuple(example_input.shape)} and dtype {example_input.dtype}; "
                f"hookdoctor explains a floating-point tensor of 3 to 5 dimensions - {_SHAPES}.{batch_hint}"
            )
        return ModelInput((example_input,), {}, 0, kind)
    if isinstance(example_input, Mapping):
        kwargs = dict(example_input)
        key = _explained_entry(model, kwargs, explain, "dict")
        kind = input_kind(model, kwargs[key])
        assert kind is not None
        return ModelInput((), kwargs, key, kind)
    if isinstance(example_input, (tuple, list)):
        args = tuple(example_input)
        index = _explained_entry(model, dict(enumerate(args)), explain, "tuple")
        kind = input_kind(model, args[index])
        assert kind is not None
        return ModelInput(args, {}, int(index), kind)
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
    # The same kind of input, smaller: 224 per spatial axis, 16 frames, at most 1024 per audio or signal axis.
    smaller = {
        5: (1, shape[1], 16, 224, 224),
        4: (1, shape[1], 224, 224),
        3: (1, min(shape[1], 1024), min(shape[2], 1024)),
    }[len(shape)]
    raise InsufficientMemoryError(
        f"input_shape {shape} would need {_size(needed)} for the {dtype} input tensor alone, and one forward "
        f"and backward keeps many activations of that size; {_size(available)} of memory is available on "
        f"{device}. Pass a smaller input_shape such as {smaller} (--input-shape "
        f"{','.join(str(n) for n in smaller)}): which layers work does not depend on the input's size for most models. "
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
    kind: InputKind = "image"  # maps are drawn over images only

    @classmethod
    def of(cls, model_input: ModelInput, made_here: bool) -> ExampleImage:
        image = model_input.image
        given = None if made_here else weakref.ref(image)
        return cls(tuple(int(s) for s in image.shape), made_here, given, model_input.kind)

    def recall(self, model: nn.Module) -> torch.Tensor | None:
        """The example image, or None when the user's tensor is gone."""
        if self.made_here:
            return resolve_input(model, None, self.shape).image
        return self.given() if self.given is not None else None
