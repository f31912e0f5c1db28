"""Which input position each cell of a tensor holds, read from the autograd graph: no backward.

The locality test (``geometry.locality``) asks the gradients whether a layer's cells line up
with the input, at two backward passes. Where the graph shows it, no gradient is needed:
walking from the input up to the layer, every axis of every tensor is labelled with the
input axes it indexes, and each operation on the way is either understood (its effect on
the labels is exact) or ends the walk with "unknown", and the test decides.

Understood operations:

- per-position arithmetic and normalisation, with broadcasting (a per-channel scale, a
  position embedding, a gate computed from a global average: nothing that varies along a
  position axis moves it);
- reductions, which drop the reduced axes (global context that is broadcast back);
- axis moves: permute, transpose, view and reshape (axes merged in order; a position
  axis split keeps its position in the major part, and the minor part, a position inside
  a cell, counts as a channel: Swin's windows and 2x2 patch merging), squeeze, unsqueeze,
  expand;
- channel mixing: a matrix product whose summed axis holds no position (a Linear layer,
  ConvNeXt's per-position MLP on a channels-last tensor), convolution, pooling and
  resampling along position axes (the size changes, the order stays);
- concatenation along channels, and of learned tokens in front of the position axis (the
  CLS token: a prefix);
- slicing: stepped slices of a position axis (Swin's 2x2 patch merging), dropping a
  prefix, picks along other axes; zero padding.

A sum whose other terms mix positions (a residual block: ``x + attention(x)``) or hold
them only to the window (Swin's window attention) keeps the positions of its skip path:
each cell still carries its own position's stream, the branch adds what it gathers from
elsewhere. Anything else (an attention product summed over tokens, a roll, a flip, a
gather by index, a product of two terms) makes the positions unknown, and the locality
test runs.

A tensor's labels: one ``Axis`` per dimension, each a prefix count (cells that hold no
position: the CLS token) and the factors of the rest, major first, each the input axis it
indexes (None for channels and batch) and its size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

Atom = tuple[int | None, int]  # (the input axis indexed, or None; size)


@dataclass(frozen=True)
class Axis:
    """One dimension: ``prefix`` cells that hold no position, then the factors ``atoms``."""

    prefix: int
    atoms: tuple[Atom, ...]

    @property
    def size(self) -> int:
        return self.prefix + math.prod(n for _, n in self.atoms)

    @property
    def positional(self) -> bool:
        return self.prefix > 0 or any(k is not None for k, _ in self.atoms)


Labels = tuple[Axis, ...]


class _Input(NamedTuple):
    """An operation's argument: its labels (None: unknown, or a constant of unknown shape), its shape."""

    labels: Labels | None
    shape: tuple[int, ...] | None
    from_image: bool


def plain_axis(size: int) -> Axis:
    """An axis that holds no input position (channels, batch, a constant's)."""
    return Axis(0, ((None, size),) if size != 1 else ())


def _plain(shape: Sequence[int]) -> Labels:
    return tuple(plain_axis(int(n)) for n in shape)


class _Unknown(Exception):
    """An operation whose effect on positions is not understood: the walk ends, the test decides."""


def image_labels(shape: Sequence[int], channel_axis: int | None) -> Labels:
    """The input's labels: batch and channels hold no position, every other axis is one input axis."""
    labels: list[Axis] = []
    positional = 0
    for axis, size in enumerate(int(n) for n in shape):
        if axis == 0 or axis == channel_axis:
            labels.append(plain_axis(size))
        else:
            labels.append(Axis(0, ((positional, size),) if size != 1 else ()))
            positional += 1
    return tuple(labels)


