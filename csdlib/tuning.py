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
`csdlib.latency.predict_wall_time`) or the name of a cost table (SWI under it, e.g. "parameters").
MaG's draft size is its k-matrix column (MaG proposes what its entry asks for, at most its k); in seed
mode, where MaG always proposes its own k, that k is searched instead. With `tree_max=(width, depth,
extend)` the target's tree drafts are searched too (`csdlib.Tree`: `width` candidates at each of the
first `depth` draft positions, each continued by `extend` MaG tokens, and a budget: the likeliest 1 to
all of them); width 1 is the chain, which is always tried first, so the tuner never picks a tree that it
predicts slower than the chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import cost as costs_mod
from .cascade import Tree, generate
from .errors import CSDValueError
from .latency import predict_ar_wall_time, predict_wall_time, stored_latency
from .protocol import is_free, replays
from .stats import Stats


def evaluate_cascade(target, drafters, prompts, k_matrix, lenience: float = 1.0, *,
                     max_new_tokens: int = 64, cost_table: dict | None = None, latency: dict | None = None,
                     on_prompt=None, tree=None) -> dict:
    """Run the cascade greedily on `prompts` (lists of token ids) and aggregate (`tree`: tree drafts,
    `csdlib.Tree`).

    Returns a dict: ``swi`` ({cost table: SWI}, a ratio of totals; tables are ``parameters`` or the
    given `cost_table` under ``custom``), ``stats`` (the summed `csdlib.Stats`: calls, tokens fed, ...
    per model, acceptance per level and position), ``acceptance`` (accepted / drafted per level, target
    first, None where nothing was drafted), ``tokens_per_target_call``, ``k_matrix`` and ``lenience``;
    with `latency` ({name: {"a1", "a", "b"}}, `csdlib.latency`) also ``predicted_s`` (predicted wall time), ``predicted_ar_s`` (AR's on the same
    prompts) and ``predicted_speedup`` (their ratio). `on_prompt(i, partial_result)` is called after each
    prompt (the optimizer prunes with it).
    """
    models = [target, *drafters]
    if len(prompts) == 0:
        raise CSDValueError("prompts: expected at least one prompt")
    tables = {"parameters": costs_mod.parameter_costs(models)}
    if cost_table is not None:
        tables["custom"] = {m.name: float(cost_table[m.name]) for m in models}
    total, ar_s, result = Stats(), 0.0, {}
    for i, ids in enumerate(prompts):
        out = generate(target, drafters, list(ids), k_matrix=k_matrix, lenience=lenience,
                       max_new_tokens=max_new_tokens, tree=tree)
        total = total.merge(out.stats)
        if latency is not None:
            ar_s += predict_ar_wall_time(latency[target.name], len(ids), len(out.new_tokens))
        if on_prompt is not None or i == len(prompts) - 1:
            result = _summary(target, tables, total, k_matrix, lenience, latency, ar_s)
            if on_prompt is not None:
                on_prompt(i, result)
    return result


def _summary(target, tables, total: Stats, k_matrix, lenience, latency, ar_s):
    swi = {t: costs_mod.swi(total.new_tokens, total.calls, c, target.name) for t, c in tables.items()}
    target_calls = total.calls.get(target.name, 0)
    r = {
        "swi": swi, "stats": total, "acceptance": [lv.acceptance for lv in total.levels],
        "tokens_per_target_call": total.new_tokens / target_calls if target_calls else None,
        "k_matrix": [list(r) for r in k_matrix], "lenience": float(lenience),
        "tokens_fed_per_target_call": total.tokens_fed.get(target.name, 0) / target_calls if target_calls else None,
    }
    if latency is not None:
        r["predicted_s"] = predict_wall_time(total, latency)
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


# ---------------------------------------------------------------- the optimizer


@dataclass
class Tuned:
    """What `optimize` found: the setting, its objective value, the evaluation and the Optuna study."""
    k_matrix: list
    lenience: float
    mag_k: int | None
    value: float
    objective: str
    evaluation: dict = field(default_factory=dict)
    study: object = None
    seconds: float = 0.0
    tree: Tree | None = None

    def as_default(self) -> dict:
        """The `default` entry of a family.json."""
        tree = None if self.tree is None else {"widths": [list(r) for r in self.tree.widths],
                                               "extend": self.tree.extend, "budget": self.tree.budget}
        return {"k_matrix": self.k_matrix, "lenience": self.lenience, "mag_k": self.mag_k, "tree": tree,
                "objective": self.objective, "value": self.value}


