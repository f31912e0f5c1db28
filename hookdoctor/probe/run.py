"""The one probe pass: a forward with a hook on every module, and a backward from the score.

For every module it records how often it ran, what it returned, and whether a later
in-place operation rewrote that output; for every call whose output could be a map
(3-D or 4-D, batch first) it keeps the activation (alive in the graph anyway) and
statistics of the score's gradient with respect to it - energy per position and mean per
channel - which is all Grad-CAM and the checks need; the gradients themselves are dropped.
Checks read these records and never run the model themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hookdoctor.errors import InputError, ModelRunError
from hookdoctor.geometry.layout import MAX_PREFIX_TOKENS, Layout
from hookdoctor.model.inputs import ModelInput
from hookdoctor.model.outputs import OutputSelector, describe, find_score, primary_tensor, select_output


@dataclass(frozen=True)
class GradStats:
    """What Grad-CAM and the checks need of one gradient, for every layout it could have."""

    energy: dict[str, torch.Tensor]  # layout -> |grad| summed per position: [H*W] or [T]
    channel_mean: dict[str, torch.Tensor]  # layout -> grad averaged over positions: [B, C]
    leading_tokens: torch.Tensor | None  # tokens: grad of the first MAX_PREFIX_TOKENS tokens [B, k, C]
    num_tokens: int = 0

    @classmethod
    def of(cls, grad: torch.Tensor) -> GradStats:
        grad = grad.detach()
        if grad.dim() == 4:
            return cls(
                energy={"NCHW": grad.abs().sum((0, 1)).flatten(), "NHWC": grad.abs().sum((0, 3)).flatten()},
                channel_mean={"NCHW": grad.mean((2, 3)), "NHWC": grad.mean((1, 2))},
                leading_tokens=None,
            )
        return cls(
            energy={"tokens": grad.abs().sum((0, 2))},
            channel_mean={"tokens": grad.sum(1)},  # a sum here: the prefix is taken out per layout
            leading_tokens=grad[:, :MAX_PREFIX_TOKENS].clone(),
            num_tokens=int(grad.shape[1]),
        )

    def cell_energy(self, layout: Layout) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gradient energy per image cell, and per prefix token (token layouts only)."""
        energy = self.energy[layout.kind]
        if layout.kind != "tokens":
            return energy, None
        return energy[layout.prefix_tokens :], energy[: layout.prefix_tokens]

    def channel_weights(self, layout: Layout) -> torch.Tensor:
        """Grad-CAM's weights: the gradient averaged over the layer's image cells, ``[B, C]``."""
        if layout.kind != "tokens":
            return self.channel_mean[layout.kind]
        assert self.leading_tokens is not None  # set for every token (3-D) gradient
        prefix = self.leading_tokens[:, : layout.prefix_tokens].sum(1)
        return (self.channel_mean["tokens"] - prefix) / (self.num_tokens - layout.prefix_tokens)


@dataclass
class CallRecord:
    """One call of one module."""

    order: int
    structure: str
    is_tensor: bool
    tensor: torch.Tensor | None
    version_at_hook: int
    requires_grad: bool
    grad_fn: Any = None
    grad_enabled: bool = True  # False when the forward ran this module under no_grad / inference_mode
    version_after: int = -1
    grad: GradStats | None = None

    @property
    def shape(self) -> tuple[int, ...] | None:
        return tuple(self.tensor.shape) if self.tensor is not None else None

    @property
    def output_tensor(self) -> torch.Tensor:
        """The tensor this call returned (or the first one it returned); only for calls that have one."""
        if self.tensor is None:
            raise ValueError("this call returned no tensor")
        return self.tensor

    @property
    def grad_stats(self) -> GradStats:
        """The gradient statistics; only for calls the score's gradient reached."""
        if self.grad is None:
            raise ValueError("no gradient reached this call")
        return self.grad

    @property
    def overwritten(self) -> bool:
        return self.version_after != self.version_at_hook


