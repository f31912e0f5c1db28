"""Positions read from the autograd graph (``probe.positions``): what the graph proves, and what it must not.

Each small module exercises one kind of operation; a claim is checked against the layout
it must (or must not) confirm. The real-model tests check that every claim the graph makes
agrees with the gradients: the locality test (``geometry.locality.lines_up``) passes on
the same layer and layout.
"""

from __future__ import annotations

import pathlib
import sys
import warnings

import pytest
import torch
from torch import nn

import hookdoctor
from hookdoctor.geometry.layout import Layout
from hookdoctor.geometry.locality import follows_coordinates, lines_up
from hookdoctor.probe.gradpath import GradGraph
from hookdoctor.probe.positions import PositionReader, coordinates

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # any pytest import mode
from helpers import marked_by_library, timm_builder, torchvision_builder  # noqa: E402

warnings.filterwarnings("ignore", category=UserWarning)


def _proven(module: nn.Module, x: torch.Tensor, layout: Layout, *, channel_axis: int | None = 1) -> bool | None:
    """True/False: the graph shows (or rules out) ``layout``; None: the graph does not say."""
    x = x.clone().requires_grad_(True)
    out = module(x)
    graph = GradGraph(out.sum(), list(module.parameters()))
    labels = PositionReader(x, graph.computed_from(x), channel_axis=channel_axis).labels(out)
    if labels is None:
        return None
    found = coordinates(labels, x.dim() - (1 if channel_axis is None else 2))
    return None if found is None else follows_coordinates(found, layout)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt's block: depthwise conv, then LayerNorm and an MLP on a channels-last permute."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, 4)
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.mlp(self.norm(self.dw(x).permute(0, 2, 3, 1))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class Tokens(nn.Module):
    """Patch tokens with ``prefix`` learned tokens in front, then ``blocks`` attention blocks (residual)."""

    def __init__(self, dim: int = 8, prefix: int = 1, blocks: int = 2, order: str = "raster") -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 8, 8)
        self.prefix = nn.Parameter(torch.randn(1, prefix, dim)) if prefix else None
        self.order = order
        self.blocks = nn.ModuleList(nn.MultiheadAttention(dim, 2, batch_first=True) for _ in range(blocks))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.proj(x)  # [B, C, 4, 4]
        if self.order == "mask_units":  # consecutive tokens tile 2x2 windows (Hiera)
            b, c, h, w = grid.shape
            grid = grid.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c, h, w)
        tokens = grid.flatten(2).transpose(1, 2)
        if self.order == "flipped":
            tokens = tokens.flip(1)
        if self.prefix is not None:
            tokens = torch.cat([self.prefix.expand(tokens.shape[0], -1, -1), tokens], 1)
        if self.order == "split_and_joined":  # the prefix split off, the CLS token added to every patch
            prefix, patches = tokens.split([self.prefix.shape[1], 16], dim=1)
            tokens = torch.cat([prefix, patches + tokens[:, 0].unsqueeze(1)], 1)
        for attention, norm in zip(self.blocks, self.norms, strict=True):
            y = norm(tokens)
            tokens = tokens + attention(y, y, y, need_weights=False)[0]
        return tokens


class WindowBlock(nn.Module):
    """Swin's block in small: window attention in a branch (partition, attention, reverse), then patch merging."""

    def __init__(self, dim: int = 8, window: int = 2, timm_merge: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, 4)
        self.window = window
        self.timm_merge = timm_merge
        self.attention = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.reduce = nn.Linear(4 * dim, 2 * dim)

    def _windows(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        s = self.window
        parts = x.view(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, s * s, c)
        mixed = self.attention(parts, parts, parts, need_weights=False)[0]
        return mixed.view(b, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).permute(0, 2, 3, 1)  # [B, 8, 8, C]
        x = x + self._windows(x)
        b, h, w, c = x.shape
        if self.timm_merge:  # timm: reshape, permute, flatten
            merged = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
        else:  # torchvision: four stepped slices concatenated along channels
            merged = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduce(merged)


def test_a_channels_last_mlp_between_permutes_keeps_positions():
    x = torch.randn(1, 3, 32, 32)
    assert _proven(ConvNeXtBlock(), x, Layout("NCHW", (8, 8), 8)) is True
    assert _proven(ConvNeXtBlock(), x, Layout("NCHW", (8, 8), 8, transposed=True)) is False


def test_a_residual_stream_keeps_positions_through_attention_and_a_prefix():
    x = torch.randn(1, 3, 32, 32)
    assert _proven(Tokens(prefix=1), x, Layout("tokens", (4, 4), 8, 1)) is True
    assert _proven(Tokens(prefix=0), x, Layout("tokens", (4, 4), 8, 0)) is True
    assert _proven(Tokens(prefix=2), x, Layout("tokens", (4, 4), 8, 2)) is True
    assert _proven(Tokens(prefix=1, order="split_and_joined"), x, Layout("tokens", (4, 4), 8, 1)) is True
    # a wrong prefix count, or the grid read the other way round, is ruled out
    assert _proven(Tokens(prefix=1), x, Layout("tokens", (4, 4), 8, 1, transposed=True)) is False


@pytest.mark.parametrize("order", ["mask_units", "flipped"])
def test_tokens_out_of_raster_order_are_not_proven(order):
    # The graph must not vouch for them: mask-unit order follows no raster layout, a flip is not understood.
    assert not _proven(Tokens(order=order), torch.randn(1, 3, 32, 32), Layout("tokens", (4, 4), 8, 1))


@pytest.mark.parametrize("timm_merge", [False, True])
def test_window_attention_in_a_branch_and_patch_merging_keep_positions(timm_merge):
    x = torch.randn(1, 3, 32, 32)
    assert _proven(WindowBlock(timm_merge=timm_merge), x, Layout("NHWC", (4, 4), 16)) is True


class TwoTerms(nn.Module):
    """A stem's map combined with a copy of it whose positions moved."""

    def __init__(self, combine) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 4, 4)
        self.combine = combine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine(self.stem(x))