#: a tree must be predicted this much faster than the best chain to be chosen: the latency model's error
#: on the difference between two settings. Measured 2026-11-30 (gsm8k-base, float32, 2 threads, 2-core
#: AMD EPYC without bf16 units, 12 dev prompts, interleaved): a width-2 tree predicted 2.5 % faster than
#: its chain ran 2-4 % slower. Where verification is nearly free, trees gain far more than this.
TREE_MARGIN = 0.05


def best_trial(study, tree_margin: float = TREE_MARGIN):
    """The study's best trial; but when that is a tree, the best chain trial unless the tree is predicted
    at least `tree_margin` better."""
    best = study.best_trial
    chain, _ = best_chain_and_tree(study)
    if tree_of(best.params) is None or chain is None:
        return best
    return best if best.value >= chain.value * (1 + tree_margin) else chain


def best_chain_and_tree(study):
    """(the best completed chain trial, the best completed tree trial) of a study; None where there is none."""
    done = [t for t in study.trials if t.value is not None and t.state.name == "COMPLETE"]
    chains = [t for t in done if tree_of(t.params) is None]
    trees = [t for t in done if tree_of(t.params) is not None]
    return (max(chains, key=lambda t: t.value) if chains else None,
            max(trees, key=lambda t: t.value) if trees else None)


def tree_of(params: dict) -> Tree | None:
    """The target's tree of a trial's parameters `tree_width`, `tree_depth`, `tree_extend` and `tree_budget`
    (None: chain; a budget of at least the tree's (width - 1) x depth candidates, or none: no budget)."""
    width, depth = int(params.get("tree_width", 1)), int(params.get("tree_depth", 0))
    if width <= 1 or depth <= 0:
        return None
    budget = int(params.get("tree_budget", 0))
    return Tree([[width] * depth], extend=int(params.get("tree_extend", 0)),
                budget=budget if 0 < budget < (width - 1) * depth else None)


def tree_over_draft(k_matrix, width: int, extend: int = 0, budget: int | None = None) -> Tree | None:
    """`width` candidates at every draft position of the target's review (its k-matrix row's draft),
    `extend` MaG tokens per branch, the `budget` likeliest kept (None: all); None for width 1."""
    return tree_of({"tree_width": width, "tree_depth": sum(k_matrix[0]), "tree_extend": extend,
                    "tree_budget": budget or 0})


def k_matrix_from_params(params: dict, n: int) -> list[list[int]]:
    """The k-matrix of a trial's parameters `k<i>_<j>` (0 below the diagonal)."""
    return [[int(params.get(f"k{i}_{j}", 0)) if j >= i else 0 for j in range(n)] for i in range(n)]


def effective_k_matrix(k_matrix) -> list[list[int]]:
    """The k-matrix with the rows of levels that never review zeroed: level j reviews only if a level
    above it that reviews gives it a non-zero entry (its drafts). Settings with the same effective
    k-matrix run identically."""
    n = len(k_matrix)                  # row m belongs to level m; column m - 1 to drafter m
    used = [True] + [False] * (n - 1)
    for i in range(n):
        for m in range(i + 1, n):
            used[m] = used[m] or (used[i] and k_matrix[i][m - 1] > 0)
    return [list(row) if used[i] else [0] * n for i, row in enumerate(k_matrix)]


