"""Every measured table of README.md and docs/: the command that measures it and the code that writes it.

    python benchmarks/tables.py                      # rewrite every table from its results files (seconds)
    python benchmarks/tables.py --check              # exit 1 if a page's table is not what its results give
    python benchmarks/tables.py --measure speed-gsm8k-base tree-tokens   # run those commands, then rewrite
    python benchmarks/tables.py --measure all        # every command (about 2 hours on 2 cores)
    python benchmarks/tables.py --list               # each table: its page, results and command

A table lives in its page between two markers, and nobody edits it by hand:

    <!-- table NAME: benchmarks/tables.py writes this -->
    ...
    <!-- /table NAME -->

Each table's caption is written from its results file too (date, CPU and its bf16 units, threads, dtype,
prompts, command), so a table and what it says about itself cannot drift apart. Results live in
`data/results/` (committed); a table whose command needs hardware this machine lacks (the GPU run) is
rendered from the results it left.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path("data/results")


@dataclass
class Table:
    name: str
    pages: tuple            # the pages that hold it (relative to the repository)
    results: str            # the results file it is written from
    commands: tuple         # what measures it (run by --measure, from the repository root)
    render: object          # results path -> markdown (caption + table)
    minutes: float = 0      # about how long the commands take on 2 cores


# ---------------------------------------------------------------- small helpers


def _json(path) -> dict:
    d = json.loads((ROOT / path).read_text())
    d.setdefault("measured_at", None)
    d["_path"] = str(path)
    return d


def _day(d: dict) -> str:
    """The day a result was measured; for files from before the scripts recorded it, the day it was committed."""
    if d.get("measured_at"):
        return d["measured_at"][:10]
    log = subprocess.run(["git", "log", "--diff-filter=A", "-1", "--format=%cs", "--", d["_path"]], cwd=ROOT,
                         capture_output=True, text=True)
    return f"committed {log.stdout.strip()}" if log.stdout.strip() else "date not recorded"


def _machine(d: dict) -> str:
    isa = {"AMX-BF16": "AMX-BF16", "AVX512-BF16": "AVX512-BF16", "neither": "no bf16 units"}.get(
        d.get("cpu_isa"), "bf16 units not recorded")
    gpu = f", GPU {d['gpu']}" if d.get("gpu") else ""
    return f"{d.get('cpu', 'CPU not recorded')} ({isa}){gpu}, torch {d.get('torch', '?')}"


def _error(v) -> str:
    return "-" if v is None or v != v else f"{v:+.1%}"


def _x(v) -> str:
    return "-" if v is None or v != v else f"{v:.2f}"


def _captioned(d: dict, text: str, df: pd.DataFrame, commands=None) -> str:
    """When and where (from the results file), what (`text`), the command, then the table."""
    commands = "\n".join(commands or [d["command"]])
    return f"{_day(d)}, {_machine(d)}, {text}\n\n```bash\n{commands}\n```\n\n" + _markdown(df)


def _markdown(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(df.columns) + " |"
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(df.columns))) + "|"
    return "\n".join([head, rule] + ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)])


# ---------------------------------------------------------------- speed.py


def _speed_rows(run: dict) -> pd.DataFrame:
    return pd.DataFrame(run["rows"]).set_index("method")


def _audit(df: pd.DataFrame) -> str:
    return f"{int(df['identical'].sum())} identical / {int(df['tie'].sum())} tie / {int(df['WRONG'].sum())} WRONG"


def _speed_caption(d: dict, run: dict) -> str:
    df = _speed_rows(run)
    tree = f", tree {run['tree']}" if run.get("tree") else ""
    if run.get("tuned"):
        t = run["tuned"]
        tree += (f" (chain and tree tuned in this run for this machine: {t['completed']} trials in {t['seconds']:g} s"
                 + (f"; the tree over `{run['tree_k_matrix']}`" if run.get("tree") else "") + ")")
    stopped = "**an incomplete run (stopped part-way)**, " if d.get("complete") is False else ""
    graphs = ""
    if run.get("compiled_graphs") is not None:
        timed = ", ".join(f"{n} {g}" for n, g in (run.get("compiled_while_timed") or {}).items()) or "none"
        graphs = f"; graphs compiled in the process: {run['compiled_graphs']}, while timed: {timed}"
    return (f"{stopped}{_day(d)}, {_machine(d)}, {run['dtype']}, {d['threads']} threads, "
            f"{run['prompts']} GSM8K dev prompts, {d['max_new_tokens']} new tokens, every method interleaved "
            f"prompt by prompt in one process; CSD: k-matrix `{run['k_matrix']}`, lenience {run['lenience']}, "
            f"MaG k {run.get('mag_k', '?')}{tree}; every output audited against HF greedy's: {_audit(df)}{graphs}.\n\n"
            f"```bash\n{d['command']}\n```")


def render_speed(path, dtypes=None) -> str:
    """The whole speed table of one speed.py run (every dtype it measured, or those in `dtypes`)."""
    d, parts = _json(path), []
    for run in (r for r in d["runs"] if dtypes is None or r["dtype"] in dtypes):
        df = _speed_rows(run)
        out = pd.DataFrame({
            "method": df.index, "tokens/s": [f"{v:.1f}" for v in df["tokens/s"]],
            "x HF greedy": df["x HF greedy"].map(_x), "x best SD": df["x best SD"].map(_x),
            "x best HF peer": df["x best HF peer"].map(_x),
            "tokens / target call": df.get("tokens/target call", pd.Series(index=df.index, dtype=float)).map(_x),
            "predicted vs measured": [_error(v) for v in df.get("prediction error", pd.Series(index=df.index, dtype=float))],
            "identical / tie / WRONG": [f"{int(r.identical)} / {int(r.tie)} / {int(r.WRONG)}" for r in df.itertuples()]})
        parts += [_speed_caption(d, run), "", _markdown(out), ""]
    return "\n".join(parts).rstrip()


def _pick(df: pd.DataFrame) -> dict:
    """The rows a summary shows: HF greedy, the best SD, CSD, tree CSD, the best HF peer, prompt lookup."""
    sd = df[df["kind"] == "csdlib SD"]
    assisted = df[df.index.str.startswith("HF assisted")]
    rows = {"HF greedy": "HF greedy", f"best SD: {sd['x HF greedy'].idxmax()}": sd["x HF greedy"].idxmax(),
            "CSD (the family's default)": "CSD"}
    rows.update({f"tree CSD ({n.split()[-1]})": n for n in df.index if n.startswith("tree CSD")})
    rows[f"best HF assisted: {assisted['x HF greedy'].idxmax()}"] = assisted["x HF greedy"].idxmax()
    rows.update({n: n for n in df.index if n.startswith("HF prompt lookup")})
    return rows


def render_speed_summary(path) -> str:
    """A few rows of one speed.py run: what a reader compares first."""
    d = _json(path)
    run = d["runs"][0]
    df = _speed_rows(run)
    rows = _pick(df)
    out = pd.DataFrame({
        "method": list(rows), "tokens/s": [f"{df.loc[n, 'tokens/s']:.1f}" for n in rows.values()],
        "x HF greedy": [_x(df.loc[n, "x HF greedy"]) for n in rows.values()],
        "x best HF peer": [_x(df.loc[n, "x best HF peer"]) for n in rows.values()],
        "tokens / target call": [_x(df.loc[n].get("tokens/target call")) for n in rows.values()],
        "predicted vs measured": [_error(df.loc[n].get("prediction error")) for n in rows.values()]})
    return _speed_caption(d, run) + "\n\n" + _markdown(out)


#: the README's one table: each family on the data it was made for (smollm2-general: Spec-Bench), each dtype
HEADLINE = ("data/results/speed-gsm8k-tiny/speed.json", "data/results/speed-gsm8k-base/speed.json",
            "data/results/speed-smollm2-bfloat16/speed.json", "data/results/speed-smollm2-float32/speed.json",
            "data/results/spec-bench-smollm2-general-float32-peers/speed.json")
#: its columns: `_pick`'s summary rows (their labels before ": ") as the README names them
HEADLINE_COLUMNS = {"CSD (the family's default)": "CS Drafting", "best SD": "best single drafter",
                    "best HF assisted": "HF assisted generation", "HF prompt lookup(10)": "HF prompt lookup"}


def render_headline(paths) -> str:
    """README's table: CSD against plain decoding (transformers' greedy `generate` of the same model in the same
    dtype), the best single drafter and transformers' peers, a row per family, dtype and data; under it each
    row's run: day, machine, prompts, audit, the methods it left out, and its command."""
    rows, notes = [], []
    for path in paths:
        d = _json(path)
        run = d["runs"][0]
        df = _speed_rows(run)
        what = f"{d['family']}, {run['dtype']}, {'Spec-Bench' if d.get('dataset') == 'spec-bench' else 'GSM8K'}"
        row = {"family, dtype, prompts": what, "machine": _machine(d).split(", torch")[0]}
        for label, n in _pick(df).items():
            key = re.sub(r": .*", "", label)
            if key in HEADLINE_COLUMNS:
                detail = re.sub(r"^HF assisted\((.*)\) default$", r"with \1", n) if ": " in label else ""
                row[HEADLINE_COLUMNS[key]] = f"{_x(df.loc[n, 'x HF greedy'])}x" + (f" {detail}" if detail else "")
        rows.append(row)
        words = shlex.split(d["command"])
        left = f"; not run: {words[words.index('--skip') + 1]}" if "--skip" in words else ""
        notes.append(f"{what}: {_day(d)}, {_machine(d)}, {d['threads']} threads, {run['prompts']} prompts, "
                     f"{d['max_new_tokens']} new tokens, {_audit(df)}{left}; `{d['command']}`")
    out = pd.DataFrame(rows).reindex(columns=["family, dtype, prompts", *HEADLINE_COLUMNS.values(), "machine"]).fillna("-")
    head = ("Speedup over plain decoding (transformers' greedy `generate` of the same model in the same dtype), "
            "every method interleaved prompt by prompt in one process, every output audited against plain "
            "decoding's (identical / tie / WRONG):")
    return head + "\n\n" + _markdown(out) + "\n\n" + "\n".join(f"- {c}" for c in notes)


