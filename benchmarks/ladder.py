"""The quality ladder of a family's drafters: each rung's top-1 agreement with the target against its
one-token cost, beside the target's own untrained early exits (its hidden state after layer N, through
its final norm and output layer) at the same cost.

    python benchmarks/ladder.py --family smollm2 --prompts 50 --threads 2

Agreement: teacher forced, on the float32 target's greedy answers to GSM8K dev prompts (128 new tokens,
`csdlib.corpus.dev_items`; never trained on): a neural rung's argmax (over its own vocabulary), a free
rung's first proposed token (no proposal counts as a miss). Cost: the one-token review latency `a1` of
`csdlib.latency.calibrate_model` (float32, prepacked as `zoo.load` loads them, this machine) over the
target's; an early exit after layer N is priced at a drafter grown from N layers (`csdlib.grow`), untrained.
Writes data/results/ladder-<family>/ladder.{md,json} and figures/ladder-<family>.png.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import gsm8k_parser, write_table  # noqa: E402
from csdlib import HFModel, onednn, plots, zoo  # noqa: E402
from csdlib.corpus import dev_items  # noqa: E402
from csdlib.drafter_data import agreement, local_ids  # noqa: E402
from csdlib.grow import early_exit_agreement, from_target_layers  # noqa: E402
from csdlib.latency import calibrate_free, calibrate_model  # noqa: E402
from csdlib.precision import hardware  # noqa: E402

EXITS = [4, 8, 12, 16, 20, 25]


def free_agreement(drafter, items) -> float:
    """The fraction of answer tokens a free drafter's first proposed token equals (no proposal: a miss)."""
    hit = total = 0
    for prompt, answer in items:
        drafter.start(prompt)
        for i, t in enumerate(answer):
            got, _ = drafter.propose(prompt + answer[:i], 1)
            hit += bool(got) and got[0] == t
            total += 1
    return hit / max(1, total)


def main() -> int:
    p = gsm8k_parser(__doc__, "smollm2", 50, 2)
    p.add_argument("--exits", default=",".join(map(str, EXITS)), help="the target's early exits to price (layers)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    fam = zoo.load(args.family, progress=False)
    items = dev_items(args.family, args.prompts, args.max_new_tokens, data_dir=args.data_dir)
    rows_ = [{"prompt": a, "answer": b} for a, b in items]
    target = fam.target.model
    base = calibrate_model(fam.target, ns=(1, 2, 8))["a1"]
    rows = []
    for d in fam.drafters:
        if isinstance(d, HFModel):
            vocab = d.vocab.tolist()
            agree = agreement(d.model, rows_, local_ids(vocab, fam.target.vocab_size), vocab)
            cost = calibrate_model(d, ns=(1, 2, 8))["a1"]
            params = sum(x.numel() for x in {id(x): x for x in d.model.parameters()}.values())
            rows.append({"rung": d.name, "kind": "drafter", "agreement": agree, "cost": cost / base,
                         "parameters": params, "a1_ms": 1e3 * cost})
    for d in [*fam.drafters[-1:], *fam.other_free()]:
        rows.append({"rung": d.name, "kind": "free drafter", "agreement": free_agreement(d, items),
                     "cost": calibrate_free(d)["a1"] / base, "parameters": 0})
    exits = [int(n) for n in args.exits.split(",") if n]
    with torch.no_grad():
        agree = early_exit_agreement(target.float() if target.dtype != torch.float32 else target, rows_, exits)
    for n in exits:
        grown = from_target_layers(target, n, list(range(8192)))
        onednn.prepack(grown)
        cost = calibrate_model(HFModel(grown, name=f"exit{n}", vocab=list(range(8192)),
                                       full_vocab_size=fam.target.vocab_size), ns=(1, 2, 8))["a1"]
        rows.append({"rung": f"layer {n}", "kind": "early exit", "agreement": agree[n], "cost": cost / base,
                     "parameters": sum(x.numel() for x in grown.parameters())})
    rows.append({"rung": "target", "kind": "target", "agreement": 1.0, "cost": 1.0,
                 "parameters": sum(x.numel() for x in {id(x): x for x in target.parameters()}.values()),
                 "a1_ms": 1e3 * base})
    hw = hardware()
    out = ROOT / "data" / "results" / f"ladder-{fam.name}"
    meta = {"family": fam.name, "prompts": args.prompts, "max_new_tokens": args.max_new_tokens, "threads": args.threads,
            "dtype": "float32", "cpu": hw.get("cpu"), "cpu_isa": hw.get("cpu_isa"), "torch": torch.__version__,
            "torch_cpu_capability": hw.get("torch_cpu_capability"),
            "command": "python benchmarks/ladder.py " + " ".join(sys.argv[1:])}
    head = (f"{fam.name}'s ladder: top-1 agreement with the float32 target's greedy answers to {args.prompts} GSM8K "
            f"dev prompts, one-token cost / the target's ({hw.get('cpu')}, {hw.get('cpu_isa')}, {args.threads} threads)")
    print(write_table(out, "ladder", head, rows, ["rung", "kind", "agreement", "cost", "parameters"], meta))
    plots.ladder(rows, ROOT / "figures" / f"ladder-{fam.name}.png", title=f"{fam.name}: each rung's agreement "
                 "against its cost")
    return 0


if __name__ == "__main__":
    sys.exit(main())