def search(n_drafters: int, score, *, n_trials: int = 60, k_max: int = 8, mag_column_max: int | None = None,
           lenience_range: tuple | None = (1.0, 6.0), extra_int: dict | None = None, seed: int = 0,
           start: dict | None = None, prune: bool = True, timeout: float | None = None, progress: bool = False):
    """Maximise `score(k_matrix, lenience, extra, report)` over the upper-triangular k-matrix entries
    (0..k_max; the last column, MaG's, 0..mag_column_max) and lenience (None: fixed at 1), with Optuna's
    seeded TPE sampler. `extra_int` {name: (low, high)} adds integer parameters (passed in `extra`).
    `report(step, value)` lets `score` report partial values so that poor trials are pruned. `start`:
    parameters tried first (e.g. the current default), a dict or a list of them. Returns the study."""
    import optuna

    if not progress:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    n = n_drafters
    last_max = k_max if mag_column_max is None else mag_column_max
    memo: dict = {}

    def objective(trial):
        k = [[trial.suggest_int(f"k{i}_{j}", 0, last_max if j == n - 1 else k_max) if j >= i else 0
              for j in range(n)] for i in range(n)]
        lenience = trial.suggest_float("lenience", lenience_range[0], lenience_range[1], step=0.5) \
            if lenience_range is not None else 1.0
        extra = {name: trial.suggest_int(name, lo, hi) for name, (lo, hi) in (extra_int or {}).items()}
        if extra.get("tree_width", 2) == 1:  # a chain: its depth and extend do not matter
            extra.update(tree_depth=1, tree_extend=0)
        key = (str(effective_k_matrix(k)), lenience, str(sorted(extra.items())))
        if key in memo:                      # TPE proposes a setting again: no need to rerun it
            return memo[key]

        def report(step, value):
            trial.report(value, step)
            if prune and trial.should_prune():
                raise optuna.TrialPruned()

        memo[key] = value = float(score(k, lenience, extra, report))
        return value

    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(10, n_trials))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=8, n_warmup_steps=1) if prune else optuna.pruners.NopPruner()
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    for params in ([start] if isinstance(start, dict) else start or []):
        study.enqueue_trial(params, skip_if_exists=True)
    study.optimize(objective, n_trials=n_trials, timeout=timeout, show_progress_bar=progress)
    return study


def optimize(target, drafters, prompts, objective: str = "latency", *, n_trials: int = 60, k_max: int = 8,
             mag_k_max: int | None = None, lenience_range: tuple | None = (1.0, 6.0), max_new_tokens: int = 64,
             latency: dict | None = None, start: tuple | None = None, sd_starts=(2, 4), seed: int = 0,
             prune: bool = True, timeout: float | None = None, progress: bool = False,
             tree_max: tuple | None = None, tree_margin: float = TREE_MARGIN) -> Tuned:
    """Search the k-matrix, lenience and MaG's draft size that maximise `objective` on `prompts`.

    Args:
        target: best a `CachedTarget` (`csdlib.cache.build_target_cache`): no target forward runs; an
            `HFModel` works too, only slower.
        drafters: largest first, MaG (if any) last.
        prompts: lists of token ids (not used for calibration; keep some apart to check the result).
        objective: "latency" (predicted wall-clock speedup over AR; needs a calibration, `latency` or
            the stored one, see `csdlib.latency.calibrate_latency`) or a cost-table name ("parameters",
            the seed's "model_parameters" / "previous_work" where they cover the models): SWI under it.
        k_max: the largest k-matrix entry tried for a neural drafter's column; `mag_k_max` for MaG's
            column (default: MaG's k).
        lenience_range: (low, high) searched in steps of 0.5 at inner levels; None keeps 1.
        start: (k_matrix, lenience) tried first, e.g. the current default (the result is never worse).
        sd_starts: draft lengths at which each drafter alone (speculative decoding) is tried next, so
            that the result is never worse than those on `prompts` either: a 4-level cascade has 10
            entries, and a budget of a few dozen trials may not find a one-entry matrix by chance.
        seed: the sampler's seed. n_trials / timeout: the budget.
        tree_max: (width, depth, extend) maxima of the target's tree drafts searched with the rest (None:
            chains only); every start is tried as a chain. A tree is chosen only when it is predicted
            `tree_margin` (default 5 %) faster than the best chain tried; else that chain is.

    Returns a `Tuned`: `k_matrix`, `lenience`, `mag_k` (the MaG k to use), `value`, the best setting's
    full `evaluation` (`evaluate_cascade` on all prompts) and the Optuna `study`.
    """
    import time

    tic = time.perf_counter()
    drafters, prompts = list(drafters), [list(p) for p in prompts]
    n = len(drafters)
    mag, mag_max, extra_int = _search_space(drafters, prompts, k_max, mag_k_max, tree_max)
    latency, tables = _objective_basis(objective, [target, *drafters], latency)
    if "tree_width" in extra_int and latency is not None and "tree_a" not in latency[target.name]:
        raise CSDValueError(f"tree_max: the latency calibration of {target.name!r} has no tree line (tree_a, "
                            "tree_b; calibrated before trees were timed), so trees would be predicted as cheap "
                            "as chains; recalibrate (csd calibrate --force) or pass tree_max=None")
    seed_mode_mag = "mag_k" in extra_int
    old_k = mag.k if mag is not None else None
    if lenience_range is not None and n < 2:
        lenience_range = None                 # one drafter: the target reviews strictly, no inner level

    def evaluate(k, lenience, extra, on_prompt=None, ps=prompts):
        if mag is not None:
            mag.k = extra.get("mag_k", mag_max)
        return evaluate_cascade(target, drafters, ps, k, lenience, max_new_tokens=max_new_tokens,
                                cost_table=tables[objective] if tables else None, latency=latency,
                                on_prompt=on_prompt, tree=tree_of(extra))

    def value_of(r):
        return r["predicted_speedup"] if latency is not None else r["swi"]["custom"]

    def score(k, lenience, extra, report):
        r = evaluate(k, lenience, extra, on_prompt=lambda i, part: report(i, value_of(part)))
        return value_of(r)

    starts = ([start] if start is not None else []) + [(sd, 1.0) for sd in _sd_matrices(n, sd_starts)]
    space = {"n": n, "k_max": k_max, "mag_max": mag_max, "lenience_range": lenience_range,
             "seed_mode_mag": seed_mode_mag, "old_k": old_k, "trees": "tree_width" in extra_int}
    start_params = [_start_params(*s, **space) for s in starts][:n_trials]   # never queue more than the budget runs
    try:
        study = search(n, score, n_trials=n_trials, k_max=k_max, mag_column_max=mag_max if mag else None,
                       lenience_range=lenience_range, extra_int=extra_int, seed=seed, start=start_params,
                       prune=prune, timeout=timeout, progress=progress)
        best = best_trial(study, tree_margin)
        k, lenience, mag_k = _setting(best.params, n, mag)
        extra = {**best.params, **({"mag_k": mag_k} if mag is not None else {})}
        evaluation = evaluate(k, lenience, extra)
    finally:
        if mag is not None:
            mag.k = old_k
    return Tuned(k, lenience, mag_k, value_of(evaluation), objective, evaluation, study,
                 time.perf_counter() - tic, tree_of(best.params))


