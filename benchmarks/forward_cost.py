"""What one forward of each cascade member costs, eager against oneDNN-prepacked linear layers
(`csdlib.onednn`), by the number of tokens it is fed (1: a decoding step; 2..8: a verification), and how
close the one-token step comes to the time its weights take to stream from memory.

    python benchmarks/forward_cost.py --family smollm2 --dtypes float32,bfloat16 --threads 2 \
        --out data/results/forward-cost-smollm2

Each member is loaded twice (eager, packed); the two are timed alternately, fed the same tokens after a
`--context`-token prefix held in the KV cache (cropped back after each forward), median of `--repeats`.
Bandwidth: a `torch.sum` over 512 MB, the best of 5; a member's "bandwidth time" is its weights' bytes
(every parameter once; a tied output layer once more, as it is read twice) over that bandwidth.
`--static` adds each packed member's forward through `HFModel.logits` (the cascade's own call: the cache
rolled back, the new tokens fed) on transformers' `DynamicCache` against its `StaticCache` (with
`--compiled` also compiled, `HFModel(cache="static", compile=True)`; the first, compiling call untimed).
`--compiled` adds, for the one-token step, the eager model on transformers' `StaticCache` against the same
forward compiled by `torch.compile` at fixed shapes (the compile's seconds and the graphs compiled beside).
Written as markdown and JSON under `--out` with the machine and its ISA.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_table  # noqa: E402
from csdlib import onednn, zoo  # noqa: E402
from csdlib.models import CPU_COMPILE_OPTIONS  # noqa: E402
from csdlib.precision import hardware  # noqa: E402
from csdlib.protocol import is_free  # noqa: E402


def bandwidth_gbs() -> float:
    """Memory read bandwidth in GB/s: a sum over 512 MB of float32, the best of 5."""
    x = torch.ones(128 * 2 ** 20)
    best = float("inf")
    for _ in range(5):
        tic = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - tic)
    return x.numel() * 4 / best / 1e9


def weight_bytes(model) -> int:
    """Bytes a forward reads: every parameter once, a tied output layer's weight twice (lookup and product)."""
    hf = model.model
    total = sum(p.numel() * p.element_size() for p in hf.parameters())
    head, embed = hf.get_output_embeddings(), hf.get_input_embeddings()
    if head is not None and embed is not None and head.weight is embed.weight:
        total += head.weight.numel() * head.weight.element_size()
    return total


@torch.no_grad()
def forward_times(models: dict, fed: int, context: int, repeats: int) -> dict:
    """Median seconds of one forward over `fed` new tokens after `context` cached ones, per model,
    the models timed alternately."""
    g = torch.Generator().manual_seed(fed)
    vocab = min(m.model.config.vocab_size for m in models.values())
    prefix = torch.randint(0, vocab, (1, context), generator=g)
    new = torch.randint(0, vocab, (1, fed), generator=g)
    caches = {k: m.model(prefix, use_cache=True).past_key_values for k, m in models.items()}
    times = {k: [] for k in models}
    for _ in range(repeats + 1):                 # the first round warms up
        for k, m in models.items():
            tic = time.perf_counter()
            m.model(new, use_cache=True, **{m._cache_arg: caches[k]})
            times[k].append(time.perf_counter() - tic)
            caches[k].crop(-fed)
    return {k: statistics.median(v[1:]) for k, v in times.items()}


def member_times(models: dict, fed: int, context: int, repeats: int) -> dict:
    """Median seconds of `HFModel.logits` over `fed` new tokens after `context` cached ones, per member
    (the cache rolled back by `fed` before each call, as after a rejected draft), timed alternately."""
    g = torch.Generator().manual_seed(fed)
    vocab = min(m.vocab_size for m in models.values())
    seq = torch.randint(0, vocab, (context + fed,), generator=g).tolist()
    times = {k: [] for k in models}
    for m in models.values():
        m.start(seq[:context])
        m.reserve(context + fed)
        m.logits(seq[:context], 1)
    for _ in range(repeats + 1):                 # the first round warms up
        for k, m in models.items():
            tic = time.perf_counter()
            m.logits(seq, fed)
            times[k].append(time.perf_counter() - tic)
    return {k: statistics.median(v[1:]) for k, v in times.items()}


