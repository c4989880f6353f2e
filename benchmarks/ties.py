"""How many outputs diverge at ties in half precision, with and without the float32 output layer.

    python benchmarks/ties.py --family gsm8k-base --dtype bfloat16 --prompts 50 --out tmp/ties-gsm8k-base

On the first `--prompts` GSM8K dev prompts, the target in `--dtype` with its logits computed in that dtype
(`float32_logits` off) and in float32 (on, the default for half precision): CSD (the family's default),
SD with the largest neural drafter (k=4) and transformers' prompt lookup, each audited against
transformers' greedy output of the same model (`csdlib.precision.audit`). Counts only outputs, not
time, so a busy machine gives the same table. Writes ties.md and ties.json under `--out`.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from csdlib import generate, zoo  # noqa: E402
from csdlib.protocol import is_free  # noqa: E402
from csdlib.datasets import load_gsm8k  # noqa: E402
from csdlib.precision import audit, counts, describe, hardware  # noqa: E402

from common import gsm8k_parser  # noqa: E402
from speed import cut_at_eos, hf_generate  # noqa: E402


def main(argv=None) -> int:
    p = gsm8k_parser(__doc__, family="gsm8k-base", prompts=50, threads=2)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = load_gsm8k("dev", args.data_dir)[:args.prompts]
    result = {"command": "python benchmarks/ties.py " + " ".join(sys.argv[1:] if argv is None else argv),
              **hardware(), "torch": torch.__version__, "threads": args.threads, "settings": {},
              "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for f32 in (False, True):
        fam = zoo.load(args.family, dtype=args.dtype, float32_logits=f32)
        target, ds = fam.target, fam.drafters
        eos = sorted(target.eos_token_ids)
        neural = next(d for d in ds if not is_free(d))
        methods = {
            "CSD": lambda pr: generate(target, ds, pr, k_matrix=fam.k_matrix, lenience=fam.lenience,
                                       max_new_tokens=args.max_new_tokens).new_tokens,
            f"SD({neural.name}) k=4": lambda pr: generate(target, [neural], pr, k_matrix=[[4]],
                                                          max_new_tokens=args.max_new_tokens).new_tokens,
            "HF prompt lookup(10)": lambda pr: cut_at_eos(hf_generate(target.model, pr, args.max_new_tokens, eos,
                                                                      prompt_lookup_num_tokens=10), eos)}
        verdicts = {m: [] for m in methods}
        for i, x in enumerate(tqdm(dev, desc=f"float32 logits {'on' if f32 else 'off'}")):
            prompt = fam.prompt_ids(x["question"])
            ref = cut_at_eos(hf_generate(target.model, prompt, args.max_new_tokens, eos), eos)
            for m, run in methods.items():
                verdicts[m].append({"prompt": i, **audit(target, prompt, ref, run(prompt)).to_dict()})
        result["settings"]["on" if f32 else "off"] = verdicts
    md = [f"{args.family} in {args.dtype}, {args.prompts} GSM8K dev prompts, {args.max_new_tokens} new tokens, "
          f"CPU {result['cpu']} (bf16 units: {result['cpu_isa']}); `{result['command']}`", "",
          "| float32 logits | method | identical | tie | WRONG | tie margins |", "|---|---|---|---|---|---|"]
    for setting, verdicts in result["settings"].items():
        for m, vs in verdicts.items():
            c = counts(vs)
            margins = ", ".join(f"{v['margin']:.4g}" for v in vs if v["verdict"] == "tie")
            md.append(f"| {setting} | {m} | {c['identical']} | {c['tie']} | {c['WRONG']} | {margins or '-'} |")
    text = "\n".join(md) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ties.md").write_text(text)
    (out / "ties.json").write_text(json.dumps(result, indent=1) + "\n")
    total = counts(v for s in result["settings"].values() for vs in s.values() for v in vs)
    print(f"audit: {describe(total)}")
    return 1 if total["WRONG"] else 0


if __name__ == "__main__":
    sys.exit(main())
