"""csdlib: Cascade Speculative Drafting for Hugging Face models (lossless; greedy and sampling)."""

__version__ = "0.1.0"

from .cache import CachedTarget, build_target_cache
from .cascade import Output, generate
from .compat import run_config
from .cost import expected_speedup, swi, swi_total
from .errors import CSDValueError, MissingFileError
from .experiment import Method, load_results, run, standard_methods, summarize
from .mag import BigramTable, MaG
from .models import HFModel
from .stats import LevelStats, Stats

__all__ = ["generate", "Output", "HFModel", "BigramTable", "MaG", "CSDValueError", "MissingFileError",
           "run_config", "Method", "run", "standard_methods", "summarize", "load_results",
           "CachedTarget", "build_target_cache", "swi", "swi_total", "expected_speedup", "Stats", "LevelStats"]
