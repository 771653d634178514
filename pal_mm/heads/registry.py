"""Head registry in the timm / encoder style: ``register_head``, ``create_head``, ``list_heads``.

Built-in heads are the modules of this package (each registers itself when imported; they are
imported on the first query, so a new head type is one new file here). Third-party heads register
with the decorator or through the ``pal_mm.heads`` entry-point group of their own package.
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from importlib.metadata import entry_points

from ..config import PALConfig
from ..errors import PalMMError
from .base import PreferenceHead

ENTRY_POINT_GROUP = "pal_mm.heads"
_REGISTRY: dict[str, type[PreferenceHead]] = {}
_LOADED = False
_NOT_HEADS = {"base", "registry", "projectors"}


def register_head(name: str):
    """Class decorator: ``@register_head("my-head")`` on a :class:`PreferenceHead` subclass."""

    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, PreferenceHead)):
            raise PalMMError(f"head {name!r} must be a PreferenceHead subclass, got {cls!r}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise PalMMError(f"head name {name!r} is already registered")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return deco


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    package = __name__.rsplit(".", 1)[0]
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if info.name not in _NOT_HEADS and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        try:
            register_head(ep.name)(ep.load())
        except Exception as e:  # a broken plug-in must not break pal-mm itself
            warnings.warn(f"could not load head entry point {ep.name!r} ({ep.value}): {e}")


def list_heads() -> list[str]:
    """Sorted names of all registered heads."""
    _load()
    return sorted(_REGISTRY)


def get_head_class(name: str) -> type[PreferenceHead]:
    _load()
    if name not in _REGISTRY:
        raise PalMMError(f"unknown head type {name!r}; registered heads: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_head(config: PALConfig, num_users: int = 0) -> PreferenceHead:
    """The head ``config.model_type`` built from ``config`` with ``num_users`` user rows."""
    return get_head_class(config.model_type)(config, num_users=num_users)
