"""The terminal report: a verdict per method, the findings, the spec to paste.

Shaped like ``flutter doctor`` and ``rustc``: one ``[✓]`` / ``[!]`` / ``[✗]`` line per
requested method (and per ``--layer``), then the findings grouped by family, each with
its code, layer, cause, fix and an ``hookdoctor explain CODE`` pointer, then the
syntax-highlighted spec. Findings repeated over a stack of blocks are collapsed by
structure (``blocks.{0..11}.attn``).

Two levels of detail. On a terminal the report is compact, so that it fits a screen and
the verdict is both the first and the last thing read: errors and warnings in full, info
findings one line each, the spec, and a closing summary line (as ``ruff`` ends). With
``verbose`` (``-v``), and whenever the output is not a terminal (pipes, files, CI logs,
where nobody scrolls and grep wants everything), every finding is shown in full and the
environment closes the report.

Everything here yields rich renderables; rich itself decides on colour (off for pipes,
files and ``NO_COLOR``), so the same code gives the plain-text report.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.rule import Rule
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from hookdoctor import codes
from hookdoctor.errors import MethodUnsupportedError

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult

    from hookdoctor.render.summary import ModelSummary
    from hookdoctor.report import Diagnostic, LayerVerdict, Report

METHOD_TITLES = {"gradcam": "Grad-CAM", "rollout": "attention rollout"}
# The closing summary line is read at a glance, so it uses the short names.
SHORT_TITLES = {"gradcam": "Grad-CAM", "rollout": "rollout"}
SEVERITY_STYLES = {"error": "bold red", "warning": "bold yellow", "info": "bold cyan"}
# rustc calls its informational diagnostics "note"; hookdoctor keeps the registry's word.
MARKS = {"ok": ("[✓]", "bold green"), "warn": ("[!]", "bold yellow"), "fail": ("[✗]", "bold red")}
_CODE_THEME = "ansi_dark"


def render_report(
    report: Report,
    console: Console | None = None,
    *,
    backend: str = "pytorch-grad-cam",
    cam_method: str = "GradCAM",
    tree: bool = False,
    model_summary: ModelSummary | None = None,
    source: str | None = None,
    verbose: bool = False,
    preview: Any = None,
) -> Iterator[RenderableType]:
    """Yield the report's sections in reading order.

    The report is compact when ``console`` writes to a terminal and ``verbose`` is False;
    otherwise (``-v``, a pipe, a file, no console given) every finding is shown in full.
    ``preview``, the spec's Grad-CAM map ``[H, W]`` (the report keeps no tensor, so the
    caller computes it), is drawn in block characters beside the verdict lines.
    """
    full = full_detail(console, verbose=verbose)
    header = _header(report, source) if full else _FittedHeader(_header(report, source), _header(report, None))
    if preview is not None and report.gradcam is not None:
        yield _beside_preview(report, header, preview)
        if full:
            yield Text()  # the full report keeps its blank line; the compact one gets it from the preview
    else:
        yield header
        yield _verdicts(report)
    if report.structure_only:
        yield from _structure_only_section(report, full=full)
    if full:
        findings = list(_findings(report))
        if findings:
            if preview is None or report.gradcam is None:
                yield Text()
            yield from findings
        yield from _specs(report, backend, cam_method, full=True)
        if tree:
            yield Text()
            yield from _tree_section(report, model_summary)
        yield Text()
        yield environment_block(report.environment)
        return
    # Compact: the verdicts, then ruled sections with no blank lines between them (each rule
    # already separates), then the closing line. The seed ViT fits in 40 lines this way.
    sections = [*_compact_findings(report), *_specs(report, backend, cam_method, full=False)]
    if tree:
        sections.extend(_tree_section(report, model_summary))
    if sections:
        if preview is None or report.gradcam is None:  # the preview's last line is the blank line
            yield Text()
        yield from sections
    yield Text()
    yield closing_line(report)


def _tree_section(report: Report, model_summary: ModelSummary | None) -> Iterator[RenderableType]:
    yield Rule("module tree", align="left", style="dim")
    yield module_tree(report.model_class, report.layers)
    if model_summary is not None:
        yield Text()
        yield summary_table(model_summary)


def full_detail(console: Console | None, *, verbose: bool = False) -> bool:
    """Whether the report is shown in full: asked for, or not read on a screen.

    A terminal gets the compact report; output that is not a terminal (a pipe, a file, a CI
    log, Jupyter) keeps every detail, since nobody scrolls there and grep wants it all.
    """
    return verbose or console is None or not console.is_terminal


# --- header and verdicts ------------------------------------------------------------------------


def _header(report: Report, source: str | None) -> Text:
    text = Text()
    text.append(report.model_class, style="bold")
    if source:
        text.append(f" ({source})")
    text.append(f" · input {'×'.join(str(s) for s in report.input_shape)}")
    if report.task != "classification":
        text.append(f" · task {report.task}")
    if report.target is not None:
        what = {"embedding": "similarity column", "detection": "detection"}.get(report.task, "class")
        text.append(f" · explaining {what} {report.target}")
    if report.structure_only:
        text.append(" · structure only (meta device)", style="bold yellow")
    return text


def _structure_only_section(report: Report, *, full: bool) -> Iterator[RenderableType]:
    """What a structure-only pass could not check, and what a full run would add (one line)."""
    yield Text()
    if full:
        yield Text("Not run (they need values; structure only, specs unverified):", style="bold yellow")
        for check in report.not_run:
            yield Text(f"  - {check}")
    else:
        yield Text(
            f"{len(report.not_run)} checks that need values were not run; the specs are unverified.",
            style="bold yellow",
        )
    yield Text(report.full_run_adds or "", style="dim")


@dataclass(frozen=True)
class _FittedHeader:
    """The compact header stays on one line: where it would wrap, the model's source (which the
    user has just typed) is left out, never the input shape or the class explained."""

    with_source: Text
    without_source: Text

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.with_source if self.with_source.cell_len <= options.max_width else self.without_source


def _beside_preview(report: Report, header: RenderableType, heatmap: Any) -> Table:
    """Header, verdicts and a caption on the left; the spec's map in four lines on the right."""
    from hookdoctor.render.preview import LINES, HeatPreview

    preview = HeatPreview(heatmap)
    assert report.gradcam is not None
    lines = 1 + len(report.methods) + len(report.layer_verdicts)
    caption = Text(f"the spec's Grad-CAM on the example input (class {report.target}) ▸", style="dim")
    caption.no_wrap, caption.overflow = True, "ellipsis"
    # The caption goes on the last line beside the map, so the block is as tall as before.
    left = Group(header, _verdicts(report), *[Text()] * max(0, LINES - lines - 1), caption)
    table = Table.grid(padding=(0, 2), expand=True)
    table.add_column(ratio=1, overflow="ellipsis", no_wrap=True)
    table.add_column(width=preview.width, no_wrap=True)
    table.add_row(left, preview)
    return table


