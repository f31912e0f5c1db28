"""What a model's output is for, and the ``[B, N]`` score every task is explained through.

Attribution libraries explain one column of a ``[B, N]`` tensor (``ClassifierOutputTarget``,
Captum's ``target=``). Classifiers return one; other models do not, so each task gets a
score head (a small picklable module applied to the model's output) whose column ``k`` is
the score pytorch-grad-cam's own target classes compute:

* segmentation ``[B, K, H, W]``: class ``k``'s logits summed over the pixels predicted as
  ``k`` on the example input (``SemanticSegmentationTarget``);
* embedding ``[B, D]`` (or a feature map, averaged over its positions): the cosine
  similarity to a reference embedding (the ``SimilarityToConceptTarget`` of pytorch-grad-cam's tutorial), ``N = 1``;
* detection (torchvision detectors' ``list[dict]``): column ``i`` is the class score of the
  detection that matches detection ``i`` of the example input (same label, IoU above 0.5:
  ``FasterRCNNBoxScoreTarget``'s matching, without its IoU term), 0 where none does.

The task is read off the output's structure and the model's own description; ``task=``
overrides it. ``choose_score`` returns the head, the score on the example (still attached
to the probe's graph), and why it chose them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hookdoctor.codes import get
from hookdoctor.errors import InputError
from hookdoctor.model.outputs import OutputSelector, describe, find_score, select_output

TASKS = ("classification", "segmentation", "embedding", "detection")

# ModelOutput fields and dict keys, by what they hold.
_SEGMENTATION_KEYS = ("out", "logits")
_EMBEDDING_FIELDS = ("image_embeds", "pooler_output", "embeddings", "embedding")
_DETECTION_KEYS = {"boxes", "labels", "scores"}
# Modules that end an embedding network rather than a classifier.
_EMBEDDING_ENDS = (nn.Identity, nn.Flatten, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LayerNorm, nn.BatchNorm1d)
_IOU_THRESHOLD = 0.5


class TaskRefusal(Exception):  # noqa: N818 - a control-flow signal carrying a coded finding, not an error class
    """The output's task cannot be explained on this input; carries the code and the variant of its text."""

    def __init__(self, code: str, task: str, *, variant: str = "default") -> None:
        self.code = code
        self.variant = variant
        self.message, self.fix = get(code).render(variant, {})
        self.task = task
        super().__init__(self.message)


class SegmentationScores(nn.Module):
    """``[B, K, H, W]`` logits -> ``[B, K]``: class k's logits summed over the example's class-k pixels."""

    mask: torch.Tensor

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().clone())  # [K, H, W], one-hot of the example's prediction

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if tuple(logits.shape[1:]) != tuple(self.mask.shape):
            raise InputError(
                f"The segmentation score uses the class masks of the example input ({tuple(self.mask.shape)}); "
                f"this input gives logits {tuple(logits.shape[1:])}. Inspect the model with an input of this size."
            )
        return (logits * self.mask.to(logits.dtype)).flatten(2).sum(-1)

    def extra_repr(self) -> str:
        return f"classes={self.mask.shape[0]}, mask={tuple(self.mask.shape[1:])}"


