"""Preference data into pal-mm's canonical rows ``{user_id, prompt, chosen, rejected}`` (one
comparison by one user per row).

* :func:`convert_pal_reference` - rows in the PAL reference code's layout ``uid, prompt, left,
  right, y`` with ``y = -1`` meaning the LEFT response is preferred and ``y = +1`` the RIGHT one
  (``y = 0`` is a tie: dropped and counted).
* :func:`convert_pickapic` - Pick-a-Pic rows (``caption``, ``jpg_0`` / ``jpg_1`` as encoded bytes,
  ``datasets`` image dicts or file paths, ``label_0`` / ``label_1``, ``user_id``); the image with
  the higher label is ``chosen`` and ties are dropped and counted (the rule of
  :func:`pal_mm.ingest.pickapic_winner`); images go to an :class:`~pal_mm.image_store.ImageStore`.
* :func:`convert_file` - what ``pal-mm convert`` runs: read (:mod:`pal_mm.ingest`), convert,
  write atomically.

Every converted row is validated like training data (:class:`pal_mm.data.RowValidator`), with
messages in the input's row numbers and column names, so what ``convert`` writes loads.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from encoders.atomic import write_jsonl

from .data import RowValidator
from .errors import DataError, PalMMError
from .image_store import ImageStore, image_bytes
from .ingest import first_line, iter_rows, pickapic_winner, shown, take


FORMATS = ("pal-reference", "pickapic")
PICKAPIC_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1", "user_id")


# ------------------------------------------------------------------------------------------
# PAL reference layout
# ------------------------------------------------------------------------------------------
def _label_y(value: Any, where: str) -> int:
    """The reference label: -1 (left preferred), +1 (right preferred) or 0 (tie)."""
    bad = f"{where}: column 'y': expected -1 (left preferred) or +1 (right preferred), got {shown(value, 40)!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DataError(bad)
    try:
        y = float(value)
    except (ValueError, OverflowError):
        raise DataError(bad) from None
    for target in (-1, 0, 1):
        if math.isclose(y, target, abs_tol=1e-6):
            return target
    raise DataError(bad)


def convert_pal_reference(rows: Iterable[dict], source: str = "<rows>", base_dir: str | Path | None = None,
                          out_dir: str | Path | None = None) -> tuple[list[dict], dict]:
    """PAL reference rows (``uid`` or ``user_id``, ``prompt``, ``left``, ``right``, ``y``) ->
    canonical rows. ``y = -1``: left is chosen; ``y = +1``: right is chosen; ``y = 0``: a tie,
    dropped. Relative image paths (resolved against ``base_dir``) are rewritten relative to
    ``out_dir``. Returns (rows, counts)."""
    out = Path(out_dir) if out_dir is not None else None
    result: list[dict] = []
    counts: Counter = Counter()
    validator: RowValidator | None = None
    uid_col = "uid"
    for r, row in enumerate(rows, 1):
        where = f"{source}: row {r}"
        counts["rows_read"] += 1
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a mapping, got {type(row).__name__}")
        if validator is None:
            uid_col = "user_id" if "uid" not in row and "user_id" in row else "uid"
            validator = RowValidator(source, base_dir, names={"user_id": uid_col, "chosen": "left", "rejected": "right"})
        missing = [c for c in (uid_col, "prompt", "left", "right", "y") if c not in row]
        if missing:
            raise DataError(f"{where}: missing column(s) {', '.join(missing)} (need {uid_col}, prompt, left, right, y)")
        y = _label_y(row["y"], where)
        if y == 0:
            counts["ties_dropped"] += 1
            continue
        validator.add({"user_id": row[uid_col], "prompt": row["prompt"], "chosen": row["left"], "rejected": row["right"]}, where)
        v = validator.out
        prompt = _rebase(row["prompt"], v["prompt"][-1], validator.kinds["prompt"], out)
        left = _rebase(row["left"], v["chosen"][-1], validator.kinds["item"], out)
        right = _rebase(row["right"], v["rejected"][-1], validator.kinds["item"], out)
        chosen, rejected = (left, right) if y == -1 else (right, left)
        result.append({"user_id": v["user_id"][-1], "prompt": prompt, "chosen": chosen, "rejected": rejected})
    counts["pairs"] = len(result)
    return result, dict(counts)


def _rebase(raw: Any, resolved: Any, kind: str, out_dir: Path | None) -> Any:
    """Keep a relative image path valid when the converted file lives in another folder
    (``resolved`` is the validator's absolute path)."""
    if kind != "image" or out_dir is None or Path(raw).expanduser().is_absolute():
        return raw
    return os.path.relpath(resolved, out_dir.resolve())


# ------------------------------------------------------------------------------------------
# Pick-a-Pic
# ------------------------------------------------------------------------------------------
def convert_pickapic(rows: Iterable[dict], image_dir: str | Path | ImageStore, image_prefix: str = "", source: str = "<rows>",
                     base_dir: str | Path | None = None) -> tuple[list[dict], dict]:
    """Pick-a-Pic rows -> canonical rows; images are stored in ``image_dir`` (a folder or an
    :class:`ImageStore`) and referenced as ``image_prefix + file name``. Returns (rows, counts)."""
    store = image_dir if isinstance(image_dir, ImageStore) else ImageStore(image_dir)
    result: list[dict] = []
    counts: Counter = Counter()
    validator = RowValidator(source, None, names={"prompt": "caption"})
    for r, row in enumerate(rows, 1):
        counts["rows_read"] += 1
        pair = pickapic_pair(row, f"{source}: row {r}", store, base_dir, validator, image_prefix)
        if pair is None:
            counts["ties_dropped"] += 1
        else:
            result.append(pair)
    counts["pairs"] = len(result)
    counts["images"] = len({n for row in result for n in (row["chosen"], row["rejected"])})
    return result, dict(counts)


def pickapic_pair(row: Any, where: str, store: ImageStore, base_dir: str | Path | None, validator: RowValidator,
                  image_prefix: str = "") -> dict | None:
    """One Pick-a-Pic row -> a canonical row (None for a tie): the preferred image is
    ``chosen``, both images are stored in ``store`` and referenced as ``image_prefix + NAME``;
    the id and caption are checked by ``validator`` (a :class:`RowValidator` shared by the rows)."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a mapping, got {type(row).__name__}")
    missing = [c for c in PICKAPIC_COLUMNS if c not in row]
    if missing:
        raise DataError(f"{where}: missing column(s) {', '.join(missing)} (need {', '.join(PICKAPIC_COLUMNS)})")
    winner = pickapic_winner(row["label_0"], row["label_1"], where)
    if winner is None:
        return None
    cols = ("jpg_0", "jpg_1") if winner == 0 else ("jpg_1", "jpg_0")
    names = [store_image(store, row[c], base_dir, f"{where}: column '{c}'") for c in cols]
    validator.names.update(chosen=cols[0], rejected=cols[1])
    validator.add({"user_id": row["user_id"], "prompt": row["caption"],
                   "chosen": str(store.path(names[0])), "rejected": str(store.path(names[1]))}, where)
    return {"user_id": validator.out["user_id"][-1], "prompt": validator.out["prompt"][-1],
            "chosen": image_prefix + names[0], "rejected": image_prefix + names[1]}


def store_image(store: ImageStore, value: Any, base_dir: str | Path | None, where: str) -> str:
    """Read an image column's value (:func:`image_bytes`) into ``store``; returns its file name.
    Errors name ``where`` (``FILE: row N: column 'x'``)."""
    try:
        data = image_bytes(value, base_dir)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    return store.put_bytes(data, where)


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------
def default_image_dir(out: str | Path) -> Path:
    """``OUT.jsonl`` -> ``OUT_images/`` next to it."""
    out = Path(out)
    return out.with_name(out.stem + "_images")


def _missing_dirs(directory: Path) -> list[Path]:
    """``directory`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    for d in (directory, *directory.parents):
        if d.exists():
            break
        missing.append(d)
    return missing


def convert_file(fmt: str, data: str | os.PathLike, out: str | os.PathLike, image_dir: str | os.PathLike | None = None,
                 max_rows: int | None = None, split: str = "train", overwrite: bool = False) -> dict:
    """Convert ``data`` (format ``fmt``) to canonical JSON lines at ``out``, atomically: on any
    error nothing is left behind (no output file, no image, no folder it created). Returns the
    counts."""
    if fmt not in FORMATS:
        raise PalMMError(f"--from must be one of {', '.join(FORMATS)}, got {shown(fmt)!r}")
    out = Path(out).expanduser()
    if out.suffix.lower() != ".jsonl":
        raise PalMMError(f"{out}: the output must be a .jsonl file")
    if max_rows is not None and max_rows < 1:
        raise PalMMError(f"--max-rows must be >= 1, got {max_rows}")
    images = Path(image_dir).expanduser() if image_dir else default_image_dir(out)
    try:
        if out.exists() and not overwrite:
            raise PalMMError(f"{out}: output file exists (pass --overwrite to replace it)")
        created = sorted(set(_missing_dirs(out.parent)) | (set(_missing_dirs(images)) if fmt == "pickapic" else set()),
                         key=lambda p: len(p.parts), reverse=True)
    except (OSError, ValueError) as e:  # a name too long, a NUL byte
        raise PalMMError(f"{shown(str(out))}: cannot write ({first_line(e)})") from None
    rows_iter, base_dir, label = iter_rows(data, split)
    rows_iter = take(rows_iter, max_rows)
    tmp: Path | None = None
    moved: list[Path] = []
    try:
        if fmt == "pal-reference":
            rows, counts = convert_pal_reference(rows_iter, label, base_dir, out.parent)
            _check_nonempty(rows, counts, label)
        else:
            prefix = Path(os.path.relpath(images.resolve(), out.parent.resolve())).as_posix() + "/"
            images.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{images.name}.tmp-", dir=images.parent))
            rows, counts = convert_pickapic(rows_iter, tmp, prefix, label, base_dir)
            _check_nonempty(rows, counts, label)
            images.mkdir(exist_ok=True)
            for f in sorted(tmp.iterdir()):  # content-addressed names: merging never overwrites another image
                if not (images / f.name).exists():
                    os.replace(f, images / f.name)
                    moved.append(images / f.name)
            counts["image_dir"] = str(images)
        write_jsonl(out, rows)
    except OSError as e:
        _undo(tmp, moved, created)
        raise PalMMError(f"{shown(e.filename or out)}: cannot write ({first_line(e)})") from None
    except BaseException:
        _undo(tmp, moved, created)
        raise
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    return counts


def _undo(tmp: Path | None, files: list[Path], dirs: list[Path]) -> None:
    """Remove the temporary image folder, the images moved into place and the folders this
    conversion created."""
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    for f in files:
        f.unlink(missing_ok=True)
    for d in dirs:  # deepest first; only empty ones (never a folder someone else filled)
        try:
            d.rmdir()
        except OSError:
            pass


def _check_nonempty(rows: list[dict], counts: dict, label: str) -> None:
    if not rows:
        ties = counts.get("ties_dropped", 0)
        raise DataError(f"{label}: no comparisons left to write ({counts.get('rows_read', 0)} rows read, {ties} ties dropped)")
