"""Where a cascade's time goes: each member's forward passes against the rest (the cascade's own Python,
MaG, the KV caches' bookkeeping), with the default members and with every member compiled (issue 28).

    python benchmarks/time_split.py --family smollm2 --dtypes float32,bfloat16 --prompts 8 --threads 2 \
        --out data/results/time-split-smollm2

For each dtype, the family's default cascade generates --max-new-tokens on each of the first --prompts
GSM8K dev prompts twice: as loaded (the default: dynamic KV caches, large members packed) and compiled
(`set_cache("static", compile=True)` on every neural member), the two alternating prompt by prompt. The
compiled members are warmed up on the same prompts first, so nothing compiles while timed (the graphs
compiled while timed are counted). Per member: seconds inside its forward passes (`HFModel.forward_seconds`)
and calls; "rest": the wall time outside every forward. "x if drafters were free": the wall time over the
wall time less the drafters' forwards, the most that faster drafters alone could give. Written as
markdown and JSON under --out with the machine and its ISA.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import csdlib  # noqa: E402
from common import compiled_graphs, write_table  # noqa: E402
from csdlib import zoo  # noqa: E402
from csdlib.datasets import prompt_texts  # noqa: E402
from csdlib.precision import hardware  # noqa: E402
from csdlib.protocol import is_free  # noqa: E402


def one_run(fam, neural, prompt, compiled: bool, max_new_tokens: int) -> dict:
    """One generation; wall seconds, each neural member's forward seconds and calls, the new tokens."""
    was = [(m.cache, m.compile) for m in neural]
    for m in neural if compiled else []:
        m.set_cache("static", True)
    try:
        tic = time.perf_counter()
        out = csdlib.generate(fam.target, fam.drafters, prompt, k_matrix=fam.k_matrix, lenience=fam.lenience,
                              max_new_tokens=max_new_tokens, tree=fam.tree)
        wall = time.perf_counter() - tic
    finally:
        for m, old in zip(neural, was):
            m.set_cache(*old)
    return {"wall": wall, "tokens": list(out.new_tokens),
            **{f"{m.name} s": m.forward_seconds for m in neural}, **{f"{m.name} calls": m.calls for m in neural}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="smollm2")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    for dtype in a.dtypes.split(","):
        fam = zoo.load(a.family, dtype=dtype)
        neural = [m for m in [fam.target, *fam.drafters] if not is_free(m)]
        prompts = [fam.encode(t) for t in prompt_texts("gsm8k", "dev", n=a.prompts, chat=fam.chat)]
        for prompt in prompts:                       # warm-up: every shape the timed runs need compiles here
            one_run(fam, neural, prompt, True, a.max_new_tokens)
        before = compiled_graphs()
        runs = {"default": [], "compiled": []}
        for i, prompt in enumerate(prompts):
            for mode in (("default", "compiled") if i % 2 == 0 else ("compiled", "default")):
                runs[mode].append(one_run(fam, neural, prompt, mode == "compiled", a.max_new_tokens))
        same = sum(x["tokens"] == y["tokens"] for x, y in zip(runs["default"], runs["compiled"]))
        for mode, rs in runs.items():
            wall = sum(r["wall"] for r in rs)
            row = {"dtype": dtype, "members": mode, "prompts": len(rs), "wall s": wall,
                   "tokens/s": sum(len(r["tokens"]) for r in rs) / wall,
                   "same output as default": f"{same}/{len(rs)}", "graphs compiled while timed": compiled_graphs() - before}
            drafters = 0.0
            for m in neural:
                s = sum(r[f"{m.name} s"] for r in rs)
                row[f"{m.name} %"] = 100 * s / wall
                row[f"{m.name} calls"] = sum(r[f"{m.name} calls"] for r in rs)
                row[f"{m.name} ms/call"] = 1e3 * s / max(1, row[f"{m.name} calls"])
                drafters += s if m is not fam.target else 0.0
            row["rest %"] = 100 - sum(row[f"{m.name} %"] for m in neural)
            row["x if drafters were free"] = wall / (wall - drafters)
            rows.append(row)
        rows[-1]["compiled / default"] = rows[-2]["wall s"] / rows[-1]["wall s"]
        print(rows[-2], rows[-1], sep="\n", flush=True)
        del fam
    names = [k[:-2] for k in rows[0] if k.endswith(" %") and k != "rest %"]
    cols = (["dtype", "members", "prompts", "tokens/s", "compiled / default"]
            + [f"{n} {c}" for n in names for c in ("%", "ms/call", "calls")]
            + ["rest %", "x if drafters were free", "same output as default", "graphs compiled while timed"])
    machine = {**hardware(torch.device("cpu")), "platform": platform.platform(), "threads": a.threads,
               "torch": torch.__version__, "family": a.family, "max_new_tokens": a.max_new_tokens}
    command = "python benchmarks/time_split.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    head = (f"{a.family}, {a.threads} thread(s), {a.max_new_tokens} new tokens, CPU {machine['cpu']} (bf16 units: "
            f"{machine['cpu_isa']}), torch {machine['torch']}; `{command}`")
    print(write_table(a.out, "time_split", head, rows, cols, {**machine, "command": command}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
