"""GradCAMSpec: a target layer, a reshape and a score model that work together.

The spec works with pytorch-grad-cam (``GradCAM(**spec.pytorch_grad_cam_kwargs())``),
Captum (``spec.captum().attribute(x, target=...)``) and plain hooks; ``spec.code(backend)``
prints the same thing as a snippet to paste. A spec for one call of a module that runs
several times (``NAME#k``) hands out a ``CallRouter`` as ``.model`` and its identity
``call_view`` as ``.layer``, so the libraries' hooks fire on that call alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hookdoctor.errors import InputError, MissingDependencyError
from hookdoctor.geometry.layout import Layout, ReshapeTransform
from hookdoctor.model.activation import FinalActivationInputs
from hookdoctor.model.inputs import BACKEND_AXIS, ModelInput
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
        handle = self.pre_activation.register_forward_pre_hook(keep_input)
        try:
            call.call(self.model)
        finally:
            handle.remove()
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

        handle = self.layer.register_forward_hook(route)
        try:
            return self.score_model(image)
        finally:
            handle.remove()


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

        handle = self.module.register_forward_hook(route)
        try:
            result = self.score_model(*args, **kwargs)
        finally:
            handle.remove()
        if calls[0] <= self.call_index:
            # Silently explaining nothing (or another call) is the failure this wrapper exists to prevent.
            raise InputError(
                f"`{self.module_name}` ran {calls[0]} time(s) in this forward pass, so its call {self.call_index} "
                "(counting from 0) never happened: this input takes another path through the model than the "
                "example input did. Inspect the model with this input to get a spec for it."
            )
        return result


@dataclass(frozen=True)
class GradCAMSpec:
    """A Grad-CAM hook spec that was checked to work on the example input.

    For one call of a module that runs several times, ``call_index`` is that call (from 0),
    ``layer_name`` is ``NAME#k``, ``module_name`` is ``NAME``, ``model`` is a
    ``CallRouter`` and ``layer`` is its ``call_view``: the libraries hook exactly that call.
    """

    layer_name: str
    layer: nn.Module
    reshape_transform: ReshapeTransform | Float32Maps | None
    model: nn.Module
    grid: tuple[int, ...]
    layout: Layout
    reasons: tuple[str, ...] = field(default_factory=tuple)
    score: str = "logits"
    call_index: int | None = None
    task: str = "classification"
    input_kind: str = "image"
    # False when the spec comes from a structure-only (meta device) pass: no map was computed with it
    verified: bool = True
    # The example input's shape: ShapleyCAM's double-backward check runs on an input like it.
    input_shape: tuple[int, ...] | None = None

    def as_backend_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input as pytorch-grad-cam takes it: a 3-D input gets a singleton axis, others come back as they are.

        pytorch-grad-cam 1.5.7 sizes its map from a 4-D or 5-D input only; ``spec.model``
        accepts this view and drops the axis again before calling the model.
        """
        axis = BACKEND_AXIS.get(self.input_kind)
        return x.unsqueeze(axis) if axis is not None and x.dim() == 3 else x

    @property
    def module_name(self) -> str:
        """The dotted name of the module in the model passed in (``layer_name`` without ``#k``)."""
        return self.layer_name if self.call_index is None else self.layer_name.rsplit("#", 1)[0]

    def pytorch_grad_cam_kwargs(self, method: str = "GradCAM") -> dict[str, Any]:
        """Keyword arguments for the pytorch-grad-cam class ``method`` (by class name) on this layer.

        ``dict(model=..., target_layers=[...], reshape_transform=...)``, plus what the method
        needs for this layer: AblationCAM gets an ablation layer that knows the layout and a
        model it cannot swap modules into, ShapleyCAM a model with double-differentiable
        attention whose grid view it hooks. Raises ``InputError`` for an unknown method and
        ``MethodUnsupportedError`` (with a code) where the method cannot work on this model.
        """
        from hookdoctor.specs.cam_family import method_kwargs

        return method_kwargs(self, method)

    def captum(self) -> Any:
        """A ``captum.attr.LayerGradCam`` whose ``attribute(x, target=...)`` is ``[B, 1, *grid]``."""
        try:
            from captum.attr import LayerGradCam
        except ImportError as exc:
            raise MissingDependencyError(
                "spec.captum() needs Captum, which is not installed. Install it with "
                "`pip install 'hookdoctor[captum]'` (or `pip install captum`)."
            ) from exc
        transform = self.layout.transform()  # Captum computes in any dtype: the geometry alone
        if transform is None or self.layout.kind == "NCL":  # Captum reads [B, C, L] itself
            return LayerGradCam(self.model, self.layer)
        adapter = CaptumAdapter(self.model, self.layer, transform)
        return LayerGradCam(adapter, adapter.grid_view)

    def torchcam(self) -> Any:
        """A ``torchcam.methods.GradCAM`` extractor whose map equals pytorch-grad-cam's.

        Run the extractor's own model, then ask for the map::

            extractor = spec.torchcam()
            scores = extractor.model(x)
            heatmap = extractor(class_idx=target, scores=scores)[0]  # [B, H, W], in [0, 1]
            extractor.remove_hooks()

        torchcam averages gradients over dims 2.. and sums activations over dim 1, like
        Captum; a token or channels-last layer is routed through a ``[B, C, H, W]`` view
        (``CaptumAdapter``) whose identity torchcam hooks, so ``extractor.model`` is then the
        adapter, and the user's model computes exactly what it did. torchcam's hooks stay on
        the extractor's target until ``remove_hooks()`` (or the end of a ``with`` block).
        """
        try:
            from torchcam.methods import GradCAM as TorchcamGradCAM
        except ImportError as exc:
            raise MissingDependencyError(
                "spec.torchcam() needs torchcam, which is not installed. Install it with "
                "`pip install 'hookdoctor[torchcam]'` (or `pip install torchcam`)."
            ) from exc
        transform = self.layout.transform()  # torchcam computes in any dtype: the geometry alone
        if transform is None or self.layout.kind == "NCL":  # torchcam, too, reads [B, C, L] itself
            return TorchcamGradCAM(self.model, target_layer=self.layer)
        adapter = CaptumAdapter(self.model, self.layer, transform)
        return TorchcamGradCAM(adapter, target_layer="grid_view")

    def code(self, backend: str = "pytorch-grad-cam", method: str = "GradCAM") -> str:
        """A copy-paste snippet for ``"pytorch-grad-cam"`` (any CAM class, by name), ``"captum"`` or ``"torchcam"``."""
        from hookdoctor.specs.snippets import gradcam_snippet

        return gradcam_snippet(self, backend, method)

    def to_dict(self) -> dict[str, Any]:
        found = {
            "layer_name": self.layer_name,
            # A per-call spec's layer is the router's identity; the type that says something is the module's.
            "layer_type": type(self.model.module if isinstance(self.model, CallRouter) else self.layer).__name__,
            "grid": list(self.grid),
            "layout": self.layout.kind,
            "prefix_tokens": self.layout.prefix_tokens,
            "reshape_transform": repr(self.reshape_transform) if self.reshape_transform is not None else None,
            "model_wrapper": type(self.model).__name__ if isinstance(self.model, (ScoreModel, CallRouter)) else None,
            "score": self.score,
            "task": self.task,
            "reasons": list(self.reasons),
            "verified": self.verified,
        }
        if self.call_index is not None:  # only per-call specs: the keys of every other report stay as they were
            found.update(module_name=self.module_name, call_index=self.call_index)
        return found
