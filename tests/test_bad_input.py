"""Bad input, table-driven: every wrong argument, misbehaving factory or broken model gets a
one-paragraph answer naming the problem and the fix, never a traceback or a silent coercion.

The command line runs in-process (a subprocess pays seconds of imports); one subprocess
checks what only a real process shows: the console script's sys.path and descriptor-level
output under --json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hookdoctor
from fixtures.attention_models import CrossBlockViT, GQAViT
from fixtures.bad_factories import ScalarOutput, VectorOutput
from fixtures.factories import TinyCNN
from hookdoctor.cli import main
from hookdoctor.errors import InputError, ModelRunError

ROOT = Path(__file__).resolve().parents[1]
BAD = f"{ROOT / 'fixtures' / 'bad_factories.py'}"
CNN = f"{ROOT / 'fixtures' / 'factories.py'}:tiny_cnn"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())  # rich wraps long lines


def assert_clean_error(code: int, out: str, err: str, needles: tuple[str, ...]) -> None:
    assert code == 2, err
    assert out == "", "an error leaves stdout empty, also under --json"
    assert "Traceback" not in err and "bug in hookdoctor" not in err, err
    # A script's own argparse may have printed its usage first (the top-level parse_args case).
    assert err.startswith(("error: ", "usage: ")) and "error: " in err, err
    for needle in needles:
        assert needle in err, err


# --- the command line -------------------------------------------------------------------------


class _RunsCommand:
    """Pickled into a .pt file: a call that torch's safe loader blocks outright."""

    def __reduce__(self):
        return (os.system, ("echo this-must-never-run",))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("bad_files")
    blocked = folder / "blocked.pt"
    torch.save({"weights": _RunsCommand()}, blocked)
    garbage = folder / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all" * 10)
    hf = folder / "hf_bad_bin"
    hf.mkdir()
    (hf / "config.json").write_text((ROOT / "fixtures" / "report_vit" / "config.json").read_text())
    (hf / "pytorch_model.bin").write_bytes(bytes(range(256)) * 2)
    return {"blocked": str(blocked), "garbage": str(garbage), "hf_bad_bin": str(hf)}


CLI_ERRORS = {
    # name: (arguments, words the message must hold: the problem and the fix)
    "factory-sys-exit": ([f"{BAD}:exits"], ("sys.exit(3)", "A factory must return the nn.Module")),
    "top-level-parse-args": (
        [f"{ROOT / 'fixtures' / 'script_with_parse_args.py'}:build"],
        ("sys.exit(2)", "parse_args()", 'if __name__ == "__main__":'),
    ),
    "forward-sys-exit": ([f"{BAD}:exits_in_forward"], ("sys.exit(0)", "Remove that call from the forward")),
    "scalar-output": ([f"{BAD}:scalar_output"], ("returned Tensor[]", "as a 2-D tensor")),
    "1d-output": ([f"{BAD}:vector_output"], ("returned Tensor[10]", "as a 2-D tensor")),
    "huge-input": ([CNN, "--input-shape", "1,3,100000,100000"], ("120.0 GB", "Pass a smaller input_shape")),
    "unknown-layer": ([CNN, "--layer", "featurs.0"], ("no module with that exact name", "Close matches: features.0")),
    "empty-layer": ([CNN, "--layer="], ("--layer is empty", "dotted module name")),
    "factory-input-shape-16": (
        [f"{BAD}:bad_input_shape"],
        ("input shape as 16", "bad_input_shape.input_shape = (1, 3, 224, 224)"),
    ),
    "scheme-typo": (["torchvison:resnet18"], ("Did you mean torchvision:?", "known schemes are torchvision:")),
    "factory-hangs": ([f"{BAD}:never_returns", "--timeout", "0.5"], ("gave up after 0.5 seconds", "while building")),
    "forward-hangs": ([f"{BAD}:slow_forward", "--timeout", "0.5"], ("while running SlowForward", "raise --timeout")),
}


@pytest.mark.parametrize("name", list(CLI_ERRORS))
def test_cli_bad_input_is_one_paragraph_exit_2(name, capsys):
    args, needles = CLI_ERRORS[name]
    assert_clean_error(*run(capsys, "inspect", *args, "--json"), needles)


