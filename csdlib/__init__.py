"""csdlib: Cascade Speculative Drafting for Hugging Face models (lossless; greedy and sampling)."""

from .cascade import Output, generate
from .errors import CSDValueError, MissingFileError
from .mag import BigramTable, MaG
from .models import HFModel

__all__ = ["generate", "Output", "HFModel", "BigramTable", "MaG", "CSDValueError", "MissingFileError"]
__version__ = "0.1.0"
