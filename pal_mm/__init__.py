"""pal-mm: personalised reward models with PAL (Chen et al., ICLR 2025) for text and images."""

__version__ = "0.1.0"

from .errors import DataError, PalMMError  # noqa: E402
from .data import PreferenceData  # noqa: E402
from .heads import PALConfig, PALHead  # noqa: E402
from .model import PALModel  # noqa: E402
from .training import TrainConfig, fit  # noqa: E402
from .adaptation import AdaptConfig, adapt  # noqa: E402
from .evaluation import evaluate  # noqa: E402

__all__ = [
    "AdaptConfig", "DataError", "PALConfig", "PALHead", "PALModel", "PalMMError", "PreferenceData",
    "TrainConfig", "adapt", "evaluate", "fit",
]