def _verdicts(report: Report) -> Group:
    """One line per check, as in flutter doctor; the findings below say it in full."""
    rows: list[tuple[str, str, Text]] = []
    for method in report.methods:
        spec = report.gradcam if method == "gradcam" else report.rollout
        title = METHOD_TITLES.get(method, method)
        mine = [d for d in report.diagnostics if d.method == method]
        if spec is None:
            general = [d for d in report.diagnostics if d.method is None]
            reason = _first(mine, "error") or _first(general, "error")
            rows.append(("fail", title, _reason_text(reason) if reason else Text("no working spec")))
        else:
            rows.append((_method_state(report, method), title, _spec_summary(spec)))
    for name, verdict in report.layer_verdicts.items():
        rows.append(_layer_verdict_row(name, verdict))
    width = max((len(title) for _, title, _ in rows), default=0)
    lines = []
    for state, title, detail in rows:
        symbol, style = MARKS[state]
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append(symbol, style=style)
        line.append(" ")
        line.append(title.ljust(width), style="bold")
        line.append(" ")
        line.append_text(detail)
        lines.append(line)
    return Group(*lines)


def _method_state(report: Report, method: str) -> str:
    """``fail`` without a spec, ``warn`` with a spec and a warning about the method, else ``ok``."""
    spec = report.gradcam if method == "gradcam" else report.rollout
    if spec is None:
        return "fail"
    return "warn" if any(d.method == method and d.severity == "warning" for d in report.diagnostics) else "ok"