def render_dtypes(paths) -> str:
    """smollm2's speed.py runs, one per dtype, their summary rows side by side: x HF greedy of the same dtype
    (in brackets: over the best HF peer), tokens per target call, and each run's audit and command."""
    cols, caps, dtypes = {}, [], []
    for path in paths:
        d = _json(path)
        run = d["runs"][0]
        dtypes.append(run["dtype"])
        df = _speed_rows(run)
        for label, n in _pick(df).items():
            key = re.sub(r": .*", "", label)
            detail = label.split(": ")[1] if ": " in label else ""
            if key.startswith("tree CSD ("):             # one row whatever each dtype's tree: its shape beside
                key, detail = "tree CSD", key[len("tree CSD ("):-1]
            tpc = df.loc[n].get("tokens/target call")
            cols.setdefault(key, {})[run["dtype"]] = (
                f"{_x(df.loc[n, 'x HF greedy'])}x ({_x(df.loc[n, 'x best HF peer'])})" + (f" {detail}" if detail else "")
                + (f", {tpc:.2f} tok/call" if tpc is not None and tpc == tpc else ""))
        caps.append(f"{run['dtype']}: {_day(d)}, {run['prompts']} prompts, HF greedy {df.loc['HF greedy', 'tokens/s']:.1f} "
                    f"tokens/s, CSD k-matrix `{run['k_matrix']}` lenience {run['lenience']} MaG k {run.get('mag_k', '?')}, "
                    f"{_audit(df)}" + (" (**stopped part-way**)" if d.get("complete") is False else "")
                    + f"; `{d['command']}`")
    d = _json(paths[0])
    out = pd.DataFrame([{"method": k, **{dt: v.get(dt, "-") for dt in dtypes}} for k, v in cols.items()])
    head = (f"smollm2: speedup over transformers' greedy `generate` of the same model in the same dtype (in "
            f"brackets: over the best of assisted generation with each of our drafters and prompt lookup), "
            f"{_machine(d)}, {d['threads']} threads, {d['max_new_tokens']} new tokens, GSM8K dev prompts through "
            f"the chat template, methods interleaved prompt by prompt in one process; bfloat16 with the target's "
            f"logits in float32.")
    return head + "\n\n" + _markdown(out) + "\n\n" + "\n".join(f"- {c}" for c in caps)


def render_drafters(path) -> str:
    """smollm2's drafters, from their training.json files (written by `csd train --family smollm2`)."""
    rows = []
    for name in ("mid", "small"):
        t = _json(Path(path).parent.parent / name / "training.json")
        c = t["config"]
        stages = f"{t['stage_1']['epochs']:g} epochs at lr {t['stage_1']['lr']:g}, then " if "stage_1" in t else ""
        rows.append({"drafter": name, "architecture": f"hidden {c['hidden_size']}, {c['num_hidden_layers']} layers, "
                     f"{c['num_attention_heads']} heads, MLP {c['intermediate_size']}, {c['vocab_size']} rows",
                     "parameters": f"{t['parameters']:,}", "training": f"{stages}{t['epochs']:g} epochs at lr {t['lr']:g}, "
                     f"batch {t['batch']}, {t['train_time_s'] + t.get('stage_1', {}).get('train_time_s', 0):.0f} s on "
                     f"{t['threads']} thread(s)", "held-out CE": f"{t['val_loss']:.3f}",
                     "agreement": f"{t['agreement_val']:.3f}" if "agreement_val" in t else "-"})
        more = t.get("more")
        if more:                        # the second round (`distill_more`), on answers to other questions
            rows[-1].update({
                "second round": f"questions {more['questions'][0]:,}-{more['questions'][1] - 1:,} "
                                f"({more['answer_tokens']:,} answer tokens), {more['epochs']:g} epochs at lr "
                                f"{more['lr']:g}, {more['train_time_s']:.0f} s on {more['threads']} thread(s)",
                "its held-out CE": f"{more['val_loss']:.3f}",
                "its held-out agreement": f"{more['agreement_val_before']:.3f} -> {more['agreement_val']:.3f}"})
    return ("`csd train --family smollm2` (first round 2026-12-02; second round, `--stage more`, 2026-12-06; AMD "
            "EPYC with AVX512-BF16). The first round's held-out answers are 2 % of its own; the second round's "
            "agreement is on 2 % of its new answers, before and after it:\n\n" + _markdown(pd.DataFrame(rows).fillna("-")))


