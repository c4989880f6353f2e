"""Free drafters replayed on the target's greedy answers: tokens per target call as if each draft were
verified at once, for MaG, the request alone (prompt lookup's idea) and the suffix drafter over corpora of
the target's past answers of several sizes, with each way of scoring; and the cost of one call.

    python benchmarks/suffix_replay.py --family smollm2 --prompts 50 --sizes 0,50,400,4096

Nothing is timed but the drafters' own calls (their median, with the largest corpus); the target's answers
(GSM8K dev prompts, float32 greedy; and its answers to train questions for the corpora) come from the cache
that `csdlib.corpus` fills. Writes <out>/replay.{md,json} and figures/suffix-replay-<family>.png.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import gsm8k_parser, write_table  # noqa: E402

#: the ways of scoring tried: (label, SuffixDrafter arguments)
RULES = {
    "longest match, whole k": dict(rule="longest", min_prob=0.0, alpha=0.0),
    "longest match, stop below 0.1": dict(rule="longest", min_prob=0.1, alpha=1.0),
    "best score, whole k": dict(rule="score", min_prob=0.0, alpha=0.0),
    "best score of 3 match lengths, whole k": dict(rule="score", min_prob=0.0, alpha=0.0, tries=3),
    "best score, whole k, alpha 1": dict(rule="score", min_prob=0.0, alpha=1.0),
    "best score, stop below 0.1": dict(rule="score", min_prob=0.1, alpha=1.0),
    "best score, stop below 0.3": dict(rule="score", min_prob=0.3, alpha=1.0),
    "best score, stop below 0.5": dict(rule="score", min_prob=0.5, alpha=1.0),
}


def parse_args(argv=None):
    p = gsm8k_parser(__doc__, "smollm2", 50, 1)
    p.add_argument("--sizes", default="0,50,400,4096", help="corpus sizes (the target's first N training answers)")
    p.add_argument("--ks", default="2,4,6,8", help="the most tokens a draft may hold")
    p.add_argument("--out", default=None, help="results folder (default data/results/suffix-replay-<family>)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import torch

    from csdlib import plots
    from csdlib.corpus import dev_items, replay, target_answers
    from csdlib.mag import BigramTable, MaG
    from csdlib.precision import cpu_info, cpu_isa
    from csdlib.suffix import SuffixCorpus, SuffixDrafter
    from csdlib.zoo import family_info

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes, ks = [int(x) for x in args.sizes.split(",")], [int(x) for x in args.ks.split(",")]
    items = dev_items(args.family, args.prompts, args.max_new_tokens, data_dir=args.data_dir)
    answers = target_answers(args.family, max(sizes), args.data_dir) if max(sizes) else []
    _, path, info = family_info(args.family)
    table = BigramTable.load((path / info["shares"]).resolve() / "bigram.json" if "shares" in info else path / "bigram.json")
    rows, timer = [], []
    defaults = {"float32": info.get("default", {}), **info.get("defaults", {})}
    latency = {dtype: d["latency"]["target"] for dtype, d in defaults.items() if "latency" in d}

    for k in ks:
        rows.append({"drafter": "MaG", "answers": "-", "k": k, **replay(MaG(table, k=k), items, k, latency=latency)})
        for size in sizes:
            pieces = [p for answer in answers[:size] for p in answer]
            corpus = SuffixCorpus(pieces, vocab_size=table.vocab_size) if size else None
            for label, kw in RULES.items():
                if size == 0 and kw["rule"] == "longest" and kw["min_prob"] == 0.0:
                    label = "request only (prompt lookup's idea)"
                t = timer if size == max(sizes) and k == max(ks) and label == "best score, stop below 0.1" else None
                r = replay(SuffixDrafter(corpus, k=k, **kw), items, k, timer=t, latency=latency)
                rows.append({"drafter": f"suffix: {label}", "answers": size, "k": k, **r})
            learner = SuffixDrafter(corpus, k=k, learn=True, **RULES["best score, stop below 0.1"])
            rows.append({"drafter": "suffix: best score, stop below 0.1, learning the run's answers", "answers": size,
                         "k": k, **replay(learner, items, k, latency=latency)})
        print(f"k={k}: done", flush=True)
    cost = {"median_ms": 1000 * statistics.median(timer), "p90_ms": 1000 * sorted(timer)[int(0.9 * len(timer))],
            "calls": len(timer), "answers": max(sizes)} if timer else {}
    machine = f"{cpu_info().get('model name', platform.machine())} ({cpu_isa()}), {torch.get_num_threads()} thread(s)"
    out = Path(args.out or ROOT / "data" / "results" / f"suffix-replay-{args.family}")
    head = (f"Free drafters replayed on {args.family}'s float32 greedy answers to {len(items)} GSM8K dev prompts "
            f"({args.max_new_tokens} new tokens): tokens per target call as if each draft were verified at once; "
            f"'x AR <dtype>': the speedup over plain decoding that the family's latency model of its target in that "
            f"dtype predicts (a call verifying d drafted tokens costs a + b (d + 1), a plain step a1; drafting free). "
            f"One call of the suffix drafter with {max(sizes)} answers: median {cost.get('median_ms', 0):.3f} ms on {machine} "
            f"(`python benchmarks/suffix_replay.py --family {args.family} --prompts {args.prompts} --sizes {args.sizes}`).")
    cols = ["drafter", "answers", "k", "tokens_per_call", "calls", "empty_calls", *(f"x AR {d}" for d in latency)]
    print(write_table(out, "replay", head, rows, cols, {"family": args.family, "prompts": len(items), "cost": cost,
                                                        "machine": machine, "argv": sys.argv[1:]}))
    fig = plots.suffix_replay(rows, max(ks), title=f"{args.family}: free drafters replayed, k={max(ks)}")
    fig.savefig(ROOT / "figures" / f"suffix-replay-{args.family}.png", dpi=120, bbox_inches="tight")
    print(json.dumps(cost))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