def _layer_verdict_row(name: str, verdict: LayerVerdict) -> tuple[str, str, Text]:
    title = f"layer {name}"
    if verdict.usable:
        detail = Text("usable as a Grad-CAM target")
        if verdict.layout:
            detail.append(f" ({_layout_words(verdict.layout, verdict.grid, verdict.prefix_tokens)})")
        return "ok", title, detail
    reason = _first(verdict.diagnostics, "error") or (verdict.diagnostics[0] if verdict.diagnostics else None)
    detail = _reason_text(reason) if reason else Text("not usable")
    if verdict.suggestions:
        detail = Text(f"did you mean {', '.join(verdict.suggestions)}? ").append_text(detail)
    return "fail", title, detail


def _first(diagnostics: Iterable[Diagnostic], severity: str) -> Diagnostic | None:
    return next((d for d in diagnostics if d.severity == severity), None)


def _reason_text(diagnostic: Diagnostic) -> Text:
    text = Text(f"{diagnostic.code} ", style=SEVERITY_STYLES[diagnostic.severity])
    text.append(codes.get(diagnostic.code).title)
    return text


def _spec_summary(spec: Any) -> Text:
    """One line: the layer (or layers) and how its output maps onto the image."""
    text = Text()
    layer_name = getattr(spec, "layer_name", None)
    layer_names = getattr(spec, "layer_names", None)
    if layer_name:
        text.append(layer_name, style="bold")
    elif layer_names:
        text.append(
            collapse_names(list(layer_names))[0]
            if len(collapse_names(list(layer_names))) == 1
            else f"{len(layer_names)} attention layers",
            style="bold",
        )
    layout = getattr(spec, "layout", None)
    kind = getattr(layout, "kind", None)
    prefix = getattr(spec, "prefix_tokens", getattr(layout, "prefix_tokens", None))
    words = _layout_words(kind, getattr(spec, "grid", None), prefix)
    if words:
        text.append(f" · {words}")
    return text


def _layout_words(kind: str | None, grid: Sequence[int] | None, prefix: int | None) -> str:
    parts = [kind] if kind else []
    if grid:
        parts.append(f"{'×'.join(str(g) for g in grid)} grid")
    if prefix:
        parts.append(f"{prefix} prefix token{'s' if prefix != 1 else ''}")
    return ", ".join(parts)


# --- findings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """Diagnostics that differ only by the block they were found in, shown once."""

    code: str
    severity: str
    layers: tuple[str, ...]
    message: str
    fix: str

    @property
    def where(self) -> str | None:
        return ", ".join(collapse_names(list(self.layers))) if self.layers else None


def _all_diagnostics(report: Report) -> list[Diagnostic]:
    """The report's findings, with the verdict on a layer the user named replacing any general
    finding of the same code on that layer (the user asked about it; say it once)."""
    verdicts = [d for v in report.layer_verdicts.values() for d in v.diagnostics]
    asked = {(d.code, d.layer) for d in verdicts}
    general = [d for d in report.diagnostics if (d.code, d.layer) not in asked]
    seen = {(d.code, d.layer, d.message) for d in general}
    return general + [d for d in verdicts if (d.code, d.layer, d.message) not in seen]


def group_findings(diagnostics: Sequence[Diagnostic]) -> list[Finding]:
    """Collapse diagnostics with the same code, message and fix once their layer's indices are masked."""
    groups: dict[tuple[str, ...], list[Diagnostic]] = {}
    for d in diagnostics:
        groups.setdefault(_structure_key(d), []).append(d)
    findings = []
    for members in groups.values():
        first = members[0]
        layers = tuple(dict.fromkeys(d.layer for d in members if d.layer))
        where = ", ".join(collapse_names(list(layers))) if layers else None
        message, fix = first.message, first.fix
        if len(layers) > 1 and where is not None and first.layer:
            message, fix = message.replace(first.layer, where), fix.replace(first.layer, where)
        findings.append(Finding(first.code, first.severity, layers, message, fix))
    return findings


def _structure_key(d: Diagnostic) -> tuple[str, ...]:
    if not d.layer:
        return (d.code, d.severity, "", d.message, d.fix)
    masked = _mask_indices(d.layer)
    return (d.code, d.severity, masked, d.message.replace(d.layer, "\0"), d.fix.replace(d.layer, "\0"))


def _mask_indices(name: str) -> str:
    return ".".join("#" if part.isdigit() else part for part in name.split("."))