@dataclass
class ModuleRecord:
    name: str
    module: nn.Module
    calls: list[CallRecord] = field(default_factory=list)
    first_input: torch.Tensor | None = None


@dataclass
class Score:
    """What the probe differentiated, and what the spec's model wrapper must return."""

    selector: OutputSelector
    other_heads: list[str]
    output_structure: str
    selected: torch.Tensor  # the selected score as the model returns it
    target: torch.Tensor  # [B] class per sample
    pre_activation: str | None  # name of a final Softmax/Sigmoid module whose input is explained
    saturated: bool
    zero_head: str | None  # name of a zero-initialised head (surrogate score used)
    value: torch.Tensor


@dataclass
class Probe:
    records: dict[str, ModuleRecord]
    score: Score
    image: torch.Tensor  # the input that required grad
    image_hw: tuple[int, int]
    batch: int
    input_gradient_zero: bool
    grad_enabled_by_user: bool


def _surrogate_score(features: torch.Tensor) -> torch.Tensor:
    """A fixed random projection of the head's input: same paths as the real score."""
    generator = torch.Generator().manual_seed(1234)
    direction = torch.randn(features.shape[1:], generator=generator).to(features)
    return (features * direction).sum()


def _input_gradient(value: torch.Tensor, image: torch.Tensor) -> torch.Tensor | None:
    """d value / d image through the probe's graph (firing the layer hooks), None if not connected."""
    if not value.requires_grad:  # the forward ran the head under no_grad or detached the score
        return None
    try:
        (grad,) = torch.autograd.grad(value, image, allow_unused=True, retain_graph=True)
    except Exception as exc:  # the user's backward (custom autograd functions): theirs to see, in one paragraph
        raise ModelRunError(
            f"The model's backward pass raised {type(exc).__name__}: {exc}. hookdoctor differentiates the "
            "explained score once with respect to the input; a model whose backward fails cannot be "
            "explained with gradient methods until that is fixed."
        ) from exc
    return grad


def _target_indices(logits: torch.Tensor, target: int | None) -> torch.Tensor:
    if target is None:
        return logits.detach().argmax(dim=1)
    if not 0 <= int(target) < logits.shape[1]:
        raise InputError(
            f"target={target} is out of range: the model scores {logits.shape[1]} classes, so the "
            f"target must be between 0 and {logits.shape[1] - 1} (or None for the top-scoring class)."
        )
    return torch.full((logits.shape[0],), int(target), dtype=torch.long, device=logits.device)