# ---------------------------------------------------------------- csd run and the other scripts

CSD_RUN = "csd run --threads 2 --results-dir data/results/csd-run-gsm8k-tiny --figures-dir figures"


def render_ladder(path) -> str:
    """benchmarks/ladder.py: each rung's agreement with the target against its one-token cost, beside the
    target's untrained early exits; with the grown drafter's training (its training.json)."""
    d = _json(path)
    df = pd.DataFrame(d["rows"])
    df["agreement"] = df["agreement"].map(lambda v: f"{v:.3f}")
    df["cost"] = df["cost"].map(lambda v: f"{v:.3g}")
    df["parameters"] = df["parameters"].map(lambda v: f"{int(v):,}" if v == v else "-")
    df = df[["rung", "kind", "agreement", "cost", "parameters"]].rename(columns={
        "agreement": "top-1 agreement", "cost": "one-token cost / target's"})
    text = (f"torch's CPU kernels {d.get('torch_cpu_capability', '?')}, {d['threads']} threads, float32; agreement teacher forced on the target's greedy answers to "
            f"{d['prompts']} GSM8K dev prompts ({d['max_new_tokens']} new tokens); an early exit is priced as a "
            "drafter grown from that many layers, untrained.")
    return _captioned(d, text, df)


def render_grow_sweep(path) -> str:
    """benchmarks/grow_sweep.py: a grown rung's agreement (as stored) against its layers, answers and training."""
    d = _json(path)
    df = pd.DataFrame(d["rows"])
    df["answers"] = df["answers"].map(lambda v: f"{int(v):,}")
    df["epochs"] = df["epochs"].map(lambda v: f"{v:g}")
    for c in ("held_out", "dev", "val_loss"):
        df[c] = df[c].map(lambda v: f"{v:.3f}")
    df = df[["point", "training", "layers", "answers", "epochs", "train_min", "val_loss", "held_out", "dev"]].rename(
        columns={"answers": "answers (all, 2 % held out)", "train_min": "training (min)", "val_loss": "val loss",
                 "held_out": "held-out agreement", "dev": "dev agreement"})
    text = (f"{d['threads']} threads; agreement in float32 as stored, teacher forced on held-out training answers and on "
            f"the target's greedy answers to {d['prompts']} GSM8K dev prompts ({d['max_new_tokens']} new tokens).")
    return _captioned(d, text, df)


def render_csd_run(path) -> str:
    """`csd run`'s own table (its .csv), with when and where from its first record."""
    df = pd.read_csv(ROOT / path)
    first = json.loads((ROOT / path).with_suffix(".jsonl").read_text().split("\n", 1)[0])
    env = first["environment"]
    out = pd.DataFrame({
        "method": df["method"], "SWI parameters": df["SWI parameters"].map(_x),
        "SWI measured": df["SWI measured"].map(_x), "wall speedup": df["wall speedup"].map(_x),
        "tokens/s": df["tokens/s"].map(lambda v: f"{v:.1f}"), "tokens / target call": df["tokens/target call"].map(_x),
        "acceptance per level": df["acceptance per level"],
        "identical / tie / WRONG": [f"{r.identical} / {r.tie} / {r.WRONG}" for r in df.itertuples()]})
    warning = f" The run said: \"{first['load_warning']}\" (the benchmark before it had just finished)." \
        if first.get("load_warning") else ""
    return (f"{first['finished_at'][:10]}, {_machine({**env, 'torch': env['versions']['torch']})}, "
            f"{first['threads']} threads, {len(df) and int(df['samples'].iloc[0])} GSM8K dev prompts, "
            f"{first['max_new_tokens']} new tokens, the default family.{warning}\n\n```bash\n{CSD_RUN}\n```\n\n"
            + _markdown(out))




def render_tree_tokens(path) -> str:
    meta = _json(Path(path).with_name("tree.json"))
    df = pd.read_csv(ROOT / path)
    out = pd.DataFrame({"k-matrix": df["k-matrix"], "tree": df["tree"],
                        "tokens / target call": df["tokens/target call"].map(_x),
                        "tokens fed / target call": df["tokens fed/target call"].map(lambda v: f"{v:.1f}"),
                        "x chain, same k": df["x chain, same k"].map(_x), "x default chain": df["x default chain"].map(_x)})
    what = ("float32, {prompts} GSM8K dev prompts, {max_new_tokens} new tokens, greedy, the target replayed from "
            "its greedy outputs (its decisions exactly; no timing). `default`: the family's k-matrix `{k_matrix}`; "
            "`deep 8`: 8 tokens drafted by the first neural drafter; `MaG alone 4`: SD with MaG drafting 4 tokens "
            "(its tree candidates: its other max-gram continuations, then its bigram table's 4 best successors); "
            "`1 successor`: the same with the table cut to its best successor.")
    return _captioned(meta, what.format(**meta), out)


def render_acceptance(path) -> str:
    d = _json(path)
    levels = list(d["rows"][0]["acceptance"])
    out = pd.DataFrame([{"setting": r["setting"], **{lv: "-" if r["acceptance"][lv] is None else f"{r['acceptance'][lv]:.3f}"
                                                     for lv in levels},
                         "tokens / target call": _x(r["tokens_per_target_call"])} for r in d["rows"]])
    return _captioned(d, f"float32, 1 thread, {d['family']} with k-matrix `{d['k_matrix']}` at lenience 1 (so "
                         f"greedy and sampling compare), MaG k {d['mag_k']}, {d['prompts']} GSM8K dev prompts, "
                         f"{d['max_new_tokens']} new tokens. Acceptance counts tokens, not time: a busy machine "
                         f"gives the same table.", out)


def render_overhead(path) -> str:
    d = _json(path)
    text = f"float32, {d['threads']} threads, {d['tokens']} new tokens, median of {d['repeats']} runs."
    return _captioned(d, text, pd.DataFrame({
        "setting": [r["setting"] for r in d["rows"]], "wall ms": [f"{r['wall_ms']:.1f}" for r in d["rows"]],
        "in forwards ms": [f"{r['forward_ms']:.1f}" for r in d["rows"]],
        "outside the forwards": [f"{r['outside']:.1%}" for r in d["rows"]],
        "target calls": [r["target_calls"] for r in d["rows"]]}))


def render_notebook_times(path) -> str:
    d = _json(path)
    rows = pd.DataFrame({"notebook": [f"`{r['notebook']}`" for r in d["rows"]],
                         "runtime": [f"{r['seconds']:.0f} s" for r in d["rows"]]})
    return _captioned(d, "1 torch thread (as CI runs them), the defaults of each parameters cell.", rows)


