"""The one recorded pass: one forward under attention interception, one backward from the score.

The forward runs with one pair of hooks on every module (``intercepting``): they keep the
stack of running modules that attributes each attention computation to its module, and
record every module call - how often it ran, what it returned, and (through tensor
version counters) whether a later in-place operation rewrote that output. Fused attention
gets its probabilities computed beside it, on the gradient path, with outputs bit for bit
the model's own. Whether the forward drew from the random number generator is read off
the RNG state, which costs nothing (HD006).

The backward differentiates the explained score once with respect to the input. Tensor
hooks, removed right after it, turn the gradient at every 3-D/4-D module output into
statistics (``GradStats``) and the gradient at every captured attention into its energy
per query row. The autograd graph below the score becomes a ``GradGraph``. The graph is
retained for the locality test; ``Probe.release`` drops it with every activation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from hookdoctor.errors import InputError, ModelRunError
from hookdoctor.model.activation import FinalActivationInputs, final_activation
from hookdoctor.model.inputs import ModelInput
from hookdoctor.model.outputs import describe, primary_tensor
from hookdoctor.model.tasks import SegmentationScores, TaskScore, choose_score
from hookdoctor.probe.gradpath import GradGraph
from hookdoctor.probe.intercept import AttentionEvent, intercepting
from hookdoctor.probe.record import (
    AttentionCall,
    CallRecord,
    GradStats,
    ModuleRecord,
    Probe,
    Score,
    ScoreRequest,
    stat_buffers,
)
from hookdoctor.probe.sites import SiteNamer


def _surrogate_score(features: torch.Tensor) -> torch.Tensor:
    """A fixed random projection of the head's input: same paths as the real score."""
    generator = torch.Generator().manual_seed(1234)
    direction = torch.randn(features.shape[1:], generator=generator).to(features)
    return (features * direction).sum()


def _input_gradient(value: torch.Tensor, image: torch.Tensor) -> torch.Tensor | None:
    """d value / d image through the probe's graph (firing the tensor hooks), None if not connected."""
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


def _target_indices(logits: torch.Tensor, target: int | None, default: int | None = None) -> torch.Tensor:
    if target is None and default is None and logits.is_meta:
        # No values: class 0 stands for the top class (the paths are the same).
        return torch.zeros((logits.shape[0],), dtype=torch.long, device=logits.device)
    if target is None and default is None:
        return logits.detach().argmax(dim=1)
    chosen = int(default if target is None else target)  # type: ignore[arg-type]
    if not 0 <= chosen < logits.shape[1]:
        raise InputError(
            f"target={target} is out of range: the model scores {logits.shape[1]} classes, so the "
            f"target must be between 0 and {logits.shape[1] - 1} (or None for the top-scoring class)."
        )
    return torch.full((logits.shape[0],), chosen, dtype=torch.long, device=logits.device)


def _rng_states(device: torch.device) -> list[torch.Tensor]:
    """The global RNG states a forward on ``device`` can draw from."""
    if device.type == "meta":  # random ops on meta tensors draw nothing: determinism is not judged there
        return []
    states = [torch.random.get_rng_state()]
    if device.type == "cuda" and torch.cuda.is_initialized():
        states.append(torch.cuda.get_rng_state(device))
    return states


def _version(tensor: torch.Tensor) -> int:
    """The tensor's in-place version counter (inference tensors have none: they cannot be rewritten by autograd)."""
    return -1 if tensor.is_inference() else int(tensor._version)


