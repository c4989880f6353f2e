"""csdlib: Cascade Speculative Drafting for Hugging Face models (lossless; greedy and sampling).

The names below are imported on first use (PEP 562), so that `import csdlib.cli` and `csd --help` do not
pay for torch and transformers.
"""

import importlib
import importlib.util

# public name -> the module that defines it
_EXPORTS = {
    "CachedTarget": "cache", "build_target_cache": "cache",
    "Output": "cascade", "Tree": "cascade", "generate": "cascade",
    "run_config": "compat",
    "expected_speedup": "cost", "swi": "cost", "swi_total": "cost",
    "CSDValueError": "errors", "MissingFileError": "errors",
    "Method": "experiment", "load_results": "records", "run": "experiment",
    "standard_methods": "experiment", "summarize": "experiment",
    "BigramTable": "mag", "MaG": "mag", "SuffixCorpus": "suffix", "SuffixDrafter": "suffix",
    "HFModel": "models",
    "Stats": "stats", "LevelStats": "stats",
}

__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value          # later look-ups skip this function
        return value
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:   # a submodule, e.g. csdlib.datasets
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'csdlib' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