class PositionReader:
    """Reads the labels of tensors computed from ``image``, sharing what it has read between them.

    ``above_image`` holds the ids of the autograd functions computed from ``image`` (the
    probe's ``GradGraph``); the others are constants here. One reader serves every
    candidate layer of a pass: each function of the graph is read once.
    """

    def __init__(self, image: torch.Tensor, above_image: set[int], *, channel_axis: int | None) -> None:
        self.above_image = above_image
        # The image's AccumulateGrad, where every path from it starts (a leaf keeps one while it is used).
        with torch.enable_grad():
            alias = image.view_as(image).grad_fn if image.requires_grad else None
        accumulate = alias.next_functions[0][0] if alias is not None else None
        self._walk = _Walk(accumulate, image_labels(image.shape, channel_axis), above_image)

    def labels(self, tensor: torch.Tensor) -> Labels | None:
        """The labels of ``tensor``'s axes, or None when an operation on the way is not understood
        (see the module doc) or the graph does not say."""
        root = tensor.grad_fn
        if root is None or id(root) not in self.above_image:
            return None
        return self._walk.labels(root, tensor.output_nr)


def _op(fn: Any) -> str:
    return re.sub(r"Backward\d*$", "", type(fn).__name__)


def _shape(fn: Any, output_nr: int) -> tuple[int, ...]:
    return tuple(int(n) for n in fn._input_metadata[output_nr].shape)


# Per-position operations: each output cell is computed from the cells at the same position
# of its inputs (broadcast), and from statistics over whole axes (normalisation).
_POINTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Neg", "Pow", "Sqrt", "Rsqrt", "Exp", "Log", "Abs", "Reciprocal", "Erf",
    "Relu", "Threshold", "Hardtanh", "LeakyRelu", "Gelu", "Silu", "Hardswish", "Hardsigmoid", "Sigmoid",
    "Tanh", "Elu", "Mish", "Softplus", "Clamp", "ClampMin", "ClampMax", "Maximum", "Minimum", "Where",
    "Clone", "ToCopy", "Alias", "NativeDropout", "Lerp", "Addcmul", "Addcdiv",
    "NativeBatchNorm", "CudnnBatchNorm", "MiopenBatchNorm", "NativeGroupNorm", "Softmax", "LogSoftmax",
})
# Sums: a term whose positions are unknown is a branch added to the skip path (see the module doc).
_SUMS = frozenset({"Add", "Sub"})
_RESHAPES = frozenset({"View", "UnsafeView", "ReshapeAlias", "Squeeze", "Unsqueeze", "Flatten", "Unflatten"})
_RESAMPLES = re.compile(r"^(MaxPool|AvgPool|AdaptiveAvgPool|AdaptiveMaxPool|Upsample[A-Za-z]*?)([123])D")