def collapse_names(names: list[str]) -> list[str]:
    """``blocks.0.attn`` ... ``blocks.11.attn`` -> ``["blocks.{0..11}.attn"]``.

    Names collapse into one pattern only when they are exactly the product of the indices
    that vary, so a pattern never claims a layer that is not in the list.
    """
    names = list(dict.fromkeys(names))
    if len(names) <= 1:
        return names
    by_shape: dict[str, list[str]] = {}
    for name in names:
        by_shape.setdefault(_mask_indices(name), []).append(name)
    if len(by_shape) > 1:
        return [pattern for group in by_shape.values() for pattern in collapse_names(group)]
    parts = [name.split(".") for name in names]
    varying = [i for i in range(len(parts[0])) if len({p[i] for p in parts}) > 1]
    values = {i: sorted({int(p[i]) for p in parts}) for i in varying}
    product = 1
    for i in varying:
        product *= len(values[i])
    if product == len(names):
        template = list(parts[0])
        for i in varying:
            template[i] = "{" + _index_set(values[i]) + "}"
        return [".".join(template)]
    # Ragged (stage 0 has 2 blocks, stage 1 has 6): split on the first varying index and retry.
    first = varying[0]
    split: dict[str, list[str]] = {}
    for name, p in zip(names, parts, strict=True):
        split.setdefault(p[first], []).append(name)
    return [pattern for group in split.values() for pattern in collapse_names(group)]


def _index_set(values: list[int]) -> str:
    """[0, 1, 2, 3, 7] -> '0..3,7'."""
    runs: list[str] = []
    start = prev = values[0]
    for v in values[1:] + [None]:  # type: ignore[list-item]
        if v is not None and v == prev + 1:
            prev = v
            continue
        runs.append(
            f"{start}..{prev}" if prev - start >= 2 else ",".join(str(x) for x in range(start, prev + 1))
        )
        if v is not None:
            start = prev = v
    return ",".join(runs)


def _findings(report: Report) -> Iterator[RenderableType]:
    yield from _findings_by_family(group_findings(_all_diagnostics(report)))


def _findings_by_family(findings: Sequence[Finding], *, compact: bool = False) -> Iterator[RenderableType]:
    """Each finding in full, most severe first, under a rule naming its family (``compact``: see
    ``render_finding``)."""
    by_family: dict[str, list[Finding]] = {}
    for f in sorted(findings, key=lambda f: (codes.SEVERITY_ORDER[f.severity], f.code)):
        by_family.setdefault(codes.get(f.code).family, []).append(f)
    for family, members in by_family.items():
        yield Rule(family, align="left", style="dim")
        for finding in members:
            yield render_finding(finding, compact=compact)


def _compact_findings(report: Report) -> Iterator[RenderableType]:
    """Errors and warnings in full (they need action), info findings one line each (they don't)."""
    findings = group_findings(_all_diagnostics(report))
    serious = [f for f in findings if f.severity != "info"]
    notes = sorted((f for f in findings if f.severity == "info"), key=lambda f: f.code)
    yield from _findings_by_family(serious, compact=True)
    if notes:
        yield Rule("notes · -v shows why", align="left", style="dim")
        yield note_lines(notes)


_NOTE_LAYER_WIDTH = 40  # longer layer names push their own title right rather than every title


def note_lines(notes: Sequence[Finding]) -> Group:
    """One line per info finding: code, layer, title. The line is cut at the screen's edge
    (the title ends in "…"), never wrapped, so each note costs exactly one line."""
    width = min(max((len(n.where or "") for n in notes), default=0), _NOTE_LAYER_WIDTH)
    lines = []
    for note in notes:
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append(f"{note.severity}[{note.code}]", style=SEVERITY_STYLES[note.severity])
        if width:
            line.append(" ")
            line.append((note.where or "").ljust(width), style="bold")
        line.append(f" {codes.get(note.code).title}")
        lines.append(line)
    return Group(*lines)