def render_ties(path) -> str:
    d = _json(path)
    rows = []
    for setting, methods in d["settings"].items():
        for method, verdicts in methods.items():
            ties = [v for v in verdicts if v["verdict"] == "tie"]
            rows.append({"float32 logits": setting, "method": method,
                         "identical": sum(v["verdict"] == "identical" for v in verdicts), "tie": len(ties),
                         "WRONG": sum(v["verdict"] == "WRONG" for v in verdicts),
                         "tie margins": ", ".join(f"{v['margin']:.4g}" for v in ties) or "-"})
    return _captioned(d, "bfloat16 target, outputs only (no timing).", pd.DataFrame(rows))


def render_dtype_speed(paths) -> str:
    """One speed.py run per dtype, side by side: a few rows."""
    runs = {}
    for path in paths:
        d = _json(path)
        runs[d["runs"][0]["dtype"]] = (d, _speed_rows(d["runs"][0]))
    (d32, f32), (d16, b16) = runs["float32"], runs["bfloat16"]
    rows = []
    for label, pick in (("HF greedy", "HF greedy"), ("csdlib AR", "AR"), ("SD(mid)", "SD(mid)"),
                        ("CSD, the family's default for the dtype", "CSD"), ("tree CSD", "tree CSD"),
                        ("HF assisted(mid), its default schedule", "HF assisted(mid) default"),
                        ("HF prompt lookup(10)", "HF prompt lookup(10)")):
        n32 = next((n for n in f32.index if n.startswith(pick)), None)
        n16 = next((n for n in b16.index if n.startswith(pick)), None)
        if n32 is None or n16 is None:
            continue
        k32, k16 = (f" ({n.split()[-1]})" if n.startswith(("SD(", "tree")) else "" for n in (n32, n16))
        r = b16.loc[n16]
        rows.append({"method": label, "float32 tokens/s": f"{f32.loc[n32, 'tokens/s']:.1f}{k32}",
                     "x HF greedy": _x(f32.loc[n32, "x HF greedy"]),
                     "bfloat16 tokens/s": f"{r['tokens/s']:.1f}{k16}", "x HF greedy (bf16)": _x(r["x HF greedy"]),
                     "bf16 audit (identical / tie / WRONG)": f"{int(r['identical'])} / {int(r['tie'])} / {int(r['WRONG'])}"})
    return (f"{_day(d16)}, {_machine(d16)}, {d16['threads']} threads, gsm8k-base, one speed.py run per dtype "
            f"(ratios are within a run), {d32['runs'][0]['prompts']} (float32) and {d16['runs'][0]['prompts']} "
            f"(bfloat16) GSM8K dev prompts, {d32['max_new_tokens']} new tokens; bf16 with float32 target logits; "
            f"CSD with each dtype's default k-matrix, float32 `{d32['runs'][0]['k_matrix']}`, bfloat16 "
            f"`{d16['runs'][0]['k_matrix']}`; every output "
            f"audited against HF greedy's of the same dtype: float32 {_audit(f32)}, bfloat16 {_audit(b16)}.\n\n"
            f"```bash\n{d32['command']}\n{d16['command']}\n```\n\n" + _markdown(pd.DataFrame(rows)))


ORDER = {"target": 0, "tiny": 1, "mid": 2, "small": 3}


def _cost_rows(path, label_of) -> list[dict]:
    """One row per neural model of a latency file: its one-token forward, and a forward over k tokens / that."""
    entries = sorted((e for e in _json(path)["entries"].values() if e["name"] in ORDER),
                     key=lambda e: (ORDER[e["name"]], e.get("dtype") or ""))
    rows = []
    for e in entries:
        med = dict(zip(e["ns"], e["median_s"]))
        rows.append({**label_of(e), "one token": f"{e['a1'] * 1e3:.2f} ms",
                     **{f"k={n}": f"{med[n] / e['a1']:.2f}x" for n in (2, 4, 8, 16) if n in med}})
    return rows


def render_dtype_cost(path) -> str:
    d = _json(path)
    first = next(iter(d["entries"].values()))
    rows = _cost_rows(path, lambda e: {"model": e["name"], "dtype": e.get("dtype", "?")})
    return (f"{_day(first)}, {_machine({**d, 'cpu': first.get('cpu', d['machine']), 'cpu_isa': first.get('cpu_isa')})}, "
            f"{first['threads']} "
            f"threads; {Path(path).parent.name.replace('dtype-cost-', '')}'s models, KV cache after {first['context']} tokens, median of 15 forwards "
            f"(bfloat16: the target's logits in float32).\n\n```bash\n{first['note']}\n```\n\n"
            + _markdown(pd.DataFrame(rows)))


def render_gpu_cost(paths) -> str:
    rows = []
    for path in paths:
        family = Path(path).stem.replace("latency-", "")
        rows += _cost_rows(path, lambda e, f=family: {"model": f"{e['name']} ({f})"})
    d = _json(paths[0])
    first = next(iter(d["entries"].values()))
    return (f"{_day(first)}, {d['machine']}, torch {d['torch']}, bfloat16 with float32 target "
            f"logits, {first['device']}; median forward of each model with a KV cache after {first['context']} "
            f"tokens (`benchmarks/gpu.sh`).\n\n" + _markdown(pd.DataFrame(rows)))


# ---------------------------------------------------------------- the tables

def _spec_bench_groups(run: dict) -> pd.DataFrame:
    """Spec-Bench's layout recomputed from the run's per-prompt times and tokens (`csdlib.experiment.by_group`:
    the ratio of tokens per second, which the "groups" stored by the first run, on 2026-12-06, were not: they are
    a ratio of wall times, charging a half-precision output that left HF greedy's at a tie for its length)."""
    from csdlib.experiment import by_group, turn_frame

    return by_group(turn_frame(run["turns"]), "HF greedy")


def render_spec_bench(path) -> str:
    """One speed.py --dataset spec-bench run per dtype, in Spec-Bench's layout: speedup over HF greedy per group
    (wall time summed over its prompts), overall, mean tokens per target forward, and each method's audit."""
    d, parts = _json(path), []
    for run in d["runs"]:
        groups, df = _spec_bench_groups(run), _speed_rows(run)
        names = [c for c in groups.columns if c not in ("Overall", "mean accepted tokens")]
        base = run["turns"]["HF greedy"]
        sizes = {g: sum(t["group"] == g for t in base) for g in names}     # prompts: MT-bench's are two per question
        out = pd.DataFrame({"method": groups.index, **{g: groups[g].map(_x) for g in names},
                            "Overall": groups["Overall"].map(_x),
                            "mean accepted tokens": groups["mean accepted tokens"].map(_x),
                            "identical / tie / WRONG": [f"{int(df.loc[n, 'identical'])} / {int(df.loc[n, 'tie'])} / "
                                                        f"{int(df.loc[n, 'WRONG'])}" for n in groups.index]})
        stopped = "**an incomplete run (stopped part-way)**, " if d.get("complete") is False else ""
        greedy = df.loc["HF greedy"]
        parts += [f"{stopped}{_day(d)}, {_machine(d)}, {run['dtype']}, {d['threads']} threads, {d['family']}, "
                  f"{d['max_new_tokens']} new tokens per turn, prompts per group: "
                  + ", ".join(f"{g} {sizes[g]}" for g in names)
                  + f" ({run['prompts']} in all, two per MT-bench question; HF greedy {greedy['tokens/s']:.1f} tokens/s); every method "
                  f"interleaved prompt by prompt in one process; CSD: the family's default, k-matrix "
                  f"`{run['k_matrix']}`, lenience {run['lenience']}, MaG k {run.get('mag_k', '?')}; SD's k per "
                  f"drafter chosen on GSM8K dev items {run['tune'][0]}..{run['tune'][1]}: {run['sd_k']}; every "
                  f"output audited against HF greedy's: {_audit(df)}.\n\n```bash\n{d['command']}\n```", "",
                  _markdown(out), ""]
    return "\n".join(parts).rstrip()


