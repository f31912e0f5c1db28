"""Each code owns its message and fix templates; call sites pass fields, never sentences.

The call sites are read from the source (an ast scan of ``hookdoctor/``): a call whose
first argument is a code literal (``Diagnostic.of("HD102", ...)``, ``j.add("HD102", ...)``,
``TaskRefusal("HD013", ...)``) must name a variant the code has and pass every field that
variant reads, and nothing the code's templates do not read.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hookdoctor.codes import REGISTRY, Code, Diagnostic, Template

PACKAGE = Path(__file__).resolve().parents[1] / "hookdoctor"

# Temporary: checks/recommend.py was split into these modules, and their call sites still write
# their sentences. Whoever converts them to the templates in codes/ removes the entries.
LITERAL_TEXT_ALLOWED = {"checks/recommend.py", "checks/notes.py", "checks/pitfalls.py", "checks/score.py"}

# Functions that take a code and its fields, and the fields each passes on its own.
_CODED_CALLS: dict[str, frozenset[str]] = {
    "of": frozenset(),  # Diagnostic.of: ``layer=`` is a field when given
    "add": frozenset({"layer"}),  # Judgement.add: the judgement's layer
    "note": frozenset({"layer", "h", "w"}),  # layout_notes: the layer and its grid
    "TaskRefusal": frozenset(),
    "_unsupported": frozenset(),  # cam_family's MethodUnsupportedError from a template
}
_NOT_FIELDS = {"method", "severity", "variant"}
_CODE = re.compile(r"^HD\d{3}$")


@dataclass
class CallSite:
    path: str
    line: int
    code: str
    variants: tuple[str, ...]  # the variants it may name (every variant when the scan cannot tell)
    fields: frozenset[str] | None  # None when it passes **fields

    def __str__(self) -> str:
        return f"{self.path}:{self.line} ({self.code})"


def _name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def _strings(node: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _possible_variants(expr: ast.expr, scope: ast.AST, module: ast.Module) -> set[str]:
    """The string constants a variant expression can take: in it, in the assignments to the name it
    reads within the enclosing function, and in what the module's own functions it calls return."""
    found = _strings(expr)
    exprs = [expr]
    if isinstance(expr, ast.Name):
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == expr.id for t in node.targets
            ):
                exprs.append(node.value)
                found |= _strings(node.value)
    functions = {f.name: f for f in ast.walk(module) if isinstance(f, ast.FunctionDef)}
    for e in exprs:
        for call in (n for n in ast.walk(e) if isinstance(n, ast.Call)):
            called = functions.get(_name(call.func) or "")
            if called is not None:
                for ret in (n for n in ast.walk(called) if isinstance(n, ast.Return) and n.value is not None):
                    found |= _strings(ret.value)  # type: ignore[arg-type]
    return found


