"""Dynamic draft length (`generate(..., confidence=c)`) against fixed drafts, wall clock, one process.

    python benchmarks/dynamic_draft.py [--family gsm8k-tiny] [--prompts 16] [--threads 2]

On GSM8K dev prompts 60.. (apart from those benchmarks/speed.py measures and csd tune tunes on), every
method interleaved prompt by prompt after one warm-up run each; prints each method's speedup over
csdlib's AR. Every output is checked against AR's. Methods: the family's default cascade, SD with each
neural drafter at k = 4 and a cascade with the neural drafters' row filled, each with confidence None
(the k-matrix as is) and 0.3 / 0.5 / 0.7.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from csdlib import generate, zoo  # noqa: E402
from csdlib.datasets import load_gsm8k  # noqa: E402

from common import gsm8k_parser  # noqa: E402


def main(argv=None) -> int:
    p = gsm8k_parser(__doc__, family="gsm8k-tiny", prompts=16, threads=os.cpu_count())
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    fam = zoo.load(a.family)
    t, ds = fam.target, list(fam.drafters)
    neural = [d for d in ds if hasattr(d, "logits")]
    prompts = [fam.prompt_ids(x["question"]) for x in load_gsm8k("dev", a.data_dir)[60:60 + a.prompts]]
    n = len(ds)
    # every drafter drafts 2 for each level above it, MaG 4 for the target and 2 for the others
    filled = [[(4 if i == 0 else 2) if j == n - 1 else 2 if j >= i else 0 for j in range(n)] for i in range(n)]
    methods = {"AR": ([], None, 1.0, None)}
    for c in (None, 0.3, 0.5, 0.7):
        methods[f"CSD default, confidence={c}"] = (ds, fam.k_matrix, fam.lenience, c)
        for d in neural:
            methods[f"SD({d.name}) k=4, confidence={c}"] = ([d], [[4]], 1.0, c)
        methods[f"CSD {filled}, lenience 3, confidence={c}"] = (ds, filled, 3.0, c)
    run = lambda m, prompt: generate(t, m[0], prompt, k_matrix=m[1], lenience=m[2],  # noqa: E731
                                     max_new_tokens=a.max_new_tokens, confidence=m[3]).new_tokens
    for m in methods.values():
        run(m, prompts[0])
    names, wall, same = list(methods), dict.fromkeys(methods, 0.0), dict.fromkeys(methods, True)
    for i, prompt in enumerate(prompts):
        outs = {}
        for name in names[i % len(names):] + names[:i % len(names)]:      # rotate the order
            tic = time.perf_counter()
            outs[name] = run(methods[name], prompt)
            wall[name] += time.perf_counter() - tic
        for name in names:
            same[name] &= outs[name] == outs["AR"]
    print(f"{a.family}, {len(prompts)} GSM8K dev prompts (60..), max_new_tokens={a.max_new_tokens}, "
          f"{a.threads} thread(s); `python benchmarks/dynamic_draft.py {' '.join(sys.argv[1:] if argv is None else argv)}`")
    print("| method | x AR | equals AR |\n|---|---|---|")
    for name in names:
        print(f"| {name} | {wall['AR'] / wall[name]:.2f} | {'yes' if same[name] else 'NO'} |")
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
