"""Encoder registry in the timm / open_clip style: ``register_encoder``, ``create_encoder``,
``list_encoders``.

Third-party encoders register themselves either by importing a module that uses the
``@register_encoder("name")`` decorator, or through the ``pal_mm.encoders`` entry-point group
of their own package (``name = "my_pkg.module:MyEncoder"``); entry points are loaded lazily the
first time the registry is queried.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Callable

from .errors import EncoderError

from .base import Encoder

_REGISTRY: dict[str, type[Encoder] | Callable[..., Encoder]] = {}
_ENTRY_POINTS_LOADED = False
ENTRY_POINT_GROUP = "pal_mm.encoders"


def register_encoder(name: str):
    """Class (or factory) decorator: ``@register_encoder("my-encoder")``."""

    def deco(obj):
        if name in _REGISTRY and _REGISTRY[name] is not obj:
            raise EncoderError(f"encoder name {name!r} is already registered")
        _REGISTRY[name] = obj
        if isinstance(obj, type):
            obj.name = name
        return obj

    return deco


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        try:
            obj = ep.load()
        except Exception as e:  # a broken plug-in must not break pal-mm itself
            import warnings

            warnings.warn(f"could not load encoder entry point {ep.name!r} ({ep.value}): {e}")
            continue
        register_encoder(ep.name)(obj)


def list_encoders() -> list[str]:
    """Sorted names of all registered encoders (built-ins and plug-ins)."""
    _load_entry_points()
    return sorted(_REGISTRY)


def get_encoder_class(name: str):
    _load_entry_points()
    if name not in _REGISTRY:
        raise EncoderError(f"unknown encoder {name!r}; registered encoders: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_encoder(name: str, **kwargs) -> Encoder:
    """Instantiate a registered encoder by name."""
    enc = get_encoder_class(name)(**kwargs)
    if not isinstance(enc, Encoder):
        raise EncoderError(f"encoder {name!r} did not return an encoders.Encoder (got {type(enc).__name__})")
    enc.name = name
    return enc