def _is_sentence(node: ast.expr) -> bool:
    """A string literal, f-string or concatenation of them that reads as text (it has spaces)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return len(node.value.split()) > 2
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp):
        return _is_sentence(node.left) or _is_sentence(node.right)
    return False


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if not relative.startswith("codes/"):
            yield relative, ast.parse(path.read_text(), filename=str(path))


def _with_scopes(module: ast.Module) -> Iterator[tuple[ast.Call, ast.AST]]:
    """Every call, with the function it is in (the module at top level)."""

    def visit(node: ast.AST, scope: ast.AST) -> Iterator[tuple[ast.Call, ast.AST]]:
        for child in ast.iter_child_nodes(node):
            inner = child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else scope
            if isinstance(child, ast.Call):
                yield child, scope
            yield from visit(child, inner)

    yield from visit(module, module)


def call_sites() -> list[CallSite]:
    sites: list[CallSite] = []
    for path, module in _modules():
        for call, scope in _with_scopes(module):
            name = _name(call.func)
            if name not in _CODED_CALLS or not call.args:
                continue
            first = call.args[0]
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str) and _CODE.match(first.value)):
                continue
            if name == "of" and len(call.args) > 1:
                continue  # writes its own message and fix (LITERAL_TEXT_ALLOWED): no template is read
            code = REGISTRY[first.value]
            keywords = {k.arg: k.value for k in call.keywords}
            variant = keywords.get("variant")
            if variant is None:
                variants: tuple[str, ...] = ("default",)
            else:
                possible = _possible_variants(variant, scope, module) & set(code.templates)
                variants = tuple(sorted(possible or code.templates))
                if isinstance(variant, ast.Constant):
                    variants = (variant.value,)
            fields = None
            if None not in keywords:  # no **fields
                fields = frozenset(k for k in keywords if k not in _NOT_FIELDS) | _CODED_CALLS[name]
            sites.append(CallSite(path, call.lineno, code.code, variants, fields))
    return sites


SITES = call_sites()


def _dummy(template: Template) -> dict[str, object]:
    return dict.fromkeys(template.fields, 1)


def test_the_scan_finds_the_call_sites() -> None:
    assert len(SITES) > 40
    assert {"checks/layers.py", "checks/attention.py", "_inspect.py", "model/tasks.py"} <= {s.path for s in SITES}


@pytest.mark.parametrize(
    ("code", "variant"), [(c.code, v) for c in REGISTRY.values() for v in c.templates], ids=lambda x: str(x)
)
def test_every_template_renders_from_its_fields(code: str, variant: str) -> None:
    template = REGISTRY[code].templates[variant]
    message, fix = REGISTRY[code].render(variant, _dummy(template))
    assert message.strip() and fix.strip()
    assert "{" not in message + fix or "}" not in message + fix, "a placeholder was left unfilled"
    assert message.endswith((".", ")")) or template.message == "{reason}", message


@pytest.mark.parametrize("site", SITES, ids=str)
def test_each_call_site_names_a_variant_its_code_has(site: CallSite) -> None:
    unknown = set(site.variants) - set(REGISTRY[site.code].templates)
    known = sorted(REGISTRY[site.code].templates)
    assert not unknown, f"{site} names variant(s) {sorted(unknown)}; {site.code} has {known}"


@pytest.mark.parametrize("site", [s for s in SITES if s.fields is not None], ids=str)
def test_each_call_site_passes_the_fields_its_templates_read(site: CallSite) -> None:
    assert site.fields is not None
    templates = REGISTRY[site.code].templates
    read = set().union(*(templates[v].fields for v in site.variants))
    for variant in site.variants:
        missing = templates[variant].fields - site.fields
        assert not missing, f"{site}: variant {variant!r} reads {sorted(missing)}, which the call does not pass"
    unread = site.fields - read - _CODED_CALLS["add"] - _CODED_CALLS["note"]
    assert not unread, f"{site} passes {sorted(unread)}, which no variant it may name reads"


def test_no_call_site_outside_codes_writes_a_message() -> None:
    literal = []
    for path, module in _modules():
        if path in LITERAL_TEXT_ALLOWED:
            continue
        for call, _ in _with_scopes(module):
            name = _name(call.func)
            passes_text = name == "of" and len(call.args) > 1  # Diagnostic.of(code, message, fix)
            passes_text |= name == "of" and any(k.arg in ("message", "fix") for k in call.keywords)
            coded = bool(call.args) and isinstance(call.args[0], ast.Constant) and _CODE.match(str(call.args[0].value))
            if coded:
                passes_text |= any(_is_sentence(a) for a in call.args[1:])
                passes_text |= any(_is_sentence(k.value) for k in call.keywords)
            if passes_text:
                literal.append(f"{path}:{call.lineno}")
    assert not literal, f"these call sites write a code's text instead of passing fields: {literal}"


def test_the_allowed_literal_files_still_exist() -> None:
    """The exception list shrinks with the code: an entry whose file is gone, or converted, is stale."""
    for path in LITERAL_TEXT_ALLOWED:
        assert (PACKAGE / path).exists(), f"{path} is gone: remove it from LITERAL_TEXT_ALLOWED"


def test_render_names_a_missing_field() -> None:
    code = Code("HD999", "test", "test", "info", "t", "e", templates={"default": Template("{a} and {b!r}", "{c:>3}")})
    with pytest.raises(ValueError, match=r"HD999 template 'default' needs the field\(s\) b, c \(passed: a\)"):
        code.render("default", {"a": 1})
    with pytest.raises(ValueError, match=r"HD999 has no message template 'other' \(templates: default\)"):
        code.render("other", {"a": 1, "b": 2, "c": 3})
    assert code.render("default", {"a": 1, "b": "x", "c": 2, "unused": 0}) == ("1 and 'x'", "  2")


def test_diagnostic_of_writes_from_the_template() -> None:
    found = Diagnostic.of("HD305", layer="fc", method="gradcam", structure="Tensor[1, 10]")
    assert found.message == "`fc` outputs Tensor[1, 10], which has no spatial grid to draw a map on."
    assert found.fix == "Hook the last layer before global pooling."
    assert found.severity == REGISTRY["HD305"].severity
    with pytest.raises(ValueError, match="HD305 template 'default' needs the field"):
        Diagnostic.of("HD305", layer="fc")
