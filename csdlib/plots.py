"""Figures for the notebooks (and anyone else): each function takes results and returns a matplotlib
Figure, optionally saved to `path` (parent folders created).

- `speedup_bars(summary)`: SWI under each cost model and wall-clock speedup per method
  (`experiment.summarize` output).
- `speedup_by_group(grouped)`: speedup per Spec-Bench group and overall (`experiment.by_group` output).
- `acceptance_tables(df)`: tidy per-level and per-position acceptance frames from result records.
- `acceptance_per_level(df)`, `acceptance_per_position(df)`, `accepted_per_target_call(df)`,
  `cost_breakdown(df)`: seaborn figures from `records.load_results` records.
- `verified_tree(tree, decode)`: one tree a level verified (`Output.trees`), its accepted path in colour;
  `accepted_by_rank(level)`: accepted tokens by depth and branch rank (`LevelStats.accepted_by_rank`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .experiment import ar_records, configurations, stats_of


def _finish(fig, ax, path, *, xlabel: str, ylabel: str, title: str, legend: str | None = None):
    """Label the axes, title the plot, add a legend titled `legend` (if given), lay the figure out and
    save it to `path` (if given)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if legend is not None:
        ax.legend(title=legend, fontsize=8)
    fig.tight_layout()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def _plt():
    import matplotlib.pyplot as plt
    return plt


def speedup_bars(summary: pd.DataFrame, path=None, title: str | None = None):
    """Bars of SWI per cost table and of wall-clock speedup, one group per method (`csd run`'s figure)."""
    plt = _plt()
    wide = summary[[c for c in summary.columns if c.startswith("SWI ")]].rename(columns=lambda c: c[4:])
    if "wall speedup" in summary:
        wide["wall clock (this machine)"] = summary["wall speedup"]
    fig, ax = plt.subplots(figsize=(9, 4))
    wide.astype(float).plot.bar(ax=ax, rot=0)
    ax.axhline(1, color="grey", lw=0.8, ls="--")
    return _finish(fig, ax, path, xlabel="decoding method", ylabel="speedup over AR (x)",
                   title=title or "Speedup over autoregressive decoding", legend="cost model")


