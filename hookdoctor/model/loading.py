"""Turn a MODEL string from the command line into an ``nn.Module``, safely.

MODEL forms (see API.md): ``torchvision:NAME``, ``timm:NAME``, ``hf:ID``, a local folder
holding an HF ``config.json``, ``path/to/file.py:FACTORY``, ``package.module:FACTORY`` and
a ``.pt``/``.pth`` file.

Model libraries are imported only when the MODEL string asks for them, because imports
dominate the command line's run time (torch with timm, torchvision and transformers is
several seconds). Every failure is a ``ModelLoadError`` or ``MissingDependencyError``
whose message is one paragraph naming the problem and the fix.

Structure is what hookdoctor judges, so models are built with random weights unless
``pretrained`` is asked for, and those random weights are seeded: the same MODEL gives
the same report on every run. Nothing is downloaded unless ``allow_download`` is set.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import os
import pickle
import re
import sys
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hookdoctor.errors import MissingDependencyError, ModelLoadError, shorten

# Weights are random unless --pretrained; a fixed seed makes reports reproducible.
RANDOM_WEIGHTS_SEED = 0
_TORCH_FILE_SUFFIXES = (".pt", ".pth")
# A factory module may state the input its model expects, e.g. INPUT_SHAPE = (1, 3, 64, 64).
INPUT_SHAPE_ATTRIBUTE = "INPUT_SHAPE"


@dataclass(frozen=True)
class LoadOptions:
    """What the user allowed: trained weights, network access, unpickling, remote code."""

    pretrained: bool = False
    allow_download: bool = False
    trust_pickle: bool = False
    trust_remote_code: bool = False


@dataclass(frozen=True)
class LoadedModel:
    """A built model, where it came from, and the input shape its source states (if any)."""

    model: nn.Module
    source: str
    kind: str
    input_shape: tuple[int, ...] | None = None
    example_input: Any = None  # what a factory returned beside the model: (model, inputs)


def load_model(spec: str, options: LoadOptions | None = None, *, on_meta: bool = False) -> LoadedModel:
    """Build the model a MODEL string names; raise ModelLoadError / MissingDependencyError if it cannot.

    ``on_meta`` builds it on the meta device (shapes, no weights, no memory): every
    parameter created while building lands there - torchvision's and timm's factories,
    transformers' ``from_config`` and a user's factory alike. Trained weights are never
    loaded then (there is nowhere to put them). A ``.pt`` file is read as it is.
    """
    options = options or LoadOptions()
    if not on_meta:
        return _load(spec, options)
    with torch.device("meta"):
        loaded = _load(spec, dataclasses.replace(options, pretrained=False))
    return loaded


def _load(spec: str, options: LoadOptions) -> LoadedModel:
    spec = spec.strip()
    if not spec:
        raise ModelLoadError("MODEL is empty. " + _FORMS_HINT)
    prefix, _, rest = spec.partition(":")
    scheme = prefix.lower()  # TORCHVISION:resnet18 names the same source as torchvision:resnet18
    if scheme == "torchvision" and rest:
        return _load_torchvision(rest, options)
    if scheme == "timm" and rest:
        return _load_timm(rest, options)
    if scheme == "hf" and rest:
        return _load_hf(rest, options, source=f"hf:{rest}")

    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_hf_folder(path, options)
    if path.suffix in _TORCH_FILE_SUFFIXES:
        return _load_torch_file(path, options)

    location, sep, factory = spec.rpartition(":")
    if sep and location.endswith(".py"):
        return _load_factory_file(Path(location).expanduser(), factory, spec)
    if sep and location and factory and _looks_like_module_path(location):
        return _load_factory_module(location, factory, spec)
    if sep and location and not factory:
        raise ModelLoadError(f"MODEL {spec!r} names no model after the colon. {_FORMS_HINT}")
    if path.exists():
        raise ModelLoadError(
            f"MODEL {spec!r} is a file hookdoctor cannot load: it is neither a .pt/.pth file nor a "
            f"Python file with a factory. {_FORMS_HINT}"
        )
    raise ModelLoadError(
        f"MODEL {spec!r} does not exist as a file or folder and names no known source. "
        f"{_did_you_mean_source(spec)}{_FORMS_HINT}"
    )


_FORMS_HINT = (
    "MODEL is one of torchvision:NAME, timm:NAME, hf:ID, a folder with an HF config.json, "
    "path/to/file.py:FACTORY, package.module:FACTORY or a .pt file."
)


SCHEMES = ("torchvision", "timm", "hf")


def _unknown_scheme(location: str) -> str:
    """A hint when ``location`` (before the colon) looks like a misspelt scheme rather than a module."""
    if "." in location:
        return ""
    close = difflib.get_close_matches(location.lower(), SCHEMES, n=1, cutoff=0.6)
    did_you_mean = f"Did you mean {close[0]}:? " if close else ""
    return f"{did_you_mean}The known schemes are {', '.join(s + ':' for s in SCHEMES)} (any case). "


def _did_you_mean_source(spec: str) -> str:
    if ":" in spec or "/" in spec or "." in spec:
        return ""
    return f"If it is a model name, say which library builds it: torchvision:{spec} or timm:{spec}. "


def _looks_like_module_path(text: str) -> bool:
    return all(part.isidentifier() for part in text.split("."))


@contextmanager
def _seeded() -> Iterator[None]:
    """Seed the random weights without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        yield


