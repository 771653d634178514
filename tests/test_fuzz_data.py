"""Fuzz: several hundred malformed data files in every supported format (jsonl, json, csv, parquet,
save_to_disk directories, image-path columns, convert inputs; generated from a seed by
tests/fuzz_cases.py) run in-process through the CLI entry point ``pal_mm.cli.main``.

For every file: no traceback (``main`` returns 0, or 2 with one ``pal-mm: error:`` line on
stderr), a malformed file is never accepted and a valid one never refused, a model saved with
exit 0 holds only finite tensors, and a failed run leaves no output and no temporary file. The
counts are printed (``PAL_MM_FUZZ_SEED=N`` fuzzes other files).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fuzz_cases import Case, all_cases  # tests/fuzz_cases.py (pytest puts tests/ on sys.path)

from pal_mm.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TRAIN = ["--encoder", "precomputed", "--epochs", "1", "--quiet", "--no-cache", "--batch-size", "8", "--dim", "4",
         "--projector", "linear"]
PROBLEMS = ("tracebacks", "bad_messages", "leftovers", "accepted_malformed", "refused_valid", "non_finite")


@dataclass
class Tally:
    """Counts, and per kind of problem (PROBLEMS, plus the lead's ``lead_tracebacks`` and
    ``huge_non_finite``) the cases that showed it."""

    files: int = 0
    unrepresentable: int = 0
    malformed: int = 0
    exit_0: int = 0
    exit_2: int = 0
    problems: dict = field(default_factory=lambda: defaultdict(list))
    formats: set = field(default_factory=set)
    seconds: float = 0.0


# ----- running ----------------------------------------------------------------------------------
def run_cli(argv: list[str]) -> tuple[int | None, str, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(argv)
        except BaseException:  # noqa: BLE001 - a traceback is what the fuzz counts
            return None, traceback.format_exc(), out.getvalue()
    return rc, err.getvalue(), out.getvalue()


def listing(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


def finite_model(directory: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    tensors = [t for f in directory.glob("*.safetensors") for t in load_file(f).values()]
    return bool(tensors) and all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


def check(case: Case, d: Path, data: Path, tally: Tally) -> None:
    out = case.out(d) if case.out else d / ("out.jsonl" if case.command != "train" else "model")
    extra = case.args(d) if case.args else []
    before = listing(d)
    argv = (["train", "--data", str(data), "--out", str(out), *TRAIN, *extra] if case.command == "train" else
            ["convert", "--from", case.command, "--data", str(data), "--out", str(out), *extra])
    rc, err, _ = run_cli(argv)
    label = f"{case.name}: {err.strip().splitlines()[-1] if err.strip() else rc}"
    if rc is None:
        tally.problems["lead_tracebacks" if case.lead else "tracebacks"].append(f"{case.name}: {err.strip().splitlines()[-1][:200]}")
        return
    tally.exit_0 += rc == 0
    tally.exit_2 += rc == 2
    if rc == 2:
        lines = err.strip().splitlines()
        if len(lines) != 1 or not lines[0].startswith("pal-mm: error: ") or "Traceback" in err:
            tally.problems["bad_messages"].append(f"{case.name}: {err!r}")
        if listing(d) != before:
            tally.problems["leftovers"].append(f"{case.name}: {sorted(listing(d) - before)}")
        if case.expect == "ok":
            tally.problems["refused_valid"].append(label)
        return
    if rc != 0:
        tally.problems["bad_messages"].append(f"{case.name}: exit {rc}")
        return
    if case.expect == "error":
        tally.problems["accepted_malformed"].append(label)
    if case.command == "train":
        if not finite_model(out):
            tally.problems["huge_non_finite" if case.huge else "non_finite"].append(case.name)
    else:  # a converted file must train like any other data
        model = d / "from_converted"
        rc2, err2, _ = run_cli(["train", "--data", str(out), "--out", str(model), *TRAIN])
        if rc2 is None:
            tally.problems["tracebacks"].append(f"{case.name} (training on the output): {err2.strip().splitlines()[-1]}")
        elif rc2 == 0 and not finite_model(model):
            tally.problems["non_finite"].append(case.name + " (converted)")


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory) -> Tally:
    import datasets

    datasets.disable_progress_bars()
    root = tmp_path_factory.mktemp("fuzz")
    tally, t0 = Tally(), time.perf_counter()
    for i, case in enumerate(all_cases()):
        d = root / f"{i:04d}"
        d.mkdir()
        try:
            data = case.write(d)
        except Exception:  # a value the format cannot hold (e.g. a bool in a parquet list<double> column)
            tally.unrepresentable += 1
            continue
        tally.files += 1
        tally.malformed += case.expect != "ok"
        tally.formats.add(case.name.split("/")[0])
        check(case, d, data, tally)
        shutil.rmtree(d, ignore_errors=True)
    tally.seconds = time.perf_counter() - t0
    return tally


def test_fuzz_counts(fuzz, capsys):
    n = {k: len(v) for k, v in fuzz.problems.items()}
    with capsys.disabled():
        print(f"\nfuzz: {fuzz.files} files ({fuzz.malformed} malformed), exit 0: {fuzz.exit_0}, exit 2: {fuzz.exit_2}; "
              f"tracebacks {n.get('tracebacks', 0)} (+{n.get('lead_tracebacks', 0)} for train --out), non-finite models "
              f"{n.get('non_finite', 0)} (+{n.get('huge_non_finite', 0)} from huge float32 values, the training loop's to catch), "
              f"leftovers {n.get('leftovers', 0)}, accepted malformed {n.get('accepted_malformed', 0)}, refused valid "
              f"{n.get('refused_valid', 0)}, bad messages {n.get('bad_messages', 0)}; {fuzz.seconds:.1f} s")
    assert fuzz.files >= 300 and fuzz.malformed >= 300
    assert {"jsonl", "json", "csv", "parquet", "saved", "image", "convert-ref", "convert-pickapic", "convert-out"} <= fuzz.formats
    assert fuzz.exit_0 >= 20 and fuzz.exit_2 >= 250  # both outcomes are exercised


def test_fuzz_no_traceback_leftover_non_finite_model_or_wrong_outcome(fuzz):
    """0 tracebacks, one-line messages, nothing left behind, malformed refused, valid accepted,
    only finite models."""
    assert {k: fuzz.problems[k] for k in PROBLEMS} == {k: [] for k in PROBLEMS}


def test_fuzz_train_output_paths(fuzz):
    """--out paths the OS refuses (under a file, names too long) are one-line errors too."""
    assert fuzz.problems["lead_tracebacks"] == []


def test_fuzz_huge_float32_values_do_not_give_non_finite_models(fuzz):
    """Values inside float32 range but huge (1e30, 3e38) are stopped by the training loop's checks."""
    assert fuzz.problems["huge_non_finite"] == []