def draw_spec_bench(path, png) -> None:
    """The figure of speedup per Spec-Bench group (`csdlib.plots.speedup_by_group`), one panel per dtype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from csdlib.plots import speedup_by_group

    d = _json(path)
    for run in d["runs"]:
        groups = _spec_bench_groups(run)
        plt.close(speedup_by_group(groups, ROOT / png, title=f"{d['family']} on Spec-Bench, {run['dtype']}, "
                                   f"{d['threads']} threads, {d.get('cpu', '')}: speedup over HF greedy"))


def render_long_prompts(path) -> str:
    d = _json(path)
    rows = pd.DataFrame(d["rows"])
    out = pd.DataFrame({"prompt tokens": rows["tokens"]})
    for col in rows.columns[1:]:
        out[col] = [f"{v:.3g}" for v in rows[col]]
    return (f"{_day(d)}, {_machine(d)}, {d['dtype']}, {d['threads']} threads, {d['family']}\n\n```bash\n{d['command']}"
            f"\n```\n\n" + _markdown(out))


def render_forward_cost(path) -> str:
    """benchmarks/forward_cost.py: each member's forward, eager against prepacked, by tokens fed."""
    d = _json(path)
    rows = pd.DataFrame(d["rows"])
    out = pd.DataFrame({"dtype": rows["dtype"], "model": rows["model"], "params": [f"{v:.3g} M" for v in rows["params M"]],
                        "tokens fed": rows["fed"], "eager ms": rows["eager ms"].map(lambda v: f"{v:.1f}"),
                        "packed ms": rows["packed ms"].map(lambda v: f"{v:.1f}"),
                        "eager / packed": rows["eager / packed"].map(_x),
                        "x one-token step (eager)": rows["eager x step"].map(_x),
                        "x one-token step (packed)": rows["packed x step"].map(_x),
                        "packed / bandwidth time": rows["packed / bandwidth"].map(lambda v: f"{v:.1f}")})
    if "compiled ms" in rows:                        # --compiled: the one-token step on a static cache
        out = out.drop(columns=["tokens fed", "x one-token step (eager)", "x one-token step (packed)"]).assign(**{
            "static cache ms": rows["static ms"].map(lambda v: f"{v:.1f}"),
            "compiled ms": rows["compiled ms"].map(lambda v: f"{v:.1f}"),
            "static / compiled": rows["eager / compiled"].map(_x),
            "compile s": rows["compile s"].map(lambda v: f"{v:.0f}"), "graphs": rows["graphs"]})
    if "static cache ms" in rows:                    # --static: the packed member through HFModel, each KV cache
        out = pd.DataFrame({"dtype": rows["dtype"], "model": rows["model"],
                            "params": [f"{v:.3g} M" for v in rows["params M"]], "tokens fed": rows["fed"]}).assign(**{
            "dynamic cache ms": rows["dynamic cache ms"].map(lambda v: f"{v:.1f}"),
            "static cache ms": rows["static cache ms"].map(lambda v: f"{v:.1f}"),
            "dynamic / static": rows["dynamic / static"].map(_x)})
        if "HFModel compiled ms" in rows:            # --static --compiled: compiled as the cascade calls it
            out = out.assign(**{"compiled ms": rows["HFModel compiled ms"].map(lambda v: f"{v:.1f}"),
                                "dynamic / compiled": rows["dynamic / compiled"].map(_x)})
    return (f"{_day(d)}, {_machine(d)}, {d['threads']} threads, {d['family']}, {d['context']} tokens in the KV cache; "
            f"memory bandwidth {d['bandwidth GB/s']:.1f} GB/s (a sum over 512 MB); bandwidth time: the weights' bytes "
            f"over it\n\n```bash\n{d['command']}\n```\n\n" + _markdown(out))


def render_time_split(path) -> str:
    """benchmarks/time_split.py: each member's share of the cascade's wall time, default against compiled."""
    d = _json(path)
    rows = pd.DataFrame(d["rows"])
    names = [c[:-2] for c in rows.columns if c.endswith(" %") and c != "rest %" and rows[f"{c[:-2]} calls"].sum() > 0]
    out = pd.DataFrame({"dtype": rows["dtype"], "members": rows["members"],
                        "tokens/s": rows["tokens/s"].map(lambda v: f"{v:.1f}"),
                        "x default": (rows["wall s"].groupby(rows["dtype"]).transform("first") / rows["wall s"]).map(_x),
                        **{f"{n}: % of time (ms/call)": [f"{p:.0f} % ({ms:.1f})" if c else "-" for p, ms, c in
                                                         zip(rows[f"{n} %"], rows[f"{n} ms/call"], rows[f"{n} calls"])]
                           for n in names},
                        "rest %": rows["rest %"].map(lambda v: f"{v:.0f}"),
                        "x if drafters were free": rows["x if drafters were free"].map(_x),
                        "same output as default": rows["same output as default"],
                        "graphs compiled while timed": rows["graphs compiled while timed"]})
    return (f"{_day(d)}, {_machine(d)}, {d['threads']} threads, {d['family']}, {d['max_new_tokens']} new tokens\n\n"
            f"```bash\n{d['command']}\n```\n\n" + _markdown(out))


def render_ratios(paths, ratios) -> str:
    """Speed ratios of speed.py runs, per dtype (a later run's dtype replaces an earlier's): (label, slower
    method, faster method) -> the slower's wall time over the faster's on the same prompts."""
    runs = {r["dtype"]: {x["method"]: x["wall s"] for x in r["rows"]}
            for path in ([paths] if isinstance(paths, str) else paths) for r in _json(path)["runs"]}
    out = pd.DataFrame({"": [r[0] for r in ratios],
                        **{dt: [f"{w[slow] / w[fast]:.2f}x" for _, slow, fast in ratios] for dt, w in runs.items()}})
    return _markdown(out)