def _import_optional(module: str, extra: str) -> Any:
    """Import an optional model library, or say exactly how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed, and MODEL asks for a {module} model. Install it with "
            f"`pip install 'hookdoctor[{extra}]'` (or `pip install {module}`), then rerun."
        ) from exc


def _close(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f" Did you mean {', '.join(close)}?" if close else ""


def _check_module(value: Any, source: str) -> nn.Module:
    from hookdoctor.model.unwrap import is_torchscript

    if is_torchscript(value):
        raise ModelLoadError(_torchscript_message(source))
    if not isinstance(value, nn.Module):
        raise ModelLoadError(
            f"{source} gave a {type(value).__name__}, not a torch.nn.Module; hookdoctor needs the model "
            "object itself (return the nn.Module from the factory)."
        )
    return value


def _torchscript_message(source: str) -> str:
    return (
        f"{source} is a TorchScript module: its forward runs as a compiled graph, so Python hooks never "
        "fire and neither Grad-CAM nor attention capture can work on it. Point hookdoctor at the eager "
        "nn.Module it was scripted or traced from (a file.py:FACTORY that builds it, or "
        "torchvision:/timm:/hf:)."
    )


# --- torchvision ------------------------------------------------------------------------------


def _load_torchvision(name: str, options: LoadOptions) -> LoadedModel:
    tv_models = _import_optional("torchvision.models", "torchvision")
    available = tv_models.list_models()
    if name not in available:
        raise ModelLoadError(
            f"torchvision has no model named {name!r}.{_close(name, available)} "
            '`python -c "import torchvision; print(torchvision.models.list_models())"` lists them.'
        )
    weights = None
    if options.pretrained:
        weights = tv_models.get_model_weights(name).DEFAULT
        _require_cached_torchvision_weights(weights, name, options)
    with _seeded():
        model = tv_models.get_model(name, weights=weights)
    return LoadedModel(model.eval(), f"torchvision:{name}", "torchvision")


def _require_cached_torchvision_weights(weights: Any, name: str, options: LoadOptions) -> None:
    if options.allow_download:
        return
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not cached.exists():
        raise ModelLoadError(
            f"The pretrained weights of torchvision:{name} are not in the local cache ({cached}) and "
            "hookdoctor downloads nothing unless asked. Add --allow-download to fetch them, or drop "
            "--pretrained: structure checks work on random weights."
        )


# --- timm -------------------------------------------------------------------------------------


def _load_timm(name: str, options: LoadOptions) -> LoadedModel:
    timm = _import_optional("timm", "timm")
    if not timm.is_model(name):
        raise ModelLoadError(
            f"timm has no model named {name!r}.{_close(name, timm.list_models())} "
            "`python -c \"import timm; print(timm.list_models('*vit*'))\"` lists them by pattern."
        )
    try:
        with _seeded(), _hub_offline(not options.allow_download):
            model = timm.create_model(name, pretrained=options.pretrained)
    except (OSError, RuntimeError, ValueError) as exc:
        if not options.pretrained:
            raise
        raise ModelLoadError(
            f"The pretrained weights of timm:{name} could not be loaded ({_first_line(exc)}). They are "
            "fetched only with --allow-download; or drop --pretrained: structure checks work on random "
            "weights."
        ) from exc
    return LoadedModel(model.eval(), f"timm:{name}", "timm")


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Keep huggingface_hub from reaching the network unless the user allowed it.

    huggingface_hub reads HF_HUB_OFFLINE at import time; setting it here matters when this
    process has not imported it yet (the command line), and is restored afterwards.
    """
    if not offline:
        yield
        return
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


