"""Golden files: the rendered report (100 columns, no colour) and the JSON, for the default
model, a ResNet and a Swin, through the command line.

The rendered report comes in two levels of detail: piped (stdout is not a terminal) and with
``-v`` it is the full report; on a terminal it is the compact one. ``TTY_COMPATIBLE=1`` is
rich's own switch for "this output is a terminal", so the tests take the CLI's real path.

Regenerate after an intended change with ``HOOKDOCTOR_UPDATE_GOLDEN=1 pytest tests/test_cli_golden.py``
and review the diff. Package versions are masked so upgrades do not break the files.
The files record the main CI stage's world (transformers 5.x: ``vit.layers.N``, SDPA), so
.ci/run's compatibility stages deselect them (``-m "not golden"``); what differs there is
asserted by the version-aware tests instead.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from fixtures.pathological import INPUTS as PATHOLOGICAL_INPUTS
from hookdoctor.cli import main

pytestmark = pytest.mark.golden

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("HOOKDOCTOR_UPDATE_GOLDEN") == "1"
_PACKAGES = ("torch", "transformers", "timm", "torchvision", "python")
_VERSION = re.compile(r"\b(" + "|".join(_PACKAGES) + r") \d[\w.+-]*")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

CASES = {
    # name: (arguments, expected exit code)
    "report_vit": (["fixtures/report_vit", "--tree"], 0),
    "report_vit_layer": (["fixtures/report_vit", "--method", "gradcam", "--layer", "vit.layers.5"], 1),
    "resnet18": (["torchvision:resnet18"], 0),  # auto: rollout does not apply (HD514), Grad-CAM works
    "swin": (["fixtures/factories.py:tiny_swin"], 0),  # window attention: rollout does not apply
}


@pytest.fixture
def plain_terminal(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("COLUMNS", "100")
    for variable in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CLICOLOR_FORCE"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def terminal(monkeypatch):
    """stdout counts as a terminal 100 columns wide; NO_COLOR keeps colour out (bold stays)."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("NO_COLOR", "1")
    for variable in ("FORCE_COLOR", "TTY_INTERACTIVE", "CLICOLOR_FORCE"):
        monkeypatch.delenv(variable, raising=False)


def _screen(out: str) -> str:
    """What the terminal shows: the escape codes a terminal gets (bold, italic) stripped."""
    assert "\x1b[" in out, "the report was not written as to a terminal"
    return _mask_text(_ANSI.sub("", out))


def _mask_text(text: str) -> str:
    lines = [line.rstrip() for line in _VERSION.sub(r"\1 X", text).splitlines()]
    return "\n".join(lines) + "\n"


def _mask_json(report: dict[str, Any]) -> dict[str, Any]:
    for package in _PACKAGES:
        if report["environment"].get(package):
            report["environment"][package] = "X"
    return report


def _check(path: Path, actual: str) -> None:
    if UPDATE or not path.exists():
        path.write_text(actual, encoding="utf-8")
        if not UPDATE:
            pytest.fail(f"{path.name} did not exist and was written; review it and rerun")
        return
    assert actual == path.read_text(encoding="utf-8"), (
        f"{path.name} differs; if the change is intended, regenerate with HOOKDOCTOR_UPDATE_GOLDEN=1"
    )


@pytest.mark.parametrize("name", list(CASES))
def test_rendered_report(name, capsys, plain_terminal):
    args, expected = CASES[name]
    assert main(["inspect", *args]) == expected
    out = capsys.readouterr().out
    assert "\x1b[" not in out
    _check(GOLDEN / f"{name}.txt", _mask_text(out))


@pytest.mark.parametrize("name", ["report_vit", "resnet18", "swin"])
def test_json_report(name, capsys, plain_terminal):
    args, expected = CASES[name]
    args = [a for a in args if a != "--tree"]
    assert main(["inspect", *args, "--json"]) == expected
    report = json.loads(capsys.readouterr().out)
    _check(GOLDEN / f"{name}.json", json.dumps(_mask_json(report), indent=2, ensure_ascii=False) + "\n")


# --- on a terminal ------------------------------------------------------------------------------

TERMINAL_CASES = {
    # name: (arguments, expected exit code, most lines allowed); the golden files show a screen
    "report_vit_compact": (["fixtures/report_vit"], 0, 40),  # the seed ViT fits in 40 lines
    "swin_compact_tree": (["fixtures/factories.py:tiny_swin", "--tree"], 0, None),  # auto: rollout n/a (HD514)
}


@pytest.mark.parametrize("name", list(TERMINAL_CASES))
def test_compact_report_on_a_terminal(name, capsys, terminal):
    args, expected, most_lines = TERMINAL_CASES[name]
    assert main(["inspect", *args]) == expected
    screen = _screen(capsys.readouterr().out)
    _check(GOLDEN / f"{name}.txt", screen)
    assert screen.splitlines()[-1].endswith("hookdoctor explain CODE or -v for details")
    if most_lines is not None:
        assert len(screen.splitlines()) <= most_lines


def test_verbose_on_a_terminal_is_the_piped_report(capsys, terminal):
    """-v gives the full report, exactly what a pipe or a CI log gets (report_vit.txt)."""
    args, expected = CASES["report_vit"]
    assert main(["inspect", *args, "-v"]) == expected
    _check(GOLDEN / "report_vit.txt", _screen(capsys.readouterr().out))


# Every fixture model that the command line can build: the seed ViT folder, the factories meant
# for the CLI, the pathological models (at their input shapes) and the attention models.
FIXTURE_MODELS = [
    ["fixtures/report_vit"],
    *(
        [f"fixtures/factories.py:{name}"]
        for name in ("tiny_cnn", "tiny_swin", "tiny_torchvision_vit", "data_parallel_cnn")
    ),
    *(
        [f"fixtures/pathological.py:{name}", "--input-shape", ",".join(map(str, shape))]
        for name, shape in PATHOLOGICAL_INPUTS.items()
    ),
    *(
        [f"fixtures/attention_models.py:{name}", "--input-shape", "1,3,32,32"]
        for name in ("GQAViT", "FoldedHeadsViT", "CrossBlockViT")
    ),
]


@pytest.mark.parametrize("args", FIXTURE_MODELS, ids=lambda args: args[0].rpartition("/")[2])
def test_compact_report_of_every_fixture_fits_a_screen(args, capsys, terminal):
    assert main(["inspect", *args]) in (0, 1)
    screen = _screen(capsys.readouterr().out).splitlines()
    assert len(screen) < 45, "\n".join(screen)
    assert screen[-1].startswith(("✓", "!", "✗"))  # the verdict is the last thing read, too
