"""Training-throughput micro-benchmark of the recipe: it sized the family
(``data/models/gsm8k-tiny/throughput.json``).

    python benchmarks/train_throughput.py [--seconds 30] [--threads 1] [--data-dir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from csdlib.recipe import BUDGETS, _model_config, _prepare, train_model  # noqa: E402


def bench_throughput(data_dir=None, seconds: float = 30.0, budget: str = "full", seed: int = 0,
                     archs: dict | None = None) -> dict:
    """Training throughput (tokens/s, params) of each family member at the budget's batch/seq_len."""
    import tempfile

    b = BUDGETS[budget]
    with tempfile.TemporaryDirectory() as td:
        tok, train_ids, val_ids, _, _ = _prepare(Path(td), data_dir, budget, seed)
    archs = archs or {k: v["arch"] for k, v in b["models"].items()}
    res = {"threads": torch.get_num_threads(), "batch": b["batch"], "seq_len": b["seq_len"],
           "vocab_size": len(tok), "train_tokens_per_epoch": sum(min(len(s), b["seq_len"]) for s in train_ids),
           "models": {}}
    for name, arch in archs.items():
        _, s = train_model(_model_config(arch, tok), train_ids, None, steps=10**9, lr=1e-3,
                           batch=b["batch"], seq_len=b["seq_len"], seed=seed, out_dir=None,
                           progress=False, max_seconds=seconds, warmup=10)
        res["models"][name] = {"arch": arch, "parameters": s["parameters"], "tok_per_s": s["tok_per_s"],
                               "steps": s["steps"]}
        print(f"[bench] {name}: {arch} {s['parameters']:,} params, {s['tok_per_s']:.0f} tok/s", flush=True)
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=None, help="folder with gsm8k/ (default: $CSD_DATA_DIR, ../shared/datasets)")
    p.add_argument("--seconds", type=float, default=30.0, help="training time per model")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--json", default=None, help="write the result to this JSON file")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    res = bench_throughput(a.data_dir, a.seconds)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
