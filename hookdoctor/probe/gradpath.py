"""The autograd graph below the score, as a networkx graph.

Nodes are autograd functions (``grad_fn``), edges point from a function to the functions
it passes gradients to. "Does this layer's output need the input to require grad?" is
whether a trainable parameter's ``AccumulateGrad`` lies below it; "why does no gradient
reach the patch tokens?" is the chain of token picks (``SelectBackward0``) on the
shortest path from the score to the layer; "does this call of a shared module see the
explained input?" is whether the input's ``AccumulateGrad`` lies below it.
"""

from __future__ import annotations

from typing import Any

import networkx as nx
import torch

# Autograd functions that pick part of a tensor: the CLS pick of a ViT head is one.
_PICKS = ("SelectBackward", "SliceBackward", "IndexBackward", "UnbindBackward", "SplitBackward", "NarrowBackward")
# Operations that pick elements by an index tensor: a gather by indices drawn at random
# reorders tokens (ViTMAE's random masking).
_GATHERS = ("GatherBackward", "IndexBackward", "IndexSelectBackward", "TakeAlongDimBackward")
class GradGraph:
    def __init__(self, score: torch.Tensor, parameters: list[torch.nn.Parameter]) -> None:
        self.graph = nx.DiGraph()
        # Nodes are keyed by id(): the graph holds no autograd object, so it outlives the pass.
        # Every visited function stays referenced while the graph is built, so no id is reused.
        self.root: int | None = id(score.grad_fn) if score.grad_fn is not None else None
        trainable = {id(p) for p in parameters if p.requires_grad}
        trainable_leaves: list[int] = []
        self._leaves: dict[int, int] = {}  # id(leaf tensor) -> its AccumulateGrad node
        # (op, dim, index, input sizes) of each single-element pick
        self._select_nodes: dict[int, tuple[str, int, int, tuple[int, ...]]] = {}
        self._unpicked: dict[int, set[int]] = {}  # num_tokens -> nodes reached without a token pick
        stack = [score.grad_fn] if score.grad_fn is not None else []
        visited: dict[int, Any] = {}
        while stack:
            fn = stack.pop()
            if id(fn) in visited:
                continue
            visited[id(fn)] = fn
            self.graph.add_node(id(fn), op=type(fn).__name__)
            if type(fn).__name__.startswith("SelectBackward"):
                # What was picked, for the structure-only cut-off test (the meta device has no values).
                picked: Any = fn  # SelectBackward0 keeps its dim, index and input sizes as saved attributes
                self._select_nodes[id(fn)] = (
                    type(fn).__name__, int(picked._saved_dim), int(picked._saved_index),
                    tuple(int(n) for n in picked._saved_self_sym_sizes),
                )
            variable = getattr(fn, "variable", None)
            if variable is not None:
                self._leaves[id(variable)] = id(fn)
                if id(variable) in trainable:
                    trainable_leaves.append(id(fn))
            for next_fn, _ in getattr(fn, "next_functions", ()):
                if next_fn is None:
                    continue
                self.graph.add_edge(id(fn), id(next_fn))
                stack.append(next_fn)
        # One walk up from every trainable leaf at once (per-leaf walks cost a graph each:
        # seconds on a 1B-parameter model with hundreds of weights).
        self._above_trainable: set[int] = set(trainable_leaves)
        frontier = list(trainable_leaves)
        while frontier:
            node = frontier.pop()
            for parent in self.graph.predecessors(node):
                if parent not in self._above_trainable:
                    self._above_trainable.add(parent)
                    frontier.append(parent)
        self._above_leaf: dict[int, set[int]] = {}

    def reaches(self, grad_fn: Any) -> bool:
        """True when the score depends on the tensor produced by ``grad_fn``."""
        return grad_fn is not None and id(grad_fn) in self.graph

    def needs_trainable_parameters(self, grad_fn: Any) -> bool:
        """True when a trainable parameter lies below: the output requires grad without input grad."""
        return grad_fn is not None and id(grad_fn) in self._above_trainable

    def depends_on(self, grad_fn: Any, leaf: torch.Tensor) -> bool:
        """True when the tensor produced by ``grad_fn`` is computed from ``leaf`` (a tensor that requires grad)."""
        above_leaf = self._ancestors_of_leaf(leaf)
        return grad_fn is not None and above_leaf is not None and id(grad_fn) in above_leaf

    def picks_between(self, grad_fn: Any) -> list[str]:
        """The token/element picks on the shortest path from the score to ``grad_fn``."""
        if self.root is None or not self.reaches(grad_fn):
            return []
        path = nx.shortest_path(self.graph, self.root, id(grad_fn))
        ops = [self.graph.nodes[n]["op"] for n in path[1:-1]]
        return [op for op in ops if op.startswith(_PICKS)]

    def _token_selects(self, num_tokens: int) -> list[tuple[str, int]]:
        # A negative index counts from the end: normalised, so that "the CLS token" reads 0.
        return [
            (op, index % num_tokens)
            for op, dim, index, sizes in self._select_nodes.values()
            if len(sizes) == 3 and dim == 1 and sizes[1] == num_tokens
        ]

    def reaches_without_token_picks(self, grad_fn: Any, num_tokens: int) -> bool:
        """True when a path from the score reaches ``grad_fn`` without picking single tokens of a sequence.

        With no values (the meta device), this stands for "the gradient reaches every token":
        a path through a CLS pick lands on that token alone.
        """
        if not self.reaches(grad_fn) or self.root is None:
            return False
        if num_tokens not in self._unpicked:
            blocked = set(self._token_select_nodes(num_tokens))
            seen = {self.root}
            frontier = [self.root]
            while frontier:
                node = frontier.pop()
                for child in self.graph.successors(node):
                    if child not in seen and child not in blocked:
                        seen.add(child)
                        frontier.append(child)
            self._unpicked[num_tokens] = seen
        return id(grad_fn) in self._unpicked[num_tokens]

    def _token_select_nodes(self, num_tokens: int) -> list[int]:
        return [
            node for node, (_, dim, _, sizes) in self._select_nodes.items()
            if len(sizes) == 3 and dim == 1 and sizes[1] == num_tokens
        ]

    def token_picks(self, num_tokens: int) -> tuple[str, ...]:
        """The picks of one token out of a ``[B, num_tokens, C]`` sequence below the score (a CLS pick)."""
        return tuple(dict.fromkeys(op for op, _ in self._token_selects(num_tokens)))

    def picked_tokens(self, num_tokens: int) -> tuple[int, ...]:
        """Which tokens of a ``[B, num_tokens, C]`` sequence those picks take, in order."""
        return tuple(sorted({index for _, index in self._token_selects(num_tokens)}))

    def _ancestors_of_leaf(self, leaf: torch.Tensor) -> set[int] | None:
        """The graph's nodes computed from ``leaf`` (None when the score does not depend on it)."""
        node = self._leaves.get(id(leaf))
        if node is None:
            return None
        if id(leaf) not in self._above_leaf:
            self._above_leaf[id(leaf)] = nx.ancestors(self.graph, node) | {node}
        return self._above_leaf[id(leaf)]

    def gathers_between(self, grad_fn: Any, leaf: torch.Tensor) -> bool:
        """True when an index-driven pick (gather, index_select, advanced indexing) lies between ``leaf``
        and the tensor produced by ``grad_fn`` (not the score's own pick of the target class above it)."""
        above = self._ancestors_of_leaf(leaf)
        if above is None or not self.reaches(grad_fn):
            return False
        between = (nx.descendants(self.graph, id(grad_fn)) | {id(grad_fn)}) & above
        return any(self.graph.nodes[n]["op"].startswith(_GATHERS) for n in between)

    def computed_from(self, leaf: torch.Tensor) -> set[int]:
        """The ids of the autograd functions whose output is computed from ``leaf`` (empty when none is)."""
        return self._ancestors_of_leaf(leaf) or set()
