"""The pytorch-grad-cam family: what each CAM class needs to work on a spec's layer.

Every class below takes ``(model, target_layers, reshape_transform)``. Most need nothing
more than the spec's GradCAM kwargs. Two need more on token and channels-last layers:

- ``AblationCAM`` ablates channels by indexing ``[B, C, H, W]``: it gets a
  ``GridAblationLayer`` and an ``AblationModel`` (``hookdoctor/specs/ablation.py``).
- ``ShapleyCAM`` differentiates twice (a Hessian-vector product at the layer). Fused
  attention kernels (``_scaled_dot_product_flash_attention_for_cpu``, flash and
  memory-efficient attention on GPU) have no double backward; the math kernel does, so
  ``SecondOrderModel`` runs the model under ``sdpa_kernel(SDPBackend.MATH)``. ShapleyCAM
  also keeps its activations without the reshape (``detach=False`` skips it in
  ``ActivationsAndGradients``) and then multiplies ``[B, C]`` weights with the raw
  ``[B, T, C]`` or ``[B, H, W, C]`` tensor ("Invalid activation shape", or the broadcast
  error on Swin); ``SecondOrderModel`` therefore exposes the layer as a ``[B, C, H, W]``
  module to hook, and the reshape is not needed.

Every other class works with the spec's GradCAM kwargs as they are.

Where a method cannot work, ``method_kwargs`` raises ``MethodUnsupportedError`` with a
code: HD205 when the second derivative cannot be taken (an operation without a double
backward after the layer), HD308 when FEM's k-sigma rule can keep no cell of the grid.
"""

from __future__ import annotations

import contextlib
import difflib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hookdoctor.codes import get
from hookdoctor.errors import InputError, MethodUnsupportedError, MissingDependencyError
from hookdoctor.geometry.layout import ReshapeTransform
from hookdoctor.model.guard import preserved
from hookdoctor.specs.wrappers import Float32Maps

if TYPE_CHECKING:
    from hookdoctor.specs.gradcam import GradCAMSpec

# Every CAM class of pytorch-grad-cam 1.5.7 that explains one target layer and takes
# (model, target_layers, reshape_transform), in the order of its README.
METHODS = (
    "GradCAM",
    "HiResCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "XGradCAM",
    "AblationCAM",
    "ScoreCAM",
    "EigenCAM",
    "EigenGradCAM",
    "LayerCAM",
    "KPCA_CAM",
    "FEM",
    "ShapleyCAM",
    "FinerCAM",
    "SegEigenCAM",
)
# A sanity baseline (random channel weights, so its map is random): it takes the plain kwargs.
BASELINES = ("RandomCAM",)
# FEM's default k: a cell is kept when it exceeds its channel's mean by k standard deviations.
FEM_K = 2.0
# Classes of the package that do not explain one given layer, and why.
_NOT_LAYER_METHODS = {
    "FullGrad": "FullGrad hooks the bias of every layer of the model and ignores target_layers",
    "GuidedBackpropReLUModel": "guided backpropagation is an input-gradient method without a target layer",
    "DeepFeatureFactorization": "DeepFeatureFactorization factorises activations into concepts, not one class map",
    "RefineCAM": "RefineCAM combines one base CAM per layer over several layers",
    "SESS": "SESS runs a base CAM over image patches and scales",
}


