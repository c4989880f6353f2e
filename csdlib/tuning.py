"""Evaluate and optimise a cascade (k-matrix, lenience, MaG's draft size) against the target-output cache.

    cached = build_target_cache(fam.target, prompts, max_new_tokens, "data/cache/target.jsonl")
    r = evaluate_cascade(cached, fam.drafters, prompts, k_matrix, lenience, max_new_tokens=64)
    r["swi"]["parameters"], r["acceptance"], r["tokens_per_target_call"]

    best = optimize(cached, fam.drafters, prompts, objective="latency", n_trials=60)
    best.k_matrix, best.lenience, best.value, best.study      # an optuna Study, to inspect and plot

Against a `CachedTarget` no target forward runs, so one evaluation of a few prompts takes well under a
second on CPU with the tiny family; with the real target it gives identical numbers, only slower.

`optimize` searches with Optuna's TPE sampler (seeded, so a search is reproducible): every free
entry of the k-matrix (n(n+1)/2 integers for n drafters: 10 for a 4-level cascade) and the lenience.
TPE models good and bad settings separately and samples where good ones are dense, so it handles
integer entries that interact (a row's entries only matter if the level above drafts with that row)
far better than a fixed grid; a trial that is clearly worse than the median after a few prompts is
pruned (MedianPruner), and settings already evaluated are not run again. The objective is
`"latency"` (predicted wall-clock speedup over AR from the calibrated latency model,
`csdlib.cost.predict_wall_time`) or the name of a cost table (SWI under it, e.g. "parameters").
MaG's draft size is its k-matrix column (MaG proposes what its entry asks for, at most its k); in seed
mode, where MaG always proposes its own k, that k is searched instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import cost as costs_mod
from .cascade import generate
from .errors import CSDValueError
from .experiment import _merge_levels
from .mag import MaG


def evaluate_cascade(target, drafters, prompts, k_matrix, lenience: float = 1.0, *,
                     max_new_tokens: int = 64, cost_table: dict | None = None, latency: dict | None = None,
                     on_prompt=None) -> dict:
    """Run the cascade greedily on `prompts` (lists of token ids) and aggregate.

    Returns a dict: ``swi`` ({cost table: SWI}, a ratio of totals; tables are ``parameters`` or the
    given `cost_table` under ``custom``), ``acceptance`` (accepted / drafted per level, target first,
    None where nothing was drafted), ``levels`` (summed per-level stats), ``calls`` (summed per model),
    ``tokens_fed`` and ``one_token_calls`` (summed per model), ``new_tokens``, ``tokens_per_target_call``,
    ``k_matrix`` and ``lenience``; with `latency` ({name: {"a1", "a", "b"}}, `csdlib.cost`) also
    ``predicted_s`` (predicted wall time), ``predicted_ar_s`` (AR's on the same prompts) and
    ``predicted_speedup`` (their ratio). `on_prompt(i, partial_result)` is called after each prompt
    (the optimizer prunes with it).
    """
    models = [target, *drafters]
    if len(prompts) == 0:
        raise CSDValueError("prompts: expected at least one prompt")
    tables = {"parameters": costs_mod.parameter_costs(models)}
    if cost_table is not None:
        tables["custom"] = {m.name: float(cost_table[m.name]) for m in models}
    calls: dict[str, int] = {m.name: 0 for m in models}
    fed, ones = dict(calls), dict(calls)
    new_tokens, level_lists, ar_s = 0, [], 0.0
    result = {}
    for i, ids in enumerate(prompts):
        out = generate(target, drafters, list(ids), k_matrix=k_matrix, lenience=lenience,
                       max_new_tokens=max_new_tokens)
        new_tokens += len(out.new_tokens)
        for totals, key in ((calls, "calls"), (fed, "tokens_fed"), (ones, "one_token_calls")):
            for name, c in out.stats[key].items():
                totals[name] = totals.get(name, 0) + c
        level_lists.append(out.stats["levels"])
        if latency is not None:
            ar_s += costs_mod.predict_ar_wall_time(latency[target.name], len(ids), len(out.new_tokens))
        if on_prompt is not None or i == len(prompts) - 1:
            result = _summary(target, tables, calls, fed, ones, new_tokens, level_lists, k_matrix, lenience,
                              latency, ar_s)
            if on_prompt is not None:
                on_prompt(i, result)
    return result


def _summary(target, tables, calls, fed, ones, new_tokens, level_lists, k_matrix, lenience, latency, ar_s):
    levels = _merge_levels(level_lists)
    swi = {t: costs_mod.swi(new_tokens, calls, c, target.name) for t, c in tables.items()}
    r = {
        "swi": swi,
        "acceptance": [lv["accepted"] / lv["drafted"] if lv["drafted"] else None for lv in levels],
        "levels": levels, "calls": dict(calls), "tokens_fed": dict(fed), "one_token_calls": dict(ones),
        "new_tokens": new_tokens,
        "tokens_per_target_call": new_tokens / calls[target.name] if calls[target.name] else None,
        "k_matrix": [list(r) for r in k_matrix], "lenience": float(lenience),
    }
    if latency is not None:
        r["predicted_s"] = costs_mod.predict_wall_time(r, latency)
        r["predicted_ar_s"] = ar_s
        r["predicted_speedup"] = ar_s / r["predicted_s"] if r["predicted_s"] else None
    return r


class BestSoFar:
    """Keeps the best evaluation seen (by SWI under `table`), for the sliders' readout."""

    def __init__(self, table: str = "parameters"):
        self.table, self.best = table, None

    def update(self, result: dict) -> bool:
        """Record `result`; True when it is the new best."""
        if self.best is None or result["swi"][self.table] > self.best["swi"][self.table]:
            self.best = result
            return True
        return False

    def __str__(self) -> str:
        if self.best is None:
            return "best so far: -"
        b = self.best
        return (f"best so far: SWI {self.table} {b['swi'][self.table]:.3f} with k_matrix={b['k_matrix']}, "
                f"lenience={b['lenience']:g}")