def closing_line(report: Report) -> Text:
    """The last line, as ruff ends: each verdict again, the counts, and where the details are."""
    text = Text()
    marks = [(_method_state(report, m), SHORT_TITLES.get(m, m)) for m in report.methods]
    for name, verdict in report.layer_verdicts.items():
        marks.append(("ok" if verdict.usable else "fail", f"layer {name}"))
    for i, (state, title) in enumerate(marks):
        symbol, style = MARKS[state]
        text.append("  " if i else "")
        text.append(symbol.strip("[]"), style=style)
        text.append(f" {title}", style="bold")
    findings = group_findings(_all_diagnostics(report))
    counts = [
        _count(sum(f.severity == severity for f in findings), word)
        for severity, word in (("error", "error"), ("warning", "warning"), ("info", "note"))
    ]
    text.append(" · " + (", ".join(c for c in counts if c) or "no findings"))
    pointer = "hookdoctor explain CODE or -v for details" if findings else "-v for details"
    text.append(f" · {pointer}", style="dim")
    return text


def _count(number: int, word: str) -> str:
    return f"{number} {word}{'s' if number != 1 else ''}" if number else ""


def render_finding(finding: Finding, *, compact: bool = False) -> RenderableType:
    """rustc style: ``error[HD201]: title``, ``--> layer``, then cause, fix and the pointer.

    ``compact`` leaves out the ``-->`` line when the cause already names the layer, so the
    compact report says everything once.
    """
    head = Text()
    head.append(f"{finding.severity}[{finding.code}]", style=SEVERITY_STYLES[finding.severity])
    head.append(f": {codes.get(finding.code).title}", style="bold")
    body = Table.grid(padding=(0, 1))
    body.add_column(no_wrap=True, style="dim", justify="right")
    body.add_column()
    if finding.where and not (compact and _names_layer(finding.message, finding.where)):
        body.add_row("-->", Text(finding.where, style="bold"))
    body.add_row("cause", Text(finding.message))
    body.add_row("fix", Text(finding.fix))
    body.add_row("see", Text(f"hookdoctor explain {finding.code}", style="italic"))
    indented = Table.grid(padding=(0, 0, 0, 2))
    indented.add_column()
    indented.add_row(body)
    return Group(head, indented)


def _names_layer(message: str, where: str) -> bool:
    """Whether the message names the layer: quoted (`head`), or a dotted name standing alone.

    A bare word such as "head" or "norm" may just be English, so it needs the quotes.
    """
    if f"`{where}`" in message:
        return True
    return "." in where and re.search(rf"(?<![\w.]){re.escape(where)}(?![\w.]*\w)", message) is not None


# --- specs --------------------------------------------------------------------------------------


def _specs(report: Report, backend: str, cam_method: str = "GradCAM", *, full: bool) -> Iterator[RenderableType]:
    if "gradcam" in report.methods and report.gradcam is not None:
        title = "Grad-CAM" if cam_method == "GradCAM" else cam_method
        if full:
            yield Text()
        try:
            snippet = report.gradcam.code(backend, method=cam_method)
        except MethodUnsupportedError as refusal:
            # The layer works for Grad-CAM; only the method asked for cannot, and the report says
            # why - in the compact report too, since it replaces the snippet that was asked for.
            yield Rule(f"{title} spec for {backend} — not possible on this layer", align="left", style="red")
            yield Text(f"{refusal.code} {refusal}")
        else:
            yield Rule(f"{title} spec for {backend} — paste this", align="left", style="green")
            yield _code(snippet)
    if "rollout" in report.methods and report.rollout is not None:
        # The compact report keeps the capture-and-rollout form; -v adds capturing during
        # the user's own forward pass.
        if full:
            yield Text()
        yield Rule("attention rollout spec — paste this", align="left", style="green")
        yield _code(report.rollout.code(own_forward=full))


class CodeText(Text):
    """A snippet to paste: print it with ``soft_wrap=True`` so it is neither wrapped nor cropped."""


def _code(source: str) -> CodeText:
    highlighted = Syntax(source, "python", theme=_CODE_THEME).highlight(source.rstrip("\n"))
    code = CodeText(no_wrap=True, overflow="ignore")
    code.append_text(highlighted)
    code.rstrip()
    return code


# --- tree, summary, environment -----------------------------------------------------------------


@dataclass
class _TreeNode:
    short: str
    layer: LayerVerdict | None
    children: list[_TreeNode]

    def signature(self) -> tuple[Any, ...]:
        """What the node shows, its own index aside: equal signatures collapse into one line."""
        label = _tree_label(self.layer, "").plain if self.layer else ""
        own = label.replace(f" {self.short} ", " # ", 1) if self.short.isdigit() else label
        return (own, tuple(c.signature() for c in self.children))


