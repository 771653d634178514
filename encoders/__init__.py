"""Encoders: turn prompts and items (text, images, vectors) into tensors for PAL's heads."""

from .base import Encoder
from .registry import create_encoder, get_encoder_class, list_encoders, register_encoder
from . import precomputed  # noqa: F401  (registers "precomputed")

__all__ = ["Encoder", "create_encoder", "get_encoder_class", "list_encoders", "register_encoder"]
