"""One consistent CLI and an installable package: every flag of every command has help text (and says its
default), every command has examples, --quiet and -v everywhere (-v logs through `logging`), `import pal_mm`
and `pal-mm <cmd> --help` import no torch, and pyproject.toml declares every third-party module the code
imports, each with a minimum version."""

from __future__ import annotations

import argparse
import ast
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from pal_mm.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def test_every_flag_has_help_and_its_default_and_every_command_has_examples():
    _, subparsers = build_parser()
    assert set(subparsers) == set(COMMANDS) and {"split", "push"} <= set(COMMANDS)
    for name, p in subparsers.items():
        assert p.epilog and p.epilog.startswith("examples:\n  pal-mm " + name), name
        flags = {s for a in p._actions for s in a.option_strings}
        assert {"--quiet", "-v", "--config"} <= flags, name
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            where = f"pal-mm {name} {'/'.join(a.option_strings) or a.dest}"
            assert a.help and a.help.strip(), f"{where}: no help text"
            if a.default not in (None, False, 0, [], argparse.SUPPRESS):
                assert "default" in a.help, f"{where}: help does not say its default {a.default!r}"


@pytest.mark.parametrize("command", ["", "split --help", "push --help", "eval --help", "generate --help"])
def test_import_and_help_do_not_import_torch(command):
    code = ("import sys, pal_mm\n"
            "from pal_mm.cli import main\n"
            f"rc = main({command.split()!r}) if {bool(command)!r} else 0\n"
            "print(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-1] == "0 False", out.stderr


def test_verbose_logs_through_logging_and_quiet_silences(synthetic_dir, tmp_path, caplog, capsys):
    model = tmp_path / "m"
    assert main(["train", "--data", str(synthetic_dir / "train.jsonl"), "--epochs", "1", "--out", str(model), "--quiet"]) == 0
    argv = ["eval", "--model", str(model), "--data", str(synthetic_dir / "test.jsonl")]
    caplog.set_level(logging.DEBUG)
    assert main(argv) == 0
    assert not [r for r in caplog.records if r.name.startswith(("pal_mm", "encoders")) and r.levelno < logging.WARNING]
    caplog.clear()
    assert main([*argv, "-v"]) == 0
    info = [r.getMessage() for r in caplog.records if r.name == "pal_mm.cli" and r.levelno == logging.INFO]
    assert any(m.startswith("loaded PALModel from") for m in info) and any("pairs of 16 users" in m for m in info)
    assert not [r for r in caplog.records if r.levelno == logging.DEBUG and r.name.startswith("pal_mm")]
    caplog.clear()
    assert main([*argv, "-vv"]) == 0
    assert any(r.name == "pal_mm.embedding" and r.levelno == logging.DEBUG for r in caplog.records)
    capsys.readouterr()
    assert main([*argv, "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert logging.getLogger("pal_mm").level == logging.getLogger("encoders").level  # restored after each command


# ----- packaging ---------------------------------------------------------------------------------
MODULE_TO_DIST = {"PIL": "pillow", "yaml": "pyyaml", "open_clip": "open_clip_torch", "sklearn": "scikit-learn",
                  "skimage": "scikit-image", "huggingface_hub": "huggingface_hub", "sentence_transformers":
                  "sentence-transformers", "jinja2": "jinja2"}
FIRST_PARTY = {"pal_mm", "encoders", "experiments", "data_scripts", "examples", "tests", "my_pal_encoders"}


def declared() -> tuple[dict[str, str], set[str]]:
    """({distribution: requirement} over core and extras, the core distributions)."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for group in project["optional-dependencies"].values() for r in group]
    out = {}
    for text in reqs:
        r = Requirement(text)
        if r.name == "pal-mm":
            continue
        assert any(s.operator in (">=", "==", "~=") for s in r.specifier), f"{text}: no minimum version"
        out[r.name.lower().replace("_", "-")] = text
    core = {Requirement(t).name.lower().replace("_", "-") for t in project["dependencies"]}
    return out, core


def imported_modules(folder: Path) -> set[str]:
    names = set()
    for file in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - FIRST_PARTY


def test_pyproject_declares_every_import_with_a_minimum_version():
    deps, core = declared()
    for folder in ("pal_mm", "encoders", "examples"):
        for module in sorted(imported_modules(ROOT / folder)):
            dist = MODULE_TO_DIST.get(module, module).lower().replace("_", "-")
            assert dist in deps, f"{folder} imports {module}, which pyproject.toml does not declare ({dist})"
    assert "pyarrow" in core and "matplotlib" in deps and "gguf" in deps
    assert "matplotlib" not in core and "gguf" not in core  # optional extras ([plot], [gguf])
