"""Acceptance per cascade level under greedy review vs speculative sampling, on the default family.

Usage: python benchmarks/acceptance_sampling.py [--prompts 10] [--max-new-tokens 96] [--out DIR]

Same prompts (GSM8K dev), same k-matrix (the family's default, lenience 1 for both so the two are
comparable), greedy vs sampling at temperature 1 and at temperature 0.7 + top-p 0.9.
"""

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

import csdlib
from csdlib import zoo
from csdlib.datasets import load_gsm8k
from csdlib.precision import hardware


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=None, help="also write acceptance.json here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    fam = zoo.load()
    prompts = [fam.prompt_ids(ex["question"]) for ex in load_gsm8k("dev", args.data_dir)[:args.prompts]]
    settings = {"greedy": {}, "sample T=1": dict(do_sample=True),
                "sample T=0.7 top-p=0.9": dict(do_sample=True, temperature=0.7, top_p=0.9)}
    print(f"k_matrix={fam.k_matrix}, MaG k={fam.drafters[-1].k}, {len(prompts)} dev prompts, "
          f"{args.max_new_tokens} new tokens")
    print(f"{'setting':<24} " + " ".join(f"{lv:>14}" for lv in ["target", "mid", "small"]) + "  tokens/target call")
    rows = []
    for label, kw in settings.items():
        total = csdlib.Stats.merge_all(
            csdlib.generate(fam.target, fam.drafters, prompt, k_matrix=fam.k_matrix, lenience=1.0,
                            max_new_tokens=args.max_new_tokens, seed=i if kw else None, **kw).stats
            for i, prompt in enumerate(prompts))
        rates = " ".join(f"{lv.acceptance or 0:>14.3f}" for lv in total.levels)
        tokens, target_calls = total.new_tokens, total.calls["target"]
        print(f"{label:<24} {rates}  {tokens / target_calls:.2f}")
        rows.append({"setting": label, "acceptance": {lv.model: lv.acceptance for lv in total.levels},
                     "tokens_per_target_call": tokens / target_calls})
    print("(acceptance = accepted / drafted tokens at each reviewing level)")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "acceptance.json").write_text(json.dumps({
            "family": fam.name, "k_matrix": fam.k_matrix, "mag_k": fam.drafters[-1].k, "prompts": len(prompts),
            "max_new_tokens": args.max_new_tokens, "threads": 1, "rows": rows,
            "command": "python benchmarks/acceptance_sampling.py " + " ".join(sys.argv[1:]),
            **hardware(), "torch": torch.__version__, "python": platform.python_version(),
            "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}, indent=1) + "\n")


if __name__ == "__main__":
    main()
