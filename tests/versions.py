"""What differs between the transformers versions CI runs, for tests that assert it.

CI runs the whole suite with transformers 5.x, and the tests marked ``transformers`` or
``timm`` again with the declared floor and with the newest 4.x (``.ci/run``). Module paths,
the attention implementation a model gets by default and what ``output_attentions=True``
returns differ between them; a test asks these helpers for the installed version's
behaviour and asserts it, instead of skipping the versions it was not written for.
"""

from __future__ import annotations

import pytest
from torch import nn


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def vit_block(index: int, root: str = "vit") -> str:
    """Path of encoder block ``index`` of a HF ViT, DeiT or BEiT.

    transformers 5 flattened ``vit.encoder.layer.N`` to ``vit.layers.N``.
    """
    return f"{root}.layers.{index}" if transformers_major() >= 5 else f"{root}.encoder.layer.{index}"


def vit_attention(index: int, root: str = "vit") -> str:
    """Path of the module whose forward computes block ``index``'s attention probabilities.

    transformers 4 wraps a ``ViTSelfAttention`` (the softmax) inside ``ViTAttention``
    (the output projection), so the attention runs at ``.attention.attention``; 5.x merged them.
    """
    return vit_block(index, root) + (".attention" if transformers_major() >= 5 else ".attention.attention")


def swin_attention(stage: int, block: int, root: str = "swin") -> str:
    """Path of the module that computes a HF Swin block's window attention (4.x nests it in ``.self``)."""
    path = f"{root}.encoder.layers.{stage}.blocks.{block}.attention"
    return path if transformers_major() >= 5 else path + ".self"


def default_attention(model: nn.Module) -> str:
    """The implementation transformers picks when nobody asks: ``sdpa`` where the class supports it.

    At transformers 4.41 ViT and DeiT have an SDPA path but BEiT, DINOv2, CLIP and SigLIP do
    not, so they run eager there; from 4.57 on all of them default to SDPA.
    """
    return "sdpa" if getattr(type(model), "_supports_sdpa", False) else "eager"


def has_transformers_class(name: str, since: str) -> pytest.MarkDecorator:
    """Skip a case whose model class the installed transformers does not have yet.

    This is the one thing not asserted per version: a model that does not exist cannot be
    inspected. ``since`` says which release added it, so the skip reason is checkable.
    """
    import transformers

    return pytest.mark.skipif(
        not hasattr(transformers, name), reason=f"transformers {transformers.__version__} has no {name} ({since}+)"
    )