#: speed.py --prepack both: packed against eager
PREPACK_RATIOS = [("HF greedy, packed / eager", "HF greedy (eager)", "HF greedy"), ("CSD, packed / eager", "CSD (eager)", "CSD"),
                  ("CSD packed / HF greedy packed", "HF greedy", "CSD"), ("CSD eager / HF greedy packed", "HF greedy", "CSD (eager)"),
                  ("CSD packed / HF greedy eager", "HF greedy (eager)", "CSD")]
#: speed.py --kv-cache both --compile: compiled and static-cache members against the (packed, dynamic-cache) default
COMPILED_RATIOS = [("CSD compiled / CSD", "CSD", "CSD (compiled)"),
                   ("CSD static cache / CSD", "CSD", "CSD (static cache)"),
                   ("HF greedy static cache / HF greedy", "HF greedy", "HF greedy (static cache)"),
                   ("CSD compiled / HF greedy", "HF greedy", "CSD (compiled)"),
                   ("CSD compiled / HF greedy static cache", "HF greedy (static cache)", "CSD (compiled)")]


SPEED = "python benchmarks/speed.py --prompts 50 --max-new-tokens 128 --threads 2 --recalibrate --peers default"
SMOLLM2_SPEED = f"{SPEED} --family smollm2"
#: Spec-Bench on smollm2 in bfloat16, packed: 20 questions per group (MT-bench's two turns each), without AR
#: (HF greedy is the baseline), SD(small) and HF assisted(mid) (the slower of each pair on GSM8K), to fit in two hours
SPEC_BENCH = ("python benchmarks/speed.py --family smollm2 --dataset spec-bench --per-category 20 --max-new-tokens 128 "
              "--threads 2 --peers default --tree off --copies-only --skip 'AR,SD(small),HF assisted(mid)' "
              "--max-seconds 7200 --dtypes bfloat16 --out data/results/spec-bench-smollm2-bfloat16-packed")
#: packed against eager on smollm2, both dtypes: the methods of the README's table but SD(small) and
#: HF assisted(mid) (the slower of each pair there), plus eager HF greedy and eager CSD
PREPACK_SPEED = ("python benchmarks/speed.py --family smollm2 --prompts 20 --max-new-tokens 128 --threads 2 --recalibrate "
                 "--peers default --tree off --prepack both --skip 'AR,SD(small),HF assisted(mid)' "
                 "--dtypes bfloat16,float32 --out data/results/speed-smollm2-prepack")
#: every member compiled (static caches, inductor's freezing, packed layers kept) against the default, both
#: dtypes; the warm-up runs 3 prompts so that the fed lengths the run needs compile before it is timed
COMPILED_SPEED = ("python benchmarks/speed.py --family smollm2 --prompts 20 --max-new-tokens 128 --threads 2 "
                  "--peers default --tree off --kv-cache both --compile --warmup-prompts 3 "
                  "--skip 'AR,SD(small),HF assisted(mid)' --dtypes float32,bfloat16 --out data/results/speed-smollm2-compiled")
#: its bfloat16 half again, the compiled methods warmed up on every prompt: in the run above one graph compiled
#: while CSD (compiled) was timed in bfloat16 (float32: none)
COMPILED_SPEED_BF16 = COMPILED_SPEED.replace("--warmup-prompts 3", "--warmup-prompts 20").replace(
    "--dtypes float32,bfloat16 --out data/results/speed-smollm2-compiled",
    "--dtypes bfloat16 --out data/results/speed-smollm2-compiled-bfloat16")
#: Spec-Bench in float32 (packed linear layers, the default since 2026-12-06): SD(small) left out too, to fit
SPEC_BENCH_FLOAT32 = ("python benchmarks/speed.py --family smollm2 --dataset spec-bench --per-category 20 "
                      "--max-new-tokens 128 --threads 2 --peers default --tree off --copies-only "
                      "--skip 'AR,SD(small),HF assisted(mid)' --max-seconds 5400 --dtypes float32 "
                      "--out data/results/spec-bench-smollm2-float32")
#: Spec-Bench in float32 on smollm2-general (drafters distilled on the target's own requests and GSM8K, its
#: default tuned on requests: MaG's 3 tokens), with MaG's long copies; the neural SDs and HF assisted left out, to fit
SPEC_BENCH_GENERAL_FLOAT32 = ("python benchmarks/speed.py --family smollm2-general --dataset spec-bench --per-category 20 "
                              "--max-new-tokens 128 --threads 2 --peers default --tree off --mag-copy 10 "
                              "--skip 'AR,SD(mid),SD(small),SD(MaG copies,HF assisted' --max-seconds 4500 --dtypes float32 "
                              "--out data/results/spec-bench-smollm2-general-float32")
SPEC_BENCH_GENERAL_FLOAT32_PEERS = ("python benchmarks/speed.py --family smollm2-general --dataset spec-bench --per-category 20 "
                                    "--max-new-tokens 128 --threads 2 --peers default --tree off "
                                    "--skip 'AR,SD(mid),SD(small),HF assisted(mid)' --max-seconds 6600 "
                                    "--dtypes float32 --out data/results/spec-bench-smollm2-general-float32-peers")
