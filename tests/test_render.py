"""The rendered report, from Report objects built by hand: no model runs here."""

from __future__ import annotations

import io
import re

from rich.console import Console

from hookdoctor.render.terminal import collapse_names, group_findings, render_report
from hookdoctor.report import Diagnostic, LayerSummary, LayerVerdict, Report

_COLOUR = re.compile(r"\x1b\[[0-9;]*(?:3[0-7]|9[0-7]|38;[0-9;]+)m")


def _report(diagnostics: list[Diagnostic], verdicts: dict[str, LayerVerdict] | None = None) -> Report:
    return Report(
        methods=("gradcam", "rollout"),
        diagnostics=diagnostics,
        gradcam=None,
        rollout=None,
        model_class="TinyViT",
        input_shape=(1, 3, 32, 32),
        target=3,
        environment={
            "torch": "9.9.9",
            "transformers": None,
            "attn_implementation": "sdpa",
            "fused_attention": {"Attention.fused_attn=True": 12},
        },
        layers=[
            LayerSummary("blocks", "Sequential", "block", 1, "Tensor[1, 5, 8]", "tokens", (2, 2), True, ()),
            LayerSummary("blocks.0", "Block", "block", 1, "Tensor[1, 5, 8]", "tokens", (2, 2), True, ()),
            LayerSummary("blocks.1", "Block", "block", 1, "Tensor[1, 5, 8]", "tokens", (2, 2), True, ()),
            LayerSummary("blocks.2", "Block", "block", 1, "Tensor[1, 5, 8]", None, None, False, ("HD201",)),
            LayerSummary("head", "Linear", "linear", 1, "Tensor[1, 10]", None, None, False, ("HD305",)),
        ],
        layer_verdicts=verdicts or {},
        _judge=lambda name: LayerVerdict(name, False, []),
    )


def _text(report: Report, **kwargs) -> str:
    out = io.StringIO()
    console = Console(file=out, width=100, color_system=None, force_terminal=False)
    for renderable in render_report(report, console=console, **kwargs):
        console.print(renderable)
    return out.getvalue()


def _attn(i: int) -> Diagnostic:
    return Diagnostic.of(
        "HD508",
        f"`blocks.{i}.attn` computes no attention.",
        "Use Grad-CAM.",
        layer=f"blocks.{i}.attn",
        method="rollout",
    )


def test_collapse_names_by_structure():
    assert collapse_names([f"blocks.{i}.attn" for i in range(12)]) == ["blocks.{0..11}.attn"]
    assert collapse_names(["blocks.0.attn", "blocks.1.attn", "blocks.3.attn"]) == ["blocks.{0,1,3}.attn"]
    assert collapse_names(["layer1.0.conv1"]) == ["layer1.0.conv1"]
    assert collapse_names(["a.0", "b.0"]) == ["a.0", "b.0"]


def test_collapse_never_claims_a_layer_that_is_not_there():
    ragged = [
        "stages.0.blocks.0",
        "stages.0.blocks.1",
        "stages.1.blocks.0",
        "stages.1.blocks.1",
        "stages.1.blocks.2",
    ]
    assert collapse_names(ragged) == ["stages.0.blocks.{0,1}", "stages.1.blocks.{0..2}"]
    square = [f"stages.{s}.blocks.{b}" for s in range(2) for b in range(3)]
    assert collapse_names(square) == ["stages.{0,1}.blocks.{0..2}"]


def test_repeated_findings_are_shown_once_with_the_collapsed_layer():
    findings = group_findings([_attn(i) for i in range(12)])
    assert len(findings) == 1
    assert findings[0].where == "blocks.{0..11}.attn"
    assert findings[0].message == "`blocks.{0..11}.attn` computes no attention."
    text = _text(_report([_attn(i) for i in range(12)]))
    assert text.count("error[HD508]") == 1  # one finding, not twelve
    assert "blocks.{0..11}.attn" in text


def test_report_reads_as_a_checklist_then_findings():
    head = Diagnostic.of(
        "HD305", "`head` outputs [B, 10], no grid.", "Hook blocks.1 instead.", layer="head", method="gradcam"
    )
    text = _text(_report([head, _attn(0)]))
    lines = text.splitlines()
    assert lines[0].startswith("TinyViT · input 1×3×32×32 · explaining class 3")
    assert lines[1].startswith("[✗] Grad-CAM") and "HD305" in lines[1]
    assert lines[2].startswith("[✗] attention rollout") and "HD508" in lines[2]
    for expected in (
        "error[HD305]",
        "--> head",
        "cause `head` outputs",
        "fix Hook blocks.1 instead.",
        "see hookdoctor explain HD305",
        "layout ─",
        "attention ─",
    ):
        assert expected in text
    assert "environment torch 9.9.9" in text
    assert "transformers" not in text.split("environment")[1].split("\n")[0]  # absent packages skipped
    assert "Attention.fused_attn=True ×12" in text


def test_layer_verdict_line_with_suggestions():
    verdict = LayerVerdict(
        "blocks.9",
        False,
        [Diagnostic.of("HD101", "No module is named `blocks.9`.", "Use blocks.2.", layer="blocks.9")],
        suggestions=["blocks.2"],
    )
    text = _text(_report([], {"blocks.9": verdict}))
    assert "[✗] layer blocks.9" in text and "did you mean blocks.2?" in text
    assert "error[HD101]" in text  # the verdict's own diagnostics are listed as findings


def test_tree_collapses_identical_blocks_and_shows_verdicts():
    text = _text(_report([]), tree=True)
    tree = text.split("module tree")[1]
    assert "{0,1} Block tokens, 2×2 grid" in tree
    assert "✗ 2 Block HD201" in tree
    assert "✗ head Linear HD305" in tree


def test_plain_text_without_terminal_and_colour_only_on_terminals(monkeypatch):
    report = _report([_attn(0)])
    assert "\x1b[" not in _text(report)
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=True, color_system="standard")
    for renderable in render_report(report, console=console):
        console.print(renderable)
    assert _COLOUR.search(out.getvalue())
    monkeypatch.setenv("NO_COLOR", "1")
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=True)
    for renderable in render_report(report, console=console):
        console.print(renderable)
    assert not _COLOUR.search(out.getvalue())


def test_report_is_a_rich_renderable():
    out = io.StringIO()
    Console(file=out, width=100, color_system=None).print(_report([_attn(0)]))
    assert "[✗] attention rollout" in out.getvalue()
