"""The function behind the k-matrix sliders (notebooks/04_tune_k_matrix.ipynb).

    cached = build_target_cache(fam.target, prompts, max_new_tokens, "data/cache/target.jsonl")
    r = evaluate_cascade(cached, fam.drafters, prompts, k_matrix, lenience, max_new_tokens=64)
    r["swi"]["parameters"], r["acceptance"], r["tokens_per_target_call"]

Against a `CachedTarget` no target forward runs, so one evaluation of a few prompts takes well under a
second on CPU with the tiny family; with the real target it gives identical numbers, only slower.
"""

from __future__ import annotations

import json

from . import cost as costs_mod
from .cascade import generate
from .stats import Stats


def evaluate_cascade(target, drafters, prompts, k_matrix, lenience: float = 1.0, *,
                     max_new_tokens: int = 64, cost_table: dict | None = None) -> dict:
    """Run the cascade greedily on `prompts` (lists of token ids) and aggregate.

    Returns a dict: ``swi`` ({cost table: SWI}, a ratio of totals; tables are ``parameters`` or the
    given `cost_table` under ``custom``), ``acceptance`` (accepted / drafted per level, target first,
    None where nothing was drafted), ``stats`` (the summed `csdlib.Stats`), ``levels`` (its per-level
    stats as dicts), ``calls`` and ``tokens_fed`` (summed per model), ``new_tokens``, ``tokens_per_target_call``, ``k_matrix`` and ``lenience``.
    """
    models = [target, *drafters]
    tables = {"parameters": costs_mod.parameter_costs(models)}
    if cost_table is not None:
        tables["custom"] = {m.name: float(cost_table[m.name]) for m in models}
    total = Stats.merge_all(generate(target, drafters, list(ids), k_matrix=k_matrix, lenience=lenience,
                                     max_new_tokens=max_new_tokens).stats for ids in prompts)
    swi = {t: costs_mod.swi(total.new_tokens, total.calls, c, target.name) for t, c in tables.items()}
    target_calls = total.calls.get(target.name, 0)
    return {
        "swi": swi, "stats": total,
        "acceptance": [lv.acceptance for lv in total.levels],
        "levels": total.to_dict()["levels"], "calls": total.calls, "tokens_fed": total.tokens_fed,
        "new_tokens": total.new_tokens,
        "tokens_per_target_call": total.new_tokens / target_calls if target_calls else None,
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


# ---------------------------------------------------------------- the embedded family's default cascade

#: Candidate cascades for `tune` (target row: mid, small, MaG; mid row: small, MaG; small row: MaG).
TUNE_K_MATRICES = [
    [[a, b, c], [0, d, e], [0, 0, 2]]
    for a, b, c in [(1, 0, 4), (1, 0, 8), (2, 0, 4), (2, 0, 8), (2, 1, 2), (2, 1, 4), (2, 1, 8), (3, 1, 4),
                    (3, 2, 4), (1, 1, 8)]
    for d, e in [(1, 0), (2, 0), (1, 2), (0, 4), (0, 8)]
]
TUNE_LENIENCE = [1.0, 3.0]


def tune_default(path=None, data_dir=None, n_prompts: int = 8, max_new_tokens: int = 96, mag_ks=(10,)):
    """Choose the default k-matrix / lenience / MaG k by measurement: the highest SWI (parameter-count
    costs; MaG costs 0) over the first `n_prompts` GSM8K dev prompts, greedy. Writes ``default`` (and the
    whole table of candidates) into ``family.json``."""
    from tqdm.auto import tqdm

    from .datasets import load_gsm8k
    from .zoo import load

    fam = load(path=path)
    prompts = [fam.prompt_ids(ex["question"]) for ex in load_gsm8k("dev", data_dir)[:n_prompts]]
    rows = []
    grid = [(k, l, m) for k in TUNE_K_MATRICES for l in TUNE_LENIENCE for m in mag_ks]
    for k_matrix, lenience, mag_k in tqdm(grid, desc="tune"):
        fam.drafters[-1].k = mag_k
        result = evaluate_cascade(fam.target, fam.drafters, prompts, k_matrix, lenience,
                                  max_new_tokens=max_new_tokens)
        rows.append({"k_matrix": k_matrix, "lenience": lenience, "mag_k": mag_k,
                     "swi": result["swi"]["parameters"]})
    best = max(rows, key=lambda r: r["swi"])
    info_path = fam.path / "family.json"
    info = json.loads(info_path.read_text())
    info["default"] = {**best, "chosen_by": f"python -m csdlib.zoo tune (SWI, parameter costs, {n_prompts} dev "
                                            f"prompts, {max_new_tokens} new tokens, greedy)"}
    info["tune"] = sorted(rows, key=lambda r: -r["swi"])[:20]
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    return best, rows
