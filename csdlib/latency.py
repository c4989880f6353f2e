"""The machine's latency model: predicted wall time of a run from its `Stats` (`predict_wall_time`).

On a CPU (and for small models on a GPU) one forward that feeds n >= 2 new tokens costs about a + b*n
seconds: a is the per-call cost (Python, kernel launches, reading the weights once), b the cost of one
more token. A one-token forward (a decode step: AR, a drafter drafting) takes its own path through
attention (no mask) and is cheaper than a + b: it gets its own constant a1. Measured for gsm8k-tiny's
target on 1 thread: 4.3 ms for 1 token, 5.5 / 6.4 / 6.9 / 7.9 ms for 2 / 4 / 8 / 16 tokens (a
straight line through n = 1 would miss AR by 20 %; the KV length, 32 -> 320 tokens, changes a forward
by 3-10 %, so it is left out). Calibrated per model, device and thread count on this machine
(`calibrate_latency`, or the command `csd calibrate`), stored as JSON and reused. A run's wall time is
then predicted from its stats alone (`predict_wall_time`):

    sum over models of a1 * one_token_calls + a * (chain calls) + b * (tokens those fed)
                       + tree_a * tree_calls + tree_b * tree_tokens_fed + switch * switch_calls

A forward that comes right after another model's forward is slower: the other model's weights pushed
this one's out of the CPU caches. Measured for gsm8k-tiny on 2 threads: mid's one-token forward
1.64 ms after its own, 1.92 ms (+17 %) after the target's; small 0.90 -> 1.15 ms (+28 %); the target,
too large for the caches anyway, -2 %. So the cascade counts, per model, the forwards that followed
another model's (`switch_calls`), and the calibration measures that penalty (`switch`: one-token
forwards right after a forward of the family's largest other model, minus a1). Without it the
latency model under-predicted SD with a neural drafter by 12.5 % (`benchmarks/speed.py`, 50 prompts).
MaG runs no forward, but each of its calls is Python and numpy work (suffix matching over the sequence,
about 0.05 ms): it is calibrated too (`calibrate_free`), as a constant a1 = a per call (b = 0), so a
cascade that calls MaG many times is not predicted as if those calls were free.

A forward that verifies a token tree (`csdlib.Tree`) feeds its nodes with a 4D attention mask and
per-node positions, and is followed by `keep_path` (every layer's keys and values gathered at the
accepted path): measured for gsm8k-base's target in float32 on 2 threads, a tree review costs 1.03-1.11x
a chain review feeding as many tokens. A latency model that charged it a + b*n predicted the tuner's tree
1.2 % faster than its chain; it ran 8 % slower (`benchmarks/speed.py`, 2026-11-30). So trees get their own
line, tree_a + tree_b*n, timed on the cascade's own tree review (`Cascade.review_tree`, keep_path
included); a calibration from before has none, and its trees are predicted as chains (`optimize` then
refuses to search trees).

Calibrations are stored per machine (`default_latency_path`), keyed by model fingerprint, device and
thread count (`latency_key`); `calibrate_latency` reads them or measures, `stored_latency` only reads.
"""

from __future__ import annotations

import statistics
import time

from .cascade import Cascade, Tree
from .errors import CSDValueError
from .protocol import fingerprint, is_free

LATENCY_FORMAT = "csdlib.latency"
LATENCY_NS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)
TREE_NS = (2, 4, 8, 16, 32, 48, 64)       # trees feed more: up to about 100 tokens for width 4 over 8 positions
ZERO_LATENCY = {"a1": 0.0, "a": 0.0, "b": 0.0, "switch": 0.0}     # the fields of a calibration
TREE_FIELDS = ("tree_a", "tree_b")      # and of a model timed verifying trees (see calibrate_model)