# --- Hugging Face -----------------------------------------------------------------------------


def _load_hf_folder(path: Path, options: LoadOptions) -> LoadedModel:
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"The folder {path} has no config.json, so it is not a Hugging Face model folder. Point "
            "MODEL at a folder written by save_pretrained (or a snapshot in the HF cache), or use "
            "hf:ID, file.py:FACTORY or a .pt file."
        )
    return _load_hf(str(path), options, source=str(path))


def _load_hf(model_id: str, options: LoadOptions, *, source: str) -> LoadedModel:
    transformers = importlib.import_module("transformers")
    local_only = not options.allow_download
    common: dict[str, Any] = {"local_files_only": local_only, "trust_remote_code": options.trust_remote_code}
    try:
        with _hub_offline(local_only):
            config = transformers.AutoConfig.from_pretrained(model_id, **common)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(_hf_config_problem(model_id, source, exc, options)) from exc

    if getattr(config, "auto_map", None) and not options.trust_remote_code:
        raise ModelLoadError(_remote_code_message(source))
    last_error: Exception | None = None
    for auto_class in _hf_auto_classes(transformers, config):
        try:
            with _seeded(), _hub_offline(local_only):
                if options.pretrained:
                    model = auto_class.from_pretrained(model_id, config=config, **common)
                else:
                    model = auto_class.from_config(config, trust_remote_code=options.trust_remote_code)
        except ValueError as exc:  # this auto class has no mapping for the config: try the next
            last_error = exc
            continue
        except OSError as exc:
            raise ModelLoadError(
                f"The weights of {source} are not available locally ({_first_line(exc)}). Add "
                "--allow-download to fetch them, or drop --pretrained: structure checks work on random "
                "weights."
            ) from exc
        except Exception as exc:
            if not options.pretrained:
                raise
            # A corrupt or truncated pytorch_model.bin / model.safetensors: torch's UnpicklingError
            # advises weights_only=False, which is not the fix.
            raise ModelLoadError(
                f"The weight file of {source} could not be read ({_torch_load_reason(exc)}): it is corrupt, "
                "truncated or not a weight file. Download it again or rewrite it with save_pretrained; or "
                "drop --pretrained: structure checks work on random weights."
            ) from exc
        return LoadedModel(model.eval(), source, "hf")
    raise ModelLoadError(
        f"transformers cannot build a vision model from the config of {source} "
        f"(model_type {getattr(config, 'model_type', '?')!r}: {_first_line(last_error)}). hookdoctor builds "
        "AutoModelForImageClassification, else AutoModel; for other models write a file.py:FACTORY."
    )


def _hf_auto_classes(transformers: Any, config: Any) -> list[Any]:
    """Image classification first (it has logits); the bare model for backbones and towers."""
    return [transformers.AutoModelForImageClassification, transformers.AutoModel]


def _hf_config_problem(model_id: str, source: str, exc: Exception, options: LoadOptions) -> str:
    text = str(exc)
    if "trust_remote_code" in text:
        return _remote_code_message(source)
    if Path(model_id).is_dir():
        return (
            f"The config.json in {source} could not be read by transformers ({_first_line(exc)}). Check "
            "that it was written by save_pretrained and that transformers is recent enough for its "
            "model_type."
        )
    if not options.allow_download:
        return (
            f"{source} is not in the local Hugging Face cache, and hookdoctor downloads nothing unless "
            "asked. Add --allow-download to fetch its config (a few kB; weights only with --pretrained), "
            "or point MODEL at a folder holding its config.json."
        )
    return f"transformers could not load the config of {source}: {_first_line(exc)}. Check the model id."


def _remote_code_message(source: str) -> str:
    return (
        f"{source} needs custom code from its repository (an auto_map in config.json), and running it "
        "executes that code on this machine. If you trust the repository, add --trust-remote-code."
    )


# --- .pt / .pth files -------------------------------------------------------------------------


