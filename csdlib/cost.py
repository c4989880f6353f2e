"""The paper's cost models: the hardware-independent metric (SWI / EWIF), cost tables and the analytic
expectation. (Wall time on this machine, the latency model, is `csdlib.latency`.)

SWI (standardized wall-time improvement) of one run: with a cost `c_m` per forward pass of model m,

    SWI = new_tokens * c_target / sum_m calls_m * c_m

i.e. the cost autoregressive decoding would have spent on the same tokens (one target forward per
token) divided by the cost actually spent. Plain AR decoding has SWI = 1 exactly. Only decoder forward
passes count (an encoder-decoder model's one encoder pass per prompt is left out, as in the seed).

Cost tables (model name -> cost of one forward):

- `model_parameters` (the seed's, millions of parameters): FLAN-T5 small 60, base 220, large 770,
  xl 3000, xxl 11300; llama-68m 68, llama-160m 160; LLaMA-7B **7000**. The seed's own table says
  `7b: 70000` (and `llama: 70000`), ten times parameter scale; we use 7000 everywhere so that every
  entry is on the same scale (parameters in millions). SWIs of LLaMA settings are therefore lower
  than the seed's would be.
- `previous_work` (the seed's, relative latencies reported by earlier work): xxl 1, large 0.11,
  base 0.04, small 0.02.
- `parameters`: each model's actual parameter count (`HFModel.cost`'s default).
- `measured`: the median wall time of one one-token forward pass with a KV cache on this machine
  (`measure_costs`).

MaG costs 0 under every table.

Names resolve against the seed's tables the way the seed did (a table key that is a substring of the
model's name), made explicit: case-insensitive, and the *longest* matching key wins, so
"google/flan-t5-xxl" is "xxl" (not "xl") and "JackFram/llama-160m" is "llama-160m" (not "llama").
A name that matches no key raises a `CSDValueError` (the seed silently used 0 or crashed).
"""

from __future__ import annotations

import statistics
import time

from .protocol import is_free
from .errors import CSDValueError

#: The seed's `model_parameters` table, with LLaMA-7B at parameter scale (see the module docstring).
MODEL_PARAMETERS = {
    "small": 60, "base": 220, "large": 770, "xl": 3000, "xxl": 11300,
    "llama-68m": 68, "llama-160m": 160, "7b": 7000, "llama": 7000,
}

#: The seed's `previous_work` table.
PREVIOUS_WORK = {"xxl": 1, "large": 0.11, "base": 0.04, "small": 0.02}

#: The seed's named tables (`counter_version` in its configs).
SEED_TABLES = {"model_parameters": MODEL_PARAMETERS, "previous_work": PREVIOUS_WORK}


def resolve_cost(name: str, table: dict) -> float:
    """The cost of the model called `name` in a seed-style table (longest substring key wins)."""
    lowered = str(name).lower()
    hits = [key for key in table if key.lower() in lowered]
    if not hits:
        raise CSDValueError(f"model name {name!r} matches no key of the cost table {sorted(table)}; "
                            "name the model after one of them or use another cost table")
    return float(table[max(hits, key=len)])


def table_costs(models, table: dict) -> dict[str, float]:
    """{name: cost} for `models` under a seed-style table; MaG costs 0."""
    return {m.name: 0.0 if is_free(m) else resolve_cost(m.name, table) for m in models}


def parameter_costs(models) -> dict[str, float]:
    """{name: parameter count} (`HFModel.cost`'s default); MaG costs 0."""
    return {m.name: 0.0 if is_free(m) else float(m.cost) for m in models}


def measure_costs(models, prompt_ids, *, warmup: int = 5, repeats: int = 30) -> dict[str, float]:
    """{name: median seconds of one one-token forward with a KV cache holding the prompt}; MaG: 0.

    Each model first fills its cache with the prompt, runs `warmup` untimed forwards, then `repeats`
    timed ones (each feeds the same one token after the prompt, so the cache length stays fixed).
    """
    prompt = list(prompt_ids)
    costs = {}
    for m in models:
        if is_free(m):
            costs[m.name] = 0.0
            continue
        seq = m.start(prompt) + [0]          # decoder-only: prompt + one token; T5: [start, token]
        m.logits(seq, len(seq))              # fill the cache
        times = []
        for i in range(warmup + repeats):
            tic = time.perf_counter()
            m.logits(seq, 1)                 # cache cropped by one token, one token fed
            if i >= warmup:
                times.append(time.perf_counter() - tic)
        costs[m.name] = statistics.median(times)
    return costs