def module_tree(model_class: str, layers: Sequence[LayerVerdict]) -> Tree:
    """The module tree with each layer's type, layout, grid and verdict.

    Identical consecutive blocks (same types, layouts and verdicts all the way down) are shown
    once as ``{0..4}``, so a 24-block model fits on a screen.
    """
    root = _TreeNode("", None, [])
    nodes: dict[str, _TreeNode] = {"": root}
    for layer in layers:
        parent = layer.name.rpartition(".")[0]
        while parent and parent not in nodes:
            parent = parent.rpartition(".")[0]
        short = layer.name[len(parent) + 1 :] if parent else layer.name
        node = _TreeNode(short, layer, [])
        nodes[parent].children.append(node)
        nodes[layer.name] = node
    tree = Tree(Text(model_class, style="bold"), guide_style="dim")
    _add_children(tree, root.children)
    return tree


def _add_children(tree: Tree, children: list[_TreeNode]) -> None:
    i = 0
    while i < len(children):
        node = children[i]
        run = [node]
        if node.short.isdigit():
            while (
                i + len(run) < len(children)
                and children[i + len(run)].short.isdigit()
                and children[i + len(run)].signature() == node.signature()
            ):
                run.append(children[i + len(run)])
        short = node.short if len(run) == 1 else "{" + _index_set([int(n.short) for n in run]) + "}"
        assert node.layer is not None
        branch = tree.add(_tree_label(node.layer, short_override=short))
        _add_children(branch, node.children)
        i += len(run)


def _tree_label(layer: LayerVerdict, parent: str = "", *, short_override: str | None = None) -> Text:
    short = (
        short_override
        if short_override is not None
        else (layer.name[len(parent) + 1 :] if parent else layer.name.rpartition(".")[2])
    )
    text = Text()
    if layer.holds_only:
        text.append("· ", style="dim")
    elif layer.usable:
        text.append("✓ ", style="green")
    else:
        text.append("✗ ", style="red")
    text.append(short, style="bold")
    text.append(f" {layer.type}", style="dim")
    layout = _layout_words(layer.layout, layer.grid, None) if layer.usable else ""
    if layout:
        text.append(f" {layout}")
    if layer.calls != 1:
        text.append(f" called {layer.calls}×", style="yellow")
    if layer.codes:
        text.append(" " + " ".join(layer.codes), style="yellow")
    return text


def summary_table(summary: ModelSummary) -> Table:
    """Parameters and mult-adds per stage, as counted by torchinfo."""
    table = Table(
        title="parameters and mult-adds per stage (torchinfo)",
        title_justify="left",
        box=None,
        header_style="bold",
        pad_edge=False,
    )
    table.add_column("stage")
    table.add_column("type")
    table.add_column("output", justify="right")
    table.add_column("params", justify="right")
    table.add_column("mult-adds", justify="right")
    for row in summary.rows:
        table.add_row(row.name, row.type, row.output, f"{row.params:,}", _human(row.mult_adds))
    table.add_row(
        Text("total", style="bold"), "", "", f"{summary.total_params:,}", _human(summary.total_mult_adds)
    )
    return table


def _human(count: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return str(count)


_PACKAGES = ("torch", "transformers", "timm", "torchvision", "python")


def environment_block(environment: dict[str, Any]) -> Text:
    """Versions on one line, attention settings on the next; packages that are absent are skipped."""
    text = Text()
    text.append("environment ", style="bold")
    versions = [f"{name} {environment[name]}" for name in _PACKAGES if environment.get(name)]
    text.append(" · ".join(versions))
    rest = {k: v for k, v in environment.items() if k not in _PACKAGES and v not in (None, {}, [])}
    implementation = rest.pop("attn_implementation", None)
    fused = rest.pop("fused_attention", None)
    attention = []
    if implementation:
        attention.append(f"attention implementation {_env_value(implementation)}")
    if fused:
        attention.append(f"fused-attention switches {_env_value(fused)}")
    attention.extend(f"{key} {_env_value(value)}" for key, value in rest.items())
    if attention:
        text.append("\n            " + " · ".join(attention))
    return text


def _env_value(value: Any) -> str:
    if isinstance(value, dict):
        # counts (fused_attn switches per module class) read as "Attention.fused_attn=True ×12"
        return ", ".join(f"{k} ×{v}" if type(v) is int else f"{k}: {v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)
