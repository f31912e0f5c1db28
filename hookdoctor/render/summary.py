"""Parameters and mult-adds per stage of a model, counted by torchinfo.

torchinfo does the counting (it is what users of a model summary expect); this module only
chooses the rows: the model's stages, found by walking down the module that holds nearly
all the parameters (``ViTForImageClassification`` -> ``vit`` -> its embeddings, layers,
norm; then the classifier), with a list of identical blocks shown as one row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# A child holding this share of its parent's parameters is the trunk: show its children instead.
_TRUNK_SHARE = 0.9


@dataclass(frozen=True)
class StageRow:
    name: str
    type: str
    params: int
    mult_adds: int
    output: str


@dataclass(frozen=True)
class ModelSummary:
    rows: tuple[StageRow, ...]
    total_params: int
    trainable_params: int
    total_mult_adds: int


@dataclass
class _Node:
    name: str
    type: str
    params: int
    mult_adds: int
    output: str
    children: list[_Node]


def summarize_model(model: Any, input_shape: tuple[int, ...]) -> ModelSummary:
    """Run torchinfo once on ``model`` (unwrapped) with a zero input of ``input_shape``."""
    import torchinfo

    from hookdoctor.model.unwrap import unwrap

    inner, _, _ = unwrap(model)
    # torchinfo moves the model to `device`: name the one it lives on (a CUDA model stays there).
    device = next((p.device for p in inner.parameters()), "cpu")
    stats = torchinfo.summary(
        inner,
        input_size=tuple(input_shape),
        depth=64,
        verbose=0,
        device=device,
        mode="eval",
        col_names=("output_size", "num_params", "mult_adds"),
    )
    root = _tree(stats.summary_list)
    rows = tuple(_rows(root)) if root is not None else ()
    return ModelSummary(
        rows, int(stats.total_params), int(stats.trainable_params), int(stats.total_mult_adds)
    )


def _tree(summary_list: list[Any]) -> _Node | None:
    """Rebuild the module tree from torchinfo's flat, depth-annotated list."""
    nodes: dict[int, _Node] = {}
    stack: list[tuple[Any, _Node]] = []
    root: _Node | None = None
    for info in summary_list:
        while stack and stack[-1][0].depth >= info.depth:
            stack.pop()
        parent = stack[-1][1] if stack else None
        name = info.var_name if parent is None or not parent.name else f"{parent.name}.{info.var_name}"
        node = _Node(
            name if parent is not None else "",
            info.class_name,
            int(info.num_params),
            int(info.macs) if info.is_leaf_layer else 0,
            _shape(info.output_size),
            [],
        )
        nodes[id(info)] = node
        if parent is None:
            root = node
        else:
            parent.children.append(node)
        stack.append((info, node))
    if root is not None:
        _sum_mult_adds(root)
    return root


def _sum_mult_adds(node: _Node) -> int:
    """A stage's mult-adds are its leaf layers' (torchinfo totals the same way)."""
    if node.children:
        node.mult_adds = sum(_sum_mult_adds(c) for c in node.children)
    return node.mult_adds


def _rows(node: _Node) -> list[StageRow]:
    rows: list[StageRow] = []
    for child in node.children:
        if (
            child.children
            and node.params
            and child.params >= _TRUNK_SHARE * node.params
            and not _is_repeat(child)
        ):
            rows.extend(_rows(child))
        elif child.params or child.mult_adds:  # dropout, identity, activations: nothing to count
            rows.append(_row(child))
    return rows


def _is_repeat(node: _Node) -> bool:
    """A ModuleList / Sequential of blocks of one class, e.g. ``layers.0`` ... ``layers.5``."""
    kinds = {c.type for c in node.children}
    return (
        len(node.children) > 1
        and len(kinds) == 1
        and all(c.name.rsplit(".", 1)[-1].isdigit() for c in node.children)
    )


def _row(node: _Node) -> StageRow:
    if _is_repeat(node):
        first, last = node.children[0], node.children[-1]
        index = f"{first.name.rsplit('.', 1)[-1]}..{last.name.rsplit('.', 1)[-1]}"
        return StageRow(
            f"{node.name}.{{{index}}}",
            f"{len(node.children)} × {first.type}",
            node.params,
            node.mult_adds,
            last.output,
        )
    return StageRow(node.name, node.type, node.params, node.mult_adds, node.output)


def _shape(size: Any) -> str:
    if isinstance(size, (list, tuple)) and size and all(isinstance(s, int) for s in size):
        return "×".join(str(s) for s in size)
    return "-"