def cost_tables(models, *, measured: dict | None = None, latency: dict | None = None) -> dict[str, dict[str, float]]:
    """Every cost table that covers all `models`: parameters, the seed's tables where every name
    resolves, `measured` if given, and `latency` (seconds of a one-token forward, a1, from a calibrated
    latency model {name: {"a1", "a", "b"}}) if given. Tables that do not cover every model are left out."""
    tables = {"parameters": parameter_costs(models)}
    for label, table in SEED_TABLES.items():
        try:
            tables[label] = table_costs(models, table)
        except CSDValueError:
            pass
    if measured is not None:
        tables["measured"] = {m.name: measured[m.name] for m in models}
    if latency is not None and all(m.name in latency for m in models):
        tables["latency"] = {m.name: float(latency[m.name]["a1"]) for m in models}
    return tables


def run_cost(calls: dict, costs: dict) -> float:
    """sum_m calls_m * c_m."""
    missing = [name for name in calls if name not in costs]
    if missing:
        raise CSDValueError(f"costs: no cost for model(s) {missing}; known: {sorted(costs)}")
    return float(sum(n * costs[name] for name, n in calls.items()))


def swi(new_tokens: int, calls: dict, costs: dict, target: str) -> float:
    """SWI of one sample: new_tokens * c_target / sum_m calls_m * c_m (AR gives exactly 1)."""
    spent = run_cost(calls, costs)
    if spent == 0:
        raise CSDValueError("calls: no model call with a non-zero cost; SWI is undefined")
    return new_tokens * costs[target] / spent


def swi_total(new_tokens, calls, costs: dict, target: str) -> float:
    """Aggregate SWI over samples: sum(new_tokens) * c_target / sum(cost) — the ratio of the totals,
    not the mean of per-sample ratios (which would over-weight short outputs)."""
    total: dict[str, int] = {}
    for c in calls:
        for name, n in c.items():
            total[name] = total.get(name, 0) + n
    return swi(sum(new_tokens), total, costs, target)


# ---------------------------------------------------------------- analytic expectation (Leviathan et al.)


def expected_tokens_per_call(alpha: float, k: int) -> float:
    """Expected tokens per target call of SD with k drafts, i.i.d. acceptance rate alpha:
    (1 - alpha^(k+1)) / (1 - alpha)."""
    _check_alpha(alpha)
    return float(k + 1) if alpha == 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


def expected_speedup(alpha: float, c: float, k: int) -> float:
    """Leviathan et al.'s expected improvement factor of SD: (1 - alpha^(k+1)) / ((1 - alpha)(k c + 1)),
    c = c_drafter / c_target. In the cost model this is SD's expected SWI (a neural drafter makes one
    call per draft token)."""
    if c < 0:
        raise CSDValueError(f"c: expected a cost ratio >= 0, got {c!r}")
    return expected_tokens_per_call(alpha, k) / (k * c + 1)


def acceptance_rate(level) -> float:
    """Estimate of the per-token acceptance rate alpha from one level's stats (a `LevelStats`).

    Positions after the first rejection of a review are never examined, so accepted / drafted would be
    biased low. The maximum-likelihood estimate under i.i.d. acceptance is accepted / examined, with
    examined[p] = min(accepted[p-1], drafted[p]) (examined[0] = drafted[0]); exact when every review
    of the level drafts the same number of tokens (as in SD), an approximation otherwise.
    """
    drafted, accepted = level.drafted_per_position, level.accepted_per_position
    examined = [drafted[0]] if drafted else []
    examined += [min(accepted[p - 1] if p - 1 < len(accepted) else 0, drafted[p])
                 for p in range(1, len(drafted))]
    total = sum(examined)
    return sum(accepted) / total if total else float("nan")


def _check_alpha(alpha) -> None:
    if not 0 <= alpha <= 1:
        raise CSDValueError(f"alpha: expected an acceptance rate in [0, 1], got {alpha!r}")
