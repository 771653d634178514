"""pal-mm: personalised reward models with PAL (Chen et al., ICLR 2025) for text and images.

``import pal_mm`` is cheap (no torch): the names below are loaded on first use."""

from __future__ import annotations

import importlib

from .version import __version__

_EXPORTS = {
    "AdaptConfig": "config", "PALConfig": "config", "TrainConfig": "config",
    "DataError": "errors", "PalMMError": "errors",
    "PreferenceData": "data",
    "create_head": "heads", "list_heads": "heads", "register_head": "heads",
    "PALModel": "model",
    "fit": "selection",  # training.fit, or K chosen on validation with k="auto"
    "select_k": "selection",
    "adapt": "adaptation",
    "evaluate": "evaluation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pal_mm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
