"""AblationCAM for any layout, without ever swapping a module into the user's model.

pytorch-grad-cam's ``AblationLayer`` indexes ``[B, C, H, W]``: on a token (``[B, T, C]``)
or channels-last (``[B, H, W, C]``) layer it raises ``IndexError``, and ``AblationLayerVit``
handles only a ``[B, 1 + H*W, C]`` ViT by ablating every token, the CLS token included.
``GridAblationLayer`` ablates channel ``c`` in the spec's ``[B, C, H, W]`` view and puts
the result back into the layer's own layout, so prefix tokens (CLS, distillation,
registers) keep their values, whatever their number.

``AblationCAM`` also swaps its ablation layer into the model it is given and swaps it back
only when it finishes: if anything raises in between, the user's model keeps the ablation
layer for good. ``AblationModel`` is the model AblationCAM gets instead: the network is
not one of its registered children, so pytorch-grad-cam's swap finds nothing to replace,
and the ablation is applied by a forward hook that lives only while ``forward`` runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from pytorch_grad_cam.ablation_layer import AblationLayer
from torch import nn

from hookdoctor.geometry.layout import ReshapeTransform

# pytorch-grad-cam's ablation value when activations can be negative: far below the minimum.
ABLATION_OFFSET = 1e7


class GridAblationLayer(AblationLayer):
    """An ablation layer that ablates channels of the ``[B, C, H, W]`` view of any layout.

    AblationCAM calls ``set_next_batch`` with the layer's raw output and then runs the
    model on ``n`` copies of one image; this layer returns copy ``i`` with channel
    ``indices[i]`` ablated. The ablation value follows pytorch-grad-cam's rule (zero when
    the activations' minimum is zero, as after a ReLU; otherwise the minimum minus 1e7),
    taken once per image: pytorch-grad-cam lowers it again for every copy, so a channel's
    score would depend on its position in the batch.
    """

    def __init__(self, transform: ReshapeTransform | None) -> None:
        super().__init__()
        self.transform = transform
        self.activations: torch.Tensor | None = None

    def set_next_batch(self, input_batch_index: int, activations: torch.Tensor, num_channels_to_ablate: int) -> None:
        sample = activations[input_batch_index : input_batch_index + 1].detach()
        self.activations = sample.repeat(num_channels_to_ablate, *([1] * (sample.dim() - 1)))

    @property
    def armed(self) -> bool:
        """True between ``set_next_batch`` and the forward pass that consumes the batch."""
        return self.activations is not None

    def __call__(self, x: Any = None) -> torch.Tensor:
        stored = self.activations
        if stored is None:
            raise RuntimeError("GridAblationLayer was called before AblationCAM set its next batch")
        # One batch, one forward: a later forward of the model never sees stale activations.
        self.activations = None
        view = (stored if self.transform is None else self.transform(stored)).clone()
        low = view.min()
        value = torch.zeros_like(low) if bool(low == 0) else low - ABLATION_OFFSET
        for i in range(view.shape[0]):
            view[i, int(self.indices[i])] = value
        return view if self.transform is None else self.transform.inverse(view, stored)


class AblationModel(nn.Module):
    """The model to give AblationCAM: it runs ``score_model`` and ablates the layer by a hook.

    ``score_model`` is kept out of ``_modules`` on purpose: pytorch-grad-cam's
    ``replace_layer_recursive`` walks ``_modules`` to swap the target layer for the
    ablation layer, and here it finds nothing, so the user's model is never modified.
    ``parameters()`` and ``train()`` reach the network, which is all pytorch-grad-cam
    asks of its model besides calling it.
    """

    score_model: nn.Module
    layer: nn.Module
    ablation_layer: GridAblationLayer

    def __init__(self, score_model: nn.Module, layer: nn.Module, ablation_layer: GridAblationLayer) -> None:
        super().__init__()
        self.__dict__["score_model"] = score_model
        self.__dict__["layer"] = layer
        self.__dict__["ablation_layer"] = ablation_layer

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        return self.score_model.parameters(recurse)

    def train(self, mode: bool = True) -> AblationModel:
        self.score_model.train(mode)
        self.training = mode
        return self

    def forward(self, image: torch.Tensor) -> Any:
        def ablate(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
            if not self.ablation_layer.armed:
                return None  # AblationCAM's own first pass: the layer's real output
            return self.ablation_layer(output)

        with self.layer.register_forward_hook(ablate):
            return self.score_model(image)
