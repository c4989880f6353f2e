"""The function behind the k-matrix sliders (notebooks/04_tune_k_matrix.ipynb).

    cached = build_target_cache(fam.target, prompts, max_new_tokens, "data/cache/target.jsonl")
    r = evaluate_cascade(cached, fam.drafters, prompts, k_matrix, lenience, max_new_tokens=64)
    r["swi"]["parameters"], r["acceptance"], r["tokens_per_target_call"]

Against a `CachedTarget` no target forward runs, so one evaluation of a few prompts takes well under a
second on CPU with the tiny family; with the real target it gives identical numbers, only slower.
"""

from __future__ import annotations

from . import cost as costs_mod
from .cascade import generate
from .experiment import _merge_levels


def evaluate_cascade(target, drafters, prompts, k_matrix, lenience: float = 1.0, *,
                     max_new_tokens: int = 64, cost_table: dict | None = None) -> dict:
    """Run the cascade greedily on `prompts` (lists of token ids) and aggregate.

    Returns a dict: ``swi`` ({cost table: SWI}, a ratio of totals; tables are ``parameters`` or the
    given `cost_table` under ``custom``), ``acceptance`` (accepted / drafted per level, target first,
    None where nothing was drafted), ``levels`` (summed per-level stats), ``calls`` (summed per model),
    ``new_tokens``, ``tokens_per_target_call``, ``k_matrix`` and ``lenience``.
    """
    models = [target, *drafters]
    tables = {"parameters": costs_mod.parameter_costs(models)}
    if cost_table is not None:
        tables["custom"] = {m.name: float(cost_table[m.name]) for m in models}
    calls: dict[str, int] = {m.name: 0 for m in models}
    new_tokens, level_lists = 0, []
    for ids in prompts:
        out = generate(target, drafters, list(ids), k_matrix=k_matrix, lenience=lenience,
                       max_new_tokens=max_new_tokens)
        new_tokens += len(out.new_tokens)
        for name, c in out.stats["calls"].items():
            calls[name] = calls.get(name, 0) + c
        level_lists.append(out.stats["levels"])
    levels = _merge_levels(level_lists)
    swi = {t: costs_mod.swi(new_tokens, calls, c, target.name) for t, c in tables.items()}
    return {
        "swi": swi,
        "acceptance": [lv["accepted"] / lv["drafted"] if lv["drafted"] else None for lv in levels],
        "levels": levels, "calls": calls, "new_tokens": new_tokens,
        "tokens_per_target_call": new_tokens / calls[target.name] if calls[target.name] else None,
        "k_matrix": [list(r) for r in k_matrix], "lenience": float(lenience),
    }


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