def resolve_method(name: str) -> str:
    """The class name of a CAM method (case-insensitive); ``InputError`` with close matches otherwise."""
    if name in METHODS or name in BASELINES:
        return name
    by_key = {m.lower().replace("_", ""): m for m in (*METHODS, *BASELINES)}
    key = name.strip().lower().replace("_", "").replace("++", "plusplus")
    if key in by_key:
        return by_key[key]
    for other, why in _NOT_LAYER_METHODS.items():
        if key == other.lower():
            raise InputError(
                f"{other} is not a target-layer method ({why}), so a layer spec does not apply to it. "
                f"Use it directly, or choose one of: {', '.join(METHODS)}."
            )
    close = difflib.get_close_matches(name, METHODS, n=3, cutoff=0.5)
    close += [m for m in difflib.get_close_matches(key, list(by_key), n=3, cutoff=0.6) if by_key[m] not in close]
    hint = f" Did you mean {', '.join(by_key.get(c, c) for c in close)}?" if close else ""
    raise InputError(
        f"Unknown pytorch-grad-cam method {name!r}.{hint} Methods are named by their class name: "
        f"{', '.join(METHODS)}."
    )


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """Run ``scaled_dot_product_attention`` with the math kernel, the one that has a double backward."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: no sdpa_kernel, only the global switches under torch.backends.cuda
        with torch.backends.cuda.sdp_kernel(enable_flash=False, enable_math=True, enable_mem_efficient=False):
            yield
        return
    with sdpa_kernel(SDPBackend.MATH):
        yield


class _FreshGrid(nn.Module):
    """The layer's ``[B, C, H, W]`` view as a tensor of its own, where ShapleyCAM hooks.

    ShapleyCAM keeps the hooked activations and their gradient with their graphs and
    calls ``detach_()`` on both when it is released, which raises on a view ("Can't detach
    views in-place"); the permuted view of a token or channels-last layer is one.
    """

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return grid.clone()


class SecondOrderModel(nn.Module):
    """The model to give ShapleyCAM, with ``target_layer`` as its only target layer.

    Its forward runs the score model with the math attention kernel. For a token or
    channels-last layer it also routes the layer's output through a ``[B, C, H, W]`` view
    (``target_layer``) and back, so the rest of the network computes what it did before;
    ShapleyCAM differentiates that view twice and multiplies it with its weights, so no
    ``reshape_transform`` is passed. The routing hook lives only while ``forward`` runs.
    """

    layer: nn.Module
    target_layer: nn.Module

    def __init__(self, score_model: nn.Module, layer: nn.Module, transform: ReshapeTransform | None = None) -> None:
        super().__init__()
        self.score_model = score_model
        self.transform = transform
        self.__dict__["layer"] = layer
        if transform is None:
            self.__dict__["target_layer"] = layer
        else:
            self.grid_view = _FreshGrid()
            self.__dict__["target_layer"] = self.grid_view

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        transform = self.transform
        if transform is None:
            with math_attention():
                return self.score_model(image)

        def route(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            grid = self.grid_view(transform(output))
            # mul's backward hands the view a gradient of its own (not a view either), see _FreshGrid.
            return transform.inverse(grid.mul(1.0), output)

        with self.layer.register_forward_hook(route):
            with math_attention():
                return self.score_model(image)


def second_order_failure(model: SecondOrderModel, input_shape: tuple[int, ...]) -> str | None:
    """Why ShapleyCAM's Hessian-vector product fails on ``model``, or None when it works.

    The same two calls as ShapleyCAM (the layer's gradient with ``create_graph=True``,
    then its gradient against the activations), on a seeded random input of the example's
    shape; the model is left as it was.
    """
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(input_shape, generator=generator).to(device=device, dtype=dtype).requires_grad_(True)
    captured: list[torch.Tensor] = []
    with model.target_layer.register_forward_hook(lambda module, inputs, output: captured.append(output)):
        with preserved(model):
            model.eval()
            scores = model(image)
            score = scores[:, int(scores[0].argmax())].sum()
            activations = captured[0]
            (grads,) = torch.autograd.grad(score, activations, create_graph=True)
            # Only the second derivative is in question: the forward and first backward ran in the probe.
            try:
                torch.autograd.grad(grads, activations, grad_outputs=activations, allow_unused=True)
            except RuntimeError as exc:
                return str(exc).strip().splitlines()[0]
    return None


def _unsupported(code: str, **fields: Any) -> MethodUnsupportedError:
    """The refusal of ``code``: its message and fix, written from its template, in one sentence."""
    message, fix = get(code).render("default", fields)
    return MethodUnsupportedError(code, f"{message} {fix}")


def method_kwargs(spec: GradCAMSpec, method: str) -> dict[str, Any]:
    """Keyword arguments for ``pytorch_grad_cam.<method>`` on ``spec``'s layer."""
    method = resolve_method(method)
    base: dict[str, Any] = {
        "model": spec.model,
        "target_layers": [spec.layer],
        "reshape_transform": spec.reshape_transform,
    }
    if method == "AblationCAM":
        try:
            from hookdoctor.specs.ablation import AblationModel, GridAblationLayer
        except ImportError as exc:
            raise MissingDependencyError(
                "AblationCAM's ablation layer builds on pytorch-grad-cam, which is not installed. Install it "
                "with `pip install 'hookdoctor[grad-cam]'` (or `pip install grad-cam`)."
            ) from exc
        # The ablation works on the layout's geometry; spec.reshape_transform (which may also
        # cast a bfloat16 layer's maps for numpy, Float32Maps) stays the one for the activations.
        ablation_layer = GridAblationLayer(spec.layout.transform())
        model = AblationModel(spec.model, spec.layer, ablation_layer)
        return {**base, "model": model, "ablation_layer": ablation_layer}
    if method == "ShapleyCAM":
        second = SecondOrderModel(spec.model, spec.layer, spec.layout.transform())
        if spec.input_shape is not None:
            failure = second_order_failure(second, spec.input_shape)
            if failure is not None:
                raise _unsupported("HD205", layer=spec.layer_name, failure=failure)
        # The grid view needs no reshape; a bfloat16 layer's maps still need the cast for numpy.
        cast = Float32Maps() if isinstance(spec.reshape_transform, Float32Maps) else None
        return {"model": second, "target_layers": [second.target_layer], "reshape_transform": cast}
    if method == "FEM":
        cells = spec.grid[0] * spec.grid[1]
        if math.sqrt(max(cells - 1, 0)) <= FEM_K:
            raise _unsupported(
                "HD308",
                layer=spec.layer_name,
                k=FEM_K,
                cells=cells,
                h=spec.grid[0],
                w=spec.grid[1],
                bound=math.sqrt(max(cells - 1, 0)),
                needed=int(FEM_K**2) + 2,
            )
    return base
