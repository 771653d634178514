"""Encoder registry in the timm / open_clip style: ``register_encoder``, ``create_encoder``,
``list_encoders``.

Third-party encoders register themselves either by importing a module that uses the
``@register_encoder("name")`` decorator, or through the ``pal_mm.encoders`` entry-point group
of their own package (``name = "my_pkg.module:MyEncoder"``); entry points are loaded lazily the
first time the registry is queried.

Code execution is opt-in: ``create_encoder(name, trust_remote_code=True, ...)`` passes the flag
to encoders that take it; :func:`encoder_from_config` builds an encoder from a *saved* config
(a model's ``config.json``, ``--encoder-arg`` values) and refuses a config that asks for it.
"""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points
from typing import Any, Callable, Mapping

from .errors import EncoderError

from .base import Encoder
from .trust import CODE_EXECUTION_OPTIONS, FLAG

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


#: modules of the built-in encoders (each registers itself when imported)
BUILTIN_MODULES = ("precomputed", "hf_text", "minilm", "smollm2", "sbert", "openclip", "hf_clip", "effnet_minilm")


def _load_entry_points() -> None:
    """Register the built-in encoders, then the plug-ins' entry points (once, on the first query)."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    import importlib

    for module in BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.{module}")
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
    if not isinstance(name, str):
        raise EncoderError(f"an encoder name must be a string, got {type(name).__name__}")
    _load_entry_points()
    if name not in _REGISTRY:
        raise EncoderError(f"unknown encoder {name!r}; registered encoders: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _parameters(obj) -> dict[str, inspect.Parameter] | None:
    """The keyword parameters a class or factory takes; None when it takes ``**kwargs``."""
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return dict(params)


def accepts_option(name: str, option: str) -> bool:
    """Whether encoder ``name`` takes the keyword ``option`` explicitly."""
    params = _parameters(get_encoder_class(name))
    return params is not None and option in params


def create_encoder(name: str, *, trust_remote_code: bool = False, **kwargs) -> Encoder:
    """Instantiate a registered encoder by name. ``trust_remote_code=True`` lets a model's own
    Python code run; it is passed only to encoders that take it (``hf-text``, ``hf-clip``,
    ``sentence-transformers``) and ignored by the others."""
    if not isinstance(trust_remote_code, bool):
        raise EncoderError(f"trust_remote_code must be True or False, got {trust_remote_code!r}")
    factory = get_encoder_class(name)
    params = _parameters(factory)
    if params is not None:
        unknown = sorted(k for k in kwargs if k not in params)
        if unknown:
            options = ", ".join(k for k, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL)
            raise EncoderError(f"encoder {name!r} has no option {', '.join(map(repr, unknown))}; its options: {options}")
    if trust_remote_code and params is not None and "trust_remote_code" in params:
        kwargs["trust_remote_code"] = True
    try:
        enc = factory(**kwargs)
    except (TypeError, ValueError) as e:  # an option of the wrong type or value
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EncoderError(f"encoder {name!r}: invalid options {kwargs} ({type(e).__name__}: {first})") from None
    if not isinstance(enc, Encoder):
        raise EncoderError(f"encoder {name!r} did not return an encoders.Encoder (got {type(enc).__name__})")
    enc.name = name
    return enc


def encoder_from_config(name: str, config: Mapping[str, Any] | None = None, *, trust_remote_code: bool = False,
                        **overrides) -> Encoder:
    """Build encoder ``name`` from a saved or user-written ``config`` (a model's config.json,
    ``--encoder-arg`` values): options that enable code execution are refused there (a saved
    ``False`` is dropped); ``trust_remote_code`` comes only from this explicit argument.
    ``overrides`` (explicit caller choices such as ``device``) win over ``config``."""
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise EncoderError(f"encoder {name!r}: its config must be a JSON object of options, got {type(config).__name__}")
    options = {}
    for key, value in config.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise EncoderError(f"encoder {name!r}: option names must be identifiers, got {key!r}")
        if key in CODE_EXECUTION_OPTIONS:
            if value in (False, None):
                continue  # older pal-mm versions saved trust_remote_code=false: harmless
            raise EncoderError(f"encoder {name!r}: {key}={value!r} is not taken from configs or --encoder-arg "
                               f"(a model folder must not switch on code execution); pass {FLAG} "
                               f"(Python: trust_remote_code=True) when loading")
        options[key] = value
    return create_encoder(name, trust_remote_code=trust_remote_code, **{**options, **overrides})


def encoder_base_model(name: str, config: Mapping[str, Any] | None = None) -> str | None:
    """The Hub repo id of the weights encoder ``name`` with ``config`` loads, without building it
    (None for local files, no weights, or an encoder that is not installed here)."""
    try:
        cls = get_encoder_class(name)
    except EncoderError:
        return None
    fn = getattr(cls, "base_model_from_config", None)
    if not callable(fn):
        return None
    try:
        return fn(dict(config or {}))
    except Exception:  # a plug-in's bug must not break a model card
        return None
