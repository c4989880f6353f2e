"""Training-throughput micro-benchmark of the recipe (``python -m csdlib.zoo bench``): it sized the
family (``data/models/gsm8k-tiny/throughput.json``)."""

from __future__ import annotations

from pathlib import Path

import torch

from .recipe import BUDGETS, _model_config, _prepare, train_model


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