def run_probe(
    model: nn.Module,
    model_input: ModelInput,
    target: int | None,
    name_prefix: str = "",
    output_key: str | int | None = None,
) -> Probe:
    """Run ``model`` once forward and once backward. The caller restores the model (``preserved``)."""
    grad_enabled_by_user = torch.is_grad_enabled()
    records: dict[str, ModuleRecord] = {}
    counter = [0]
    handles = []
    # Gradient hooks stay on the tensors after the probe; later passes over the same graph
    # (the locality probe) must not add to what the probe recorded.
    recording = [True]

    def make_hook(record: ModuleRecord):
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            tensor = primary_tensor(output)
            call = CallRecord(
                order=counter[0],
                structure=describe(output),
                is_tensor=isinstance(output, torch.Tensor),
                tensor=tensor,
                version_at_hook=_version(tensor),
                requires_grad=bool(tensor is not None and tensor.requires_grad),
                grad_fn=tensor.grad_fn if tensor is not None else None,
                grad_enabled=torch.is_grad_enabled(),
            )
            counter[0] += 1
            if not record.calls and inputs and isinstance(inputs[0], torch.Tensor):
                record.first_input = inputs[0]
            record.calls.append(call)
            if call.requires_grad and tensor is not None and tensor.dim() in (3, 4):

                def keep(grad: torch.Tensor, call: CallRecord = call) -> None:
                    if recording[0]:
                        call.grad = GradStats.of(grad)

                tensor.register_hook(keep)

        return hook

    for name, module in model.named_modules():
        if not name:
            continue
        full_name = name_prefix + name
        records[full_name] = ModuleRecord(full_name, module)
        handles.append(module.register_forward_hook(make_hook(records[full_name])))

    image = model_input.image.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            try:
                output = model_input.with_image(image).call(model)
            except Exception as exc:  # the user's forward: any failure is theirs to see, in one paragraph
                raise ModelRunError(
                    f"The model's forward raised {type(exc).__name__}: {exc}. hookdoctor ran it once on an input "
                    f"of shape {tuple(model_input.image.shape)}; check that this is the input the model expects "
                    "(pass example_input=..., or --input-shape on the command line)."
                ) from exc
    finally:
        for handle in handles:
            handle.remove()

    for record in records.values():
        for call in record.calls:
            if call.tensor is not None:
                call.version_after = _version(call.tensor)

    found = find_score(output) if output_key is None else (select_output(output, output_key), [])
    if found is None:
        raise InputError(
            f"The model returned {describe(output)}, which holds no [batch, classes] score tensor to "
            "explain. Wrap the model so that its forward returns the scores (logits or an embedding) "
            "as a 2-D tensor, and inspect the wrapper."
        )
    selector, other_heads = found
    logits = selector(output)
    producer = _producer(records, logits)
    pre_activation = None
    scored = logits
    if (
        producer is not None
        and isinstance(producer.module, (nn.Softmax, nn.Sigmoid))
        and producer.first_input is not None
    ):
        pre_activation = producer.name
        scored = producer.first_input
    saturated = pre_activation is not None and bool(logits.detach().max() >= 1.0 - 1e-6)
    target_idx = _target_indices(scored, target)
    with torch.enable_grad():  # the caller may be under no_grad
        value = scored.gather(1, target_idx[:, None]).sum()
        input_grad = _input_gradient(value, image)
    input_gradient_zero = input_grad is None or not bool(input_grad.abs().max() > 0)
    zero_head = None
    if input_gradient_zero:
        head = _zero_initialised_head(records, scored)
        if head is not None and head.first_input is not None:
            zero_head = head.name
            for record in records.values():
                for call in record.calls:
                    call.grad = None
            with torch.enable_grad():
                value = _surrogate_score(head.first_input)
                _input_gradient(value, image)
    recording[0] = False

    score = Score(
        selector=selector,
        other_heads=other_heads,
        output_structure=describe(output),
        selected=logits.detach(),
        target=target_idx,
        pre_activation=pre_activation,
        saturated=saturated,
        zero_head=zero_head,
        value=value,
    )
    return Probe(
        records=records,
        score=score,
        image=image,
        image_hw=model_input.image_hw,
        batch=model_input.batch,
        input_gradient_zero=input_gradient_zero and zero_head is None,
        grad_enabled_by_user=grad_enabled_by_user,
    )


def _version(tensor: torch.Tensor | None) -> int:
    """The in-place version counter; 0 for tensors made under inference_mode, which have none (and
    cannot be rewritten outside it)."""
    return 0 if tensor is None or tensor.is_inference() else int(tensor._version)


def _producer(records: dict[str, ModuleRecord], tensor: torch.Tensor) -> ModuleRecord | None:
    """The innermost module whose last call returned ``tensor`` (containers pass it on too)."""
    return next((r for r in reversed(list(records.values())) if r.calls and r.calls[-1].tensor is tensor), None)


def _zero_initialised_head(records: dict[str, ModuleRecord], scored: torch.Tensor) -> ModuleRecord | None:
    """The module that produced the score, when its weight is all zeros."""
    head = _producer(records, scored)
    weight = getattr(head.module, "weight", None) if head is not None else None
    if isinstance(weight, torch.Tensor) and head is not None and head.first_input is not None:
        return head if not bool(weight.abs().max() > 0) else None
    return None
