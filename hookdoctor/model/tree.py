"""The module tree as a typed networkx graph.

Walks ``_modules`` rather than ``named_modules()``, which hides a module reachable
under two names: shared modules show up here as nodes with ``in_degree > 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
from torch import nn

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def module_kind(module: nn.Module) -> str:
    """A coarse kind from the module's type (never from its name or path)."""
    from torch.nn.modules import activation, batchnorm, conv, dropout, instancenorm, normalization, pooling

    if isinstance(module, nn.MultiheadAttention):
        return "attention"
    if isinstance(module, conv._ConvNd):
        return "conv"
    if isinstance(
        module,
        (
            batchnorm._NormBase,
            instancenorm._InstanceNorm,
            normalization.LayerNorm,
            normalization.GroupNorm,
            normalization.RMSNorm,
        ),
    ):
        return "norm"
    if isinstance(module, nn.Linear):
        return "linear"
    if type(module).__module__ == activation.__name__:
        return "activation"
    if type(module).__module__ == pooling.__name__:
        return "pooling"
    if type(module).__module__ == dropout.__name__:
        return "dropout"
    if isinstance(module, nn.Identity):
        return "identity"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, _CONTAINERS):
        return "container"
    if next(module.children(), None) is not None:
        return "block"
    # Leaf modules of model libraries: judge by what they are built on.
    name = type(module).__name__.lower()
    if "norm" in name:
        return "norm"
    if "pool" in name:
        return "pooling"
    if "drop" in name:
        return "dropout"
    return "leaf"


@dataclass(frozen=True)
class ModuleNode:
    names: tuple[str, ...]
    type: str
    kind: str
    parameters: int


def build_tree(model: nn.Module, prefix: str = "") -> nx.DiGraph:
    """Nodes are ``id(module)`` with a ``node`` attribute (ModuleNode); edges parent -> child."""
    graph = nx.DiGraph()
    names: dict[int, list[str]] = {}
    modules: dict[int, nn.Module] = {}
    stack: list[tuple[nn.Module, str]] = [(model, prefix.rstrip("."))]
    while stack:
        module, name = stack.pop()
        key = id(module)
        first_visit = key not in names
        names.setdefault(key, []).append(name)
        modules[key] = module
        if not first_visit:
            continue
        for attr, child in module._modules.items():
            if child is None:
                continue
            child_name = f"{name}.{attr}" if name else attr
            graph.add_edge(key, id(child), attr=attr)
            stack.append((child, child_name))
    graph.add_node(id(model))
    for key, module in modules.items():
        graph.nodes[key]["node"] = ModuleNode(
            names=tuple(sorted(names[key], key=lambda n: (n.count("."), n))),
            type=type(module).__name__,
            kind=module_kind(module),
            parameters=sum(p.numel() for p in module.parameters(recurse=False)),
        )
    return graph
