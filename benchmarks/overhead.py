"""Share of generate()'s wall time spent outside model forward passes (goal: <= 10 %).

Usage: python benchmarks/overhead.py [--threads N (default: all cores)] [--tokens 128] [--repeats 5] [--out DIR]

Tiny Llama target (d=256, 4 layers) + a drafter (d=128, 2 layers) + MaG, vocab 4096, built from
configs. The drafter is trained-free, so to get realistic acceptance it is the target's own weights
with noise on top; the numbers that matter here are the overhead shares, not the speed.
"""

import argparse
import copy
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import csdlib
from csdlib import BigramTable, HFModel, MaG, Tree
from csdlib.precision import hardware


def llama(hidden, layers, seed):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=4096, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                      num_attention_heads=max(1, hidden // 64), max_position_embeddings=1024, eos_token_id=None)
    return LlamaForCausalLM(cfg).eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="also write overhead.json here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    target = llama(256, 4, 0)
    noisy = copy.deepcopy(target)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.002 * torch.randn_like(p))
    prompt = torch.randint(0, 4096, (48,), generator=torch.Generator().manual_seed(0)).tolist()
    table = BigramTable.from_sequences([prompt], 4096)
    settings = {
        "AR": ([], None),
        "SD(drafter) k=4": ([HFModel(noisy, "drafter")], [[4]]),
        "SD(MaG) k=4": ([MaG(table, k=4)], [[4]]),
        "CSD(drafter, MaG)": ([HFModel(noisy, "drafter"), MaG(table, k=6)], [[3, 3], [0, 6]]),
        "tree CSD(drafter, MaG), width 2, extend 2": ([HFModel(noisy, "drafter"), MaG(table, k=6)], [[3, 3], [0, 6]],
                                                      Tree([[2] * 6], extend=2)),
    }
    rows = []
    print(f"{'setting':<20} {'wall ms':>9} {'forward ms':>11} {'outside %':>10} {'target calls':>13}")
    for label, (drafters, k, *tree) in settings.items():
        wrapped, tree = HFModel(target, "target"), (tree or [None])[0]
        csdlib.generate(wrapped, drafters, prompt, k_matrix=k, max_new_tokens=16, tree=tree)   # warm-up
        walls, fwds = [], []
        for _ in range(args.repeats):
            tic = time.perf_counter()
            out = csdlib.generate(wrapped, drafters, prompt, k_matrix=k, max_new_tokens=args.tokens, tree=tree)
            walls.append(time.perf_counter() - tic)
            fwds.append(sum(getattr(m, "forward_seconds", 0.0) for m in [wrapped, *drafters]))
        wall, fwd = sorted(walls)[len(walls) // 2], sorted(fwds)[len(fwds) // 2]
        print(f"{label:<20} {wall * 1e3:>9.1f} {fwd * 1e3:>11.1f} {100 * (1 - fwd / wall):>9.1f}% "
              f"{out.stats.calls['target']:>13}")
        rows.append({"setting": label, "wall_ms": wall * 1e3, "forward_ms": fwd * 1e3, "outside": 1 - fwd / wall,
                     "target_calls": out.stats.calls["target"]})
    print(f"(torch threads={args.threads}; 'outside' = wall time not spent inside HF forward calls: "
          "cascade logic, MaG, softmax/argmax, Python)")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "overhead.json").write_text(json.dumps({
            "rows": rows, "threads": args.threads, "tokens": args.tokens, "repeats": args.repeats,
            "command": "python benchmarks/overhead.py " + " ".join(sys.argv[1:]), **hardware(),
            "torch": torch.__version__, "python": platform.python_version(),
            "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}, indent=1) + "\n")


if __name__ == "__main__":
    main()