class _Walk:
    def __init__(self, image_fn: Any, image: Labels, above_image: set[int]) -> None:
        self.above_image = above_image
        self.known: dict[tuple[int, int], Labels | None] = {(id(image_fn), 0): image}

    def labels(self, root: Any, output_nr: int) -> Labels | None:
        # Post-order without recursion: a ViT-L's graph is thousands of functions deep.
        stack: list[tuple[Any, int, bool]] = [(root, output_nr, False)]
        while stack:
            fn, nr, ready = stack.pop()
            key = (id(fn), nr)
            if key in self.known:
                continue
            inputs = [(next_fn, next_nr) for next_fn, next_nr in fn.next_functions]
            pending = [
                (next_fn, next_nr) for next_fn, next_nr in inputs
                if next_fn is not None and id(next_fn) in self.above_image and (id(next_fn), next_nr) not in self.known
            ]
            if pending and not ready:
                stack.append((fn, nr, True))
                stack.extend((next_fn, next_nr, False) for next_fn, next_nr in pending)
                continue
            try:
                self.known[key] = self._apply(fn, nr, inputs)
            except (_Unknown, AttributeError, IndexError, TypeError, ValueError):
                # AttributeError: a PyTorch without the saved fields read here; the others:
                # shapes this reading cannot follow. Either way the locality test decides.
                self.known[key] = None
        return self.known[(id(root), output_nr)]

    def _input(self, next_fn: Any, next_nr: int) -> _Input:
        if next_fn is None:  # an argument that needs no gradient (a frozen weight): a constant of unknown shape
            return _Input(None, None, False)
        shape = _shape(next_fn, next_nr)
        if id(next_fn) not in self.above_image:
            return _Input(_plain(shape), shape, False)
        return _Input(self.known[(id(next_fn), next_nr)], shape, True)

    def _apply(self, fn: Any, nr: int, inputs: list[tuple[Any, int]]) -> Labels | None:
        op = _op(fn)
        out_shape = _shape(fn, nr)
        found = [self._input(next_fn, next_nr) for next_fn, next_nr in inputs]
        if op in _POINTWISE:
            return _pointwise(op, found, out_shape)
        if op == "Expand":
            return _broadcast_one(_only(found), out_shape)
        if op == "Cat":
            return _concatenated(fn, found, out_shape)
        if any(arg.from_image and arg.labels is None for arg in found):
            raise _Unknown(op)
        if op == "NativeLayerNorm":
            source = _only(found)
            normalised = len(fn._saved_normalized_shape)
            if any(axis.positional for axis in source[len(source) - normalised :]):
                raise _Unknown("a LayerNorm over a position axis")
            return source
        if op in ("Permute", "Transpose", "T"):
            return _permuted(fn, op, _only(found))
        if op in _RESHAPES:
            return _reshaped(_only(found), out_shape)
        if op in _MATRIX_OPERANDS:
            return _matrix_product(op, found, out_shape)
        if op == "Convolution":
            return _convolved(found, out_shape)
        if _RESAMPLES.match(op):
            return _resampled(_only(found), out_shape)
        if op in ("Mean", "Sum", "Amax", "Amin"):
            return _reduced(fn, _only(found), out_shape)
        if op == "Slice":
            return _sliced(fn, _only(found), out_shape)
        if op == "Select":
            source = _only(found)
            dim = int(fn._saved_dim) % len(source)
            if source[dim].positional and int(fn._saved_index) % source[dim].size >= source[dim].prefix:
                raise _Unknown("a pick along a position axis")
            return source[:dim] + source[dim + 1 :]  # a channel, or a prefix token (the CLS pick)
        if op == "Unbind":
            source = _only(found)
            dim = int(fn._saved_dim) % len(source)
            if source[dim].positional:
                raise _Unknown("an unbind along a position axis")
            return source[:dim] + source[dim + 1 :]
        if op in ("Split", "SplitWithSizes"):
            # Output nr is a slice of the split axis: a chunk of channels, or the prefix tokens
            # and the patches of a sequence split apart.
            source = _only(found)
            dim = int(fn._saved_dim) % len(source)
            sizes = [int(n) for n in fn._saved_split_sizes] if op == "SplitWithSizes" else None
            start = sum(sizes[:nr]) if sizes is not None else nr * int(fn._saved_split_size)
            return _sliced_along(source, dim, start, start + out_shape[dim], 1, out_shape[dim])
        if op == "ConstantPadNd":
            return _padded(fn, _only(found), out_shape)
        raise _Unknown(op)


def _only(found: list[_Input]) -> Labels:
    """The labels of the one argument computed from the image (an operation's tensor argument)."""
    live = [arg.labels for arg in found if arg.from_image]
    if len(live) != 1 or live[0] is None:
        raise _Unknown("not one known input")
    return live[0]


def _pointwise(op: str, found: list[_Input], out: tuple[int, ...]) -> Labels:
    live = [arg for arg in found if arg.from_image]
    known = [(arg.labels, arg.shape) for arg in live if arg.labels is not None and arg.shape is not None]
    if op in _SUMS:
        known = _skip_path(known, out, every_term_known=len(known) == len(live))
    elif len(known) < len(live):
        raise _Unknown(f"{op} of a term with unknown positions")
    labels: list[Axis] = []
    for axis in range(-len(out), 0):
        here = [
            lab[axis] for lab, shape in known
            if len(shape) >= -axis and shape[axis] == out[axis] and out[axis] != 1
        ]
        positional = [a for a in here if a.positional]
        if any(a != positional[0] for a in positional[1:]):
            raise _Unknown("terms with different positions")
        labels.append(positional[0] if positional else plain_axis(out[axis]))
    return tuple(labels)