@torch.no_grad()
def compiled_step(model, context: int, repeats: int) -> dict:
    """The one-token step of an `HFModel`'s model on transformers' `StaticCache`, eager and compiled
    (`torch.compile(fullgraph=True, dynamic=False)` with `HFModel`'s options on the CPU, inductor's
    `freezing`), timed alternately: median ms of
    each, the first compiled call's seconds, and the graphs dynamo compiled (1: no recompilation)."""
    import torch._dynamo
    from transformers import StaticCache

    hf = model.model
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, hf.config.vocab_size, (1, context), generator=g)
    one = torch.randint(0, hf.config.vocab_size, (1, 1), generator=g)
    cache = StaticCache(config=hf.config, max_cache_len=context + 8)
    hf(prefix, use_cache=True, **{model._cache_arg: cache})

    def step(forward):
        forward(input_ids=one, use_cache=True, **{model._cache_arg: cache})
        cache.crop(-1)                              # back to the prefix: every step sees the same context

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(hf.forward, fullgraph=True, dynamic=False, options=CPU_COMPILE_OPTIONS)
    tic = time.perf_counter()
    step(compiled)
    compile_s = time.perf_counter() - tic
    times = {"static": [], "compiled": []}
    for _ in range(repeats + 1):                    # the first round warms up
        for name, forward in (("static", hf.forward), ("compiled", compiled)):
            tic = time.perf_counter()
            step(forward)
            times[name].append(time.perf_counter() - tic)
    static, fast = (statistics.median(times[k][1:]) * 1e3 for k in ("static", "compiled"))
    return {"static ms": static, "compiled ms": fast, "eager / compiled": static / fast, "compile s": compile_s,
            "graphs": int(torch._dynamo.utils.counters["stats"]["unique_graphs"])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="smollm2")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--fed", default="1,2,4,8", help="tokens fed per forward")
    p.add_argument("--context", type=int, default=200, help="tokens already in the KV cache")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--compiled", action="store_true",
                   help="also the one-token step on a static KV cache, eager and compiled (torch.compile)")
    p.add_argument("--static", action="store_true",
                   help="also each packed member's forward through HFModel (cache handling included) on transformers' "
                        "DynamicCache against its StaticCache (HFModel(cache='static'))")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    gbs = bandwidth_gbs()
    print(f"memory bandwidth: {gbs:.1f} GB/s", flush=True)
    rows = []
    for dtype in a.dtypes.split(","):
        eager, packed = (zoo.load(a.family, dtype=dtype, prepack=on) for on in (False, True))
        pairs = [(m, q) for m, q in zip([eager.target, *eager.drafters], [packed.target, *packed.drafters])
                 if not is_free(m)]
        for m, q in pairs:
            if not onednn.is_packed(q):
                print(f"{dtype} {m.name}: oneDNN cannot pack {dtype} on this CPU; skipped", flush=True)
                continue
            bw_ms = weight_bytes(m) / (gbs * 1e9) * 1e3
            for fed in [int(x) for x in a.fed.split(",")]:
                t = forward_times({"eager": m, "packed": q}, fed, a.context, a.repeats)
                row = {"dtype": dtype, "model": m.name, "fed": fed,
                       "params M": sum(x.numel() for x in m.model.parameters()) / 1e6,
                       "eager ms": t["eager"] * 1e3, "packed ms": t["packed"] * 1e3,
                       "eager / packed": t["eager"] / t["packed"], "bandwidth ms": bw_ms,
                       "packed / bandwidth": t["packed"] * 1e3 / bw_ms}
                if a.compiled and fed == 1:
                    row.update(compiled_step(m, a.context, a.repeats))
                if a.static:                 # the packed member through HFModel, on each KV cache
                    members = {"dynamic": q, "static": copy.copy(q)}
                    members["static"].set_cache("static")
                    if a.compiled:           # and compiled, as the cascade calls it (compiled on first use)
                        members["compiled"] = copy.copy(q)
                        members["compiled"].set_cache("static", compile=True)
                    c = member_times(members, fed, a.context, a.repeats)
                    row.update({"dynamic cache ms": c["dynamic"] * 1e3, "static cache ms": c["static"] * 1e3,
                                "dynamic / static": c["dynamic"] / c["static"]})
                    if a.compiled:
                        row.update({"HFModel compiled ms": c["compiled"] * 1e3,
                                    "dynamic / compiled": c["dynamic"] / c["compiled"]})
                rows.append(row)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        for row in rows:                     # each fed length against the same model's one-token step
            one = next(r for r in rows if (r["dtype"], r["model"], r["fed"]) == (row["dtype"], row["model"], 1))
            row["eager x step"] = row["eager ms"] / one["eager ms"]
            row["packed x step"] = row["packed ms"] / one["packed ms"]
        del eager, packed
    machine = {**hardware(torch.device("cpu")), "platform": platform.platform(), "threads": a.threads,
               "torch": torch.__version__, "family": a.family, "bandwidth GB/s": gbs, "context": a.context}
    command = "python benchmarks/forward_cost.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    cols = ["dtype", "model", "params M", "fed", "eager ms", "packed ms", "eager / packed", "eager x step",
            "packed x step", "bandwidth ms", "packed / bandwidth"]
    if a.compiled:
        cols += ["static ms", "compiled ms", "eager / compiled", "compile s", "graphs"]
    if a.static:
        cols += ["dynamic cache ms", "static cache ms", "dynamic / static"]
    if a.static and a.compiled:
        cols += ["HFModel compiled ms", "dynamic / compiled"]
    head = (f"{a.family}, {a.threads} thread(s), {a.context} tokens cached, CPU {machine['cpu']} (bf16 units: "
            f"{machine['cpu_isa']}), memory {gbs:.1f} GB/s, torch {machine['torch']}; `{command}`")
    print(write_table(a.out, "forward_cost", head, rows, cols, {**machine, "command": command}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