def _load_torch_file(path: Path, options: LoadOptions) -> LoadedModel:
    if not path.is_file():
        raise ModelLoadError(_missing_file_message(path))
    if _is_torchscript_archive(path):
        raise ModelLoadError(_torchscript_message(str(path)))
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        blocked = _blocked_global(exc)
        if blocked is not None and not options.trust_pickle:
            raise ModelLoadError(
                f"{path} is a torch.save archive that calls {blocked} when unpickled, a function torch's safe "
                "loader blocks: it can run commands on this machine, and no model file needs it. Do not load "
                "this file unless you made it; if you did and trust it, --trust-pickle unpickles it (and runs "
                "that call)."
            ) from exc
        if blocked is None and not _is_weights_only_refusal(exc):
            raise ModelLoadError(
                f"{path} could not be read by torch.load ({_torch_load_reason(exc)}). Check that it was "
                "written by torch.save and is not truncated."
            ) from exc
        if not options.trust_pickle:
            raise ModelLoadError(
                f"{path} holds a pickled Python object (a whole nn.Module), not only tensors, and unpickling "
                "it can run arbitrary code. If you trust the file, add --trust-pickle; otherwise save the "
                "model's state_dict and build the model with a file.py:FACTORY that loads it."
            ) from exc
        value = torch.load(path, map_location="cpu", weights_only=False)
    if _is_state_dict(value):
        raise ModelLoadError(
            f"{path} is a state_dict (a checkpoint of weights): it has no architecture to inspect. Write a "
            "factory that builds the model and loads it, e.g. in model.py: `def build(): m = MyNet(); "
            f"m.load_state_dict(torch.load({str(path)!r})); return m`, then run `hookdoctor inspect "
            "model.py:build`."
        )
    return LoadedModel(_check_module(value, str(path)).eval(), str(path), "torch-file")


def _is_torchscript_archive(path: Path) -> bool:
    """TorchScript archives carry their compiled code next to the pickles."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(
            name.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for name in archive.namelist()
        )


def _blocked_global(exc: Exception) -> str | None:
    """The function a pickle wanted to call that torch blocks outright (``posix.system``), if that was it."""
    if not isinstance(exc, pickle.UnpicklingError):
        return None
    found = re.search(r"unsupported GLOBAL (\S+) whose module \S+ is blocked", str(exc))
    return found.group(1) if found else None


def _is_weights_only_refusal(exc: Exception) -> bool:
    # The safe unpickler names the class it refused; a corrupt file fails differently.
    return isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in str(exc)


def _torch_load_reason(exc: Exception) -> str:
    """Why torch.load failed, without torch's advice to pass weights_only=False (not the fix for a bad file)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        after = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()
        reason = after[0].strip() if after else ""
        return f"its pickle is not valid: {reason}" if reason else "its pickle is not valid"
    if _first_line(exc).startswith("Weights only load failed"):
        return "its pickle is not valid"
    return _first_line(exc)


def _is_state_dict(value: Any) -> bool:
    if not isinstance(value, Mapping) or not value:
        return False
    if all(isinstance(v, torch.Tensor) for v in value.values()):
        return True
    # Training checkpoints: {"model": state_dict, "optimizer": ..., "epoch": ...}
    return any(isinstance(v, Mapping) and _is_state_dict(v) for v in value.values())


# --- factories --------------------------------------------------------------------------------


def _load_factory_file(path: Path, factory: str, source: str) -> LoadedModel:
    if not path.is_file():
        raise ModelLoadError(_missing_file_message(path))
    module_name = f"_hookdoctor_factory_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(
            f"{path} cannot be imported as a Python file. Check that it is a .py source file."
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    # The file's own folder first on sys.path, so it can import its neighbours as `python file.py` would.
    with _as_script(str(path), str(path.resolve().parent)):
        try:
            spec.loader.exec_module(module)
        except SystemExit as exc:
            sys.modules.pop(module_name, None)
            raise ModelLoadError(_exit_on_import_message(str(path), exc)) from None
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise ModelLoadError(
                f"Importing {path} raised {_describe(exc)}. Fix the file so that `python {path}` runs, "
                "then rerun."
            ) from exc
        return _call_factory(module, factory, source)