def _skip_path(
    known: list[tuple[Labels, tuple[int, ...]]], out: tuple[int, ...], *, every_term_known: bool
) -> list[tuple[Labels, tuple[int, ...]]]:
    """The terms of a sum that decide its positions: all of them, or its skip path alone.

    A residual sum ``x + branch(x)`` keeps the positions of ``x`` when the branch's are
    unknown (it mixes positions: attention) or coarser (Swin's window attention, whose
    output cells are known only to their window): the term of the output's shape that holds
    the most distinct positions, if one does, is the skip path, the others are branches.
    """
    full = [(labels, shape) for labels, shape in known if shape == out and _resolution(labels) > 1]
    distinct = {labels for labels, _ in full}
    if every_term_known and len(distinct) <= 1:
        return known
    finest = max((_resolution(labels) for labels in distinct), default=0)
    skip = [labels for labels in distinct if _resolution(labels) == finest]
    if len(skip) != 1:
        raise _Unknown("a sum without one skip path")
    return [(skip[0], out)]


def _resolution(labels: Labels) -> int:
    """How many distinct input positions the cells of a tensor with these labels hold."""
    return math.prod(n for axis in labels for k, n in axis.atoms if k is not None)


def _broadcast_one(source: Labels, out: tuple[int, ...]) -> Labels:
    lead = len(out) - len(source)
    if lead < 0:
        raise _Unknown("expand to fewer axes")
    return tuple(
        plain_axis(n) if axis < lead or source[axis - lead].size != n else source[axis - lead]
        for axis, n in enumerate(out)
    )


def _permuted(fn: Any, op: str, source: Labels) -> Labels:
    if op == "T":
        return tuple(reversed(source))
    if op == "Transpose":
        order = list(range(len(source)))
        a, b = int(fn._saved_dim0) % len(source), int(fn._saved_dim1) % len(source)
        order[a], order[b] = order[b], order[a]
    else:
        order = [int(d) % len(source) for d in fn._saved_dims]
    return tuple(source[d] for d in order)


