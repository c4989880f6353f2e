"""What one call of a small drafter costs through `HFModel.logits` against the raw forward, eager and
compiled (issue 28: is csdlib's own per-call work what keeps a compiled small drafter slow?).

Usage: python benchmarks/call_overhead.py        (smollm2's small drafter, float32, 2 threads, 160 tokens cached)

Prints the mean of 300 one-token calls (after 20 untimed) for: `HFModel.logits` on a dynamic cache, on a
static cache, on a static cache compiled; the raw forward of the same model on a `StaticCache`, eager and
compiled (the same compiled module); then a profile of the compiled `HFModel.logits` call; then the
compiled call again once the mid drafter's graphs for 1-4 tokens and the target's one-token graph are
compiled in the same process (do the guards of every member's graphs, all on `LlamaForCausalLM.forward`,
slow a call down?).
"""
import torch, time, cProfile, pstats, sys
from csdlib import zoo
torch.set_num_threads(2)
fam = zoo.load("smollm2", dtype="float32", progress=False)
small = fam.drafters[1]
prompt = fam.prompt_ids("Write a short story about a robot who learns to paint, in five sentences.")
seq = list(prompt) + [1000 + i for i in range(160)]
N = 300
def timeit(f):
    for _ in range(20): f()
    tic = time.perf_counter()
    for _ in range(N): f()
    return (time.perf_counter() - tic) / N * 1e3
res = {}
small.set_cache("dynamic", False); small.start(seq[:len(prompt)]); small.reserve(len(seq) + 8)
res["HFModel dynamic eager"] = timeit(lambda: small.logits(seq, 1))
small.set_cache("static", False); small.start(seq[:len(prompt)]); small.reserve(len(seq) + 8)
res["HFModel static eager"] = timeit(lambda: small.logits(seq, 1))
small.set_cache("static", True); small.start(seq[:len(prompt)]); small.reserve(len(seq) + 8)
res["HFModel static compiled"] = timeit(lambda: small.logits(seq, 1))
# raw: the same compiled module on the same static cache, at the same position
from transformers import StaticCache
m = small.model
cache = StaticCache(config=m.config, max_cache_len=small._capacity)
ids = small._local[torch.tensor([seq])]
with torch.no_grad():
    m(input_ids=ids[:, :-1], cache=cache, use_cache=True)
    L = ids.shape[1] - 1
    comp = small._compiled_forward()
    def raw(f):
        def g():
            with torch.no_grad():
                f(input_ids=ids[:, -1:], cache=cache, use_cache=True, logits_to_keep=1)
            cache.crop(-1)
        return g
    res["raw eager static"] = timeit(raw(m))
    res["raw compiled static"] = timeit(raw(comp))
for k, v in res.items():
    print(f"{k:28s} {v:.3f} ms")
import torch._dynamo
print("graphs", torch._dynamo.utils.counters["stats"]["unique_graphs"])
small.set_cache("static", True); small.start(seq[:len(prompt)]); small.reserve(len(seq) + 8); small.logits(seq, 1)
pr = cProfile.Profile(); pr.enable()
for _ in range(N): small.logits(seq, 1)
pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(22)

# dynamo's guards: every member's graphs hang on the one LlamaForCausalLM.forward
def ready(m):
    m.set_cache("static", True); m.start(seq[:len(prompt)]); m.reserve(len(seq) + 8)
def calls(m, n, times):
    for _ in range(times): m.logits(seq, n)
ready(small); print(f"{'small compiled, alone':40s} {timeit(lambda: small.logits(seq, 1)):.3f} ms")
mid = fam.drafters[0]; ready(mid)
for n in (1, 2, 3, 4): calls(mid, n, 3)
ready(small); print(f"{'small compiled, with mid 1-4 compiled':40s} {timeit(lambda: small.logits(seq, 1)):.3f} ms")
ready(fam.target); calls(fam.target, 1, 2)
ready(small); print(f"{'small compiled, with the target too':40s} {timeit(lambda: small.logits(seq, 1)):.3f} ms")
print("graphs", torch._dynamo.utils.counters["stats"]["unique_graphs"])