def speedup_by_group(grouped: pd.DataFrame, path=None, title: str | None = None):
    """Bars of each method's speedup per Spec-Bench group and overall (`experiment.by_group`'s table; the
    baseline's row, all ones, is left out), with the baseline's 1x dashed."""
    plt = _plt()
    cols = [c for c in grouped.columns if c != "mean accepted tokens"]
    wide = grouped[cols].astype(float)
    wide = wide[~np.isclose(wide, 1.0).all(axis=1)].T          # groups along x, one bar per method
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(cols)), 4))
    wide.plot.bar(ax=ax, rot=0)
    ax.axhline(1, color="grey", lw=0.8, ls="--")
    ax.set_xticklabels([c.replace(" ", "\n", 1) for c in wide.index], fontsize=8)
    ax.legend(title="method", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _finish(fig, ax, path, xlabel="Spec-Bench group", ylabel="speedup (x)", title=title or "Speedup per group")


def acceptance_tables(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per level, per position) tidy frames for every method with drafters: columns method, level,
    model, drafted, accepted, acceptance (and position, 1-based)."""
    per_level, per_pos = [], []
    for method, g in configurations(df):
        for lv in stats_of(g).levels:
            if not lv.drafted:
                continue
            per_level.append({"method": method, "level": lv.level, "model": lv.model, "reviews": lv.reviews,
                              "drafted": lv.drafted, "accepted": lv.accepted, "acceptance": lv.acceptance})
            acc = lv.accepted_per_position + [0] * (len(lv.drafted_per_position) - len(lv.accepted_per_position))
            for i, (d, a) in enumerate(zip(lv.drafted_per_position, acc)):
                if d:
                    per_pos.append({"method": method, "level": lv.level, "model": lv.model,
                                    "position": i + 1, "drafted": d, "accepted": a, "acceptance": a / d})
    return pd.DataFrame(per_level), pd.DataFrame(per_pos)


def acceptance_per_level(df: pd.DataFrame, path=None):
    """Acceptance rate (accepted / drafted) at each reviewing level, per method."""
    import seaborn as sns
    plt = _plt()
    lv, _ = acceptance_tables(df)
    lv = lv.assign(reviewer=lv["level"].astype(str) + ": " + lv["model"])
    fig, ax = plt.subplots(figsize=(8, 4))
    sns.barplot(data=lv, x="method", y="acceptance", hue="reviewer", ax=ax)
    ax.set_ylim(0, 1)
    return _finish(fig, ax, path, xlabel="decoding method", ylabel="acceptance rate (accepted / drafted)",
                   title="Acceptance per cascade level (reviewing model)", legend="level: reviewer")


def acceptance_per_position(df: pd.DataFrame, path=None, max_position: int = 12):
    """Acceptance rate at the target by draft position (1 = first drafted token), per method."""
    import seaborn as sns
    plt = _plt()
    _, pos = acceptance_tables(df)
    pos = pos[(pos["level"] == 0) & (pos["position"] <= max_position)]
    fig, ax = plt.subplots(figsize=(8, 4))
    sns.lineplot(data=pos, x="position", y="acceptance", hue="method", marker="o", ax=ax)
    ax.set_ylim(0, 1.02)
    return _finish(fig, ax, path, xlabel="draft position (1 = first token after the accepted prefix)",
                   ylabel="target acceptance rate at this position", title="Target acceptance per draft position")


def accepted_per_target_call(df: pd.DataFrame, path=None):
    """Distribution over samples of new tokens per target call (accepted drafts + the target's own)."""
    import seaborn as sns
    plt = _plt()
    d = df.assign(tpc=df["new_tokens"] / df["target_calls"])
    fig, ax = plt.subplots(figsize=(8, 4))
    sns.boxplot(data=d, x="method", y="tpc", ax=ax, color="lightsteelblue")
    state = np.random.get_state()          # seaborn jitters with numpy's global generator: seed it here
    np.random.seed(0)                      # so the figure is the same on every run (same bytes)
    sns.stripplot(data=d, x="method", y="tpc", ax=ax, color="k", size=3)
    np.random.set_state(state)
    return _finish(fig, ax, path, xlabel="decoding method", ylabel="new tokens per target call (per sample)",
                   title="Mean accepted length per target call")


def cost_table(df: pd.DataFrame, table: str = "parameters") -> pd.DataFrame:
    """Tidy frame: method (one per configuration, see `experiment.configurations`), model, calls
    (summed), cost per call, calls x cost as a share of the total of AR's records of the same run
    context (target, data, max_new_tokens, environment) on the same samples."""
    rows = []
    for method, g in configurations(df):
        first = g.iloc[0]
        costs = first["model_costs"][table] if "model_costs" in g else first[f"model_costs.{table}"]
        same = ar_records(df, g)
        same = same[same["sample_id"].isin(g["sample_id"])]
        ar_total = same[f"cost.{table}"].sum() if not same.empty else None
        calls = stats_of(g).calls
        for model in first["models"]:
            n = int(calls[model])
            rows.append({"method": method, "model": model, "calls": n, "cost per call": costs[model],
                         "calls x cost": n * costs[model],
                         "share of AR cost": n * costs[model] / ar_total if ar_total else None})
    return pd.DataFrame(rows)


def cost_breakdown(df: pd.DataFrame, path=None, table: str = "parameters"):
    """Stacked bars: each method's total cost (calls x cost per model, `table`), relative to AR's."""
    plt = _plt()
    ct = cost_table(df, table)
    wide = ct.pivot_table(index="method", columns="model", values="share of AR cost", sort=False).fillna(0)
    wide = wide.loc[[m for m in ct["method"].unique()]]
    import seaborn as sns
    colors = sns.color_palette("colorblind", len(wide.columns))
    fig, ax = plt.subplots(figsize=(8, 4))
    wide.plot.bar(stacked=True, ax=ax, rot=0, color=colors)
    ax.axhline(1, color="grey", lw=0.8, ls="--")
    return _finish(fig, ax, path, xlabel="decoding method", ylabel=f"calls x cost / AR's total ({table})",
                   title="Where the time goes: calls x cost per model", legend="model")


def tuning_plot(result: dict, history: list[dict] | None = None, table: str = "parameters"):
    """Two panels for the sliders: acceptance per level of `result`, and the objective of every
    evaluation so far (one point per evaluation, integer x ticks): the predicted wall-clock speedup
    when `table` is "latency" (results of `evaluate_cascade(..., latency=...)`), else SWI under `table`."""
    from matplotlib.ticker import MaxNLocator

    plt = _plt()

    def value(r):
        return r["predicted_speedup"] if table == "latency" else r["swi"][table]

    label = "predicted speedup (latency model)" if table == "latency" else f"SWI ({table})"
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    names = [lv.model for lv in result["stats"].levels]
    acc = [a if a is not None else 0 for a in result["acceptance"]]
    axes[0].bar(names, acc, color="tab:blue")
    axes[0].set_ylim(0, 1)
    axes[0].set_xlabel("reviewing level")
    axes[0].set_ylabel("acceptance (accepted / drafted)")
    axes[0].set_title(f"{label} = {value(result):.3f}")
    hist = history or [result]
    axes[1].plot(range(1, len(hist) + 1), [value(h) for h in hist], marker="o")
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].axhline(1, color="grey", lw=0.8, ls="--")
    axes[1].set_xlabel("evaluation #")
    axes[1].set_ylabel(label)
    axes[1].set_title("each setting tried")
    fig.tight_layout()
    return fig


def verified_tree(tree: dict, decode=str, path=None, title: str | None = None):
    """One verified token tree (an entry of `Output.trees`): depth left to right, the chain on top, each
    node its token (`decode(id)`) and branch rank; the accepted path and the reviewer's own next token in
    colour."""
    plt = _plt()
    tokens, parents, ranks, accepted = tree["tokens"], tree["parents"], tree["ranks"], set(tree["path"])
    depth, rows, row_of = [], [], {}
    for t, parent in enumerate(parents):           # rows: a node shares its parent's row if it is rank 1
        depth.append(0 if parent < 0 else depth[parent] + 1)
        row_of[t] = row_of.get(parent, 0) if ranks[t] == 1 else max(row_of.values(), default=0) + 1
        rows.append(row_of[t])
    fig, ax = plt.subplots(figsize=(1.3 * (max(depth) + 3), 0.55 * (max(rows) + 2)))
    for t, parent in enumerate(parents):
        x0, y0 = (depth[parent], -rows[parent]) if parent >= 0 else (-1, 0)
        ax.plot([x0, depth[t]], [y0, -rows[t]], color="tab:green" if t in accepted else "0.75", zorder=1)
    for t, token in enumerate(tokens):
        ax.text(depth[t], -rows[t], f"{decode(token)!r}" + (f" #{ranks[t]}" if ranks[t] > 1 else ""),
                ha="center", va="center", fontsize=8, zorder=2,
                bbox=dict(boxstyle="round", fc="honeydew" if t in accepted else "white",
                          ec="tab:green" if t in accepted else "0.6"))
    last = max(accepted, key=lambda t: depth[t], default=None)
    x, y = (depth[last], -rows[last]) if last is not None else (-1, 0)
    ax.text(x + 1, y, f"{decode(tree['next'])!r}", ha="center", va="center", fontsize=8,
            bbox=dict(boxstyle="round", fc="lightyellow", ec="tab:orange"))
    ax.text(-1, 0, "prefix", ha="center", va="center", fontsize=8, bbox=dict(boxstyle="round", fc="0.9"))
    ax.set_xlim(-1.6, max(depth) + 1.8)
    ax.set_ylim(-max(rows) - 0.8, 0.8)
    ax.axis("off")
    title = title or (f"level {tree['level']} verified {len(tokens)} tokens in one forward:\nkept "
                      f"{len(accepted)} (green) and its own next token (orange); #r: branch rank r")
    return _finish(fig, ax, path, xlabel="", ylabel="", title=title)


def accepted_by_rank(level, path=None, title: str | None = None):
    """Accepted tokens by depth, stacked by branch rank (1: the chain's own token; from
    `LevelStats.accepted_by_rank`)."""
    plt = _plt()
    frame = pd.DataFrame([{f"rank {r + 1}": n for r, n in enumerate(by_rank)} for by_rank in level.accepted_by_rank])
    frame = frame.fillna(0).rename_axis("depth")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    frame.plot.bar(stacked=True, ax=ax, colormap="viridis")
    return _finish(fig, ax, path, xlabel="depth in the tree (0: the first draft token)", ylabel="accepted tokens",
                   title=title or f"level {level.level} ({level.model}): which branch was accepted", legend="branch")


def cascade_gain(points: pd.DataFrame, path=None, title: str = "Where a cascade pays"):
    """CSD's wall-clock gain over the best single drafter (y) against the cost of the cascade's largest
    neural drafter relative to its target (x: one-token forward latencies, log scale), one point per
    family and dtype (`points`: columns ``label``, ``drafter cost``, ``CSD / best SD``, ``verify 8``:
    the target's forward over 8 tokens / one, written beside each point)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.axhline(1.0, color="grey", lw=1, ls="--")
    ax.scatter(points["drafter cost"], points["CSD / best SD"], s=60, color="C0", zorder=3)
    for _, r in points.iterrows():
        verify = r.get("verify 8")
        note = r["label"] + (f"\n(8 tokens verify for {verify:.2f}x one)" if verify is not None and verify == verify else "")
        ax.annotate(note, (r["drafter cost"], r["CSD / best SD"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(min(0.02, points["drafter cost"].min() / 1.5), max(1.0, points["drafter cost"].max() * 1.5))
    return _finish(fig, ax, path, xlabel="largest neural drafter's one-token latency / target's",
                   ylabel="CSD tokens/s / best SD tokens/s", title=title)


def suffix_replay(rows: list[dict], k: int, path=None, title: str = "Free drafters replayed"):
    """Tokens per target call (y) against the suffix drafter's corpus size (x: the target's past answers,
    symlog scale), one line per way of scoring, at draft length `k`; MaG and the request alone as
    horizontal lines (`rows`: `benchmarks/suffix_replay.py`'s: drafter, answers, k, tokens_per_call)."""
    plt = _plt()
    df = pd.DataFrame([r for r in rows if r["k"] == k])
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    mag = df[df["drafter"] == "MaG"]["tokens_per_call"]
    if len(mag):
        ax.axhline(float(mag.iloc[0]), color="grey", ls="--", lw=1, label="MaG")
    curves = df[(df["drafter"] != "MaG") & ~df["drafter"].str.contains("prompt lookup")]
    for name, g in curves.groupby("drafter", sort=False):
        g = g.sort_values("answers")
        ax.plot(g["answers"].astype(int), g["tokens_per_call"], marker="o", label=name.removeprefix("suffix: "))
    ax.set_xscale("symlog", linthresh=50)
    return _finish(fig, ax, path, xlabel="answers in the corpus (the target's own, GSM8K train)",
                   ylabel="tokens per target call", title=title, legend="suffix drafter")


def ladder(rows: list[dict], path=None, title: str = "The ladder: each rung's agreement against its cost"):
    """Each rung's top-1 agreement with the target (y) against its one-token latency relative to the
    target's (x, log scale): the family's drafters as points (`rows`: ``rung``, ``kind``, ``agreement``,
    ``cost``), the target's untrained early exits (kind ``"early exit"``) as a grey line."""
    plt = _plt()
    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    exits = df[df["kind"] == "early exit"].sort_values("cost")
    if len(exits):
        ax.plot(exits["cost"], exits["agreement"], color="grey", marker=".", lw=1,
                label="target's early exit, untrained")
    for kind, g in df[df["kind"] != "early exit"].groupby("kind", sort=False):
        ax.scatter(g["cost"], g["agreement"], s=60, zorder=3, label=kind)
        for _, r in g.iterrows():
            ax.annotate(r["rung"], (r["cost"], r["agreement"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.axhline(0.75, color="C3", lw=1, ls=":", label="0.75 (issue 40's goal for the new rung)")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    return _finish(fig, ax, path, xlabel="one-token latency / target's (float32, measured)",
                   ylabel="top-1 agreement with the target", title=title, legend="rung")
