"""Reading ``openai/summarize_from_feedback`` (configuration ``comparisons``) in its Hub schema: from the
Hub, a local directory (one file per split) or one local file (rows with a ``split`` field), through
:mod:`pal_mm.ingest`. Shared by :mod:`data_scripts.summary` (the length protocol) and
:mod:`data_scripts.summary_workers` (real workers).

Rows: ``info`` {id, post, title, subreddit, article}, ``summaries`` [{text, policy, note}, {...}],
``choice``, ``worker``, ``batch``, ``split``, ``extra``. A row without ``info.post`` is a CNN/DM news
comparison (``info.article``): it is never used (counted as ``non_reddit``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

from pal_mm.errors import DataError
from pal_mm.ingest import iter_rows, source_kind

HUB_NAME = "openai/summarize_from_feedback"
HUB_CONFIG = "comparisons"


def is_sft_pair(policies: list[str]) -> bool:
    """SFT-vs-SFT filter: every policy contains 'sup' and none contains 'ppo'."""
    return all("sup" in p for p in policies) and not any("ppo" in p for p in policies)


def _optional_str(value, where: str, field: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise DataError(f"{where}: field '{field}': expected a string or null, got {type(value).__name__}")
    return value or None


def parse_hub_rows(rows: Iterable[tuple[str, object]], dropped: Counter | None = None, sft_only: bool = True,
                   human_labels: bool = False) -> list[dict]:
    """Validate rows in the Hub schema and turn the Reddit, SFT-vs-SFT ones with non-null texts into
    comparisons. ``rows`` yields (location for error messages, row); ``dropped`` counts the rows left
    out by reason (``non_reddit``, ``policy``, ``null_text``). ``sft_only=False`` keeps every policy
    pair; ``human_labels`` adds the worker's ``choice`` (0: left, 1: right) to each comparison."""
    dropped = dropped if dropped is not None else Counter()
    out = []
    for where, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object, got {type(row).__name__}")
        for field, kind in (("info", dict), ("summaries", list), ("worker", str)):
            if not isinstance(row.get(field), kind):
                got = "missing" if field not in row else type(row[field]).__name__
                raise DataError(f"{where}: field '{field}': expected {kind.__name__}, got {got}")
        worker, info, summaries = row["worker"], row["info"], row["summaries"]
        if not worker.strip():
            raise DataError(f"{where}: field 'worker': empty")
        if len(summaries) != 2:
            raise DataError(f"{where}: field 'summaries': expected 2 summaries, got {len(summaries)}")
        policies, texts = [], []
        for j, s in enumerate(summaries):
            if not isinstance(s, dict):
                raise DataError(f"{where}: field 'summaries[{j}]': expected an object, got {type(s).__name__}")
            if not isinstance(s.get("policy"), str):
                raise DataError(f"{where}: field 'summaries[{j}].policy': expected a string")
            policies.append(s["policy"])
            texts.append(_optional_str(s.get("text"), where, f"summaries[{j}].text"))
        post = _optional_str(info.get("post"), where, "info.post")
        reason = ("non_reddit" if post is None else "policy" if sft_only and not is_sft_pair(policies)
                  else "null_text" if None in texts else None)
        if reason:
            dropped[reason] += 1
            continue
        c = {"worker": worker, "prompt": f"Human: {post} Assistant:", "left": " " + texts[0], "right": " " + texts[1]}
        if human_labels:
            choice = row.get("choice")
            if choice not in (0, 1) or isinstance(choice, bool):
                raise DataError(f"{where}: field 'choice': expected 0 or 1, got {choice!r}")
            c["choice"] = choice
        out.append(c)
    return out


def _split_files(directory: Path, split: str) -> list[Path]:
    """Files of one split in a local directory (first layout that matches)."""
    patterns = [f"{split}.jsonl", f"{split}.json", f"{split}.parquet", f"{split}-*.parquet", f"{split}/*.parquet",
                f"{HUB_CONFIG}/{split}/*.parquet", f"{HUB_CONFIG}/{split}-*.parquet"]
    for pattern in patterns:
        found = sorted(p for p in directory.glob(pattern) if p.is_file())
        if found:
            return found
    return []


def _split_matches(value: str, split: str) -> bool:
    """Does a row's ``split`` field belong to the requested split? ('validation' ~ 'valid1'...)"""
    return value == split or (split == "validation" and value.startswith("valid"))


def iter_split(source: str, split: str) -> Iterator[tuple[str, object]]:
    """Yield (location, row) for one split of a Hub name, a local directory or a local file."""
    kind = source_kind(source)
    if kind == "dir":
        path = Path(source).expanduser()
        files = _split_files(path, split)
        if not files:
            raise DataError(f"{path}: no file for split '{split}' (expected e.g. {split}.jsonl or {split}.parquet)")
        for f in files:
            rows, _, label = iter_rows(f)
            for i, row in enumerate(rows, 1):
                yield f"{label}: row {i}", row
    elif kind == "file":
        rows, _, label = iter_rows(source)
        for i, row in enumerate(rows, 1):
            value = row.get("split") if isinstance(row, dict) else None
            if not isinstance(value, str):
                raise DataError(f"{label}: row {i}: field 'split': expected a string (a single file needs it to pick the split)")
            if _split_matches(value, split):
                yield f"{label}: row {i}", row
    else:
        rows, _, label = iter_rows(source, split, config=HUB_CONFIG, streaming=False)
        for i, row in enumerate(rows, 1):
            yield f"{label}: row {i}", row
