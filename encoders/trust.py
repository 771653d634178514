"""Code execution is opt-in. A model directory (or Hub repo) may ship Python files that
transformers / sentence-transformers import when asked to (``trust_remote_code=True``). pal-mm
asks only when the user says so at load time (``--trust-remote-code``, ``trust_remote_code=True``);
the option is never read from a saved config (``encoders.registry.encoder_from_config``).

Without it, a model that needs its own code is refused with one line *before* anything of it is
imported: local directories are inspected here (``auto_map`` of a model type transformers does
not know, sentence-transformers modules outside its own package), and the libraries' own
refusals (for Hub ids and every other case) are turned into the same line.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

from .errors import EncoderError

FLAG = "--trust-remote-code"
#: encoder options that can make a model's own code run; never taken from a saved config
CODE_EXECUTION_OPTIONS = ("trust_remote_code",)


def refusal(who: str, source: str, why: str) -> EncoderError:
    return EncoderError(f"{who}: {source} needs to run its own Python code ({why}); nothing of it was run. "
                        f"If you trust its author, pass {FLAG} (Python: trust_remote_code=True)")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def _code_files(auto_map) -> list[str]:
    """``{"AutoModel": "modeling_x.XModel", "AutoTokenizer": [None, "repo--tok.Fast"]}`` ->
    ``["modeling_x.py", "tok.py"]``."""
    refs = []
    for value in (auto_map.values() if isinstance(auto_map, dict) else [auto_map]):
        refs += value if isinstance(value, (list, tuple)) else [value]
    files = {str(r).split("--")[-1].rsplit(".", 1)[0] + ".py" for r in refs if isinstance(r, str) and r}
    return sorted(files)


def _native_model_type(model_type) -> bool:
    if not isinstance(model_type, str):
        return False
    try:
        from transformers import CONFIG_MAPPING
    except ImportError:
        return False
    return model_type in CONFIG_MAPPING


def transformers_code(directory: str | Path) -> str | None:
    """Why loading this transformers directory would import code from it, or None: its
    ``config.json`` maps Auto classes to its own files and transformers has no built-in class
    for its model type (with one, transformers loads the built-in class and runs nothing)."""
    cfg = _read_json(Path(directory) / "config.json")
    if not isinstance(cfg, dict) or not cfg.get("auto_map"):
        return None
    if _native_model_type(cfg.get("model_type")):
        return None
    files = _code_files(cfg["auto_map"])
    return f"config.json auto_map -> {', '.join(files) or 'custom classes'}"


def sentence_transformers_code(directory: str | Path) -> str | None:
    """Why loading this sentence-transformers directory would import code from it, or None:
    a module of ``modules.json`` outside the ``sentence_transformers`` package, or a
    transformers backbone that needs its own code."""
    directory = Path(directory)
    modules = _read_json(directory / "modules.json")
    if isinstance(modules, list):
        for m in modules:
            kind = m.get("type") if isinstance(m, dict) else None
            if isinstance(kind, str) and not kind.startswith("sentence_transformers."):
                return f"modules.json module {kind!r}"
            sub = m.get("path") if isinstance(m, dict) else None
            if isinstance(sub, str) and sub and (directory / sub).is_dir():
                why = transformers_code(directory / sub)
                if why:
                    return f"{sub}/{why}"
    return transformers_code(directory)


def check_local(who: str, directory: str | Path, why: str | None, trust_remote_code: bool) -> None:
    """Refuse a local directory that needs its own code unless ``trust_remote_code``."""
    if why and not trust_remote_code:
        raise refusal(who, str(directory), why)


@contextlib.contextmanager
def loading(who: str, source: str, trust_remote_code: bool) -> Iterator[None]:
    """Turn every failure of a library's ``from_pretrained`` into one EncoderError line; a refusal
    because the model needs its own code names the flag."""
    try:
        yield
    except EncoderError:
        raise
    except Exception as e:  # the model files are user input: any failure is a one-line error
        text = str(e)
        if not trust_remote_code and "trust_remote_code" in text:
            raise refusal(who, source, "it ships custom model classes") from None
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        raise EncoderError(f"{who}: could not load {source!r} ({type(e).__name__}: {first}); "
                           "give a local model directory, or a Hub id with network access") from None
