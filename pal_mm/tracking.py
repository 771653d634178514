"""Experiment tracking through accelerate's trackers: ``report_to`` is ``"none"``, ``"csv"``
(a ``metrics.csv`` written by :class:`CSVTracker`), ``"tensorboard"`` (needs the
``tensorboard`` extra) or any other tracker accelerate knows (``"wandb"``, ...). The
``metrics.jsonl`` file is written regardless."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from accelerate.tracking import GeneralTracker

from encoders.atomic import write_text

from .errors import PalMMError


class CSVTracker(GeneralTracker):
    """Appends one row per ``log`` call to ``<logging_dir>/metrics.csv``. Columns are fixed by
    the first row; keys that appear later are added by rewriting the header."""

    name = "csv"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str | os.PathLike):
        super().__init__()
        self.path = Path(logging_dir) / "metrics.csv"
        self.rows: list[dict] = []

    @property
    def tracker(self):
        return self.path

    def store_init_configuration(self, values: dict):
        pass

    def log(self, values: dict, step: int | None = None, **kwargs):
        self.rows.append({"step": step, **values})
        columns = list(dict.fromkeys(k for row in self.rows for k in row))
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, buf.getvalue())


def make_trackers(report_to: str | None, logging_dir: str | os.PathLike | None):
    """The ``log_with`` argument for ``Accelerator``: None, or a list of trackers."""
    if report_to in (None, "", "none"):
        return None
    if logging_dir is None:
        raise PalMMError(f"--report-to {report_to} needs an output directory")
    if report_to == "csv":
        return [CSVTracker("pal-mm", logging_dir)]
    if report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise PalMMError("--report-to tensorboard needs the tensorboard package: pip install 'pal-mm[tensorboard]'") from None
    return [report_to]
