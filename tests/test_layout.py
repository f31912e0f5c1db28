"""Layout inference: grids, prefix tokens, channels-last, and the reshape transforms."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from hookdoctor.geometry.layout import (
    Layout,
    ReshapeTransform,
    aligned_grid,
    axis_aligned_grid,
    infer_layouts,
    prefix_token_hint,
    spatial_extent,
    token_candidates,
)


@pytest.mark.parametrize(
    ("grid", "image", "expected"),
    [
        ((3, 4), (96, 128), True),
        ((4, 5), (100, 150), True),
        ((7, 7), (224, 224), True),
        ((7, 7), (96, 128), False),
        ((65, 16), (64, 64), False),
        ((4, 8), (32, 64), True),
        ((8, 4), (32, 64), False),
    ],
)
def test_aligned_grid_needs_one_stride_for_both_sides(grid, image, expected) -> None:
    assert aligned_grid(*grid, image) is expected


def test_token_candidates_prefer_the_declared_prefix_and_observed_grid() -> None:
    # DeiT distilled at 224: 198 tokens = 2 + 14 * 14
    assert token_candidates(198, (224, 224), [(14, 14)], prefix_hint=2)[0] == (2, (14, 14))
    # a non-square 32x64 input with 8-pixel patches: 1 + 4 * 8, never 8 * 4
    assert token_candidates(33, (32, 64), [(4, 8)], prefix_hint=1)[0] == (1, (4, 8))
    # four registers
    assert token_candidates(21, (32, 32), [(4, 4)], prefix_hint=5)[0] == (5, (4, 4))


def test_channels_last_is_recognised_from_geometry_and_from_a_trailing_layernorm() -> None:
    # timm Swin stage output: [B, 7, 7, 768] cannot be NCHW at 224x224
    assert [layout.kind for layout in infer_layouts((1, 7, 7, 768), (224, 224), 1)] == ["NHWC"]
    # ambiguous [B, 8, 8, 8]: a LayerNorm over the last dim says channels-last
    ambiguous = infer_layouts((1, 8, 8, 8), (64, 64), 1, module=nn.LayerNorm(8))
    assert ambiguous[0].kind == "NHWC"
    assert infer_layouts((1, 8, 8, 8), (64, 64), 1, module=nn.Conv2d(3, 8, 1))[0].kind == "NCHW"


def test_no_layout_for_vectors_windows_and_attention_scores() -> None:
    assert infer_layouts((1, 512), (96, 128), 1) == []
    assert infer_layouts((16, 16, 32), (32, 32), 1) == []  # Swin windows: batch is B * windows
    assert infer_layouts((1, 4, 65, 65), (64, 64), 1) == []  # attention probabilities


def test_prefix_hint_counts_token_parameters() -> None:
    class WithRegisters(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
            self.register_tokens = nn.Parameter(torch.zeros(1, 4, 8))
            self.mask_token = nn.Parameter(torch.zeros(1, 1, 8))  # replaces patches, not a prefix

    assert prefix_token_hint(WithRegisters()) == 5
    assert prefix_token_hint(nn.Conv2d(3, 3, 1)) is None


def test_token_transform_round_trips_and_pickles() -> None:
    transform = ReshapeTransform("tokens", (4, 8), prefix_tokens=2)
    tokens = torch.randn(2, 2 + 32, 16)
    grid = transform(tokens)
    assert grid.shape == (2, 16, 4, 8)
    # token k (after the prefix) sits at row k // 8, column k % 8
    assert torch.equal(grid[:, :, 1, 3], tokens[:, 2 + 1 * 8 + 3, :])
    assert torch.equal(transform.inverse(grid, tokens), tokens)
    assert pickle.loads(pickle.dumps(transform)) == transform


def test_nhwc_transform_permutes() -> None:
    transform = Layout("NHWC", (3, 5), 7).transform()
    x = torch.randn(1, 3, 5, 7)
    assert transform(x).shape == (1, 7, 3, 5)
    assert torch.equal(transform.inverse(transform(x), x), x)
    assert Layout("NCHW", (3, 5), 7).transform() is None


def _mass_at(grid: tuple[int, int], centre: tuple[float, float]) -> torch.Tensor:
    """An energy map whose centre of mass is ``centre``: unit mass split bilinearly over four cells."""
    energy = torch.zeros(grid)
    r, c = centre
    r0, c0 = int(r), int(c)
    for dr, wr in ((0, 1 - (r - r0)), (1, r - r0)):
        for dc, wc in ((0, 1 - (c - c0)), (1, c - c0)):
            if wr * wc:
                energy[r0 + dr, c0 + dc] += wr * wc
    return energy


def test_order_check_accepts_centre_pulled_peaks_and_rejects_mirrors_and_near_ties() -> None:
    from hookdoctor.geometry.locality import keeps_order, probe_cells

    layout = Layout("NCHW", (8, 8), 16)
    assert probe_cells((8, 8)) == [(1, 6), (6, 1)]
    # Inception's last block: every peak pulled towards the centre, order kept
    assert keeps_order([_mass_at((8, 8), (2.2, 4.0)), _mass_at((8, 8), (3.1, 2.9))], layout)
    # a left-right mirror keeps rows but reverses columns
    assert not keeps_order([_mass_at((8, 8), (1.0, 1.0)), _mass_at((8, 8), (6.0, 6.0))], layout)
    # in order by a hair: chance, not evidence (issue 10, item 2)
    assert not keeps_order([_mass_at((8, 8), (3.4, 3.6)), _mass_at((8, 8), (3.5, 3.5))], layout)


def test_a_single_cell_map_is_never_a_working_map() -> None:
    from hookdoctor.geometry.locality import is_working_map

    assert not is_working_map(torch.ones(1, 1, 1))
    assert not is_working_map(torch.zeros(1, 3, 3))
    assert not is_working_map(torch.full((1, 3, 3), float("nan")))
    assert is_working_map(torch.arange(9.0).reshape(1, 3, 3))


def test_a_pooled_token_is_no_token_layout() -> None:
    # [B, C, 1]: one pooled vector of C values, not C tokens of one channel (issue 10, item 4)
    assert infer_layouts((1, 16, 1), (16, 16), 1) == []
    assert spatial_extent((1, 16, 1)) == 1
    assert infer_layouts((1, 16, 2), (16, 16), 1) != []


def test_adaptive_pooling_gives_a_grid_with_one_stride_per_axis() -> None:
    # a 5x7 map pooled to 6x6 over a 40x56 input: no one stride gives both sides (issue 10, item 5)
    assert not aligned_grid(6, 6, (40, 56))
    assert axis_aligned_grid(6, 6, (40, 56))
    assert [layout.kind for layout in infer_layouts((1, 16, 6, 6), (40, 56), 1)] == ["NCHW"]
    # a grid one stride explains is still read that way first, never transposed
    assert [layout.grid for layout in infer_layouts((1, 16, 4, 8), (32, 64), 1)] == [(4, 8)]