def test_cli_messages_for_bad_files_do_not_mislead(capsys, bad_files):
    code, out, err = run(capsys, "inspect", bad_files["blocked"], "--json")
    assert_clean_error(code, out, err, ("system", "torch's safe loader blocks", "Do not load this file"))
    assert "not a torch.save archive" not in err

    code, out, err = run(capsys, "inspect", bad_files["garbage"])
    assert_clean_error(code, out, err, ("could not be read by torch.load", "written by torch.save"))
    assert "weights_only" not in err  # torch's advice to disable the safe loader is not the fix

    code, out, err = run(capsys, "inspect", bad_files["hf_bad_bin"], "--pretrained", "--json")
    assert_clean_error(code, out, err, ("weight file of", "corrupt", "drop --pretrained"))
    assert "weights_only" not in err


def test_cli_a_model_that_works_only_once_is_inspected_not_called_a_bug(capsys):
    # inspect runs the forward once (the one recorded pass); a second forward used to fail
    # and was reported as "a bug in hookdoctor".
    code, out, err = run(capsys, "inspect", f"{BAD}:fails_on_second_call", "--method", "gradcam", "--json")
    assert code == 0 and json.loads(out)["ok"] is True and "bug" not in err


def test_cli_cuts_a_huge_exception_message(capsys):
    code, out, err = run(capsys, "inspect", f"{BAD}:huge_message")
    assert_clean_error(code, out, err, ("characters cut", "calling huge_message() raised RuntimeError"))
    assert len(err) < 3000


def test_cli_json_stays_pure_when_user_code_writes_to_descriptor_1(capfd):
    code = main(["inspect", f"{BAD}:noisy", "--method", "gradcam", "--json"])
    out, err = capfd.readouterr()
    assert code == 0 and json.loads(out)["ok"] is True
    assert "noise-from-fd-1" in err and "noise" not in out


def test_cli_scheme_is_case_insensitive(capsys):
    code, out, _ = run(capsys, "inspect", "TORCHVISION:resnet18", "--input-shape", "1,3,32,32", "--json")
    report = json.loads(out)
    assert code == 0 and report["model"]["class"] == "ResNet" and report["gradcam"] is not None