@pytest.mark.parametrize(
    "combine",
    [
        pytest.param(lambda y: y * y.roll(1, -1), id="gated-by-a-branch"),  # a product is no skip path
        pytest.param(lambda y: y + y.transpose(2, 3), id="sum-of-transposes"),  # two terms as fine, moved
    ],
)
def test_terms_that_move_positions_are_not_a_skip_path(combine):
    assert _proven(TwoTerms(combine), torch.randn(1, 3, 32, 32), Layout("NCHW", (8, 8), 4)) is None


def test_frozen_weights_leave_the_positions_readable():
    block = ConvNeXtBlock().requires_grad_(False)
    assert _proven(block, torch.randn(1, 3, 32, 32), Layout("NCHW", (8, 8), 8)) is True


def test_a_spectrogram_has_two_positional_axes_and_may_be_swapped():
    class Spectrogram(nn.Module):  # [B, T, F] -> [B, 1, F, T] -> patches
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Conv2d(1, 4, 4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x.unsqueeze(1).transpose(2, 3))

    x = torch.randn(1, 32, 16)  # 32 frames, 16 bins: the map is [B, 4, 4 (bins), 8 (frames)]
    assert _proven(Spectrogram(), x, Layout("NCHW", (8, 4), 4, transposed=True), channel_axis=None) is True
    assert _proven(Spectrogram(), x, Layout("NCHW", (4, 8), 4), channel_axis=None) is False


# -- real models: what the graph proves, the gradients confirm ---------------------------------------
REAL = {
    "torchvision-swin_t": (torchvision_builder("swin_t"), (1, 3, 224, 224)),
    "torchvision-convnext_tiny": (torchvision_builder("convnext_tiny"), (1, 3, 64, 64)),
    "timm-swin": (timm_builder("swin_tiny_patch4_window7_224", depths=(1, 1, 1, 1)), (1, 3, 224, 224)),
    "timm-vit": (timm_builder("vit_tiny_patch16_224", depth=2, img_size=64), (1, 3, 64, 64)),
    "timm-deit-distilled": (timm_builder("deit_tiny_distilled_patch16_224", depth=2, img_size=64), (1, 3, 64, 64)),
    "timm-cait": (timm_builder("cait_xxs24_224", depth=1, img_size=64), (1, 3, 64, 64)),
    "timm-pvt": (timm_builder("pvt_v2_b0"), (1, 3, 64, 64)),
    # Cross-covariance attention and local patch interaction in branches: proven by the graph,
    # though with random weights only the relaxed order test passes on its gradients.
    "timm-xcit": (timm_builder("xcit_nano_12_p16_224", depth=2), (1, 3, 224, 224)),
}


@pytest.mark.parametrize("name", marked_by_library(REAL))
def test_the_graph_proves_the_recommended_layout_and_the_gradients_agree(name):
    build, shape = REAL[name]
    torch.manual_seed(0)
    model, x = build(), torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    report = hookdoctor.inspect(model, x, methods=("gradcam",))
    spec = report.gradcam
    assert spec is not None
    layer = model.get_submodule(spec.layer_name)
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, args, out: captured.append(out))
    # A batch of two: PyTorch 2.14's eval BatchNorm gets wrong input gradients at batch 1 on CPU.
    image = torch.cat([x, torch.randn_like(x)]).requires_grad_(True)
    try:
        out = model(image)
    finally:
        handle.remove()
    graph = GradGraph(out.sum(), list(model.parameters()))
    labels = PositionReader(image, graph.computed_from(image), channel_axis=1).labels(captured[-1])
    assert labels is not None, f"{name}: the graph should show where {spec.layer_name}'s cells are"
    found = coordinates(labels, 2)
    assert found is not None and follows_coordinates(found, spec.layout)
    assert lines_up(captured[-1], image, spec.layout, strict=False)


def _layouts_tested(monkeypatch, model: nn.Module, x: torch.Tensor) -> tuple[list[Layout], object]:
    """The layouts inspect ran the locality test's backward passes on, and its report."""
    from hookdoctor.checks import confirm

    tested: list[Layout] = []
    real = confirm.cell_energies

    def counted(output, image, layout, **kwargs):
        tested.append(layout)
        return real(output, image, layout, **kwargs)

    monkeypatch.setattr(confirm, "cell_energies", counted)
    return tested, hookdoctor.inspect(model, x, methods=("gradcam",))


def test_inspect_runs_no_locality_backward_where_the_graph_shows_the_positions(monkeypatch):
    torch.manual_seed(0)
    model = timm_builder("vit_tiny_patch16_224", depth=2, img_size=64)()
    tested, report = _layouts_tested(monkeypatch, model, torch.randn(1, 3, 64, 64))
    assert report.gradcam is not None and report.check_layer(report.gradcam.layer_name).cells_confirmed is True
    assert tested == []
    assert any("read from the autograd graph" in reason for reason in report.gradcam.reasons)


def test_inspect_runs_the_locality_test_where_the_graph_does_not_say(monkeypatch):
    from fixtures import truthful as fx

    tested, report = _layouts_tested(monkeypatch, fx.coarse_mix_vit(), fx.example_input("coarse_mix_vit"))
    assert report.gradcam is not None and tested
    assert any("confirmed by a locality probe" in reason for reason in report.gradcam.reasons)
