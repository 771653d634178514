"""Progress bars of the encoder layer (extraction through the cache, the SmolLM2 GGUF conversion,
model downloads) and the one switch that turns them off.

``progress=None`` everywhere means "the process-wide setting": :func:`set_progress` (the CLI's
``--quiet`` calls ``set_progress(False)``), which by default is ``None`` = tqdm's own rule
(bars only on a terminal, so logs and captured output stay clean).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

_ENABLED: bool | None = None


def set_progress(enabled: bool | None) -> None:
    """``True``: always show bars; ``False``: never; ``None``: only on a terminal (default)."""
    global _ENABLED
    _ENABLED = None if enabled is None else bool(enabled)


def progress_setting(progress: bool | None = None) -> bool | None:
    """An explicit ``progress`` argument, else the process-wide setting."""
    return _ENABLED if progress is None else bool(progress)


def bars_off(progress: bool | None = None) -> bool:
    """True when bars are switched off explicitly (not merely hidden off a terminal)."""
    return progress_setting(progress) is False


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", progress: bool | None = None):
    """A tqdm bar (to stderr) following ``progress`` / the process-wide setting."""
    from tqdm.auto import tqdm

    setting = progress_setting(progress)
    return tqdm(total=total, desc=desc, unit=unit, disable=None if setting is None else not setting,
                leave=False, dynamic_ncols=True)


@contextlib.contextmanager
def module_tqdm_silenced(module_name: str, silence: bool = True) -> Iterator[None]:
    """Turn off the bars of a library module that calls ``tqdm`` directly (e.g. transformers'
    GGUF loader): its module-level ``tqdm`` is swapped for a disabled one for the block."""
    import importlib

    module = importlib.import_module(module_name) if silence else None
    original = getattr(module, "tqdm", None)
    if not silence or original is None:
        yield
        return
    module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        module.tqdm = original