def _reshaped(source: Labels, out: tuple[int, ...]) -> Labels:
    """Axes merged in order or split; a prefix axis only moves whole.

    A split position axis keeps its position in the major part (a window's index, Swin's
    2x2 patch merging); the minor part holds no position of its own (see below).
    """
    pieces: list[Atom | Axis] = []  # a prefix axis stays whole, as one piece
    for axis in source:
        if axis.prefix:
            pieces.append(axis)
        else:
            pieces.extend(axis.atoms)
    labels: list[Axis] = []
    for size in out:
        if size == 1:
            labels.append(Axis(0, ()))
            continue
        taken: list[Atom] = []
        whole: Axis | None = None
        product = 1
        while product < size:
            if not pieces:
                raise _Unknown("reshape beyond the tensor")
            piece = pieces.pop(0)
            if isinstance(piece, Axis):
                if taken or piece.size != size:
                    raise _Unknown("a prefix axis merged or split")
                whole, product = piece, size
                break
            k, n = piece
            if product * n > size:  # split this factor: its major part keeps the position
                need = size // product
                if size % product or n % need:
                    raise _Unknown("reshape sizes do not factor")
                taken.append((k, need))
                # The minor part is a position inside a cell: like a channel, it may be mixed
                # (a window's attention), and a layout whose grid counts it fails the check.
                pieces.insert(0, (None, n // need))
                product = size
                break
            taken.append(piece)
            product *= n
        if product != size:
            raise _Unknown("reshape sizes do not factor")
        labels.append(whole if whole is not None else Axis(0, tuple(taken)))
    if pieces:
        raise _Unknown("reshape left factors over")
    return tuple(labels)


def _matrix_product(op: str, found: list[_Input], out: tuple[int, ...]) -> Labels:
    """``[.., N, K] @ [.., K, M]``: N from the left, M from the right, K summed over must hold no position."""
    bias, left_at, right_at = _MATRIX_OPERANDS[op]
    left, right = (_operand(found[i], out, side) for i, side in ((left_at, "left"), (right_at, "right")))
    if left[-1].positional or right[-2].positional:
        raise _Unknown("a matrix product summed over positions")
    bias_labels = found[bias].labels if bias is not None else None
    if bias_labels is not None and any(a.positional for a in bias_labels):
        raise _Unknown("a bias that varies by position")
    batch = []
    for a, b in zip(left[:-2], right[:-2], strict=True):
        if a.positional and b.positional and a != b:
            raise _Unknown("batched product over different positions")
        batch.append(a if a.positional else b)
    return (*batch, left[-2], right[-1])


# Where each product's bias, left and right operands are among its autograd inputs.
_MATRIX_OPERANDS: dict[str, tuple[int | None, int, int]] = {
    "Mm": (None, 0, 1), "Bmm": (None, 0, 1), "Addmm": (0, 1, 2), "Baddbmm": (0, 1, 2),
}


def _operand(arg: _Input, out: tuple[int, ...], side: str) -> Labels:
    if arg.labels is not None:
        return arg.labels
    # A constant whose shape the graph does not record (a frozen weight): no axis holds a position.
    inner = (out[-2], 1) if side == "left" else (1, out[-1])
    return _plain((*out[:-2], *inner))


def _convolved(found: list[_Input], out: tuple[int, ...]) -> Labels:
    source = found[0].labels
    if source is None or not found[0].from_image:
        raise _Unknown("convolution of an unknown input")
    if any(arg.labels is not None and any(a.positional for a in arg.labels) for arg in found[1:]):
        raise _Unknown("a convolution whose weight varies by position")
    if source[0].positional or source[1].positional:
        raise _Unknown("a convolution over channels that hold positions")
    return (source[0], plain_axis(out[1]), *(_resized(axis, n) for axis, n in zip(source[2:], out[2:], strict=True)))


def _resized(axis: Axis, size: int) -> Axis:
    """A position axis sampled to ``size`` cells in the same order (stride, pooling, resampling)."""
    if not axis.positional:
        return plain_axis(size)
    if axis.prefix or len(axis.atoms) != 1:
        raise _Unknown("resampling an axis of several factors")
    return Axis(0, ((axis.atoms[0][0], size),)) if size != 1 else Axis(0, ())


def _resampled(source: Labels, out: tuple[int, ...]) -> Labels:
    return tuple(
        axis if axis.size == n and not axis.positional else _resized(axis, n)
        for axis, n in zip(source, out, strict=True)
    )


def _reduced(fn: Any, source: Labels, out: tuple[int, ...]) -> Labels:
    dims = getattr(fn, "_saved_dim", None)
    if dims is None:  # a full reduction
        return _plain(out)
    dims = {int(d) % len(source) for d in (dims if isinstance(dims, Sequence) else (dims,))}
    keepdim = bool(fn._saved_keepdim)
    kept = [Axis(0, ()) if d in dims else axis for d, axis in enumerate(source) if keepdim or d not in dims]
    if tuple(a.size for a in kept) != out:
        raise _Unknown("reduction shape")
    return tuple(kept)


def _concatenated(fn: Any, found: list[_Input], out: tuple[int, ...]) -> Labels:
    dim = int(fn._saved_dim) % len(out)
    positional = [i for i, arg in enumerate(found) if arg.labels is not None and arg.labels[dim].positional]
    if positional and positional == [len(found) - 1]:
        # Tokens in front of the position axis (learned, or CaiT's class token computed from
        # every patch): a prefix, whose cells hold no position whatever they are computed from.
        last = found[-1].labels
        assert last is not None
        along = Axis(out[dim] - last[dim].size + last[dim].prefix, last[dim].atoms)
        return (*last[:dim], along, *last[dim + 1 :])
    if positional:
        raise _Unknown("concatenation along a position axis")
    others = _pointwise("Cat", [
        _Input(arg.labels[:dim] + arg.labels[dim + 1 :], arg.shape[:dim] + arg.shape[dim + 1 :], arg.from_image)
        if arg.labels is not None and arg.shape is not None else arg
        for arg in found
    ], out[:dim] + out[dim + 1 :])
    return (*others[:dim], plain_axis(out[dim]), *others[dim:])


def _sliced(fn: Any, source: Labels, out: tuple[int, ...]) -> Labels:
    dim = int(fn._saved_dim) % len(source)
    size = source[dim].size
    start = int(fn._saved_start) if fn._saved_start is not None else 0
    end = int(fn._saved_end) if fn._saved_end is not None else size
    start = start + size if start < 0 else start
    end = min(end + size if end < 0 else end, size)
    return _sliced_along(source, dim, start, end, int(fn._saved_step), out[dim])


def _sliced_along(source: Labels, dim: int, start: int, end: int, step: int, size: int) -> Labels:
    """``source[..., start:end:step, ...]`` along ``dim``, of ``size`` cells."""
    axis = source[dim]
    if not axis.positional:
        along = plain_axis(size)
    elif step == 1 and start == 0 and end >= axis.size:
        along = axis
    elif axis.prefix and step == 1 and start == axis.prefix and end >= axis.size:
        along = Axis(0, axis.atoms)  # the prefix tokens dropped
    elif axis.prefix and step == 1 and end <= axis.prefix:
        along = plain_axis(size)  # prefix tokens only
    elif not axis.prefix and len(axis.atoms) == 1 and start < step and end >= axis.size:
        along = _resized(axis, size)  # every step-th cell, from an offset inside the first step
    else:
        raise _Unknown("a crop of a position axis")
    return (*source[:dim], along, *source[dim + 1 :])


def _padded(fn: Any, source: Labels, out: tuple[int, ...]) -> Labels:
    pad = [int(p) for p in fn._saved_pad]
    for pair, axis in enumerate(range(len(source) - 1, len(source) - 1 - len(pad) // 2, -1)):
        if source[axis].positional and (pad[2 * pair] or pad[2 * pair + 1]):
            raise _Unknown("padding of a position axis")
    return tuple(axis if axis.size == n else plain_axis(n) for axis, n in zip(source, out, strict=True))


def coordinates(labels: Labels, positional_axes: int) -> list[torch.Tensor] | None:
    """For each input axis, a tensor holding that axis's index at every cell (NaN on prefix cells);
    None when an input axis is missing or spread over several factors.

    Its shape is the labelled tensor's with every axis that holds no position (channels,
    batch) reduced to 1: the values do not vary along those, and a layout reads them alike.
    """
    shape = tuple(axis.size if axis.positional else 1 for axis in labels)
    invalid = torch.zeros(shape, dtype=torch.bool)
    found: dict[int, torch.Tensor] = {}
    for dim, axis in enumerate(labels):
        view = [1] * len(shape)
        view[dim] = axis.size
        if axis.prefix:
            in_prefix = torch.arange(axis.size) < axis.prefix
            invalid |= in_prefix.view(view)
        radix = axis.size - axis.prefix
        for k, n in axis.atoms:
            radix //= n
            if k is None:
                continue
            if k in found:
                return None
            index = (torch.arange(axis.size) - axis.prefix).clamp(min=0) // radix % n
            found[k] = index.to(torch.float32).view(view).expand(shape)
    if sorted(found) != list(range(positional_axes)):
        return None
    return [found[k].masked_fill(invalid, float("nan")) for k in range(positional_axes)]