def fit_latency(ns, seconds) -> tuple[float, float]:
    """Least-squares fit of seconds = a + b * n; returns (a, b)."""
    import numpy as np

    ns, seconds = np.asarray(ns, dtype=float), np.asarray(seconds, dtype=float)
    if ns.shape != seconds.shape or len(ns) < 2 or len(set(ns.tolist())) < 2:
        raise CSDValueError(f"ns, seconds: expected two equal-length lists with at least two distinct n, "
                            f"got {len(ns)} n and {len(seconds)} times")
    b, a = np.polyfit(ns, seconds, 1)
    return float(a), float(b)


def machine_id() -> str:
    """A slug naming this kind of machine (CPU model, logical cores, architecture): calibrations are
    stored per machine so they are not reused on another one."""
    import os
    import platform
    import re

    from .precision import cpu_info

    cpu = cpu_info().get("model name") or platform.processor() or ""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{platform.machine()} {cpu} {os.cpu_count()}cpu".lower()).strip("-")
    return slug or "unknown"


def default_latency_path():
    """`$CSD_LATENCY_FILE`, else `data/latency/<machine_id()>.json` in the repository."""
    import os
    from pathlib import Path

    if os.environ.get("CSD_LATENCY_FILE"):
        return Path(os.environ["CSD_LATENCY_FILE"])
    return Path(__file__).resolve().parent.parent / "data" / "latency" / f"{machine_id()}.json"


def _device_of(model) -> str:
    return str(getattr(model, "device", "cpu"))


def runtime(model) -> str:
    """How a member runs where that changes its speed but not its output: ``"|onednn"`` (linear layers
    prepacked, `csdlib.onednn`), then ``"|static"`` (a static KV cache, `HFModel(cache="static")`) and
    ``"|compiled"`` (compiled forwards, `HFModel(compile=True)`); ``""`` for none. Calibrations and
    records are kept apart by it."""
    from .onednn import is_packed

    return (("|onednn" if is_packed(model) else "") + ("|static" if getattr(model, "cache", None) == "static" else "")
            + ("|compiled" if getattr(model, "compile", None) is True else ""))


def latency_key(model, threads: int | None = None) -> str:
    """`<model fingerprint>|<device>|<threads>threads` (and `|onednn` for a model whose linear layers are
    prepacked, `csdlib.onednn`, `|static` for one on a static KV cache): what a calibration is valid for."""
    import torch

    threads = torch.get_num_threads() if threads is None else threads
    return f"{fingerprint(model)}|{_device_of(model)}|{threads}threads{runtime(model)}"


