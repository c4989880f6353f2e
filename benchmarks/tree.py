"""Tokens per target call of tree CSD against chain CSD, and which branch the target took at each depth.

    python benchmarks/tree.py --family gsm8k-base --prompts 50 --max-new-tokens 128 \
        --out data/results/tree-gsm8k-base

No timing here: the target is replayed from its greedy outputs (`csdlib.CachedTarget`, built once on the
first `--prompts` GSM8K dev prompts), so each setting's tokens, calls and acceptance are exactly the real
target's, and every output is checked equal to the target's greedy output. The drafters run for real.
Settings: the family's default k-matrix as a chain and with trees of growing width (`--shapes`), and the
same for a deeper draft (`--deep`: the k-matrix with the first neural drafter's entry of the target's row
set to that many tokens and MaG's dropped), and for MaG alone (`--mag`: SD with MaG, the target reviewing its
tokens, whose tree candidates are its other max-gram continuations and its bigram table's 4 best successors;
`MaG alone, 1 successor` repeats it with a copy of the table that keeps only the best successor). Writes a markdown table, a CSV and `ranks.png` (accepted
tokens by depth and branch rank of the widest tree) under `--out`. Wall-clock speed: `benchmarks/speed.py`.
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from csdlib import BigramTable, MaG, Tree, zoo  # noqa: E402
from csdlib.cache import build_target_cache  # noqa: E402
from csdlib.datasets import load_gsm8k  # noqa: E402
from csdlib.plots import accepted_by_rank  # noqa: E402
from csdlib.precision import hardware  # noqa: E402
from csdlib.tuning import evaluate_cascade  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="gsm8k-base")
    p.add_argument("--prompts", type=int, default=50, help="GSM8K dev prompts (the first N)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--shapes", default="2:0,3:0,3:3,4:4,4:0:2,4:3:2,4:3:6",
                   help="trees tried, WIDTH:EXTEND[:BUDGET] each: WIDTH candidates at every draft position of the "
                        "target's review, each continued by EXTEND MaG tokens; with BUDGET only the likeliest "
                        "BUDGET extra candidates")
    p.add_argument("--deep", type=int, default=8, help="draft length of the deeper k-matrix (0: none)")
    p.add_argument("--mag", type=int, default=4, help="draft length of MaG alone (0: none)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="tmp/tree")
    p.add_argument("--cache-dir", default="tmp", help="where the target's greedy outputs are cached")
    return p.parse_args(argv)


def deeper(k_matrix, depth: int):
    """The k-matrix whose target row drafts `depth` tokens with its first neural drafter, no MaG."""
    k = [list(r) for r in k_matrix]
    first = next(j for j, v in enumerate(k[0]) if v > 0)
    k[0] = [depth if j == first else 0 for j in range(len(k))]
    return k


def mag_alone(k_matrix, depth: int):
    """The k-matrix whose target row drafts `depth` tokens with MaG (the last drafter) only."""
    n = len(k_matrix)
    return [[depth if (i, j) == (0, n - 1) else 0 for j in range(n)] for i in range(n)]


def one_successor(drafters):
    """The drafters with MaG's bigram table cut to its best successor (what tables before version 2 hold)."""
    mag = drafters[-1]
    if not isinstance(mag, MaG):                       # another free drafter (the suffix drafter): unchanged
        return list(drafters)
    table = BigramTable(mag.table.next, default=mag.table.default)
    return [*drafters[:-1], MaG(table, k=mag.k, name=mag.name, cost=mag.cost, seed_mode=mag.seed_mode)]


def main(argv=None) -> int:
    args = parse_args(argv)
    fam = zoo.load(args.family)
    torch.set_num_threads(args.threads)
    dev = load_gsm8k("dev", args.data_dir)
    prompts = [fam.prompt_ids(x["question"]) for x in dev[:args.prompts]]
    cache = Path(args.cache_dir) / f"tree-target-cache-{fam.name}-float32-t{args.max_new_tokens}.jsonl"
    cached = build_target_cache(fam.target, prompts, args.max_new_tokens, cache)
    shapes = [tuple(int(v) for v in s.split(":")) for s in args.shapes.split(",")]
    shapes = [(w, e, b[0] if b else None) for w, e, *b in shapes]
    ks = [("default", fam.k_matrix, fam.drafters)]
    if args.deep:
        ks.append((f"deep {args.deep}", deeper(fam.k_matrix, args.deep), fam.drafters))
    if args.mag:
        ks += [(f"MaG alone {args.mag}", mag_alone(fam.k_matrix, args.mag), fam.drafters),
               (f"MaG alone {args.mag}, 1 successor", mag_alone(fam.k_matrix, args.mag), one_successor(fam.drafters))]
    rows, ranks = [], None
    for k_name, k, drafters in ks:
        depth = sum(k[0])
        for width, extend, budget in [(1, 0, None), *shapes]:
            tree = Tree([[width] * depth], extend=extend, budget=budget) if width > 1 else None
            tic = time.perf_counter()
            r = evaluate_cascade(cached, drafters, prompts, k, max_new_tokens=args.max_new_tokens, tree=tree)
            level = r["stats"].levels[0]
            rows.append({"k-matrix": k_name, "target row": str(k[0]), "tree": "chain" if tree is None else
                         f"width {width} x {depth}, extend {extend}" + (f", budget {budget}" if budget else ""),
                         "tokens/target call": r["tokens_per_target_call"],
                         "tokens fed/target call": r["tokens_fed_per_target_call"],
                         "accepted off the chain": sum(sum(by_rank[1:]) for by_rank in level.accepted_by_rank),
                         "seconds": time.perf_counter() - tic})
            if tree is not None and not k_name.startswith("MaG") and (ranks is None or width >= ranks[0]):
                ranks = (width, k_name, level)
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    chain = df[df["tree"] == "chain"].set_index("k-matrix")["tokens/target call"]
    df["x chain, same k"] = df["tokens/target call"] / df["k-matrix"].map(chain)
    df["x default chain"] = df["tokens/target call"] / chain["default"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "tree.csv", index=False)
    machine = {**hardware(), "python": platform.python_version(), "torch": torch.__version__}
    command = "python benchmarks/tree.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"# Tree CSD vs chain CSD: tokens per target call ({fam.name})", "",
             f"`{command}`", "",
             f"{len(prompts)} GSM8K dev prompts (the first), {args.max_new_tokens} new tokens, greedy, float32; "
             f"the target replayed from its greedy outputs (every output equal to them); machine: "
             f"{json.dumps(machine)}. Default k-matrix {fam.k_matrix}.", "",
             df.drop(columns=["seconds"]).to_markdown(index=False, floatfmt=".2f")]
    (out / "tree.md").write_text("\n".join(lines) + "\n")
    (out / "tree.json").write_text(json.dumps({
        "family": fam.name, "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "threads": args.threads,
        "k_matrix": fam.k_matrix, "command": command, **machine,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}, indent=1) + "\n")
    if ranks is not None:
        width, k_name, level = ranks
        accepted_by_rank(level, out / "ranks.png", title=f"{fam.name}: which branch the target accepted "
                                                         f"(width {width}, k-matrix {k_name})")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
