"""The command line: argument parsing, wiring and exit codes; the work happens elsewhere.

    hookdoctor inspect MODEL [--input-shape 1,3,224,224] [--method gradcam|rollout|all]
                             [--layer NAME] [--json] [--strict] [--tree] ...
    hookdoctor explain CODE
    hookdoctor codes [--json]

Exit codes (API.md): 0 every requested method has a working spec (and --layer is usable);
1 one does not (with --strict, also when there are warnings); 2 the model could not be
loaded or run, or the arguments are wrong. Errors are one paragraph, never a traceback
unless --debug.

torch is imported only by ``inspect``: ``--help``, ``explain`` and ``codes`` stay fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from hookdoctor import __version__
from hookdoctor.errors import HookdoctorError, InputError

if TYPE_CHECKING:
    from rich.console import Console

    from hookdoctor.report import Report

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

METHODS = ("gradcam", "rollout")
BACKENDS = ("pytorch-grad-cam", "captum")

_DESCRIPTION = (
    "Find out why Grad-CAM and attention rollout fail on a vision model, and get a hook spec that works."
)
_MODEL_HELP = (
    "torchvision:NAME, timm:NAME, hf:ID, a folder with an HF config.json, path/to/file.py:FACTORY, "
    "package.module:FACTORY, or a .pt file"
)
_EPILOG = """\
exit codes:
  0  every requested method has a working spec (and --layer, when given, is usable)
  1  one does not (with --strict, warnings count too)
  2  the model could not be loaded or run, or the arguments are wrong

examples:
  hookdoctor inspect fixtures/report_vit
  hookdoctor inspect torchvision:resnet50 --method gradcam --layer layer4
  hookdoctor inspect timm:vit_small_patch16_224 --json --strict
  hookdoctor explain HD201
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hookdoctor",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hookdoctor {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    inspect = commands.add_parser(
        "inspect",
        help="judge a model's Grad-CAM and attention-rollout hooks and print a working spec",
        description="Judge a model's Grad-CAM and attention-rollout hooks and print a working spec.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inspect.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    inspect.add_argument(
        "--input-shape",
        metavar="B,C,H,W",
        type=_parse_shape,
        help="shape of the random example input: B,C,H,W (images), B,C,T,H,W (video), B,T,F or B,C,L "
        "(audio, signals) (default: inferred from the model)",
    )
    inspect.add_argument(
        "--method",
        metavar="METHOD",
        action="append",
        type=_parse_methods,
        help="gradcam, rollout or all (default: all); repeat or comma-separate for several",
    )
    inspect.add_argument(
        "--layer", metavar="NAME", help="a layer (dotted module name) to judge as a Grad-CAM target"
    )
    inspect.add_argument(
        "--target", metavar="CLASS", type=int, help="class index to explain (default: top class)"
    )
    inspect.add_argument(
        "--output",
        metavar="KEY",
        type=_parse_output,
        help="the score to explain when the model returns several: a field/key name or a tuple index",
    )
    inspect.add_argument(
        "--json", action="store_true", help="print report.to_dict() as JSON on stdout, nothing else"
    )
    inspect.add_argument("--strict", action="store_true", help="count warnings as failures (exit 1)")
    inspect.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="on a terminal too, show every finding in full and the environment (output that is "
        "not a terminal always gets the full report)",
    )
    inspect.add_argument(
        "--tree",
        action="store_true",
        help="add the module tree with each layer's layout and verdict, and a torchinfo summary",
    )
    inspect.add_argument(
        "--backend",
        choices=BACKENDS,
        default=BACKENDS[0],
        help="library the pasted spec is written for (default: pytorch-grad-cam)",
    )
    loading = inspect.add_argument_group("loading")
    loading.add_argument(
        "--pretrained",
        action="store_true",
        help="load trained weights from the local cache (default: random weights)",
    )
    loading.add_argument(
        "--allow-download",
        action="store_true",
        help="let timm / transformers / torchvision download configs and weights",
    )
    loading.add_argument(
        "--trust-pickle",
        action="store_true",
        help="unpickle a whole nn.Module from a .pt file (runs code from the file)",
    )
    loading.add_argument(
        "--trust-remote-code", action="store_true", help="run a Hugging Face repository's own model code"
    )
    inspect.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    inspect.set_defaults(handler=_run_inspect)

    explain = commands.add_parser(
        "explain",
        help="print the long explanation of a diagnostic code",
        description="Print the long explanation of a diagnostic code.",
    )
    explain.add_argument("code", metavar="CODE", help="a diagnostic code, e.g. HD201")
    explain.add_argument("--json", action="store_true", help="print the code's registry entry as JSON")
    explain.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    explain.set_defaults(handler=_run_explain)

    codes = commands.add_parser(
        "codes", help="list every diagnostic code", description="List every diagnostic code."
    )
    codes.add_argument("--json", action="store_true", help="print the registry as a JSON list")
    codes.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    codes.set_defaults(handler=_run_codes)
    return parser