class _Recorder:
    """The module-call and attention sinks of the intercepted forward."""

    def __init__(self, model: nn.Module, name_prefix: str, image_batch: int) -> None:
        self.prefix = name_prefix
        named = ((name_prefix + name, module) for name, module in model.named_modules() if name)
        self.records = {name: ModuleRecord(name, module) for name, module in named}
        self.attention: list[AttentionCall] = []
        self.namer = SiteNamer(image_batch)
        self.order = 0
        self.recording = True

    def on_module(self, name: str, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        record = self.records.get(self.prefix + name) if name and self.recording else None
        if record is None:
            return
        tensor = primary_tensor(output)
        record.calls.append(
            CallRecord(
                order=self.order,
                structure=describe(output),
                is_tensor=isinstance(output, torch.Tensor),
                tensor=tensor,
                shape=tuple(tensor.shape) if tensor is not None else None,
                version_at_hook=_version(tensor) if tensor is not None else 0,
                requires_grad=bool(tensor is not None and tensor.requires_grad),
                grad_fn=tensor.grad_fn if tensor is not None else None,
                grad_enabled=torch.is_grad_enabled(),
            )
        )
        self.order += 1
        if len(record.calls) == 1 and args and isinstance(args[0], torch.Tensor):
            record.first_input = args[0]

    def on_attention(self, event: AttentionEvent) -> None:
        site = self.namer.site(event) if self.recording else None
        if site is not None:
            self.attention.append(AttentionCall(site, event.probs, event.on_path, module_calls_before=self.order))


def _gradient_hooks(records: dict[str, ModuleRecord], attention: list[AttentionCall]) -> list[Any]:
    """Tensor hooks that turn the score's gradient into statistics; the caller removes them."""
    handles = []
    # Containers and in-place activations return the tensor they were given: one hook per
    # tensor, its statistics shared by every call that returned it.
    sharing: dict[int, tuple[torch.Tensor, list[CallRecord]]] = {}
    for record in records.values():
        for call in record.calls:
            tensor = call.tensor
            if call.requires_grad and tensor is not None and tensor.dim() in (3, 4, 5):
                sharing.setdefault(id(tensor), (tensor, []))[1].append(call)
    hooked = [(tensor, calls) for tensor, calls in sharing.values() if not tensor.is_meta]
    reached = [
        seen for seen in attention
        if seen.on_path and seen.probs is not None and seen.probs.requires_grad and not seen.probs.is_meta
    ]
    # Room for every statistic, made before the backward (see stat_buffers); the rows of each
    # attention ride along as a [Tq] "energy.tokens" of a [1, Tq, 1] request.
    buffers = stat_buffers(
        [tuple(t.shape) for t, _ in hooked] + [(1, int(seen.probs.shape[2]), 1) for seen in reached],  # type: ignore[union-attr]
        [t for t, _ in hooked] + [seen.probs for seen in reached],  # type: ignore[misc]
    )
    into = {id(t): b for (t, _), b in zip(hooked, buffers, strict=False)}
    rows_into = {id(seen): b["energy.tokens"] for seen, b in zip(reached, buffers[len(hooked) :], strict=True)}
    for tensor, calls in sharing.values():
        handles.append(tensor.register_hook(_keep_stats(calls, into.get(id(tensor)))))
    for seen in attention:
        probs = seen.probs
        if seen.on_path and probs is not None and probs.requires_grad:
            handles.append(probs.register_hook(_keep_rows(seen, rows_into.get(id(seen)))))
    return handles


def _keep_stats(calls: list[CallRecord], room: dict[str, torch.Tensor] | None) -> Any:
    def keep(grad: torch.Tensor) -> None:
        stats = GradStats.of(grad, into=room)
        for call in calls:
            call.grad = stats

    return keep


def _keep_rows(seen: AttentionCall, room: torch.Tensor | None) -> Any:
    def rows(grad: torch.Tensor) -> None:
        if grad.is_meta:  # structure only: no energy, only that the gradient arrived
            seen.row_energy = grad.new_empty(grad.shape[2])
        elif room is not None and room.shape == grad.shape[2:3] and room.dtype == grad.dtype:
            seen.row_energy = torch.sum(grad.detach().abs(), dim=(0, 1, 3), out=room)
        else:
            seen.row_energy = grad.detach().abs().sum(dim=(0, 1, 3))

    return rows


def _forget_gradients(records: dict[str, ModuleRecord], attention: list[AttentionCall]) -> None:
    for record in records.values():
        for call in record.calls:
            call.grad = None
    for seen in attention:
        seen.row_energy = None


@contextmanager
def recorded_pass(
    model: nn.Module,
    model_input: ModelInput,
    target: int | None,
    name_prefix: str = "",
    output_key: str | int | None = None,
    *,
    task: str | None = None,
    reference: torch.Tensor | None = None,
) -> Iterator[Probe]:
    """Run ``model`` once forward and once backward; the block reads the record.

    The interception stays in place (recording nothing more) until the block ends: a
    checkpointed model recomputes its forward inside every backward over the recorded
    graph - the probe's and the locality test's - and must see the same operations again.
    When the block ends, every hook is gone and the record holds no tensor of the model.
    The caller restores the model (``preserved``).
    """
    grad_enabled_by_user = torch.is_grad_enabled()
    recorder = _Recorder(model, name_prefix, model_input.batch)
    with ExitStack() as scope:
        # Inference mode would make every tensor an inference tensor (no graph, no version
        # counter): the probe and the checks over its graph need both, whatever the caller's mode.
        scope.enter_context(torch.inference_mode(False))
        scope.enter_context(torch.enable_grad())
        image = model_input.image.detach().clone().requires_grad_(True)  # on the model's device (meta too)
        rng_before = _rng_states(image.device)
        scope.enter_context(intercepting(model, recorder.on_attention, on_path=True, module_sink=recorder.on_module))
        activations = FinalActivationInputs()
        try:
            with activations:  # inside the attention mode: it sees each softmax first, then passes it on
                output = model_input.with_image(image).call(model)
        except Exception as exc:  # the user's forward: any failure is theirs to see, in one paragraph
            raise ModelRunError(
                f"The model's forward raised {type(exc).__name__}: {exc}. hookdoctor ran it once on an input "
                f"of shape {tuple(model_input.image.shape)}; check that this is the input the model expects "
                "(pass example_input=..., or --input-shape on the command line)."
            ) from exc
        recorder.recording = False  # a recomputing backward runs the modules again: not new calls
        rng_after = _rng_states(image.device)
        consumed_randomness = any(not torch.equal(a, b) for a, b in zip(rng_before, rng_after, strict=True))
        records = recorder.records
        for record in records.values():
            for call in record.calls:
                if call.tensor is not None:
                    call.version_after = _version(call.tensor)
        request = ScoreRequest(model_input.axes, target, output_key, task, reference)
        score, value, input_gradient_zero = _differentiate(
            model, records, recorder.attention, output, request, image, activations
        )
        activations.clear()
        del output
        probe = Probe(
            records=records,
            attention=recorder.attention,
            score=score,
            image=image,
            image_hw=model_input.image_hw,
            batch=model_input.batch,
            input_axes=model_input.axes,
            channel_axis=None if model_input.kind == "spectrogram" else 1,
            input_kind=model_input.kind,
            input_gradient_zero=input_gradient_zero,
            grad_enabled_by_user=grad_enabled_by_user,
            consumed_randomness=consumed_randomness,
            graph=GradGraph(value, list(model.parameters())),
            score_value=value,
            structure_only=image.is_meta,
        )
        try:
            yield probe
        finally:
            probe.release()  # nothing of the model's tensors or graph outlives the block


def _differentiate(
    model: nn.Module,
    records: dict[str, ModuleRecord],
    attention: list[AttentionCall],
    output: Any,
    how: ScoreRequest,
    image: torch.Tensor,
    activations: FinalActivationInputs,
) -> tuple[Score, torch.Tensor, bool]:
    """Pick the task and score from ``output`` and run the one backward (a surrogate one for a zero head)."""

    def producers(tensor: torch.Tensor) -> list[nn.Module]:
        return [r.module for r in records.values() if r.calls and r.calls[-1].tensor is tensor]

    chosen = choose_score(
        model,
        output,
        axes=how.axes,
        producers=producers,
        task=how.task,
        output_key=how.output_key,
        reference=how.reference,
    )
    logits = chosen.scores(output)
    pre_activation = None
    pre_activation_function = None
    scored = logits
    if chosen.task == "classification":
        producer = _producer(records, logits)
        function = final_activation(logits)
        if (
            producer is not None
            and isinstance(producer.module, (nn.Softmax, nn.Sigmoid))
            and producer.first_input is not None
        ):
            pre_activation = producer.name
            scored = producer.first_input
        elif function is not None and activations.input_of(logits) is not None:
            # F.softmax / torch.sigmoid in forward: the graph shows it, the mode kept its input.
            pre_activation_function = function
            scored = activations.input_of(logits)  # type: ignore[assignment]
    values = not logits.is_meta  # on the meta device only structure is known (structure_only)
    saturated = (
        values and (pre_activation or pre_activation_function) is not None and bool(logits.detach().max() >= 1.0 - 1e-6)
    )
    default = _default_column(chosen)
    target_idx = _target_indices(scored, how.target, default)
    handles = _gradient_hooks(records, attention)
    try:
        value = scored.gather(1, target_idx[:, None]).sum()
        input_grad = _input_gradient(value, image)
        # Without values, a connected input is all that can be known: the gradient is taken as non-zero.
        input_gradient_zero = input_grad is None or (values and not bool(input_grad.abs().max() > 0))
        zero_head = None
        if input_gradient_zero and values:
            head = _zero_initialised_head(records, scored)
            if head is not None and head.first_input is not None:
                zero_head = head.name
                _forget_gradients(records, attention)
                value = _surrogate_score(head.first_input)
                _input_gradient(value, image)
    finally:
        for handle in handles:  # a hook left on a tensor would keep the call record, and the graph, alive
            handle.remove()
    score = Score(
        selector=chosen.selector,
        other_heads=chosen.other_heads,
        output_structure=describe(output),
        dtype=logits.dtype,
        # On meta the index has no value: it is the target, the task's default column, or 0 (see _target_indices).
        target=int(target_idx[0]) if values else int(next((i for i in (how.target, default) if i is not None), 0)),
        pre_activation=pre_activation,
        saturated=saturated,
        zero_head=zero_head,
        has_gradient=value.requires_grad,
        task=chosen.task,
        head=chosen.head,
        why=chosen.why,
        score_text=chosen.score_text,
        reference_given=chosen.reference_given,
        columns=int(scored.shape[1]),
        pre_activation_function=pre_activation_function,
    )
    return score, value, input_gradient_zero and zero_head is None


def _default_column(chosen: TaskScore) -> int | None:
    """The column explained when no target is given: None for the top-scoring one."""
    if isinstance(chosen.head, SegmentationScores):  # the class predicted on the most pixels
        if chosen.head.mask.is_meta:  # no values: class 0 stands for it (the paths are the same)
            return 0
        return int(chosen.head.mask.flatten(1).sum(1).argmax())
    if chosen.task in ("embedding", "detection"):  # the one similarity; the top-scoring detection
        return 0
    return None


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