def _load_factory_module(module_path: str, factory: str, source: str) -> LoadedModel:
    # The current folder on sys.path, as `python -m` puts it: the `hookdoctor` console script
    # starts with its own bin folder there instead, and would not find a package next to the user.
    with _as_script(module_path, os.getcwd()):
        try:
            module = importlib.import_module(module_path)
        except ModuleNotFoundError as exc:
            if exc.name and module_path.startswith(exc.name):
                raise ModelLoadError(
                    f"No module named {module_path!r} can be imported (from {Path.cwd()}). "
                    f"{_unknown_scheme(module_path)}Install the package, run from the folder that holds "
                    "it, or give the file instead: path/to/file.py:FACTORY."
                ) from exc
            raise ModelLoadError(
                f"Importing {module_path} raised {_describe(exc)}. Install what it needs."
            ) from exc
        except SystemExit as exc:
            raise ModelLoadError(_exit_on_import_message(module_path, exc)) from None
        except Exception as exc:
            raise ModelLoadError(
                f"Importing {module_path} raised {_describe(exc)}. Fix the module, then rerun."
            ) from exc
        return _call_factory(module, factory, source)


@contextmanager
def _as_script(argv0: str, folder: str) -> Iterator[None]:
    """Run user code as ``python file.py`` would: its folder on sys.path, and no command-line arguments.

    Without this, a script's top-level ``parse_args()`` would parse hookdoctor's own arguments.
    """
    saved_argv = sys.argv
    sys.argv = [argv0]
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.argv = saved_argv
        if folder in sys.path:
            sys.path.remove(folder)


def _exit_code_words(exc: SystemExit) -> str:
    return f"sys.exit({exc.code!r})" if exc.code is not None else "sys.exit()"


def _exit_on_import_message(what: str, exc: SystemExit) -> str:
    return (
        f"Importing {what} ended the process with {_exit_code_words(exc)}: its top-level code runs as a "
        "script (argparse's parse_args() exits this way when the script's own arguments are missing; "
        "sys.exit(main()) always does). Put that code under `if __name__ == \"__main__\":` so that "
        "importing the file only defines the factory, then rerun."
    )


def _call_factory(module: Any, factory: str, source: str) -> LoadedModel:
    function = getattr(module, factory, None)
    if not callable(function):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise ModelLoadError(
            f"{source}: the module has no function {factory!r}.{_close(factory, names)} A factory is a "
            "function with no required arguments that returns the nn.Module."
        )
    try:
        with _seeded():
            value = function()
    except SystemExit as exc:
        raise ModelLoadError(
            f"{source}: calling {factory}() ended the process with {_exit_code_words(exc)}. A factory must "
            "return the nn.Module; move the sys.exit (or the argparse parse_args() that exits) out of it, "
            "under `if __name__ == \"__main__\":`."
        ) from None
    except Exception as exc:
        raise ModelLoadError(
            f"{source}: calling {factory}() raised {_describe(exc)}. Fix the factory so that it builds the "
            "model with no arguments (rerun with --debug for the traceback)."
        ) from exc
    example_input = None
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], nn.Module):
        # A multi-input model (CLIP: pixel_values and input_ids): the factory returns (model, inputs).
        value, example_input = value
    model = _check_module(value, f"{source}")
    stated = getattr(function, "input_shape", None) or getattr(module, INPUT_SHAPE_ATTRIBUTE, None)
    return LoadedModel(
        model.eval(), source, "factory", _stated_input_shape(stated, source, factory), example_input
    )


def _stated_input_shape(stated: Any, source: str, factory: str) -> tuple[int, ...] | None:
    """The input shape a factory states, checked like inspect's own input_shape."""
    from hookdoctor.arguments import SHAPES, parse_input_shape
    from hookdoctor.errors import InputError

    if stated is None:
        return None
    try:
        return parse_input_shape(stated)
    except InputError:
        raise ModelLoadError(
            f"{source} states its input shape as {shorten(repr(stated), 80)} ({factory}.input_shape or "
            f"{INPUT_SHAPE_ATTRIBUTE} in its module), which is not three, four or five positive whole sizes "
            f"({SHAPES}). "
            f"Write e.g. {factory}.input_shape = (1, 3, 224, 224), or remove it and pass --input-shape."
        ) from None


# --- messages ---------------------------------------------------------------------------------


def _missing_file_message(path: Path) -> str:
    where = "" if path.is_absolute() else f" (relative paths start at {Path.cwd()})"
    return f"The file {path} does not exist. Check the path{where}."


def _first_line(exc: BaseException | None) -> str:
    if exc is None:
        return "no detail"
    text = str(exc).strip().splitlines()
    return shorten(text[0], 500) if text else type(exc).__name__


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_first_line(exc)}"