def calibrate_model(model, *, context: int = 96, ns=LATENCY_NS, repeats: int = 15, warmup: int = 3,
                    seed: int = 0, other=None, tree_ns=TREE_NS) -> dict:
    """Time forwards of `model` (an `HFModel`) feeding n tokens with a KV cache holding `context` tokens,
    for each n in `ns` (interleaved in random order, so a change of machine load hits every n alike;
    n = 1 as runs of 4 one-token forwards, the 2nd to 4th timed, as they come in decoding and drafting);
    a1 = the median for n = 1, (a, b) = the least-squares line through the medians for n >= 2. Each
    timed call is one greedy review by the cascade's own code (`Cascade.review_greedy`: n - 1 drafted
    tokens, one forward feeding n, softmax, argmax, acceptance), so the cascade's per-call overhead is
    included. With `other` (another HFModel), also `switch`: the median extra time of a one-token
    review right after a one-token forward of `other` (0 without `other`). A model that verifies trees
    (`tree_logits`) also gets (tree_a, tree_b): the line through the medians of tree reviews
    (`Cascade.review_tree`, `keep_path` included) whose forwards feed n tokens, n in `tree_ns` (wider
    than `ns`: a tree feeds far more tokens than a chain, and over 2..16 tokens the line is too flat to
    extrapolate: measured, it predicted a 47-token tree forward at half its time).
    Returns {"a1", "a", "b", "switch", "ns", "median_s", "context", "prefill_s"} (seconds), plus
    "tree_a", "tree_b", "tree_median_s" for a tree-capable model."""
    import random

    import torch

    ns = sorted(set(int(n) for n in ns))
    if ns[0] != 1 or len(ns) < 3:
        raise CSDValueError(f"ns: expected 1 and at least two sizes >= 2, got {ns}")
    rng = random.Random(seed)
    vocab = model.vocab_size
    prompt = [rng.randrange(vocab) for _ in range(context)]
    tail = [rng.randrange(vocab) for _ in range(max([*ns, *tree_ns]))]
    trees = callable(getattr(model, "tree_logits", None))
    cascade = Cascade([model], None, tree=Tree([[2] * len(tail)]) if trees else None)
    seq0 = model.start(prompt)
    if hasattr(model, "reserve"):                        # a static cache: room for the longest review
        model.reserve(len(seq0) + len(tail) + 1)
    tic = time.perf_counter()
    model.logits(seq0, 1)                                # prefill: the whole prompt in one forward
    prefill = time.perf_counter() - tic
    start = len(seq0)

    def review(n):                                       # n - 1 drafted tokens: the forward feeds n
        seq, q = seq0 + tail[:n - 1], [None] * start + [1.0] * (n - 1)
        # one-token forwards come in runs (AR, a drafter drafting): time the 2nd to 4th of a run
        times = [_timed(cascade.review_greedy, 0, seq, q, start) for _ in range(4 if n == 1 else 1)]
        return times[1:] if n == 1 else times

    medians = _medians(ns, review, repeats, warmup, rng)
    a, b = fit_latency(ns[1:], medians[1:])
    tree_fit = _time_trees(cascade, seq0, tail, sorted(set(tree_ns)), repeats, warmup, rng) if trees else {}
    switch, cold = 0.0, None
    if other is not None:                                # the same review, right after `other`'s forward
        oseq = other.start([rng.randrange(other.vocab_size) for _ in range(context)])
        other.logits(oseq, 1)
        cold = []
        with torch.no_grad():
            for r in range(warmup + repeats):
                other.logits(oseq[:-1] + [r % other.vocab_size], 1)
                tic = time.perf_counter()
                cascade.review_greedy(0, seq0, [None] * start, start)
                if r >= warmup:
                    cold.append(time.perf_counter() - tic)
        switch = max(0.0, statistics.median(cold) - medians[0])
    return {"a1": medians[0], "a": a, "b": b, "switch": switch, "ns": ns, "median_s": medians,
            "context": context, "prefill_s": prefill, "other": getattr(other, "name", None), **tree_fit}


def _timed(f, *args, **kwargs) -> float:
    tic = time.perf_counter()
    f(*args, **kwargs)
    return time.perf_counter() - tic


def _medians(ns, timed, repeats: int, warmup: int, rng) -> list[float]:
    """For each n in ns, the median of the seconds `timed(n)` returns (a list), over `repeats` calls after
    `warmup` untimed ones; the calls of all n interleaved in random order, so that a change of machine
    load hits every n alike."""
    import torch

    times: dict[int, list[float]] = {n: [] for n in ns}
    order = [n for _ in range(warmup + repeats) for n in ns]
    rng.shuffle(order)
    seen = dict.fromkeys(ns, 0)
    with torch.no_grad():
        for n in order:
            dts = timed(n)
            seen[n] += 1
            if seen[n] > warmup:
                times[n] += dts
    return [statistics.median(times[n]) for n in ns]


def _time_trees(cascade, seq0: list[int], tail: list[int], tree_ns, repeats: int, warmup: int, rng) -> dict:
    """Tree reviews whose forward feeds n tokens (a chain of n // 2 drafted tokens and a side branch at
    each of its first positions, n - 1 nodes in all), interleaved in random order; the line through the
    medians."""
    start = len(seq0)

    def review(n):
        chain = n // 2
        cascade.alts = [[]] * start + [[(t, 0.5)] for t in tail[chain:n - 1]] + [[]] * chain
        return [_timed(cascade.review_tree, 0, seq0 + tail[:chain], [None] * start + [1.0] * chain, start,
                       cap=start + len(tail) + 2)]

    medians = _medians(tree_ns, review, repeats, warmup, rng)
    tree_a, tree_b = fit_latency(tree_ns, medians)
    return {"tree_a": tree_a, "tree_b": tree_b, "tree_ns": list(tree_ns), "tree_median_s": medians}


