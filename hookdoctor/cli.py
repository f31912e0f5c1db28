"""The command line: argument parsing, wiring and exit codes; the work happens elsewhere.

    hookdoctor inspect MODEL [--input-shape 1,3,224,224] [--method auto|gradcam|rollout|all]
                             [--layer NAME] [--json] [--strict] [--tree] [--timeout SECONDS] ...
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
import dataclasses
import difflib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from hookdoctor import __version__
from hookdoctor.arguments import AUTO, GRADCAM, METHOD_WORDS, Methods, parse_methods
from hookdoctor.errors import HookdoctorError, InputError, ModelLoadError, ModelRunError, shorten

if TYPE_CHECKING:
    from rich.console import Console

    from hookdoctor.report import Report

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

BACKENDS = ("pytorch-grad-cam", "captum", "torchcam")

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
  hookdoctor inspect fixtures/report_vit --figure maps.png
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
        help="auto (Grad-CAM, plus rollout where the model computes token attention), gradcam, rollout "
        "or all (default: auto); repeat or comma-separate for several",
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
        "--structure-only",
        action="store_true",
        help="build and run the model on the meta device (no weights, no values): for models too large "
        "to run; checks that need values are listed as not run and specs are unverified",
    )
    inspect.add_argument(
        "--device",
        metavar="DEVICE",
        help="run the model there: cpu, cuda, cuda:1, mps (default: cpu)",
    )
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
    pictures = inspect.add_argument_group("pictures (the plot extra)")
    pictures.add_argument(
        "--figure",
        metavar="PATH",
        help="write a PNG of the maps side by side: the layer picked by habit, the spec's layer, the rollout",
    )
    pictures.add_argument(
        "--image",
        metavar="PATH",
        help="explain this picture (resized and normalised as the model states) instead of a random input",
    )
    inspect.add_argument(
        "--backend",
        choices=BACKENDS,
        default=BACKENDS[0],
        help="library the pasted spec is written for (default: pytorch-grad-cam)",
    )
    inspect.add_argument(
        "--cam-method",
        metavar="NAME",
        default="GradCAM",
        help="pytorch-grad-cam class the pasted spec builds, e.g. AblationCAM, ScoreCAM (default: GradCAM)",
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
    inspect.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_parse_timeout,
        help="give up (exit 2) when building and running the model takes longer (default: no limit)",
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
    """The words of one --method; their meaning is the library's (hookdoctor.arguments)."""
    words = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    unknown = [w for w in words if w not in METHOD_WORDS]
    if unknown or not words:
        raise argparse.ArgumentTypeError(
            f"unknown method {(unknown or [text])[0]!r}; choose {', '.join(METHOD_WORDS)}"
        )
    return words