def _start_params(k0, l0, *, n: int, k_max: int, mag_max: int, lenience_range, seed_mode_mag: bool, old_k,
                  trees: bool) -> dict:
    """A start (k-matrix `k0`, lenience `l0`) as `optimize`'s search parameters, each clipped to the space
    searched: MaG's own k (`old_k`) where it is searched (seed mode), and a chain where trees are."""
    p = {f"k{i}_{j}": min(int(k0[i][j]), mag_max if j == n - 1 else k_max) for i in range(n) for j in range(i, n)}
    if lenience_range is not None:
        p["lenience"] = min(max(float(l0), lenience_range[0]), lenience_range[1])
    if seed_mode_mag:
        p["mag_k"] = min(old_k, mag_max)
    if trees:                  # starts are chains
        p.update(tree_width=1, tree_depth=1, tree_extend=0, tree_budget=1)
    return p


def _search_space(drafters, prompts, k_max: int, mag_k_max: int | None, tree_max: tuple | None):
    """(MaG or None, the largest MaG column entry, the extra integer parameters searched: MaG's own k
    in seed mode; the target's tree width, depth and extend)."""
    if not drafters:
        raise CSDValueError("drafters: nothing to tune without drafters")
    if not prompts:
        raise CSDValueError("prompts: expected at least one prompt")
    mag = drafters[-1] if is_free(drafters[-1]) else None
    mag_max = mag_k_max or (mag.k if mag is not None else k_max)
    extra_int = {"mag_k": (1, mag_max)} if mag is not None and mag.seed_mode else {}
    if tree_max is not None and tree_max[0] > 1 and tree_max[1] > 0:
        extra_int.update(tree_width=(1, tree_max[0]), tree_depth=(1, tree_max[1]),
                         tree_extend=(0, tree_max[2] if mag is not None else 0),
                         tree_budget=(1, (tree_max[0] - 1) * tree_max[1]))    # the top: no budget
    return mag, mag_max, extra_int