def calibrate_free(model, *, context: int = 96, ns=LATENCY_NS, repeats: int = 30, warmup: int = 5,
                   seed: int = 0) -> dict:
    """Time one call of a free drafter (MaG: `propose`) after a `context`-token sequence, asked for n
    tokens, for each n in `ns` (interleaved in random order); the median over all calls is its cost per
    call: {"a1": t, "a": t, "b": 0.0, "ns", "median_s", "context"}."""
    import random

    rng = random.Random(seed)
    vocab = model.vocab_size
    prompt = [rng.randrange(vocab) for _ in range(context)]
    seq = prompt + [rng.randrange(vocab) for _ in range(max(ns))]   # a continuation that repeats nothing
    model.start(prompt)
    order = [n for _ in range(warmup + repeats) for n in ns]
    rng.shuffle(order)
    times: dict[int, list[float]] = {n: [] for n in ns}
    seen = dict.fromkeys(ns, 0)
    for n in order:
        tic = time.perf_counter()
        model.propose(seq, n)
        dt = time.perf_counter() - tic
        seen[n] += 1
        if seen[n] > warmup:
            times[n].append(dt)
    t = statistics.median([x for n in ns for x in times[n]])
    return {"a1": t, "a": t, "b": 0.0, "switch": 0.0, "ns": list(ns),
            "median_s": [statistics.median(times[n]) for n in ns], "context": context}


