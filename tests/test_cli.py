"""The command line: exit codes, error paths, explain/codes, --json purity.

Most tests call ``hookdoctor.cli.main`` in-process (a subprocess costs seconds of imports);
a few run the installed command for what only a real process shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from versions import vit_block

from fixtures.factories import TinyCNN
from hookdoctor.cli import main

ROOT = Path(__file__).resolve().parents[1]
VIT = str(ROOT / "fixtures" / "report_vit")
CNN = f"{ROOT / 'fixtures' / 'factories.py'}:tiny_cnn"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_error(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 2
    assert "Traceback" not in out + err
    assert err.startswith("error: ")
    for needle in needles:
        assert needle in " ".join(err.split()), err  # rich wraps long lines


# --- explain / codes ------------------------------------------------------------------------


def test_explain_prints_the_long_explanation(capsys):
    code, out, _ = run(capsys, "explain", "hd201")
    assert code == 0 and out.startswith("HD201 no-gradient-to-patches") and "layernorm_before" in out


def test_explain_unknown_code(capsys):
    assert_clean_error(*run(capsys, "explain", "HD20"), "no diagnostic code 'HD20'", "Did you mean")


def test_codes_as_table_and_json(capsys):
    code, out, _ = run(capsys, "codes")
    assert code == 0 and "HD201" in out and "HD601" in out
    code, out, _ = run(capsys, "codes", "--json")
    entries = json.loads(out)
    assert code == 0 and {"code", "severity", "family", "explanation"} <= set(entries[0])


# --- inspect: exit codes --------------------------------------------------------------------


@pytest.mark.transformers
def test_default_model_json_is_exactly_the_report(capsys):
    code, out, _ = run(capsys, "inspect", VIT, "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True and report["schema_version"] == 1
    assert report["gradcam"]["layer_name"] == f"{vit_block(5)}.layernorm_before"


@pytest.mark.transformers
def test_failing_layer_exits_1_and_says_why(capsys):
    code, out, _ = run(capsys, "inspect", VIT, "--method", "gradcam", "--layer", vit_block(5))
    assert code == 1
    assert f"[✗] layer {vit_block(5)}" in out and "error[HD201]" in out
    assert f"{vit_block(5)}.layernorm_before" in out  # the spec that works is still offered


def test_cnn_without_attention_fails_rollout_only_when_rollout_is_named(capsys):
    code, out, _ = run(capsys, "inspect", CNN, "--method", "all")
    assert code == 1
    assert "[✓] Grad-CAM" in out and "[✗] attention rollout" in out
    code, _, _ = run(capsys, "inspect", CNN, "--method", "gradcam")
    assert code == 0


def test_strict_counts_warnings(capsys):
    # torchvision's ViT has a zero-initialised head with random weights: a warning (HD003).
    tv_vit = CNN.replace("tiny_cnn", "tiny_torchvision_vit")
    args = ("inspect", tv_vit, "--method", "gradcam")
    code, out, _ = run(capsys, *args, "--json")
    report = json.loads(out)
    warnings = [d for d in report["diagnostics"] if d["severity"] == "warning"]
    assert warnings and code == (0 if report["ok"] else 1)
    code, _, _ = run(capsys, *args, "--json", "--strict")
    assert code == 1


def test_captum_backend_snippet(capsys):
    code, out, _ = run(capsys, "inspect", CNN, "--method", "gradcam", "--backend", "captum")
    assert code == 0 and "captum" in out.lower()


# --- inspect: bad inputs exit 2 with one paragraph ------------------------------------------


def test_missing_file(capsys, tmp_path):
    assert_clean_error(*run(capsys, "inspect", str(tmp_path / "no-such-model")), "does not exist")


def test_bad_factory_and_factory_raising(capsys):
    assert_clean_error(*run(capsys, "inspect", CNN + "x"), "no function 'tiny_cnnx'", "Did you mean tiny_cnn")
    raises = CNN.replace("tiny_cnn", "raises")
    assert_clean_error(*run(capsys, "inspect", raises), "RuntimeError: weights file /data/ckpt.pt not found")


@pytest.mark.transformers
def test_wrong_input_shape(capsys):
    assert_clean_error(*run(capsys, "inspect", VIT, "--input-shape", "1,3,48,48"))
    with pytest.raises(SystemExit) as info:  # argparse: exit 2 with usage
        main(["inspect", VIT, "--input-shape", "1,3"])
    assert info.value.code == 2
    assert "three, four or five positive sizes" in capsys.readouterr().err


def test_state_dict_pickle_and_torchscript_files(capsys, tmp_path):
    torch.save(TinyCNN().state_dict(), tmp_path / "sd.pt")
    torch.save(TinyCNN(), tmp_path / "full.pt")
    torch.jit.script(TinyCNN()).save(str(tmp_path / "ts.pt"))
    assert_clean_error(*run(capsys, "inspect", str(tmp_path / "sd.pt")), "is a state_dict")
    assert_clean_error(*run(capsys, "inspect", str(tmp_path / "full.pt")), "--trust-pickle")
    assert_clean_error(*run(capsys, "inspect", str(tmp_path / "ts.pt")), "TorchScript")
    code, _, _ = run(
        capsys,
        "inspect",
        str(tmp_path / "full.pt"),
        "--trust-pickle",
        "--input-shape",
        "1,3,32,32",
        "--method",
        "gradcam",
    )
    assert code == 0


@pytest.mark.timm
def test_unknown_timm_name_and_missing_package(capsys, monkeypatch):
    assert_clean_error(
        *run(capsys, "inspect", "timm:vit_tinny_patch16_224"), "Did you mean vit_tiny_patch16_224"
    )
    monkeypatch.setitem(sys.modules, "timm", None)
    assert_clean_error(*run(capsys, "inspect", "timm:resnet18"), "pip install 'hookdoctor[timm]'")


def test_input_that_cannot_be_inferred(capsys):
    # The class itself is a factory too, but without the input_shape the tiny_cnn factory states.
    assert_clean_error(*run(capsys, "inspect", CNN.replace("tiny_cnn", "TinyCNN")), "--input-shape")


def test_layer_without_gradcam_is_an_argument_error(capsys):
    assert_clean_error(
        *run(capsys, "inspect", CNN, "--method", "rollout", "--layer", "features.0"), "--method gradcam"
    )


def test_debug_shows_the_traceback(capsys, tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        main(["inspect", str(tmp_path / "none.pt"), "--debug"])


# --- real processes -------------------------------------------------------------------------


def _hookdoctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hookdoctor", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_help_explain_and_codes_do_not_import_torch():
    probe = (
        "import sys, contextlib, io\n"
        "from hookdoctor.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    for argv in (['explain', 'HD201'], ['codes'], ['codes', '--json']):\n"
        "        assert main(argv) == 0\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'timm')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.transformers
def test_hf_id_from_the_local_cache_json_stays_clean(tmp_path):
    # A model id whose config is in the HF cache builds with random weights, offline; with
    # transformers as chatty as it gets, stdout still holds only the JSON report.
    snapshot = tmp_path / "hub" / "models--hookdoctor--report-vit" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text((ROOT / "fixtures" / "report_vit" / "config.json").read_text())
    refs = tmp_path / "hub" / "models--hookdoctor--report-vit" / "refs"
    refs.mkdir()
    (refs / "main").write_text("0" * 40)
    result = _hookdoctor(
        "inspect",
        "hf:hookdoctor/report-vit",
        "--method",
        "gradcam",
        "--json",
        env={"HF_HUB_CACHE": str(tmp_path / "hub"), "TRANSFORMERS_VERBOSITY": "info"},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["gradcam"]["layer_name"] == f"{vit_block(5)}.layernorm_before"
    assert "\x1b[" not in result.stdout


def test_output_selects_the_head_and_clears_the_warning(capsys):
    two_heads = f"{ROOT / 'fixtures' / 'pathological.py'}:tuple_output_model"
    args = ("inspect", two_heads, "--input-shape", "1,3,16,16", "--method", "gradcam", "--json", "--strict")
    code, out, _ = run(capsys, *args)
    assert code == 1 and "HD002" in [d["code"] for d in json.loads(out)["diagnostics"]]
    code, out, _ = run(capsys, *args, "--output", "1")
    assert code == 0 and "HD002" not in [d["code"] for d in json.loads(out)["diagnostics"]]
    assert_clean_error(*run(capsys, *args, "--output", "7"), "choose one of")