def _objective_basis(objective: str, models, latency: dict | None) -> tuple[dict | None, dict | None]:
    """(latency, cost tables) that `objective` is computed from: "latency" needs a calibration (`latency`,
    else the stored one); a cost table's name needs the cost tables covering `models` to hold it."""
    if objective == "latency":
        latency = latency if latency is not None else stored_latency(models)
        if latency is None:
            raise CSDValueError("objective: 'latency' needs a latency calibration of these models on this "
                                "machine and thread count; run `csd calibrate` (or pass latency=...)")
        return latency, None
    tables = costs_mod.cost_tables(models)
    if objective not in tables:
        raise CSDValueError(f"objective: expected 'latency' or a cost table covering these models "
                            f"{sorted(tables)}, got {objective!r}")
    return None, tables


def _setting(params: dict, n: int, mag) -> tuple[list[list[int]], float, int | None]:
    """(k-matrix, lenience, MaG's k) of a trial's parameters; MaG's k is searched in seed mode, else it
    only caps a call: the largest entry of MaG's column (None without MaG)."""
    k = k_matrix_from_params(params, n)
    if mag is None:
        mag_k = None
    elif mag.seed_mode:
        mag_k = int(params["mag_k"])
    else:
        mag_k = max([1] + [k[i][n - 1] for i in range(n)])
    return k, float(params.get("lenience", 1.0)), mag_k


def _sd_matrices(n: int, ks) -> list[list[list[int]]]:
    """The n x n k-matrices of speculative decoding with each drafter alone, at each k of `ks`."""
    return [[[k if (i, j) == (0, d) else 0 for j in range(n)] for i in range(n)] for d in range(n) for k in ks]


def save_default(family_dir, default: dict, dtype: str = "float32") -> None:
    """Write `default` (k_matrix, lenience, mag_k, how it was chosen) as the `default` of
    `<family_dir>/family.json`, where `zoo.load` and `csd run` read it; the previous one is kept under
    `previous_default`. A cascade tuned for another dtype goes under `defaults[dtype]` (the latency of a
    forward, and so the best cascade, depends on the dtype), which `zoo.load(dtype=...)` prefers."""
    import json
    from pathlib import Path

    path = Path(family_dir) / "family.json"
    info = json.loads(path.read_text())
    if dtype != "float32":
        info.setdefault("defaults", {})[dtype] = default
        path.write_text(json.dumps(info, indent=2) + "\n")
        return
    if "default" in info:
        info["previous_default"] = info["default"]
    info["default"] = default
    path.write_text(json.dumps(info, indent=2) + "\n")


def predicted_vs_measured(target, drafters, prompts, k_matrix, lenience: float = 1.0, *, latency: dict,
                          max_new_tokens: int = 64, warmup: int = 1, tree=None):
    """Run AR and the cascade with the real target on `prompts` (AR and the cascade alternate, prompt by
    prompt, after `warmup` untimed runs) and compare the measured wall time with the latency model's
    prediction. Returns a DataFrame: method, measured s, predicted s, error, speedup (measured and
    predicted, over AR), and whether the cascade's output equals AR's."""
    import time

    import pandas as pd

    if replays(target):
        raise CSDValueError("target: predicted vs measured needs the real target, not a CachedTarget")
    settings = {"AR": ([], None, 1.0, None), "cascade": (list(drafters), k_matrix, lenience, tree)}
    for _ in range(warmup):
        for ds, k, l, t in settings.values():
            generate(target, ds, list(prompts[0]), k_matrix=k, lenience=l, max_new_tokens=min(16, max_new_tokens),
                     tree=t)
    rows = {name: {"measured s": 0.0, "predicted s": 0.0, "equal": True} for name in settings}
    for ids in prompts:
        outs = {}
        for name, (ds, k, l, t) in settings.items():
            tic = time.perf_counter()
            out = generate(target, ds, list(ids), k_matrix=k, lenience=l, max_new_tokens=max_new_tokens, tree=t)
            rows[name]["measured s"] += time.perf_counter() - tic
            rows[name]["predicted s"] += predict_wall_time(out.stats, latency)
            outs[name] = out.new_tokens
        rows["cascade"]["equal"] &= outs["cascade"] == outs["AR"]
    df = pd.DataFrame([{"method": name, **r} for name, r in rows.items()]).set_index("method")
    df["error"] = df["predicted s"] / df["measured s"] - 1
    df["speedup measured"] = df.loc["AR", "measured s"] / df["measured s"]
    df["speedup predicted"] = df.loc["AR", "predicted s"] / df["predicted s"]
    return df