TABLES = [
    Table("speed-gsm8k-tiny", ("docs/benchmarks.md",), "data/results/speed-gsm8k-tiny/speed.json",
          (f"{SPEED} --family gsm8k-tiny --out data/results/speed-gsm8k-tiny",), render_speed, 15),
    Table("speed-gsm8k-base", ("docs/benchmarks.md",), "data/results/speed-gsm8k-base/speed.json",
          (f"{SPEED} --family gsm8k-base --out data/results/speed-gsm8k-base",), render_speed, 40),
    Table("trees-wall-clock", ("docs/trees.md",), "data/results/speed-gsm8k-base/speed.json",
          (), render_speed_summary),
    Table("trees-budget-wall-clock", ("docs/trees.md",), "data/results/speed-gsm8k-base-tree-budget/speed.json",
          ("python benchmarks/speed.py --prompts 30 --max-new-tokens 128 --threads 2 --recalibrate --peers default "
           "--family gsm8k-base --tree 4:0:2 --out data/results/speed-gsm8k-base-tree-budget",), render_speed_summary, 20),
    Table("readme-speed", ("README.md",), "data/results/speed-gsm8k-tiny/speed.json", (),
          lambda _: render_headline(HEADLINE)),
    Table("csd-run", ("docs/experiments.md",), "data/results/csd-run-gsm8k-tiny/gsm8k-dev-n100-t128.csv",
          (CSD_RUN,), render_csd_run, 8),
    Table("tree-tokens", ("docs/trees.md",), "data/results/tree-gsm8k-base/tree.csv",
          ("python benchmarks/tree.py --family gsm8k-base --prompts 50 --max-new-tokens 128 --threads 2 "
           "--out data/results/tree-gsm8k-base",), render_tree_tokens, 10),
    Table("acceptance", ("docs/families.md",), "data/results/acceptance-gsm8k-tiny/acceptance.json",
          ("python benchmarks/acceptance_sampling.py --prompts 8 --out data/results/acceptance-gsm8k-tiny",),
          render_acceptance, 3),
    Table("overhead", ("docs/benchmarks.md",), "data/results/overhead/overhead.json",
          ("python benchmarks/overhead.py --threads 2 --out data/results/overhead",), render_overhead, 2),
    Table("notebook-times", ("docs/notebooks.md",), "data/results/notebook-times/notebook_times.json",
          ("python benchmarks/notebook_times.py --out data/results/notebook-times",), render_notebook_times, 4),
    Table("ties", ("docs/half-precision.md",), "data/results/ties-gsm8k-base/ties.json",
          ("python benchmarks/ties.py --family gsm8k-base --dtype bfloat16 --prompts 50 --threads 1 "
           "--out data/results/ties-gsm8k-base",), render_ties, 20),
    Table("dtype-cost", ("docs/half-precision.md",), "data/results/dtype-cost-gsm8k-base/latency.json",
          tuple(f"csd calibrate --family gsm8k-base --dtype {dt} --threads 2 --force --out "
                f"data/results/dtype-cost-gsm8k-base/latency.json --note 'csd calibrate --family gsm8k-base "
                f"--dtype float32|bfloat16 --threads 2 --force --out data/results/dtype-cost-gsm8k-base/latency.json'"
                for dt in ("float32", "bfloat16")), render_dtype_cost, 2),
    Table("dtype-speed", ("docs/half-precision.md",), "data/results/speed-gsm8k-base-bfloat16/speed.json",
          ("python benchmarks/speed.py --prompts 50 --max-new-tokens 128 --threads 2 --recalibrate --peers default "
           "--family gsm8k-base --dtypes bfloat16 --max-seconds 1200 --out data/results/speed-gsm8k-base-bfloat16",),
          lambda _: render_dtype_speed(["data/results/speed-gsm8k-base/speed.json",
                                        "data/results/speed-gsm8k-base-bfloat16/speed.json"]), 20),
    Table("speed-smollm2-bfloat16", ("docs/benchmarks.md", "data/models/smollm2/README.md"),
          "data/results/speed-smollm2-bfloat16/speed.json", (f"{SMOLLM2_SPEED} --dtypes bfloat16 --out "
                                                            "data/results/speed-smollm2-bfloat16",), render_speed, 40),
    Table("speed-smollm2-bfloat16-round2", ("data/models/smollm2/README.md",),
          "data/results/speed-smollm2-bfloat16-round2/speed.json",
          (f"{SMOLLM2_SPEED} --dtypes bfloat16 --tree 3:0:3 --max-seconds 1260 --out "
           "data/results/speed-smollm2-bfloat16-round2",), render_speed, 22),
    Table("speed-smollm2-float32", ("docs/benchmarks.md", "data/models/smollm2/README.md"),
          "data/results/speed-smollm2-float32/speed.json", (f"{SMOLLM2_SPEED} --dtypes float32 --out "
                                                          "data/results/speed-smollm2-float32",), render_speed, 55),
    Table("smollm2-drafters", ("data/models/smollm2/README.md",), "data/models/smollm2/mid/training.json",
          ("csd train --family smollm2",), render_drafters, 60),
    Table("smollm2-dtypes", ("docs/real-target.md",), "data/results/speed-smollm2-bfloat16/speed.json", (),
          lambda _: render_dtypes(["data/results/speed-smollm2-bfloat16/speed.json",
                                   "data/results/speed-smollm2-float32/speed.json"])),
    Table("smollm2-cost", ("data/models/smollm2/README.md",), "data/results/dtype-cost-smollm2/latency.json",
          tuple(f"csd calibrate --family smollm2 --dtype {dt} --threads 2 --force --out "
                f"data/results/dtype-cost-smollm2/latency.json --note 'csd calibrate --family smollm2 "
                f"--dtype float32|bfloat16 --threads 2 --force --out data/results/dtype-cost-smollm2/latency.json'"
                for dt in ("float32", "bfloat16")), render_dtype_cost, 3),
    Table("spec-bench-smollm2-bfloat16", ("docs/spec-bench.md",),
          "data/results/spec-bench-smollm2-bfloat16-packed/speed.json", (SPEC_BENCH,), render_spec_bench, 95),
    Table("spec-bench-smollm2-float32", ("docs/spec-bench.md",), "data/results/spec-bench-smollm2-float32/speed.json",
          (SPEC_BENCH_FLOAT32,), render_spec_bench, 90),
    Table("spec-bench-smollm2-general-float32", ("docs/spec-bench.md",),
          "data/results/spec-bench-smollm2-general-float32/speed.json", (SPEC_BENCH_GENERAL_FLOAT32,), render_spec_bench, 80),
    Table("spec-bench-smollm2-general-float32-peers", ("docs/spec-bench.md",),
          "data/results/spec-bench-smollm2-general-float32-peers/speed.json", (SPEC_BENCH_GENERAL_FLOAT32_PEERS,),
          render_spec_bench, 85),
    Table("spec-bench-smollm2-general-float32-suffix", ("docs/spec-bench.md",),
          "data/results/spec-bench-smollm2-general-float32-suffix/speed.json",
          ("python benchmarks/speed.py --family smollm2-general --dataset spec-bench --per-category 20 "
           "--max-new-tokens 128 --threads 2 --recalibrate --peers default --tree off "
           "--skip 'AR,SD(mid),SD(small),SD(MaG),HF assisted,SD(SuffixDecoding' --max-seconds 6000 "
           "--dtypes float32 --out data/results/spec-bench-smollm2-general-float32-suffix",), render_spec_bench, 60),
    Table("long-prompts-smollm2-bfloat16", ("docs/spec-bench.md",),
          "data/results/long-prompts-smollm2-bfloat16/long_prompts.json",
          ("python benchmarks/long_prompts.py --family smollm2 --dtype bfloat16 --lengths 1000,2000,4000 --threads 2 "
           "--out data/results/long-prompts-smollm2-bfloat16",), render_long_prompts, 2),
    Table("forward-cost-smollm2", ("docs/forward-cost.md",), "data/results/forward-cost-smollm2/forward_cost.json",
          ("python benchmarks/forward_cost.py --family smollm2 --dtypes float32,bfloat16 --threads 2 "
           "--out data/results/forward-cost-smollm2",), render_forward_cost, 3),
    Table("forward-cost-smollm2-compiled", ("docs/forward-cost.md",),
          "data/results/forward-cost-smollm2-compiled/forward_cost.json",
          ("python benchmarks/forward_cost.py --family smollm2 --dtypes float32,bfloat16 --fed 1 --threads 2 --compiled "
           "--out data/results/forward-cost-smollm2-compiled",), render_forward_cost, 5),
    Table("forward-cost-smollm2-static", ("docs/forward-cost.md",),
          "data/results/forward-cost-smollm2-static/forward_cost.json",
          ("python benchmarks/forward_cost.py --family smollm2 --dtypes float32,bfloat16 --fed 1,2,4,8 --threads 2 --static "
           "--out data/results/forward-cost-smollm2-static",), render_forward_cost, 1),
    Table("forward-cost-smollm2-static-compiled", ("docs/forward-cost.md",),
          "data/results/forward-cost-smollm2-static-compiled/forward_cost.json",
          ("python benchmarks/forward_cost.py --family smollm2 --dtypes float32,bfloat16 --fed 1,4 --threads 2 --static "
           "--compiled --out data/results/forward-cost-smollm2-static-compiled",), render_forward_cost, 5),
    Table("speed-smollm2-prepack", ("docs/forward-cost.md",), "data/results/speed-smollm2-prepack/speed.json",
          (PREPACK_SPEED,), render_speed, 45),
    Table("prepack-summary", ("docs/forward-cost.md",), "data/results/speed-smollm2-prepack/speed.json", (),
          lambda path: render_ratios(path, PREPACK_RATIOS)),
    Table("speed-smollm2-compiled", ("docs/forward-cost.md",), "data/results/speed-smollm2-compiled/speed.json",
          (COMPILED_SPEED,), lambda path: render_speed(path, dtypes=("float32",)), 50),
    Table("speed-smollm2-compiled-bfloat16", ("docs/forward-cost.md",),
          "data/results/speed-smollm2-compiled-bfloat16/speed.json", (COMPILED_SPEED_BF16,), render_speed, 25),
    Table("compiled-summary", ("docs/forward-cost.md",), "data/results/speed-smollm2-compiled-bfloat16/speed.json", (),
          lambda path: render_ratios(["data/results/speed-smollm2-compiled/speed.json", path], COMPILED_RATIOS)),
    Table("speed-gsm8k-tiny-compiled", ("docs/forward-cost.md",), "data/results/speed-gsm8k-tiny-compiled/speed.json",
          ("python benchmarks/speed.py --family gsm8k-tiny --prompts 20 --max-new-tokens 128 --threads 2 --peers default "
           "--tree off --kv-cache both --compile --warmup-prompts 20 --dtypes float32 "
           "--out data/results/speed-gsm8k-tiny-compiled",), render_speed, 10),
    Table("time-split-smollm2", ("docs/forward-cost.md",), "data/results/time-split-smollm2/time_split.json",
          ("python benchmarks/time_split.py --family smollm2 --dtypes float32,bfloat16 --prompts 8 --threads 2 "
           "--out data/results/time-split-smollm2",), render_time_split, 20),
    Table("ladder-smollm2", ("docs/ladder.md", "data/models/smollm2/README.md"), "data/results/ladder-smollm2/ladder.json",
          ("python benchmarks/ladder.py --family smollm2 --prompts 50 --threads 2",), render_ladder, 6),
    Table("grow-sweep-smollm2", ("docs/ladder.md",), "data/results/grow-sweep-smollm2/sweep.json",
          ("python benchmarks/grow_sweep.py --threads 2 --points 'layers=8;layers=8,questions=512;layers=4'",),
          render_grow_sweep, 100),
    Table("grow-sweep-smollm2-6144", ("docs/ladder.md",), "data/results/grow-sweep-smollm2-6144/sweep.json",
          ("python benchmarks/grow_sweep.py --threads 2 --points "
           "'questions=6144,dtype=bfloat16,max_new_tokens=256,autocast=bfloat16,epochs=2' "
           "--out data/results/grow-sweep-smollm2-6144",), render_grow_sweep, 120),
    Table("speed-smollm2-ladder", ("docs/ladder.md",), "data/results/speed-smollm2-ladder-float32/speed.json",
          ("python benchmarks/speed.py --family smollm2 --prompts 50 --max-new-tokens 128 --threads 2 --recalibrate "
           "--peers default --tree off --dtypes float32 --arctic off --skip "
           "'AR,SD(mid),SD(small),SD(MaG),HF assisted(mid),HF assisted(small),CSD (MaG' --max-seconds 1560 "
           "--out data/results/speed-smollm2-ladder-float32",), render_speed, 30),
    Table("gpu-cost", ("docs/half-precision.md",), "data/results/gpu-h200-2026-11-29/latency-gsm8k-base.json", (),
          lambda _: render_gpu_cost(["data/results/gpu-h200-2026-11-29/latency-gsm8k-base.json",
                                     "data/results/gpu-h200-2026-11-29/latency-gsm8k-tiny.json"])),
]


