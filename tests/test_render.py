"""The rendered report, from Report objects built by hand: no model runs here."""

from __future__ import annotations

import io
import re

from rich.console import Console

from hookdoctor.render.terminal import collapse_names, group_findings, render_report
from hookdoctor.report import Diagnostic, LayerVerdict, Report

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
            _row("blocks", "Sequential", usable=True),
            _row("blocks.0", "Block", usable=True),
            _row("blocks.1", "Block", usable=True),
            _row("blocks.2", "Block", usable=False, code="HD201"),
            _row("head", "Linear", usable=False, code="HD305", kind="linear", output="Tensor[1, 10]"),
        ],
        layer_verdicts=verdicts or {},
        _judge=lambda name: LayerVerdict(name, False, []),
    )


def _row(
    name: str, type_: str, *, usable: bool, code: str = "", kind: str = "block", output: str = "Tensor[1, 5, 8]"
) -> LayerVerdict:
    """A module's verdict as the tree shows it: a usable block's tokens, or the code that fails it."""
    found = [Diagnostic.of(code, f"`{name}` fails.", "Hook another layer.", layer=name)] if code else []
    layout, grid = ("tokens", (2, 2)) if usable else (None, None)
    return LayerVerdict(name, usable, found, layout, grid, type=type_, kind=kind, calls=1, output=output)


def _text(report: Report, *, terminal: bool = False, width: int = 100, **kwargs) -> str:
    """The report as printed: to a pipe (full detail) or, with ``terminal``, to a screen (compact)."""
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, force_terminal=terminal)
    for renderable in render_report(report, console=console, **kwargs):
        console.print(renderable)
    return out.getvalue()


def _note(code: str, layer: str | None) -> Diagnostic:
    where = f"`{layer}`" if layer else "The model"
    return Diagnostic.of(code, f"{where} needs care.", "Nothing to change.", layer=layer, method="gradcam")


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


# --- the compact report (stdout is a terminal) --------------------------------------------------


def _mixed_findings() -> list[Diagnostic]:
    head = Diagnostic.of(
        "HD305", "`head` outputs [B, 10], no grid.", "Hook blocks.1 instead.", layer="head", method="gradcam"
    )
    notes = [_note("HD001", None)] + [_note("HD301", f"blocks.{i}.norm") for i in range(6)]
    return [head, _attn(0), *notes]


def test_compact_report_shows_errors_in_full_and_info_one_line_each():
    text = _text(_report(_mixed_findings()), terminal=True)
    lines = text.splitlines()
    assert lines[1].startswith("[✗] Grad-CAM") and lines[2].startswith("[✗] attention rollout")
    # errors in full: cause, fix, the pointer
    for expected in ("error[HD305]", "cause `head` outputs", "fix Hook blocks.1 instead.", "see hookdoctor explain"):
        assert expected in text
    # info: one line each, with code, layer and title, and no cause or fix
    notes = [line for line in lines if line.startswith("info[")]
    assert len(notes) == 2
    assert notes[0].startswith("info[HD001]") and "ModelOutput, tuple or dict" in notes[0]
    assert notes[1].startswith("info[HD301] blocks.{0..5}.norm") and "token sequence" in notes[1]
    assert "needs care" not in text and "Nothing to change" not in text
    assert "-v shows why" in text
    # the environment is for -v; the closing line is last
    assert "environment" not in text
    assert lines[-1] == "✗ Grad-CAM  ✗ rollout · 2 errors, 2 notes · hookdoctor explain CODE or -v for details"


def test_verbose_and_piped_reports_are_the_full_report():
    report = _report(_mixed_findings())
    piped = _text(report)
    assert _text(report, terminal=True, verbose=True) == piped
    assert "info[HD301]: The layer's output is a token sequence" in piped
    assert "--> blocks.{0..5}.norm" in piped and "cause `blocks.{0..5}.norm` needs care." in piped
    assert piped.splitlines()[-2].startswith("environment torch 9.9.9")
    assert "-v for details" not in piped


