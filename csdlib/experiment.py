"""Experiment runner: methods x prompts -> one JSONL record per (method, sample), resumable.

    methods = standard_methods(drafters, k_matrix=..., lenience=2)     # AR, SD(each drafter), CSD
    df = run(target, methods, prompts, out="data/results/run.jsonl", max_new_tokens=128)
    print(summarize(df))

- Every record is appended (and flushed) to the JSONL file as soon as its sample finishes, so an
  interrupted run (Ctrl-C, crash) loses nothing finished. A record's key covers everything that
  determines it (the record store, `csdlib.records`: configuration, data, prompt and environment).
  Rerunning skips keys already in the file and repeats none; records made on another machine or with
  other threads are never reused (their wall times and measured costs belong to that machine), and
  `run` says how many records it reused and from which file.
- Wall clock: all methods run in one process on the same prompts, sample by sample (AR first), after
  untimed warm-up generations of every method, so AR and CSD see the same machine state.
- Every greedy method's output is audited against AR's on the same sample (`csdlib.precision.audit`):
  `exact` is "identical", "tie" (first divergence at a tie of the target's own logits, half precision
  only; `exact_margin` and `exact_position` say where) or "WRONG" (a bug); `equals_ar` is True for
  identical. Both None when sampling, whose outputs are equal in distribution only.
- Records carry tokens, calls and tokens fed per model, drafted / accepted per level and per draft
  position (`Output.stats`, a `csdlib.Stats`), the run's cost and SWI under each cost table of
  `csdlib.cost` (`measured` from `measured_costs_for`: measured once per results file and environment),
  wall time, and the environment.
- `summarize` and `plots` group records by configuration (`config_hash`), never by method name alone,
  and compare with the AR records of the same run context (target, data, max_new_tokens, environment).
- Sharding: see `csdlib.records` (`shard_path`, `load_results`, `merge_shards`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import cost as costs_mod
from .cache import prompt_key
from .cascade import generate
from .errors import CSDValueError
from .latency import predict_wall_time
from .precision import VERDICTS, audit
from .protocol import fingerprint, is_free, replays
from .records import (append_record, config_hash, context_of, cut_torn_tail, digest, environment,
                      read_all_records, to_frame)
from .stats import Stats


@dataclass
class Method:
    """One decoding method: the drafters below the target (largest first), k-matrix and lenience."""
    name: str
    drafters: list = field(default_factory=list)
    k_matrix: list | None = None
    lenience: float = 1.0
    generate_kwargs: dict = field(default_factory=dict)   # e.g. {"do_sample": True, "seed": 0}

    @property
    def greedy(self) -> bool:
        return not self.generate_kwargs.get("do_sample", False)

    @property
    def is_ar(self) -> bool:
        return not self.drafters


def standard_methods(drafters, *, k_matrix, lenience: float = 1.0, sd_k: int = 4, tree=None,
                     free=None) -> list[Method]:
    """AR, SD with each drafter alone (k = sd_k for a neural drafter, a free drafter's own k for it), and
    CSD with all drafters (`k_matrix`, `lenience`); with a `tree` (`csdlib.Tree`) also "tree CSD", the
    same cascade with tree drafts; `free` (a family's free drafters by name, `Family.free`): for each one
    the cascade does not end in, SD with it and "CSD (<it> at the bottom)", the same cascade ending in it."""
    methods = [Method("AR")]
    others = [d for d in (free or {}).values() if all(d is not x for x in drafters)]
    for d in [*drafters, *others]:
        if is_free(d):
            methods.append(Method(f"SD({free_label(d)})", [d], [[d.k]]))
        else:
            methods.append(Method(f"SD({d.name})", [d], [[sd_k]]))
    methods.append(Method("CSD", list(drafters), k_matrix, lenience))
    for d in others:
        methods.append(Method(f"CSD ({free_label(d)} at the bottom)", [*drafters[:-1], d], k_matrix, lenience))
    if tree is not None:
        methods.append(Method("tree CSD", list(drafters), k_matrix, lenience, {"tree": tree}))
    return methods


def free_label(d) -> str:
    """How methods name a free drafter: "MaG" for MaG (whatever its name), else its name ("suffix")."""
    return "MaG" if type(d).__name__ == "MaG" else d.name


# ---------------------------------------------------------------- running


def record_for(target, method: Method, out, sample_id, prompt: list[int], wall_s: float, tables: dict,
               dataset: str, max_new_tokens: int, key: str, ar_tokens=None) -> dict:
    """One sample's record from a finished `generate` Output."""
    stats: Stats = out.stats
    calls = stats.calls
    c_target = {t: c[target.name] for t, c in tables.items()}
    spent = {t: costs_mod.run_cost(calls, c) for t, c in tables.items()}
    return {
        "key": key, "config_hash": key.split(":")[0], "method": method.name, "sample_id": sample_id,
        "dataset": dataset, "target": target.name,
        "target_mode": "cached" if replays(target) else "model",
        "models": list(calls), "k_matrix": method.k_matrix, "lenience": float(method.lenience),
        "max_new_tokens": max_new_tokens, "prompt_tokens": len(prompt),
        **stats.to_dict(), "token_ids": out.new_tokens, "target_calls": calls[target.name],
        "model_costs": tables, "c_target": c_target, "cost": spent,
        "swi": {t: costs_mod.swi(len(out.new_tokens), calls, c, target.name) if spent[t] else None
                for t, c in tables.items()},
        "wall_s": wall_s, "tokens_per_s": len(out.new_tokens) / wall_s if wall_s > 0 else None,
        "threads": torch.get_num_threads(),
        "equals_ar": None if ar_tokens is None else out.new_tokens == ar_tokens,
        **exactness(target, prompt, ar_tokens, out.new_tokens),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run(target, methods: list[Method], prompts, *, out=None, max_new_tokens: int = 128,
        dataset: str = "custom", source: dict | None = None, measured_costs: dict | None = None,
        latency: dict | None = None, warmup: int = 1, progress: bool = True, on_record=None, read_from=None,
        tags: dict | None = None) -> pd.DataFrame:
    """Run every method on every prompt; returns the records of these methods and prompts (including
    those found in `out` from earlier runs) as a DataFrame.

    Args:
        target: an `HFModel` or a `CachedTarget`.
        methods: `Method`s; the AR one (no drafters), if any, runs first on each sample and is the
            reference for `equals_ar`.
        prompts: `(sample_id, prompt_ids)` pairs.
        out: JSONL path; records are appended as each sample finishes; keys already there are skipped.
        dataset: the data's name (stored in records).
        source: what else identifies the data, e.g. ``{"split": "dev", "template": ...}`` (part of the key).
        measured_costs: {model name: seconds} (`measured_costs_for`) adds the `measured` cost table.
        latency: a calibrated latency model ({name: {"a1", "a", "b"}}, `latency.calibrate_latency`): adds the
            `latency` cost table, and each record stores it with its predicted wall time (`predicted_s`).
        warmup: untimed generations of each method before the timed ones.
        on_record: called with each new record after it is written (e.g. to stop a run).
        read_from: where finished records are looked up (default: `out` and its shards).
        tags: extra fields stored in every new record (e.g. the process index of a sharded run).

    The returned frame's ``attrs`` hold ``reused`` (records found in `read_from` / `out`), ``ran`` and
    ``reused_from``; the same is printed as one line when `out` is given.
    """
    prompts = [(str(sid), list(ids)) for sid, ids in prompts]
    methods = _ar_first(methods)
    source = {"dataset": dataset, **(source or {})}
    env = environment(target)
    context = digest(context_of(target, source, max_new_tokens, env))
    hashes = {m.name: config_hash(target, m, source, max_new_tokens, env) for m in methods}
    tables = {m.name: costs_mod.cost_tables([target, *m.drafters], measured=measured_costs, latency=latency)
              for m in methods}
    keys = {sid: f"{sid}:{prompt_key(ids)}" for sid, ids in prompts}
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        cut_torn_tail(out)
    source_file = read_from or out
    done = {r["key"]: r for r in (read_all_records(source_file) if source_file else [])}
    todo = [(sid, ids, m) for sid, ids in prompts for m in methods if f"{hashes[m.name]}:{keys[sid]}" not in done]
    wanted = [f"{hashes[m.name]}:{keys[sid]}" for sid, _ in prompts for m in methods]
    reused = len(wanted) - len(todo)
    if out is not None:
        print(f"{dataset}: {reused} of {len(wanted)} records reused from {source_file}"
              + (f" (same configuration, prompts and environment); running {len(todo)}" if todo else ""))
    if todo and warmup:
        _warm_up(target, methods, todo[0][1], min(max_new_tokens, 16), warmup)
    records = {k: r for k, r in done.items()}
    ar = next((m for m in methods if m.is_ar), None)
    bar = tqdm(todo, desc=f"{dataset} x {len(methods)} methods", disable=not progress, unit="run")
    for sid, ids, m in bar:
        key = f"{hashes[m.name]}:{keys[sid]}"
        ar_rec = records.get(f"{hashes[ar.name]}:{keys[sid]}") if ar is not None else None
        tic = time.perf_counter()
        output = generate(target, m.drafters, ids, k_matrix=m.k_matrix, lenience=m.lenience,
                          max_new_tokens=max_new_tokens, **m.generate_kwargs)
        wall = time.perf_counter() - tic
        ar_tokens = output.new_tokens if m.is_ar else ar_rec["token_ids"] if ar_rec and m.greedy else None
        rec = record_for(target, m, output, sid, ids, wall, tables[m.name], dataset, max_new_tokens, key,
                         ar_tokens=ar_tokens)
        if latency is not None and not replays(target):
            used = {name: latency[name] for name in rec["calls"] if name in latency}
            if len(used) == len(rec["calls"]):
                rec["latency"] = used
                rec["predicted_s"] = predict_wall_time(output.stats, used)
        rec.update({"context_hash": context, "source": source, "environment": env, "prompt_key": keys[sid]})
        rec.update(tags or {})
        if out is not None:
            append_record(out, rec)
        records[key] = rec
        if on_record is not None:
            on_record(rec)
    df = to_frame([records[k] for k in wanted])
    df.attrs.update(reused=reused, ran=len(todo), reused_from=None if source_file is None else str(source_file))
    return df


def exactness(target, prompt, reference, tokens) -> dict:
    """The audit's verdict of an output against the reference (AR's output), as record fields."""
    if reference is None:
        return {"exact": None, "exact_position": None, "exact_margin": None}
    v = audit(target, prompt, reference, tokens)
    return {"exact": v.verdict, "exact_position": v.position, "exact_margin": v.margin}


def verdicts(g: pd.DataFrame) -> pd.Series:
    """The audit's verdict of each record (records from before the audit: from `equals_ar`)."""
    old = g["equals_ar"].map({True: "identical", False: "WRONG"}) if "equals_ar" in g else None
    if "exact" not in g:
        return old.dropna() if old is not None else pd.Series(dtype=object)
    return (g["exact"].fillna(old) if old is not None else g["exact"]).dropna()


def divergences(df: pd.DataFrame) -> pd.DataFrame:
    """The records whose output is not identical to AR's: method, sample, verdict, position, margin."""
    cols = [c for c in ("method", "sample_id", "exact", "exact_position", "exact_margin") if c in df]
    v = verdicts(df)
    return df.loc[v[v != "identical"].index, cols]


def _ar_first(methods) -> list[Method]:
    """`methods` with the AR one (the reference for `equals_ar`) first; at most one AR, unique names."""
    methods = sorted(methods, key=lambda m: not m.is_ar)
    if sum(m.is_ar for m in methods) > 1:
        raise CSDValueError("methods: at most one AR method (no drafters) per run")
    if len({m.name for m in methods}) < len(methods):
        raise CSDValueError(f"methods: names must be unique, got {[m.name for m in methods]}")
    return methods


def _warm_up(target, methods, prompt, max_new_tokens, times):
    for _ in range(times):
        for m in methods:
            generate(target, m.drafters, prompt, k_matrix=m.k_matrix, lenience=m.lenience,
                     max_new_tokens=max_new_tokens, **m.generate_kwargs)


# ---------------------------------------------------------------- summaries


def stats_of(records) -> Stats:
    """The summed `Stats` of records (rows of a results frame, or record dicts)."""
    rows = records.to_dict("records") if isinstance(records, pd.DataFrame) else list(records)
    return Stats.merge_all(Stats.from_dict(r) for r in rows)


def configurations(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(label, records) per configuration (`config_hash`), in file order. The label is the method's name,
    with the configuration's hash appended when two configurations share a name."""
    groups = list(df.groupby("config_hash", sort=False))
    names = [g["method"].iloc[0] for _, g in groups]
    return [(name if names.count(name) == 1 else f"{name} [{h[:6]}]", g)
            for name, (h, g) in zip(names, groups)]


def ar_records(df: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    """The AR records (the target alone) of `df` made in the same run context as `records` (one
    configuration's, see `configurations`): same target, data, max_new_tokens and environment."""
    context = df["context_hash"].fillna("") if "context_hash" in df else pd.Series("", index=df.index)
    return df[(df["models"].map(len) == 1) & (context == context[records.index[0]])]


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (in run order; see `configurations`): samples, tokens, aggregate SWI per
    cost table (`cost.swi` of the summed calls - a ratio of totals, not a mean of per-sample ratios),
    wall-clock speedup over the AR records of the same run context on the same samples, tokens/s,
    tokens per target call, acceptance per level (accepted / drafted), the estimated acceptance rate
    alpha at the target, Leviathan et al.'s predicted SWI for single-drafter SD (parameter costs), and
    the audit of the outputs against AR's: how many are identical, ties and WRONG."""
    if df.empty:
        return pd.DataFrame()
    tables = sorted(c.split(".", 1)[1] for c in df.columns if c.startswith("cost."))
    rows = []
    for label, g in configurations(df):
        total = stats_of(g)
        levels = total.levels
        first = g.iloc[0]
        row = {"method": label, "samples": len(g), "new_tokens": int(g["new_tokens"].sum())}
        for t in tables:
            costs = first.get(f"model_costs.{t}")
            if isinstance(costs, dict) and g[f"cost.{t}"].notna().all():
                row[f"SWI {t}"] = costs_mod.swi(total.new_tokens, total.calls, costs, first["target"])
        ar_wall = ar_records(df, g).set_index("sample_id")["wall_s"]
        if len(ar_wall) and (g["target_mode"] == "model").all():
            shared = g[g["sample_id"].isin(ar_wall.index)]
            row["wall speedup"] = ar_wall[shared["sample_id"]].sum() / shared["wall_s"].sum()
            row["tokens/s"] = g["new_tokens"].sum() / g["wall_s"].sum()
        row["tokens/target call"] = g["new_tokens"].sum() / g["target_calls"].sum()
        row["acceptance per level"] = " / ".join(
            f"{lv.acceptance:.2f}" if lv.drafted else "-" for lv in levels)
        row["alpha (target)"] = costs_mod.acceptance_rate(levels[0]) if levels[0].drafted else None
        row["predicted SWI"] = _predicted_sd_swi(g, levels)
        checked = verdicts(g)
        for verdict in VERDICTS:
            row[verdict] = int((checked == verdict).sum()) if len(checked) else None
        if "predicted_s" in g and g["predicted_s"].notna().all() and (g["target_mode"] == "model").all():
            row["predicted / measured"] = g["predicted_s"].sum() / g["wall_s"].sum()   # latency model vs clock
        if "threads" in g:                             # torch threads the wall times were measured with
            row["threads"] = "/".join(str(int(t)) for t in sorted(g["threads"].dropna().unique())) or None
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def turn_frame(turns: dict) -> pd.DataFrame:
    """`by_group`'s input from {method: [{"group", "wall_s", "tokens", "target_calls"}, ...]}, one dict per
    prompt in the same order for every method (what `benchmarks/speed.py` stores under "turns")."""
    return pd.DataFrame([{"method": name, "sample_id": i, "group": t["group"], "wall_s": t["wall_s"],
                          "new_tokens": t["tokens"], "target_calls": t["target_calls"]}
                         for name, ts in turns.items() for i, t in enumerate(ts)])


def by_group(turns: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Spec-Bench's layout, from one row per method and prompt (columns `method`, `group`, `sample_id`,
    `wall_s`, `new_tokens`, `target_calls`): a row per method (run order), a column per group (first-seen
    order) with its speedup over `baseline` on the same prompts, then "Overall" and "mean accepted tokens"
    (new tokens per target forward; None for a method that does not count its target calls, e.g.
    transformers' generate). The speedup is Spec-Bench's: the ratio of tokens per second, each summed over
    the group's prompts (on identical outputs, the ratio of wall times; in half precision an output that
    leaves the baseline's at a tie may be longer or shorter, and is not charged for it)."""
    base = turns[turns["method"] == baseline].set_index("sample_id")
    if base.empty:
        raise CSDValueError(f"by_group: no {baseline!r} rows, the baseline of every speedup")
    groups = list(dict.fromkeys(turns["group"]))
    rows = []
    for method, g in turns.groupby("method", sort=False):
        g = g[g["sample_id"].isin(base.index)]
        row = {"method": method}
        for group in groups + ["Overall"]:
            mine = g if group == "Overall" else g[g["group"] == group]
            theirs = base.loc[mine["sample_id"]]
            row[group] = ((mine["new_tokens"].sum() / mine["wall_s"].sum())
                          / (theirs["new_tokens"].sum() / theirs["wall_s"].sum()) if len(mine) else None)
        calls = g["target_calls"]
        row["mean accepted tokens"] = (g["new_tokens"].sum() / calls.sum()
                                       if len(g) and calls.notna().all() and calls.sum() else None)
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def _predicted_sd_swi(g: pd.DataFrame, levels) -> float | None:
    """Leviathan et al.'s expected SWI for SD with one neural drafter (parameter costs), else None."""
    first = g.iloc[0]
    if len(first["models"]) != 2 or not levels[0].drafted or "model_costs.parameters" not in g:
        return None
    costs = first["model_costs.parameters"]
    target, drafter = first["models"]
    if costs[drafter] == 0:            # MaG: one free call proposes its own k tokens, not k calls
        return None
    k = first["k_matrix"][0][0]
    return costs_mod.expected_speedup(costs_mod.acceptance_rate(levels[0]), costs[drafter] / costs[target], k)


def measured_costs_for(models, prompt_ids, out=None, **measure_kwargs) -> dict:
    """`cost.measure_costs`, measured once per results file and environment: the first call stores the
    costs next to `out` (``<stem>.costs.json``, keyed by the environment and the models' fingerprints);
    later calls (a resumed run) reuse them, so every record of a file shares one cost basis."""
    key = digest({"environment": environment(models[0]), "models": [[m.name, fingerprint(m)] for m in models]})
    path = None if out is None else Path(out).with_name(Path(out).stem + ".costs.json")
    stored = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    if key in stored:
        return stored[key]
    costs = costs_mod.measure_costs(models, prompt_ids, **measure_kwargs)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**stored, key: costs}, indent=1) + "\n")
    return costs
