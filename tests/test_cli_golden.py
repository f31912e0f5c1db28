"""Golden files: the rendered report (100 columns, no colour) and the JSON, for the default
model, a ResNet and a Swin, through the command line.

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

from hookdoctor.cli import main

pytestmark = pytest.mark.golden

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("HOOKDOCTOR_UPDATE_GOLDEN") == "1"
_PACKAGES = ("torch", "transformers", "timm", "torchvision", "python")
_VERSION = re.compile(r"\b(" + "|".join(_PACKAGES) + r") \d[\w.+-]*")

CASES = {
    # name: (arguments, expected exit code)
    "report_vit": (["fixtures/report_vit", "--tree"], 0),
    "report_vit_layer": (["fixtures/report_vit", "--method", "gradcam", "--layer", "vit.layers.5"], 1),
    "resnet18": (["torchvision:resnet18"], 1),
    "swin": (["fixtures/factories.py:tiny_swin"], 1),
}


@pytest.fixture
def plain_terminal(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("COLUMNS", "100")
    for variable in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CLICOLOR_FORCE"):
        monkeypatch.delenv(variable, raising=False)


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
