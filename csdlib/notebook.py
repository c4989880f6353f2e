"""What the notebooks' first code cell does, in one call (after the parameters cell):

    nb = setup(FAMILY, data_dir=DATA_DIR, device=DEVICE, dtype=DTYPE, threads=THREADS)   # threads, seeds, where
    fam = nb.family                      # the embedded family, loaded on first use, on `device`, in `dtype`
    prompts = nb.prompts(4)              # the first 4 GSM8K dev questions as the family's prompt ids
    nb.path("tmp/results.jsonl")         # paths relative to the repository (absolute ones stay as they are)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]   # the repository (the notebooks' relative paths start here)


@dataclass
class Notebook:
    """A notebook's settings: the family's name (None: `zoo.DEFAULT_FAMILY`), the GSM8K folder (None:
    ``$CSD_DATA_DIR``, else the hub, as `csdlib.datasets` finds it), the device of the models ("auto":
    CUDA when present), their dtype (a half-precision target computes its logits in float32) and whether
    their forwards are compiled (`zoo.load(compile=True)`: static KV caches, each shape compiled on first use)."""
    family_name: str | None = None
    data_dir: str | None = None
    device: str = "auto"
    root: Path = ROOT
    dtype: str = "float32"
    compile: bool = False

    @cached_property
    def family(self):
        """`zoo.load(family_name, dtype=dtype, device=device, compile=compile)`."""
        from . import zoo

        return zoo.load(self.family_name, dtype=self.dtype, device=self.device, compile=self.compile)

    def questions(self, n: int | None = None, split: str = "dev") -> list[dict]:
        """The first `n` GSM8K items of `split` (dicts with ``question`` and ``answer``)."""
        from .datasets import load_gsm8k

        return load_gsm8k(split, self.data_dir)[:n]

    def prompts(self, n: int | None = None, split: str = "dev") -> list[list[int]]:
        """The family's prompt ids (the seed's template) of the first `n` GSM8K questions of `split`."""
        return [self.family.prompt_ids(x["question"]) for x in self.questions(n, split)]

    def path(self, path) -> Path:
        """`path` under the repository when relative (an absolute path wins)."""
        return self.root / path


def setup(family: str | None = None, *, data_dir=None, device: str = "auto", dtype: str | None = None,
          threads: int | None = None, seed: int = 0, compile: bool = False) -> Notebook:
    """Set torch's threads (None: all cores) and seed every generator (`transformers.set_seed`: Python,
    NumPy, torch), print the thread count, and return the notebook's `Notebook`."""
    from transformers import set_seed

    torch.set_num_threads(threads or os.cpu_count())
    set_seed(seed)
    print(f"torch threads: {torch.get_num_threads()}")
    return Notebook(family, data_dir, device, ROOT, dtype or "float32", compile)
