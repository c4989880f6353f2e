"""Training-throughput micro-benchmark of the recipe: it sized the family
(``data/models/gsm8k-tiny/throughput.json``).

    python benchmarks/train_throughput.py [--seconds 30] [--threads 1] [--data-dir DIR] [--json FILE]
    python benchmarks/train_throughput.py --grown-layers 8 --threads 2   # a grown rung: float32 against bf16 autocast
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


def bench_grown(layers: int, steps: int = 4, batch: int = 16, seq_len: int = 300, rounds: int = 2) -> dict:
    """Seconds per training step (forward, backward, AdamW; `training._optimizer_step`) of a drafter grown
    from smollm2's first `layers` layers (8,192-token output layer) on random tokens, float32 against bf16
    autocast, interleaved `rounds` times, `steps` timed steps each after one untimed; the median per step."""
    import statistics
    import time

    from transformers import AutoModelForCausalLM

    from csdlib.grow import from_target_layers
    from csdlib.precision import cpu_info, cpu_isa
    from csdlib.smollm2 import target_dir
    from csdlib.training import _optimizer_step

    target = AutoModelForCausalLM.from_pretrained(target_dir(), dtype=torch.float32)
    model = from_target_layers(target, layers, list(range(8192)), {}).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    x = torch.randint(0, 8192, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(x)
    times = {"float32": [], "bfloat16": []}
    for _ in range(rounds):
        for name, autocast in (("float32", None), ("bfloat16", "bfloat16")):
            _optimizer_step(model, opt, x, mask, x, None, 0.0, autocast)
            for _ in range(steps):
                tic = time.perf_counter()
                _optimizer_step(model, opt, x, mask, x, None, 0.0, autocast)
                times[name].append(time.perf_counter() - tic)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"layers": layers, "batch": batch, "seq_len": seq_len, "threads": torch.get_num_threads(),
            "cpu": cpu_info().get("model name"), "cpu_isa": cpu_isa(), "s_per_step": med,
            "tok_per_s": {k: batch * seq_len / v for k, v in med.items()},
            "bf16_speedup": med["float32"] / med["bfloat16"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=None, help="folder with gsm8k/ (default: $CSD_DATA_DIR, ../shared/datasets)")
    p.add_argument("--seconds", type=float, default=30.0, help="training time per model")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--json", default=None, help="write the result to this JSON file")
    p.add_argument("--grown-layers", type=int, default=None,
                   help="instead: a drafter grown from smollm2's first N layers, float32 against bf16 autocast")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    res = bench_grown(a.grown_layers) if a.grown_layers else bench_throughput(a.data_dir, a.seconds)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