def test_compact_notes_never_wrap():
    notes = [_note("HD301", f"encoder.stages.{i}.blocks.3.attention.output.norm") for i in (0, 2)]
    text = _text(_report([_note("HD512", None), *notes]), terminal=True, width=60)
    lines = text.splitlines()
    notes = [i for i, line in enumerate(lines) if line.startswith("info[")]
    assert len(notes) == 2 and notes[1] == notes[0] + 1  # no continuation lines between them
    assert lines[notes[0]].startswith("info[HD301] encoder.stages.{0,2}.blocks.3.attention.output.")
    assert lines[notes[1]].startswith("info[HD512]  ")
    assert all(len(lines[i]) <= 60 and lines[i].endswith("…") for i in notes)


def test_compact_finding_does_not_repeat_a_layer_its_cause_names():
    text = _text(_report(_mixed_findings()), terminal=True)
    assert "--> head" not in text and "cause `head` outputs" in text
    # "head" as a word is not the layer named: only a quoted name, or a dotted one, counts
    unnamed = Diagnostic.of("HD305", "The head outputs [B, 10].", "Hook blocks.1.", layer="head", method="gradcam")
    assert "--> head" in _text(_report([unnamed]), terminal=True)
    dotted = Diagnostic.of("HD508", "blocks.0.attn and 3 more compute none.", "Use Grad-CAM.", layer="blocks.0.attn")
    assert "--> blocks.0.attn" not in _text(_report([dotted]), terminal=True)
    prefix = Diagnostic.of("HD508", "blocks.0.attn.qkv computes none.", "Use Grad-CAM.", layer="blocks.0.attn")
    assert "--> blocks.0.attn" in _text(_report([prefix]), terminal=True)


def test_compact_header_leaves_out_the_source_rather_than_wrap():
    report = _report([])
    source = "a/very/long/path/to/a/model/factory/file/that/the/user/just/typed.py:build_the_model"
    assert _text(report, terminal=True, source=source).splitlines()[0] == (
        "TinyViT · input 1×3×32×32 · explaining class 3"
    )
    assert _text(report, terminal=True, source="f.py:m").splitlines()[0].startswith("TinyViT (f.py:m) · input")
    assert source in _text(report, source=source)  # piped: the full header, wrapped


def test_closing_line_counts_and_marks():
    warning = Diagnostic.of("HD003", "`head` is all zero.", "Load weights.", layer="head", method="gradcam")
    verdict = LayerVerdict(
        "blocks.9",
        False,
        [Diagnostic.of("HD101", "No module is named `blocks.9`.", "Use blocks.2.", layer="blocks.9")],
    )
    report = _report([warning], {"blocks.9": verdict})
    last = _text(report, terminal=True, width=120).splitlines()[-1]
    assert last == (
        "✗ Grad-CAM  ✗ rollout  ✗ layer blocks.9 · 1 error, 1 warning · "
        "hookdoctor explain CODE or -v for details"
    )
    assert _text(_report([]), terminal=True).splitlines()[-1] == "✗ Grad-CAM  ✗ rollout · no findings · -v for details"


def test_compact_tree_keeps_working():
    text = _text(_report([_attn(0)]), terminal=True, tree=True)
    assert "module tree" in text and "✗ 2 Block HD201" in text
    assert text.splitlines()[-1].startswith("✗ Grad-CAM  ✗ rollout · 1 error")


def test_report_draws_itself_compact_on_a_terminal_and_in_full_elsewhere():
    report = _report(_mixed_findings())
    on_screen, piped = io.StringIO(), io.StringIO()
    Console(file=on_screen, width=100, color_system=None, force_terminal=True).print(report)
    Console(file=piped, width=100, color_system=None, force_terminal=False).print(report)
    assert on_screen.getvalue().splitlines()[-1].endswith("-v for details")
    assert "cause `blocks.{0..5}.norm` needs care." in piped.getvalue()
    assert "needs care" not in on_screen.getvalue()