#: figures drawn from results files: (png, results, draw(results, png)); redrawn with the tables, not --check'd
FIGURES = [("figures/spec-bench-smollm2.png", "data/results/spec-bench-smollm2-bfloat16-packed/speed.json", draw_spec_bench),
           ("figures/spec-bench-smollm2-float32.png", "data/results/spec-bench-smollm2-float32/speed.json",
            draw_spec_bench),
           ("figures/spec-bench-smollm2-general-float32.png",
            "data/results/spec-bench-smollm2-general-float32/speed.json", draw_spec_bench),
           ("figures/spec-bench-smollm2-general-float32-peers.png",
            "data/results/spec-bench-smollm2-general-float32-peers/speed.json", draw_spec_bench),
           ("figures/spec-bench-smollm2-general-float32-suffix.png",
            "data/results/spec-bench-smollm2-general-float32-suffix/speed.json", draw_spec_bench)]


def marked(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- table {re.escape(name)}: benchmarks/tables.py writes this -->\n)(.*?)"
                      rf"(\n<!-- /table {re.escape(name)} -->)", re.S)


def rewrite(tables, check: bool = False) -> list[str]:
    """Write each table into its pages; returns the pages that were (or, with check, would be) changed."""
    changed = []
    for t in tables:
        text = t.render(t.results)
        for page in t.pages:
            path = ROOT / page
            old = path.read_text()
            pattern = marked(t.name)
            if not pattern.search(old):
                raise SystemExit(f"{page}: no markers for table {t.name!r}")
            new = pattern.sub(lambda m: m.group(1) + text + m.group(3), old)
            if new != old:
                changed.append(f"{page} ({t.name})")
                if not check:
                    path.write_text(new)
    return changed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--measure", nargs="+", default=[], metavar="NAME", help="run these tables' commands first (all: every one)")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page is not up to date")
    p.add_argument("--list", action="store_true", help="list the tables")
    args = p.parse_args(argv)
    names = {t.name for t in TABLES}
    if args.list:
        for t in TABLES:
            print(f"{t.name}: {', '.join(t.pages)} <- {t.results}" + "".join(f"\n    {c}" for c in t.commands))
        return 0
    todo = [t for t in TABLES if "all" in args.measure or t.name in args.measure]
    unknown = set(args.measure) - names - {"all"}
    if unknown:
        raise SystemExit(f"--measure: unknown table(s) {sorted(unknown)}; known: {sorted(names)}")
    for t in todo:
        for command in t.commands:
            print(f"[{t.name}] {command}  (about {t.minutes:g} min)", flush=True)
            subprocess.run(shlex.split(command), cwd=ROOT, check=True)
    changed = rewrite(TABLES, check=args.check)
    if not args.check:
        for png, results, draw in FIGURES:
            draw(results, png)
            print(f"figure: {png}")
    print(("out of date: " if args.check else "rewritten: ") + (", ".join(changed) or "nothing"))
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