def _parse_timeout(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds, e.g. --timeout 300")
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("hookdoctor: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TimedOut as exc:
        _print_error(str(exc))
        return EXIT_ERROR
    except HookdoctorError as exc:
        if args.debug:
            raise
        _print_error(str(exc))
        return EXIT_ERROR
    except Exception as exc:  # a bug in hookdoctor (or a library) still gets one paragraph, not a traceback
        if args.debug:
            raise
        _print_error(
            f"hookdoctor failed unexpectedly ({type(exc).__name__}: {shorten(_first_line(exc), 500)}). This is a "
            "bug in hookdoctor or in a library it calls, not in your command; rerun with --debug for the traceback "
            "and report it with the MODEL you used."
        )
        return EXIT_ERROR


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else "no message"


def _print_error(message: str) -> None:
    from rich.text import Text

    # A Text, not markup: messages quote shapes like [B, C, H, W] that markup would eat. Messages
    # quote user exceptions, which can be enormous: head and tail are kept.
    _console(sys.stderr).print(Text.assemble(("error: ", "bold red"), shorten(message)))


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
    from hookdoctor.specs.cam_family import resolve_method

    args.cam_method = resolve_method(args.cam_method)  # InputError (exit 2) before the model loads
    methods = _methods(args.method)
    if args.layer is not None and GRADCAM not in methods.wanted:
        raise InputError(
            "--layer judges a Grad-CAM target, but --method leaves Grad-CAM out; add --method gradcam "
            "(or drop --layer)."
        )
    if args.layer is not None and not args.layer.strip():
        raise InputError(
            "--layer is empty; give the dotted module name of the layer to judge, as model.named_modules() "
            "spells it (e.g. --layer layer4), or drop --layer."
        )
    if args.figure is not None:
        _require_matplotlib()  # before minutes of loading, not after
    stdout = sys.stdout
    phase = _Phase(args.model)
    with (
        _quiet_libraries(args.debug),
        contextlib.redirect_stdout(sys.stderr),
        _file_descriptor_1_to_stderr(),
        _time_limit(args.timeout, phase),
    ):
        # Anything the model's own code prints goes to stderr: stdout holds only the report. The
        # descriptor-level redirect catches what Python's sys.stdout never sees (os.system, C code,
        # subprocesses).
        report, model, picture = _load_and_inspect(args, methods, phase)
        summary = _model_summary(model, report) if args.tree and not args.json else None
        if args.figure is not None:
            _write_figure(report, picture, args.figure)
        preview = _preview_map(report, picture) if args.figure is None and not args.json else None

    if args.json:
        stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        from hookdoctor.render.terminal import CodeText, render_report

        console = _console(stdout)
        for renderable in render_report(
            report,
            console=console,
            backend=args.backend,
            cam_method=args.cam_method,
            tree=args.tree,
            model_summary=summary,
            source=args.model,
            verbose=args.verbose,
            preview=preview,
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


def _methods(chosen: list[tuple[str, ...]] | None) -> Methods:
    """Every --method given, as the library reads ``methods`` (default: auto)."""
    words = [w for group in chosen for w in group] if chosen else [AUTO]
    return parse_methods(tuple(words))


def _method_words(methods: Methods) -> tuple[str, ...]:
    """The ``methods=`` argument that asks the library for exactly ``methods``."""
    if not methods.auto:
        return methods.wanted
    return (AUTO, *(m for m in methods.wanted if m not in methods.auto))


class _Phase:
    """What the command is doing, for the timeout's message."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.doing = f"building {model}"


def _load_and_inspect(
    args: argparse.Namespace, methods: Methods, phase: _Phase
) -> tuple[Report, Any, Any]:
    from hookdoctor.model.loading import LoadOptions
    from hookdoctor.render.progress import progress

    options = LoadOptions(
        pretrained=args.pretrained,
        allow_download=args.allow_download,
        trust_pickle=args.trust_pickle,
        trust_remote_code=args.trust_remote_code,
    )
    shown = not args.json  # progress on a terminal only, and never under --json
    if args.structure_only:
        if args.device is not None:
            raise InputError(
                "--device has no effect with --structure-only: the model is built on the meta device, with "
                "no weights anywhere. Drop one of the two."
            )
        if args.figure is not None:
            raise InputError(
                "--figure draws Grad-CAM maps, which need values; --structure-only runs the model on the meta "
                "device, with none. Drop one of the two."
            )
        with progress(f"Building {args.model} on the meta device", enabled=shown):
            loaded = _build(args, options, on_meta=True)
        model = loaded.model
    else:
        device = _device(args.device)
        if loaded_by_library(args.model):
            # Weights and one pass at full size must fit: measured on a weightless build first.
            with progress(f"Estimating the memory {args.model} needs", enabled=shown):
                from hookdoctor.model.fits import guard_build

                guard_build(_build(args, options, on_meta=True).model, args.input_shape, device)
        with progress(f"Building {args.model}", enabled=shown):
            loaded = _build(args, options)
        model = loaded.model if device is None else loaded.model.to(device)
    import hookdoctor

    if args.layer is not None:
        _check_layer_exists(model, args.layer)
    input_shape = args.input_shape or loaded.input_shape
    picture = _picture(args, model, input_shape)
    # The inputs a factory returned beside its model, unless --input-shape or a picture asks for another one.
    example_input = loaded.example_input if args.input_shape is None and picture is None else None
    phase.doing = f"running {type(model).__name__} forward and backward"
    what = "on the meta device" if args.structure_only else "one forward and backward pass"
    with progress(f"Probing {type(model).__name__} ({what})", enabled=shown):
        try:
            report = hookdoctor.inspect(
                model,
                picture.image if picture is not None else example_input,
                input_shape=input_shape if picture is None and example_input is None else None,
                target=args.target,
                output=args.output,
                methods=_method_words(methods),
                layer=args.layer,
                structure_only=args.structure_only,
            )
        except SystemExit as exc:
            raise ModelRunError(
                f"Running {type(model).__name__} ended the process with sys.exit({exc.code!r}): its forward "
                "(or a hook on it) calls sys.exit. Remove that call from the forward pass; a model that exits "
                "cannot be inspected or explained."
            ) from None
    return report, model, picture


def _build(args: argparse.Namespace, options: Any, *, on_meta: bool = False) -> Any:
    """load_model, with a sys.exit in the user's code told as a load error."""
    from hookdoctor.model.loading import load_model

    try:
        return load_model(args.model, options, on_meta=on_meta)
    except SystemExit as exc:  # user code reached from a library hook, past the factory's own guard
        raise ModelLoadError(
            f"Building {args.model} ended the process with sys.exit({exc.code!r}). The model's code must "
            "return the model, not exit; move the sys.exit (or an argparse parse_args()) under "
            '`if __name__ == "__main__":`.'
        ) from None


def loaded_by_library(model: str) -> bool:
    """MODEL strings torchvision, timm or transformers build (cheaply, on the meta device too)."""
    from pathlib import Path

    prefix, _, rest = model.partition(":")
    return (prefix in ("torchvision", "timm", "hf") and bool(rest)) or (Path(model) / "config.json").is_file()


def _device(text: str | None) -> Any:
    """The torch.device ``--device`` names, or None (the model stays where it was built)."""
    if text is None:
        return None
    import torch

    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise InputError(f"--device {text!r} is not a device torch knows ({_first_line(exc)}); use cpu, cuda, "
                         "cuda:1 or mps.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {text} asks for CUDA, but torch sees no CUDA device here; use --device cpu.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {text} asks for MPS, but it is not available here; use --device cpu.")
    if device.type == "meta":
        raise InputError("--device meta: use --structure-only, which builds and inspects the model there.")
    return device


# --- pictures -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Picture:
    """The input the CLI explains when it draws: a picture file or a synthetic one, and how it was made."""

    image: Any  # [1, C, H, W], as the model expects
    caption: str


def _picture(args: argparse.Namespace, model: Any, input_shape: Sequence[int] | None) -> _Picture | None:
    """--image (or, for --figure alone, a synthetic picture) prepared as the model states; else None."""
    if args.image is None and args.figure is None:
        return None
    from hookdoctor.model.preprocess import load_image, preprocessing_for, synthetic_picture

    prep = preprocessing_for(model, input_shape)
    if args.image is not None:
        image, _ = load_image(args.image, prep)
        return _Picture(image, f"input: {os.path.basename(args.image)} · {prep.describe()}")
    image, _ = synthetic_picture(prep)
    return _Picture(image, f"input: a synthetic picture (no --image) · {prep.describe()}")


def _require_matplotlib() -> None:
    from hookdoctor.errors import MissingDependencyError

    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            "--figure needs matplotlib, which is not installed. Install the plot extra with "
            "`pip install 'hookdoctor[plot]'` (or `pip install matplotlib Pillow`), or leave out --figure."
        ) from exc


def _write_figure(report: Report, picture: _Picture | None, path: str) -> None:
    from hookdoctor.render.figure import save_figure
    from hookdoctor.render.progress import progress

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"--figure {path}: the folder {folder} does not exist; create it or write the PNG elsewhere.")
    with progress("Drawing the maps (pytorch-grad-cam and the spec's rollout)"):
        figure = report.figure(picture.image if picture is not None else None,
                               caption=picture.caption if picture is not None else None)
        written = save_figure(figure, path)
    print(f"hookdoctor: wrote {written}", file=sys.stderr)


def _preview_map(report: Report, picture: _Picture | None) -> Any:
    """The spec's Grad-CAM map on the example input, for the report's preview; None without a spec."""
    # A map needs values (the meta device has none); the preview is an [H, W] picture.
    if report.gradcam is None or report.structure_only or report.gradcam.input_kind != "image":
        return None
    from hookdoctor.errors import MissingDependencyError
    from hookdoctor.render.maps import spec_map

    _, image = report.model_and_image(picture.image if picture is not None else None)
    try:
        return spec_map(report, image)
    except MissingDependencyError:  # the preview is drawn with pytorch-grad-cam; the report does not need it
        return None


def _check_layer_exists(model: Any, layer: str) -> None:
    """An unknown --layer is a wrong argument (exit 2), told before the model runs."""
    names = [name for name, _ in model.named_modules(remove_duplicate=False) if name]
    module, _, call = layer.partition("#")  # NAME#k: call k of a module; the library judges k
    if module in names and (not call or call.isdigit()):
        return
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise InputError(
        f"--layer {layer!r}: {type(model).__name__} has no module with that exact name.{hint} Give the "
        "dotted name as model.named_modules() spells it; `hookdoctor inspect MODEL --tree` lists every layer."
    )


class TimedOut(BaseException):
    """--timeout ran out. A BaseException, so that the user's `except Exception` cannot swallow it."""


# How long a forward stuck in native code (which Python's signal handler cannot interrupt) may
# run past --timeout before the process is ended outright.
_HARD_EXIT_GRACE_S = 10.0


@contextlib.contextmanager
def _time_limit(seconds: float | None, phase: _Phase) -> Iterator[None]:
    """Raise TimedOut in the main thread after ``seconds``; end the process if even that cannot land."""
    if seconds is None:
        yield
        return

    def message() -> str:
        return (
            f"hookdoctor gave up after {seconds:g} seconds (--timeout) while {phase.doing}: it had not "
            "returned. A factory or forward that never returns waits on something (input(), a lock, the "
            "network) or loops forever; fix that, pass a smaller --input-shape if the model is only slow, "
            "or raise --timeout."
        )

    def hard_exit() -> None:
        with contextlib.suppress(OSError):
            os.write(2, f"error: {message()}\n".encode())
        os._exit(EXIT_ERROR)

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimedOut(message())

    watchdog = threading.Timer(seconds + _HARD_EXIT_GRACE_S, hard_exit)
    watchdog.daemon = True
    use_signal = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGALRM, on_alarm) if use_signal else None
    if use_signal:
        signal.setitimer(signal.ITIMER_REAL, seconds)
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()
        if use_signal:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _file_descriptor_1_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 at stderr while user code runs, so that --json's stdout stays pure.

    ``redirect_stdout`` only moves Python's ``sys.stdout``; ``os.system``, subprocesses and C
    extensions write to the descriptor itself.
    """
    _flush_all()
    try:
        saved = os.dup(1)
    except OSError:  # no descriptor 1 (a closed stdout): nothing can be corrupted
        yield
        return
    try:
        os.dup2(2, 1)
    except OSError:  # no descriptor 2 to point at: leave descriptor 1 as it is
        os.close(saved)
        yield
        return
    try:
        yield
    finally:
        _flush_all()
        os.dup2(saved, 1)
        os.close(saved)


def _flush_all() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    # C's stdio buffers (printf in an extension) would otherwise reach descriptor 1 after it is restored.
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).fflush(None)


def _model_summary(model: Any, report: Report) -> Any:
    from hookdoctor.render.progress import progress
    from hookdoctor.render.summary import summarize_model

    if report.structure_only:  # torchinfo runs the model: there are no values on the meta device
        return None
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