def _parse_shape(text: str) -> tuple[int, ...]:
    parts = [p for p in text.replace("x", ",").replace(" ", "").split(",") if p]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) not in (3, 4, 5) or any(s <= 0 for s in shape):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not three, four or five positive sizes: B,C,H,W for images (like 1,3,224,224), "
            "B,C,T,H,W for video, B,T,F or B,C,L for audio and signals"
        )
    return shape


def _parse_output(text: str) -> str | int:
    """A tuple index when it is a whole number, else a field or key name."""
    return int(text) if text.lstrip("-").isdigit() else text


def _parse_methods(text: str) -> tuple[str, ...]:
    chosen: list[str] = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        if part == "all":
            chosen.extend(METHODS)
        elif part in METHODS:
            chosen.append(part)
        else:
            raise argparse.ArgumentTypeError(f"unknown method {part!r}; choose gradcam, rollout or all")
    return tuple(chosen)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("hookdoctor: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except HookdoctorError as exc:
        if args.debug:
            raise
        _print_error(str(exc))
        return EXIT_ERROR
    except Exception as exc:  # a bug in hookdoctor (or a library) still gets one paragraph, not a traceback
        if args.debug:
            raise
        _print_error(
            f"hookdoctor failed unexpectedly ({type(exc).__name__}: {_first_line(exc)}). This is a bug in "
            "hookdoctor or in a library it calls, not in your command; rerun with --debug for the traceback "
            "and report it with the MODEL you used."
        )
        return EXIT_ERROR


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else "no message"


def _print_error(message: str) -> None:
    from rich.text import Text

    # A Text, not markup: messages quote shapes like [B, C, H, W] that markup would eat.
    _console(sys.stderr).print(Text.assemble(("error: ", "bold red"), message))


def _console(file: TextIO, *, width: int | None = None) -> Console:
    from rich.console import Console

    # rich follows NO_COLOR and TERM=dumb itself; a pipe or file gets plain text.
    return Console(file=file, width=width, highlight=False)


# --- explain / codes ----------------------------------------------------------------------------


def _run_explain(args: argparse.Namespace) -> int:
    from hookdoctor import codes

    entry = codes.get(args.code)  # UnknownCodeError (exit 2) with close matches
    if args.json:
        print(json.dumps(entry.to_dict(), indent=2))
    else:
        sys.stdout.write(codes.explain(entry.code))
    return EXIT_OK


def _run_codes(args: argparse.Namespace) -> int:
    from hookdoctor import codes

    entries = list(codes.REGISTRY.values())
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
        return EXIT_OK
    from rich.table import Table

    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    for column in ("code", "severity", "family", "name", "title"):
        table.add_column(column, overflow="fold")
    for e in entries:
        table.add_row(e.code, e.severity, e.family, e.name, e.title)
    console = _console(sys.stdout)
    console.print(table)
    console.print("Run `hookdoctor explain CODE` for what a code means and what to do.")
    return EXIT_OK


# --- inspect ------------------------------------------------------------------------------------


def _run_inspect(args: argparse.Namespace) -> int:
    methods = _methods(args.method)
    if args.layer is not None and "gradcam" not in methods:
        raise InputError(
            "--layer judges a Grad-CAM target, but --method leaves Grad-CAM out; add --method gradcam "
            "(or drop --layer)."
        )
    stdout = sys.stdout
    with _quiet_libraries(args.debug), contextlib.redirect_stdout(sys.stderr):
        # Anything the model's own code prints goes to stderr: stdout holds only the report.
        report, model = _load_and_inspect(args, methods)
        summary = _model_summary(model, report) if args.tree and not args.json else None

    if args.json:
        stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        from hookdoctor.render.terminal import CodeText, render_report

        console = _console(stdout)
        for renderable in render_report(
            report,
            console=console,
            backend=args.backend,
            tree=args.tree,
            model_summary=summary,
            source=args.model,
            verbose=args.verbose,
        ):
            # Code to paste keeps its lines whole on a narrow terminal.
            console.print(renderable, soft_wrap=isinstance(renderable, CodeText))
    return exit_code(report, strict=args.strict)


def exit_code(report: Report, *, strict: bool = False) -> int:
    """0 when every requested method has a working spec (and --layer is usable); 1 otherwise."""
    if not report.ok:
        return EXIT_FAILED
    if strict and report.warnings():
        return EXIT_FAILED
    return EXIT_OK


def _methods(chosen: list[tuple[str, ...]] | None) -> tuple[str, ...]:
    if not chosen:
        return METHODS
    flat = [m for group in chosen for m in group]
    return tuple(m for m in METHODS if m in flat)  # canonical order, no repeats


def _load_and_inspect(args: argparse.Namespace, methods: tuple[str, ...]) -> tuple[Report, Any]:
    from hookdoctor.model.loading import LoadOptions, load_model
    from hookdoctor.render.progress import progress

    options = LoadOptions(
        pretrained=args.pretrained,
        allow_download=args.allow_download,
        trust_pickle=args.trust_pickle,
        trust_remote_code=args.trust_remote_code,
    )
    with progress(f"Building {args.model}"):
        loaded = load_model(args.model, options)
    import hookdoctor

    input_shape = args.input_shape or loaded.input_shape
    # The inputs a factory returned beside its model, unless --input-shape asks for another one.
    example_input = loaded.example_input if args.input_shape is None else None
    with progress(f"Probing {type(loaded.model).__name__} (one forward and backward pass)"):
        report = hookdoctor.inspect(
            loaded.model,
            example_input,
            input_shape=None if example_input is not None else input_shape,
            target=args.target,
            output=args.output,
            methods=methods,
            layer=args.layer,
        )
    return report, loaded.model


def _model_summary(model: Any, report: Report) -> Any:
    from hookdoctor.render.progress import progress
    from hookdoctor.render.summary import summarize_model

    with progress("Counting parameters and mult-adds (torchinfo)"):
        return summarize_model(model, report.input_shape)


@contextlib.contextmanager
def _quiet_libraries(debug: bool) -> Iterator[None]:
    """Turn transformers', timm's and torch's loggers down to errors unless --debug.

    Their info and warning logs ("weights not initialized", deprecation notes) say nothing about
    hooks and would bury the report. Python warnings are left alone: they go to stderr, like every
    log line, so stdout holds only the report or the JSON.
    """
    if debug:
        yield
        return
    names = ("transformers", "timm", "torch", "huggingface_hub")
    levels = {n: logging.getLogger(n).level for n in names}
    # transformers sets its logger's level from this variable when it is first imported.
    previous_verbosity = os.environ.get("TRANSFORMERS_VERBOSITY")
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
        if previous_verbosity is None:
            os.environ.pop("TRANSFORMERS_VERBOSITY", None)
        else:
            os.environ["TRANSFORMERS_VERBOSITY"] = previous_verbosity


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