def load_latency(path=None) -> dict:
    """The stored calibrations: {key: entry} (empty when the file does not exist)."""
    import json
    from pathlib import Path

    path = Path(path) if path is not None else default_latency_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CSDValueError(f"latency file {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != LATENCY_FORMAT:
        raise CSDValueError(f"latency file {str(path)!r}: not a csdlib latency file (format {LATENCY_FORMAT!r})")
    return data.get("entries", {})


def _save_latency(entries: dict, path) -> None:
    import json
    import platform

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": LATENCY_FORMAT, "version": 1, "machine": machine_id(),
            "torch": torch.__version__, "python": platform.python_version(), "entries": entries}
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def calibrate_latency(models, *, path=None, threads: int | None = None, force: bool = False,
                      note: str = "", **kwargs) -> dict[str, dict]:
    """{model name: {"a1", "a", "b", "switch"} (and "tree_a", "tree_b")} for `models`, read from the
    latency file when a calibration for the same model fingerprint, device and thread count is there
    (with its tree line, for a model that verifies trees), else measured
    (`calibrate_model`; a free drafter such as MaG: `calibrate_free`) and stored. A model that neither
    reviews nor proposes (none of csdlib's) gets zeros. `force` re-measures. `threads` (default: torch's current setting)
    is set for the measurement. kwargs go to `calibrate_model`."""
    import os
    from datetime import datetime, timezone
    from pathlib import Path

    import torch

    from .precision import hardware

    path = Path(path) if path is not None else default_latency_path()
    entries = load_latency(path)
    before = torch.get_num_threads()
    threads = before if threads is None else int(threads)
    out, changed = {}, False
    try:
        torch.set_num_threads(threads)
        for m in models:
            free = is_free(m) or not hasattr(m, "logits")
            if free and not hasattr(m, "propose"):
                out[m.name] = dict(ZERO_LATENCY)
                continue
            key = latency_key(m, threads)
            # a model that verifies trees needs its tree line, timed over TREE_NS (an entry timed over 2..16
            # tokens only has no "tree_ns": measured again)
            wanted = set(ZERO_LATENCY) | ({*TREE_FIELDS, "tree_ns"} if callable(getattr(m, "tree_logits", None)) else set())
            if force or not wanted <= set(entries.get(key, {})):     # absent, or from an older format
                others = [o for o in models if o is not m and hasattr(o, "logits") and not is_free(o)]
                other = max(others, key=lambda o: o.cost) if others else None
                fit = (calibrate_free(m, **{k: v for k, v in kwargs.items() if k in ("context", "ns", "seed")})
                       if free else calibrate_model(m, other=other, **kwargs))
                load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
                dtype, cpu = getattr(getattr(m, "model", None), "dtype", None), hardware()
                entries[key] = {**fit, "name": m.name, "device": _device_of(m), "threads": threads,
                                "dtype": None if dtype is None else str(dtype).replace("torch.", ""),
                                "cpu": cpu["cpu"], "cpu_isa": cpu["cpu_isa"],
                                "loadavg_1min": load, "note": note,
                                "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
                changed = True
            out[m.name] = _fields(entries[key])
    finally:
        torch.set_num_threads(before)
    if changed:
        _save_latency(entries, path)
    return out


def stored_latency(models, *, path=None, threads: int | None = None) -> dict[str, dict] | None:
    """Like `calibrate_latency` but never measures: None when a model has no stored calibration."""
    entries = load_latency(path)
    out = {}
    for m in models:
        if (is_free(m) or not hasattr(m, "logits")) and not hasattr(m, "propose"):
            out[m.name] = dict(ZERO_LATENCY)
            continue
        entry = entries.get(latency_key(m, threads))
        if entry is None or not set(ZERO_LATENCY) <= set(entry):
            return None
        out[m.name] = _fields(entry)
    return out


def _fields(entry: dict) -> dict:
    """What the latency model reads of a stored calibration: a1, a, b, switch (and tree_a, tree_b when
    the model was timed verifying trees)."""
    return {k: entry[k] for k in (*ZERO_LATENCY, *TREE_FIELDS) if k in entry}


def forward_seconds(latency: dict, n: int) -> float:
    """Predicted seconds of one forward feeding n tokens: a1 for n = 1, else a + b*n."""
    return latency["a1"] if n == 1 else latency["a"] + latency["b"] * n


def model_seconds(stats, name: str, latency: dict) -> float:
    """Predicted seconds of the forwards of model `name` in `stats` (a `Stats`), without the switch
    penalty: a1 * one_token_calls + a * (chain calls) + b * (tokens those fed) + tree_a * tree_calls +
    tree_b * (tokens those fed); a calibration without a tree line charges tree forwards a + b*n."""
    lat, calls, ones = latency[name], stats.calls[name], stats.one_token_calls.get(name, 0)
    trees, tree_fed = stats.tree_calls.get(name, 0), stats.tree_tokens_fed.get(name, 0)
    chain_fed = stats.tokens_fed.get(name, 0) - ones - tree_fed
    return (lat["a1"] * ones + lat["a"] * (calls - ones - trees) + lat["b"] * chain_fed
            + lat.get("tree_a", lat["a"]) * trees + lat.get("tree_b", lat["b"]) * tree_fed)


def predict_wall_time(stats, latency: dict) -> float:
    """Predicted seconds of a run (or a sum of runs) from its `Stats`: per model, `model_seconds` +
    switch * switch_calls. `latency`: {name: {"a1", "a", "b", "switch"}}."""
    missing = [name for name in stats.calls if name not in latency]
    if missing:
        raise CSDValueError(f"latency: no calibration for model(s) {missing}; known: {sorted(latency)}")
    total = 0.0
    for m in stats.calls:
        total += model_seconds(stats, m, latency)
        total += latency[m].get("switch", 0.0) * stats.switch_calls.get(m, 0)
    return float(total)


def predict_ar_wall_time(target_latency: dict, prompt_tokens: int, new_tokens: int) -> float:
    """Predicted seconds of plain autoregressive decoding: new_tokens forwards, the first feeding the
    prompt, each other one token."""
    if new_tokens <= 0:
        return 0.0
    return forward_seconds(target_latency, prompt_tokens) + (new_tokens - 1) * target_latency["a1"]


def latency_costs(latency: dict) -> dict[str, float]:
    """The `latency` cost table for SWI: seconds of a one-token forward (a1) per model. It ignores how
    many tokens a forward feeds; `predict_wall_time` does not."""
    return {name: v["a1"] for name, v in latency.items()}