class CosineToReference(nn.Module):
    """An embedding (pooled over its positions if it has any) -> ``[B, 1]`` cosine similarity to a reference."""

    reference: torch.Tensor

    def __init__(self, reference: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("reference", reference.detach().clone().flatten())

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        vector = pool_embedding(embedding)
        return F.cosine_similarity(vector, self.reference.to(vector)[None], dim=1)[:, None]

    def extra_repr(self) -> str:
        return f"dim={self.reference.numel()}"


class DetectionScores(nn.Module):
    """A torchvision detector's ``list[dict]`` -> ``[B, N]``: per example detection, the matching class score."""

    boxes: torch.Tensor
    labels: torch.Tensor

    def __init__(self, boxes: torch.Tensor, labels: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("boxes", boxes.detach().clone())
        self.register_buffer("labels", labels.detach().clone())

    def forward(self, detections: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
        from torchvision.ops import box_iou

        rows = []
        for found in detections:
            scores = found["scores"]
            if len(scores) == 0:
                rows.append(scores.new_zeros(len(self.labels)))
                continue
            iou = box_iou(self.boxes.to(found["boxes"]), found["boxes"].detach())  # [N, M]
            same = self.labels.to(found["labels"].device)[:, None] == found["labels"][None]
            matches = (iou > _IOU_THRESHOLD) & same
            # Where a detection matches, its class score; the best-overlapping match wins.
            best = torch.where(matches, iou, torch.full_like(iou, -1.0)).argmax(dim=1)
            picked = scores[best] * matches.any(dim=1).to(scores.dtype)
            rows.append(picked)
        return torch.stack(rows)

    def extra_repr(self) -> str:
        return f"detections={len(self.labels)}"


def pool_embedding(embedding: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` as it is; a feature map ``[B, D, ...]`` averaged over its positions; tokens ``[B, T, D]`` over T."""
    if embedding.dim() == 2:
        return embedding
    if embedding.dim() == 3:
        return embedding.mean(dim=1)
    return embedding.flatten(2).mean(dim=2)


@dataclass(frozen=True)
class TaskScore:
    """The explained score: where it is in the output, the head that makes it ``[B, N]``, and why."""

    task: str
    selector: OutputSelector
    head: nn.Module | None  # None: the selected tensor already is the [B, N] score
    why: str
    score_text: str  # what column k is, in words
    other_heads: list[str] = field(default_factory=list)
    reference_given: bool = True

    def scores(self, output: Any) -> torch.Tensor:
        selected = self.selector(output)
        return selected if self.head is None else self.head(selected)


def _is_detection(output: Any) -> bool:
    return (
        isinstance(output, (list, tuple))
        and bool(output)
        and all(isinstance(o, Mapping) and _DETECTION_KEYS <= set(o) for o in output)
    )


def _ends_in_embedding(model: nn.Module, producers: Sequence[nn.Module]) -> str | None:
    """Why a 2-D output is an embedding rather than class scores, or None."""
    if getattr(model, "num_classes", None) == 0:
        return "the model declares num_classes=0 (no classifier head)"
    if producers and not any(isinstance(p, (nn.Linear, nn.modules.conv._ConvNd)) for p in producers):
        if any(isinstance(p, _EMBEDDING_ENDS) for p in producers):
            return f"it comes out of {type(producers[-1]).__name__}, not a classifier layer"
    return None


def _segmentation_like(tensor: torch.Tensor, axes: tuple[int, ...]) -> bool:
    """A [B, K, H, W] map at the input's resolution or at most 4x coarser (a segmentation head's output)."""
    if tensor.dim() != 4 or len(axes) != 2:
        return False
    h, w = int(tensor.shape[2]), int(tensor.shape[3])
    return h * 4 >= axes[0] and w * 4 >= axes[1] and h > 1 and w > 1


def _select(output: Any, axes: tuple[int, ...], output_key: str | int | None) -> tuple[OutputSelector, str, list[str]]:
    """The selector of the explained tensor, the task its structure says, and the 2-D heads passed over."""
    if output_key is not None:
        selector = select_output(output, output_key, ranks=(2, 3, 4))
        tensor = selector(output)
        return selector, _task_of_tensor(tensor, axes, str(output_key)), []
    if isinstance(output, torch.Tensor):
        return OutputSelector(), _task_of_tensor(output, axes, ""), []
    if isinstance(output, Mapping):
        how = "attr" if hasattr(output, "to_tuple") else "key"
        for key in _SEGMENTATION_KEYS:
            value = output.get(key)
            if isinstance(value, torch.Tensor) and _segmentation_like(value, axes):
                return OutputSelector(how, key), "segmentation", []
    found = find_score(output)
    if found is not None:
        selector, others = found
        key = str(selector.key)
        return selector, "embedding" if key in _EMBEDDING_FIELDS else "classification", others
    raise InputError(
        f"The model returned {describe(output)}, which holds no score tensor to explain: no [batch, classes] "
        "logits, no [batch, classes, H, W] segmentation map, no embedding and no detections. Wrap the model so "
        "that its forward returns the scores (logits or an embedding) as a 2-D tensor and inspect the wrapper, "
        "or name the entry with output=KEY_OR_INDEX."
    )


def _task_of_tensor(tensor: torch.Tensor, axes: tuple[int, ...], name: str) -> str:
    if tensor.dim() == 2:
        return "embedding" if name in _EMBEDDING_FIELDS else "classification"
    if _segmentation_like(tensor, axes):
        return "segmentation"
    if tensor.dim() in (3, 4, 5):
        return "embedding"  # features (tokens or a coarse map): compared to a reference once pooled
    raise InputError(
        f"The model returned {describe(tensor)}, which holds no score tensor to explain: hookdoctor explains "
        "[batch, classes] scores, [batch, classes, H, W] segmentation maps, embeddings and detections. Wrap the "
        "model so that its forward returns the scores (logits or an embedding) as a 2-D tensor, and inspect "
        "the wrapper."
    )


def choose_score(
    model: nn.Module,
    output: Any,
    *,
    axes: tuple[int, ...],
    producers: Callable[[torch.Tensor], list[nn.Module]],
    task: str | None,
    output_key: str | int | None,
    reference: torch.Tensor | None,
) -> TaskScore:
    """The task and score for ``output`` (see the module doc); ``TaskRefusal`` where it cannot be explained."""
    if task is not None and task not in TASKS:
        raise InputError(f"task={task!r} is not a task hookdoctor knows; choose one of {', '.join(TASKS)}.")
    if _is_detection(output) or task == "detection":
        if not _is_detection(output):
            raise InputError(
                f"task='detection' was given, but the model returns {describe(output)}, not a torchvision "
                "detector's list of dicts with boxes, labels and scores."
            )
        return _detection(output)
    selector, inferred, others = _select(output, axes, output_key)
    tensor = selector(output)
    why = ""
    if inferred == "classification" and task is None:
        embedding_reason = _ends_in_embedding(model, producers(tensor))
        if embedding_reason:
            inferred, why = "embedding", embedding_reason
    chosen = task or inferred
    expression = selector.expression("output")
    if chosen == "classification":
        if tensor.dim() != 2:
            raise InputError(
                f"task='classification' was given, but {expression} has shape {tuple(tensor.shape)}, not "
                "[batch, classes]; leave task unset or choose segmentation or embedding."
            )
        if selector.key == "logits_per_image":
            why = "an image-text model: logits_per_image scores the image against each text input"
            text = "the image-text logit for text k (logits_per_image)"
        else:
            why = why or "the model returns [batch, classes] scores"
            text = ""  # the spec names the selected tensor itself (model(x).logits), as for every classifier
        return TaskScore("classification", selector, None, why, text, others)
    if chosen == "segmentation":
        if tensor.dim() != 4:
            raise InputError(
                f"task='segmentation' was given, but {expression} has shape {tuple(tensor.shape)}, not "
                "[batch, classes, H, W]."
            )
        predicted = tensor.detach()[0].argmax(dim=0)
        mask = F.one_hot(predicted, int(tensor.shape[1])).permute(2, 0, 1).to(tensor.dtype)
        why = why or f"{expression} is a per-pixel class map {describe(tensor)}"
        text = (
            f"class k's logits summed over the pixels predicted as k on the example input ({expression}; "
            "pytorch-grad-cam's SemanticSegmentationTarget)"
        )
        return TaskScore("segmentation", selector, SegmentationScores(mask), why, text, others)
    # embedding
    vector = pool_embedding(tensor.detach())
    given = reference is not None
    if reference is None:
        generator = torch.Generator().manual_seed(0)
        reference = torch.randn(int(vector.shape[1]), generator=generator)
    reference = torch.as_tensor(reference).detach().flatten().to(vector)
    if reference.numel() != vector.shape[1]:
        raise InputError(
            f"reference= has {reference.numel()} values, but the model's embedding has {vector.shape[1]}; pass "
            "the embedding of your reference input (the model's output for it), flattened."
        )
    why = why or f"{expression} is an embedding {describe(tensor)}, with no class scores"
    source = "the reference embedding you passed" if given else "a fixed random direction (no reference= given)"
    text = (
        f"the cosine similarity of the embedding to {source} "
        "(the SimilarityToConceptTarget of pytorch-grad-cam's tutorial)"
    )
    return TaskScore("embedding", selector, CosineToReference(reference), why, text, others, reference_given=given)


def _detection(output: Sequence[Mapping[str, torch.Tensor]]) -> TaskScore:
    first = output[0]
    if len(first["scores"]) == 0:
        raise TaskRefusal("HD013", "detection")
    if not first["scores"].requires_grad:
        raise TaskRefusal("HD013", "detection", variant="no_gradient")
    head = DetectionScores(first["boxes"], first["labels"])
    text = (
        "the class score of the detection matching example detection k (same label, IoU > 0.5; "
        "FasterRCNNBoxScoreTarget's matching, without its IoU term)"
    )
    why = f"the model returns detections ({len(first['scores'])} kept on the example input)"
    return TaskScore("detection", OutputSelector(), head, why, text)