def test_cli_default_method_is_auto_and_a_cnn_exits_0(capsys):
    code, out, _ = run(capsys, "inspect", "torchvision:resnet50", "--input-shape", "1,3,64,64", "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True and report["methods"] == ["gradcam"]
    assert [(d["code"], d["severity"]) for d in report["diagnostics"] if d["method"] == "rollout"] == [
        ("HD514", "info")
    ]
    code, out, _ = run(capsys, "inspect", CNN, "--method", "all")  # named: rollout's refusal is a failure
    assert code == 1 and "error[HD508]" in out


def test_console_script_finds_a_package_in_the_current_folder_and_json_stays_pure(tmp_path):
    # The `hookdoctor` console script puts its own bin folder first on sys.path, not the current
    # folder as `python -m` does; a script file in another folder reproduces that.
    bin_dir, work = tmp_path / "bin", tmp_path / "work"
    (work / "hd_userpkg").mkdir(parents=True)
    bin_dir.mkdir()
    script = bin_dir / "hookdoctor"
    script.write_text("import sys\nfrom hookdoctor.cli import main\nsys.exit(main())\n")
    (work / "hd_userpkg" / "__init__.py").write_text("")
    (work / "hd_userpkg" / "models.py").write_text(
        "import os\nfrom fixtures.factories import TinyCNN\nINPUT_SHAPE = (1, 3, 32, 32)\n\n\n"
        "def build():\n    os.system('echo noise-from-fd-1')\n    return TinyCNN()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(script), "inspect", "hd_userpkg.models:build", "--method", "gradcam", "--json"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
    assert "noise-from-fd-1" in done.stderr


# --- the library ------------------------------------------------------------------------------

X = torch.randn(1, 3, 32, 32)

LIBRARY_ERRORS = {
    # name: (model, inspect keyword arguments, exception, words the message must hold)
    "target-float": (TinyCNN, dict(example_input=X, target=1.7), InputError, ("1.7", "pass an int")),
    "target-bool": (TinyCNN, dict(example_input=X, target=True), InputError, ("a bool", "pass an int")),
    "target-str": (TinyCNN, dict(example_input=X, target="1"), InputError, ("'1'", "pass an int")),
    "shape-fraction": (TinyCNN, dict(input_shape=(1, 3, 16.7, 16)), InputError, ("16.7", "never rounded")),
    "shape-int": (TinyCNN, dict(input_shape=16), InputError, ("input_shape is 16", "(1, 3, 224, 224)")),
    "shape-huge": (TinyCNN, dict(input_shape=(1, 3, 100000, 100000)), InputError, ("120.0 GB", "smaller")),
    "methods-none": (TinyCNN, dict(example_input=X, methods=None), InputError, ("Unknown method", "'auto'")),
    "layer-int": (TinyCNN, dict(example_input=X, layer=0), InputError, ("layer=0", "dotted module name")),
    "layer-empty": (TinyCNN, dict(example_input=X, layer=""), InputError, ("layer=''", "dotted module name")),
    "empty-batch": (
        TinyCNN,
        dict(example_input=torch.randn(0, 3, 32, 32)),
        InputError,
        ("(0, 3, 32, 32)", "at least one image"),
    ),
    "nan-input": (
        TinyCNN,
        dict(example_input=torch.full((1, 3, 32, 32), float("nan"))),
        InputError,
        ("NaN", "Pass finite values"),
    ),
    "inf-input": (
        TinyCNN,
        dict(example_input=torch.full((1, 3, 32, 32), float("inf"))),
        InputError,
        ("inf", "Pass finite values"),
    ),
    "scalar-output": (ScalarOutput, dict(example_input=X), InputError, ("Tensor[]", "2-D tensor")),
    "1d-output": (VectorOutput, dict(example_input=X), InputError, ("Tensor[10]", "2-D tensor")),
}


@pytest.mark.parametrize("name", list(LIBRARY_ERRORS))
def test_library_bad_input_raises_a_clear_error(name):
    make, kwargs, error, needles = LIBRARY_ERRORS[name]
    with pytest.raises(error) as caught:
        hookdoctor.inspect(make(), **kwargs)
    message = str(caught.value)
    assert "\n" not in message.strip()
    for needle in needles:
        assert needle in message, message


def test_library_scores_that_are_not_finite_are_a_model_error_not_hd006():
    model = TinyCNN()
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    with pytest.raises(ModelRunError, match="scores contain NaN or inf"):
        hookdoctor.inspect(model, X)


def test_library_integer_likes_are_accepted_exactly():
    report = hookdoctor.inspect(TinyCNN(), X, target=torch.tensor(3), methods="gradcam")
    assert report.target == 3
    report = hookdoctor.inspect(TinyCNN(), input_shape=torch.Size([1, 3, 32, 32]), methods="gradcam")
    assert report.input_shape == (1, 3, 32, 32)


def test_check_layer_and_explain_refuse_what_is_not_a_name():
    report = hookdoctor.inspect(TinyCNN(), X, methods="gradcam")
    for bad in (None, 0, ""):
        with pytest.raises(InputError, match="report.check_layer\\('layer4'\\)"):
            report.check_layer(bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="explain\\('HD201'\\)"):
        hookdoctor.explain(None)  # type: ignore[arg-type]


def test_auto_judges_rollout_only_where_the_model_computes_token_attention():
    cnn = hookdoctor.inspect(TinyCNN(), X)  # the default is "auto"
    assert cnn.ok and cnn.methods == ("gradcam",) and cnn.rollout is None
    (note,) = [d for d in cnn.diagnostics if d.method == "rollout"]
    assert (note.code, note.severity) == ("HD514", "info") and "no token-to-token attention" in note.message
    assert "HD514" in hookdoctor.explain("HD514")

    named = hookdoctor.inspect(TinyCNN(), X, methods="all")
    assert not named.ok and [d.code for d in named.errors()] == ["HD508"]

    vit = hookdoctor.inspect(GQAViT(), X)
    assert vit.methods == ("gradcam", "rollout") and vit.rollout is not None and vit.ok


def test_auto_rollout_that_fails_on_a_model_with_token_attention_is_still_a_failure():
    # auto drops rollout only when the model has no image-wide token attention; attention that
    # exists but cannot be rolled out (a class-attention block between self-attention blocks) fails.
    report = hookdoctor.inspect(CrossBlockViT(), X)
    assert report.methods == ("gradcam", "rollout") and report.rollout is None and not report.ok
    assert [d.code for d in report.errors()] == ["HD513"]
