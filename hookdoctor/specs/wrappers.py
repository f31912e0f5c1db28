"""The callables that adapt a user's model and layer to the attribution libraries.

``ScoreModel`` makes the model return its ``[B, N]`` score tensor (with grad on, whatever
the caller's mode); ``Float32Maps`` casts a bfloat16 layer's maps for numpy;
``CaptumAdapter`` shows Captum and torchcam a token or channels-last layer as
``[B, C, H, W]``; ``CallRouter`` hands the libraries one call of a module that runs
several times. Each leaves the user's model as it was. ``GradCAMSpec`` holds them, the
snippets write the same things out as code.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hookdoctor.errors import InputError
from hookdoctor.geometry.layout import Layout, ReshapeTransform
from hookdoctor.model.activation import FinalActivationInputs
from hookdoctor.model.inputs import ModelInput
from hookdoctor.model.outputs import OutputSelector


class GradEnabledScore(torch.Tensor):
    """A score tensor whose operations record gradients even where the caller turned them off.

    pytorch-grad-cam evaluates the target (``output[:, class]``) and calls ``backward``
    outside the model's forward, in the caller's grad mode: under ``torch.no_grad()`` or
    ``torch.inference_mode()`` the loss would carry no graph. Every operation on this
    tensor (and on the tensors it produces) runs with grad enabled and inference mode off.
    """

    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        with torch.inference_mode(False), torch.enable_grad():
            return super().__torch_function__(func, types, args, kwargs or {})


class Float32Maps:
    """A reshape_transform that also casts to float32, for layers computing in bfloat16.

    pytorch-grad-cam turns activations, gradients and (without targets) scores into numpy
    arrays, and numpy has no bfloat16 ("Got unsupported ScalarType BFloat16"). It applies
    ``reshape_transform`` to both activations and gradients before that, so the cast goes
    there. A plain class so that specs pickle.
    """

    def __init__(self, reshape: ReshapeTransform | None = None) -> None:
        self.reshape = reshape

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return (self.reshape(tensor) if self.reshape is not None else tensor).float()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Float32Maps) and self.reshape == other.reshape

    def __hash__(self) -> int:
        return hash(("float32", self.reshape))

    def __repr__(self) -> str:
        return f"Float32Maps({self.reshape!r})" if self.reshape is not None else "Float32Maps()"


class ScoreModel(nn.Module):
    """A thin wrapper whose forward returns the ``[B, N]`` score tensor.

    It selects the score from a ModelOutput, tuple or dict; turns a segmentation map, an
    embedding or a detector's detections into ``[B, N]`` scores (``head``, see
    ``hookdoctor.model.tasks``); explains the input of a final Softmax/Sigmoid (a module,
    or ``F.softmax`` / ``torch.sigmoid`` called in forward) rather than a saturated
    probability; passes the other arguments the model needs; takes the 4-D view of a 3-D
    input that pytorch-grad-cam needs (``backend_axis``, the singleton axis to drop); and
    runs with grad enabled and an input that requires grad, so frozen models and
    ``no_grad`` / ``inference_mode`` callers still produce layer gradients. Called with
    grad off, it returns a ``GradEnabledScore``, so that a library computing the target
    outside this forward still gets a score with a graph.
    """

    pre_activation: nn.Module | None

    def __init__(
        self,
        model: nn.Module,
        selector: OutputSelector,
        *,
        pre_activation: nn.Module | None = None,
        call_template: ModelInput | None = None,
        head: nn.Module | None = None,
        pre_activation_function: str | None = None,
        backend_axis: int | None = None,
        input_dims: int = 4,
        float_scores: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.selector = selector
        self.call_template = call_template
        self.head = head
        self.pre_activation_function = pre_activation_function
        self.backend_axis = backend_axis
        self.input_dims = input_dims
        self.float_scores = float_scores  # a bfloat16 score, cast for numpy (see Float32Maps)
        # Kept out of _modules: it is part of self.model already.
        self.__dict__["pre_activation"] = pre_activation

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.backend_axis is not None and image.dim() == self.input_dims + 1:
            image = image.squeeze(self.backend_axis)  # the view as_backend_input made for pytorch-grad-cam
        caller_grad = torch.is_grad_enabled()
        with torch.inference_mode(False), torch.enable_grad():
            score = self._score(image)
            if self.float_scores:
                score = score.float()
            # Inside the block: under the caller's no_grad the alias would lose the graph.
            return score if caller_grad else score.as_subclass(GradEnabledScore)

    def _score(self, image: torch.Tensor) -> torch.Tensor:
        template = self.call_template or ModelInput((image,), {}, 0)
        if image.is_inference():  # made under inference_mode: autograd cannot save it; a copy it can
            image = image.clone()
        if not image.requires_grad:
            image = image.detach().requires_grad_(True)
        call = template.for_batch(int(image.shape[0])).with_image(image)
        if self.pre_activation is not None:
            return self._module_logits(call)
        if self.pre_activation_function is not None:
            return self._function_logits(call)
        output = self.selector(call.call(self.model))
        return output if self.head is None else self.head(output)

    def _module_logits(self, call: ModelInput) -> torch.Tensor:
        captured: dict[str, torch.Tensor] = {}

        def keep_input(module: nn.Module, inputs: tuple[Any, ...]) -> None:
            captured["logits"] = inputs[0]

        assert self.pre_activation is not None
        with self.pre_activation.register_forward_pre_hook(keep_input):
            call.call(self.model)
        return captured["logits"]

    def _function_logits(self, call: ModelInput) -> torch.Tensor:
        activations = FinalActivationInputs()
        with activations:
            probabilities = self.selector(call.call(self.model))
        logits = activations.input_of(probabilities)
        if logits is None:
            raise InputError(
                f"The model's forward returned no {self.pre_activation_function} output this time (it did on the "
                "example input), so its logits cannot be taken; inspect the model with this input."
            )
        return logits


class _GridView(nn.Identity):
    """The point where Captum sees a token or channels-last layer as ``[B, C, H, W]``."""


class CaptumAdapter(nn.Module):
    """Runs the score model with the target layer's output routed through a ``[B, C, H, W]`` view.

    Captum's LayerGradCam averages gradients over dims 2.. and sums over dim 1, so a
    ``[B, T, C]`` layer would give a one-dimensional "map". During each forward, a hook on
    the layer reshapes its output to ``[B, C, H, W]``, passes it through ``grid_view`` (the
    module Captum hooks) and puts it back, so the rest of the network computes exactly
    what it did before. The hook lives only for the duration of the forward.
    """

    layer: nn.Module

    def __init__(self, score_model: nn.Module, layer: nn.Module, transform: ReshapeTransform) -> None:
        super().__init__()
        self.score_model = score_model
        self.grid_view = _GridView()
        self.__dict__["layer"] = layer
        self.transform = transform

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        def route(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            return self.transform.inverse(self.grid_view(self.transform(output)), output)

        with self.layer.register_forward_hook(route):
            return self.score_model(image)


def grid_view(layout: Layout) -> ReshapeTransform | None:
    """The reshape Captum and torchcam need to see ``layout`` as a grid, or None where they read it as it is.

    Both average gradients over dims 2.. and sum activations over dim 1, so they read
    ``[B, C, H, W]``, ``[B, C, T, H, W]`` and ``[B, C, L]`` themselves; a token or
    channels-last layer goes through ``CaptumAdapter``. They compute in any dtype: the
    geometry alone decides, not the bfloat16 cast pytorch-grad-cam needs.
    """
    transform = layout.transform()
    return None if transform is None or layout.kind == "NCL" else transform


def channels_first(model: nn.Module, layer: nn.Module, layout: Layout) -> tuple[nn.Module, nn.Module]:
    """The model and layer to hand Captum or torchcam: as they are, or a ``CaptumAdapter`` and its ``grid_view``."""
    transform = grid_view(layout)
    if transform is None:
        return model, layer
    adapter = CaptumAdapter(model, layer, transform)
    return adapter, adapter.grid_view


class _CallView(nn.Identity):
    """The module the libraries hook for one call of a shared module: it sees that call alone."""


class CallRouter(nn.Module):
    """Runs the score model with call ``call_index`` of ``module`` routed through ``call_view``.

    A forward hook fires on every call of a module, so pytorch-grad-cam keeps the first
    call of a shared encoder and Captum the last. During each forward of this wrapper, a
    hook on ``module`` counts its calls and passes the output of call ``call_index`` (from
    0) through ``call_view``, an identity: a hook on ``call_view`` fires exactly once, on
    that call, and the network computes what it computed before. The hook lives only for
    the duration of the forward, so the user's model is left as it was; ``module`` is kept
    out of ``_modules`` (it is part of ``score_model`` already), and pickling or
    deep-copying the wrapper keeps it the same object as the copied model's module.
    """

    module: nn.Module

    def __init__(self, score_model: nn.Module, module: nn.Module, call_index: int, module_name: str = "") -> None:
        super().__init__()
        self.score_model = score_model
        self.call_view = _CallView()
        self.__dict__["module"] = module
        self.call_index = call_index
        self.module_name = module_name or type(module).__name__

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        calls = [0]

        def route(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> Any:
            index = calls[0]
            calls[0] += 1
            return self.call_view(output) if index == self.call_index else None

        with self.module.register_forward_hook(route):
            result = self.score_model(*args, **kwargs)
        if calls[0] <= self.call_index:
            # Silently explaining nothing (or another call) is the failure this wrapper exists to prevent.
            raise InputError(
                f"`{self.module_name}` ran {calls[0]} time(s) in this forward pass, so its call {self.call_index} "
                "(counting from 0) never happened: this input takes another path through the model than the "
                "example input did. Inspect the model with this input to get a spec for it."
            )
        return result


def score_model_of(model: nn.Module) -> nn.Module:
    """The model that returns the scores: ``model`` itself, or the one a ``CallRouter`` runs."""
    return model.score_model if isinstance(model, CallRouter) else model
