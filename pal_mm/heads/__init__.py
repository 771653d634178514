"""Preference heads: tensors in, rewards out (one file per head type, a registry like encoders).

``create_head(PALConfig(model_type="pal-b", ...), num_users)``; ``list_heads()`` names them all;
``@register_head("name")`` adds one. See :mod:`pal_mm.heads.base` for the interface.
"""

from .base import PreferenceHead
from .projectors import InputNormalizer, MLPProjector, build_projector
from .registry import create_head, get_head_class, list_heads, register_head

__all__ = ["InputNormalizer", "MLPProjector", "PreferenceHead", "build_projector", "create_head", "get_head_class",
           "list_heads", "register_head"]
