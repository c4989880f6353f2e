"""What `csd run` prints and writes once it has measured: the table in the terminal (`TERMINAL_COLUMNS`,
or every column with `--wide`), the full table as `<name>.md` / `.csv`, the figure, the audit of every
output against AR's, and Spec-Bench's layout per group. `csdlib.commands.cmd_run` calls `report_run`."""

from __future__ import annotations

from pathlib import Path

#: what `csd run` on a trained family suggests next (docs/real-target.md)
SMOLLM2_RUN = "csd run --family smollm2 --dtype {dtype} --n-samples 20"


def smollm2_run() -> str:
    """The real target's command for this CPU: bfloat16 where it has bf16 units (AMX-BF16, AVX512-BF16; 8 tokens
    verify for about the price of one there), else float32 (bfloat16 without them is slower, never suggested)."""
    from .precision import cpu_isa

    return SMOLLM2_RUN.format(dtype="bfloat16" if cpu_isa() in ("AMX-BF16", "AVX512-BF16") else "float32")
#: the columns of the terminal table (`--wide`: all; the .md and .csv files always have all)
TERMINAL_COLUMNS = ["samples", "SWI parameters", "wall speedup", "tokens/target call",
                    "acceptance per level", "audit i/t/W"]


def table(summary, tablefmt: str = "simple", columns=None) -> str:
    """A summary DataFrame as an aligned text table, numbers rounded to 2 decimals: `simple` for the
    terminal (headers broken over two lines and acceptance written ``0.16/0.65`` to keep it narrow;
    `columns`: which to show), `github` for a markdown file."""
    import numpy as np
    from tabulate import tabulate

    def cell(v):
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        if v is None or (isinstance(v, float) and v != v):
            return None
        return v.replace(" / ", "/") if tablefmt == "simple" and isinstance(v, str) else v

    if columns is not None:
        summary = summary[[c for c in columns if c in summary.columns]]
    headers = ["method", *summary.columns]
    if tablefmt == "simple":
        headers = [h.replace(" ", "\n", 1) for h in headers]
    rows = [[method, *map(cell, row)] for method, row in zip(summary.index, summary.itertuples(index=False))]
    return tabulate(rows, headers=headers, tablefmt=tablefmt, floatfmt=".2f", missingval="-")

def report_run(args, out: Path, name: str, hashes, prompts, device, processes: int, warning, groups=None) -> int:
    """The summary of this run's records: printed (`TERMINAL_COLUMNS`, or all with --wide), written in
    full to `<name>.md` / `.csv`, drawn to `<name>.png`; exit status 1 if an output is WRONG (differs from
    AR's other than at a tie of the target's own logits: `csdlib.precision`). `groups` (sample id ->
    Spec-Bench group) adds Spec-Bench's layout: printed, `<name>-groups.md` / `.csv`, `<name>-groups.png`."""
    import platform

    import torch

    from .experiment import divergences, summarize
    from .precision import describe
    from .records import load_results

    df = load_results(out)
    df = df[df["config_hash"].isin(hashes) & df["sample_id"].isin([str(i) for i, _ in prompts])]
    summary = summarize(df)
    machine = f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}, {device}"
    print(f"\n{len(prompts)} {args.dataset} {args.split} prompts, max_new_tokens={args.max_new_tokens}, "
          f"{processes} process(es); {machine}\n")
    print(table(with_audit_column(summary), columns=None if args.wide else TERMINAL_COLUMNS))
    checked = summary[["identical", "tie", "WRONG"]].dropna()
    ok = not checked["WRONG"].any()
    if len(checked):
        print(f"\naudit of every output against AR's (identical / tie of the target's logits / WRONG): "
              + describe(checked.sum().astype(int).to_dict()) + ("" if ok else ": WRONG outputs are bugs"))
        for _, r in divergences(df).iterrows():
            print(f"  {r['method']}, sample {r['sample_id']}: {r['exact']} at new token {r['exact_position']}"
                  + (f", margin {r['exact_margin']:.4g}" if r["exact_margin"] == r["exact_margin"] else ""))
    else:
        print("\noutputs not compared with AR's (no AR method among --methods, or sampling)")
    if groups is not None:
        _report_groups(df, groups, out, name, args, len(prompts))
    if warning:
        print(warning)
    summary.round(3).to_csv(out.with_suffix(".csv"))
    out.with_suffix(".md").write_text(table(summary, "github") + "\n" + (f"\n{warning}\n" if warning else ""))
    if not args.no_figure:
        _figure(summary, Path(args.figures_dir or args.results_dir) / f"{name}.png", f"{name} ({len(prompts)} prompts)")
    print(f"records: {out} (the full table: {out.with_suffix('.md').name}, {out.with_suffix('.csv').name})")
    if args.target is None and getattr(args, "family", None) in (None, "gsm8k-tiny", "gsm8k-base"):
        print(f"\nthe real target, SmolLM2-135M-Instruct (fetched from PyPI on first use, drafters distilled for it): "
              f"{smollm2_run()}")
    return 0 if ok else 1


def _report_groups(df, groups: dict, out: Path, name: str, args, n: int) -> None:
    """Spec-Bench's layout of a run's records: speedup over AR per group, overall, mean accepted tokens."""
    import pandas as pd

    from .experiment import by_group, configurations

    turns = pd.concat([g.assign(method=label) for label, g in configurations(df)])
    turns = turns.assign(group=turns["sample_id"].map(groups))
    grouped = by_group(turns[["method", "sample_id", "group", "wall_s", "new_tokens", "target_calls"]], "AR")
    print("\nSpec-Bench's layout: speedup over AR on the same prompts per group (tokens per second, summed over "
          "its turns), overall, and mean tokens per target forward:\n")
    print(table(grouped))
    grouped.round(3).to_csv(out.with_name(f"{name}-groups.csv"))
    out.with_name(f"{name}-groups.md").write_text(table(grouped, "github") + "\n")
    if not args.no_figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from .plots import speedup_by_group

        path = Path(args.figures_dir or args.results_dir) / f"{name}-groups.png"
        plt.close(speedup_by_group(grouped, path, title=f"{name} ({n} prompts): speedup over AR per Spec-Bench group"))
        print(f"figure: {path}")


def with_audit_column(summary):
    """The summary with the audit's three counts in one narrow column, "identical/tie/WRONG"."""
    if "WRONG" not in summary:
        return summary
    counts = summary[["identical", "tie", "WRONG"]]
    text = [None if row.isna().any() else "/".join(str(int(v)) for v in row) for _, row in counts.iterrows()]
    return summary.assign(**{"audit i/t/W": text})


def _figure(summary, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import speedup_bars

    plt.close(speedup_bars(summary, path, title=title))
    print(f"figure: {path}")
