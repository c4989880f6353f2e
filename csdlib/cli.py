"""`csd` command line: the main experiment (AR vs SD vs CSD) and the seed's config dicts.

    csd run                                   # the embedded default (gsm8k-tiny) on GSM8K dev prompts
    csd run --n-samples 50 --max-new-tokens 96
    csd run --target DIR --drafter DIR --drafter DIR --bigram FILE --k-matrix '[[..]]'   # your models
    accelerate launch --num_processes 2 -m csdlib.cli run ...   # prompts sharded across processes
    csd seed-config config.json --model-path NAME=DIR --bigram FILE    # one of the seed's config dicts

`csd run` runs AR, SD with each drafter alone (mid, small, MaG) and CSD with all of them on the same
prompts in one process (per shard), checks that every method's output equals AR's, prints a table
(SWI under each cost table, wall-clock speedup, tokens/s, tokens per target call, acceptance per level)
and writes the per-sample records (`<name>.jsonl`, resumable), the table (`<name>.md`, `<name>.csv`)
under `data/results/` and a figure under `figures/`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

# torch, transformers, pandas and numpy are imported inside the functions that use them, so that
# `csd --help` answers at once (tests/test_cli.py checks that it imports none of them).

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Family:
    """What `csd run` needs: tokenizer, target, drafters (largest first, MaG last), k-matrix, lenience."""
    tokenizer: object
    target: object
    drafters: list
    k_matrix: list
    lenience: float


def _dtype(name: str | None):
    import torch

    return None if name is None else getattr(torch, name)


def load_family(args, device) -> Family:
    """The models named on the command line, else the embedded default `csdlib.zoo.load()`."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoConfig, AutoTokenizer

    from .mag import BigramTable, MaG
    from .models import HFModel, quiet_loading

    if args.target is None:
        from . import zoo

        fam = zoo.load()
        for m in [fam.target, *fam.drafters]:
            if hasattr(m, "model"):
                m.model.to(device)
        k = json.loads(args.k_matrix) if args.k_matrix else fam.k_matrix
        lenience = args.lenience if args.lenience is not None else fam.lenience
        return Family(fam.tokenizer, fam.target, list(fam.drafters), k, lenience)
    if not args.drafter or not args.k_matrix:
        raise SystemExit("csd run: --target needs --drafter (one or more) and --k-matrix")

    def hf(path, **kw):
        auto = AutoModelForSeq2SeqLM if AutoConfig.from_pretrained(path).is_encoder_decoder else AutoModelForCausalLM
        kw = {k: v for k, v in kw.items() if v is not None}
        with quiet_loading():
            model = auto.from_pretrained(path, dtype=_dtype(args.dtype), **kw).eval()
        return model if "device_map" in kw else model.to(device)

    target = HFModel(hf(args.target, device_map=args.device_map), name=Path(args.target).name)
    drafters = [HFModel(hf(p), name=Path(p).name) for p in args.drafter]
    if args.bigram:
        drafters.append(MaG(BigramTable.load(args.bigram, vocab_size=target.vocab_size), k=args.mag_k))
    tok = AutoTokenizer.from_pretrained(args.tokenizer or args.target)
    return Family(tok, target, drafters, json.loads(args.k_matrix), args.lenience or 1.0)


def dataset_texts(dataset: str, split: str, data_dir, n: int) -> list[str]:
    from . import datasets as ds

    if dataset == "gsm8k":
        return [ds.gsm8k_prompt(x["question"]) for x in ds.load_gsm8k(split, data_dir)[:n]]
    items = ds.sampled_mmlu(data_dir=data_dir) if dataset == "sampled_mmlu" else ds.load_mmlu(split, data_dir)
    return [ds.mmlu_prompt(x) for x in items[:n]]


def table(summary, tablefmt: str = "simple") -> str:
    """A summary DataFrame as an aligned text table, numbers rounded to 2 decimals: `simple` for the
    terminal (headers broken over two lines to keep it narrow), `github` for a markdown file."""
    import numpy as np
    from tabulate import tabulate

    def cell(v):
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        if v is None or (isinstance(v, float) and v != v):
            return None
        return v

    headers = ["method", *summary.columns]
    if tablefmt == "simple":
        headers = [h.replace(" ", "\n", 1) for h in headers]
    rows = [[method, *map(cell, row)] for method, row in zip(summary.index, summary.itertuples(index=False))]
    return tabulate(rows, headers=headers, tablefmt=tablefmt, floatfmt=".2f", missingval="-")


def plot(summary, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swi_cols = [c for c in summary.columns if c.startswith("SWI ")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    summary[swi_cols].plot.bar(ax=axes[0], rot=0)
    axes[0].set_ylabel("SWI (x AR)")
    axes[0].axhline(1, color="grey", lw=0.8)
    axes[0].set_title("cost-model speedup")
    if "wall speedup" in summary:
        summary["wall speedup"].plot.bar(ax=axes[1], rot=0, color="tab:gray")
        axes[1].axhline(1, color="grey", lw=0.8)
        axes[1].set_title("wall-clock speedup (this machine)")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_run(args) -> int:
    import torch
    from accelerate import PartialState

    from .cost import measure_costs
    from .experiment import config_hash, load_results, merge_shards, run, shard_path, standard_methods, summarize

    torch.set_num_threads(args.threads)
    on_cpu = args.device == "cpu" or (args.device is None and not torch.cuda.is_available())
    state = PartialState(cpu=on_cpu)           # cpu=True: several CPU processes talk over gloo
    device = state.device if args.device is None else torch.device(args.device)
    fam = load_family(args, device)
    texts = dataset_texts(args.dataset, args.split, args.data_dir, args.n_samples)
    prompts = [(i, fam.tokenizer(t)["input_ids"]) for i, t in enumerate(texts)]
    methods = standard_methods(fam.drafters, k_matrix=fam.k_matrix, lenience=fam.lenience, sd_k=args.sd_k)
    if args.methods:
        methods = [m for m in methods if m.name in args.methods]
    measured = measure_costs([fam.target, *fam.drafters], prompts[0][1]) if prompts else None
    name = args.name or f"{args.dataset}-{args.split}-n{args.n_samples}-t{args.max_new_tokens}"
    out = Path(args.results_dir) / f"{name}.jsonl"
    sharded = state.num_processes > 1
    with state.split_between_processes(prompts) as mine:
        run(fam.target, methods, mine, out=shard_path(out, state.process_index) if sharded else out,
            read_from=out, max_new_tokens=args.max_new_tokens, dataset=args.dataset, measured_costs=measured,
            warmup=args.warmup, progress=state.is_local_main_process and not args.quiet,
            tags={"process_index": state.process_index, "num_processes": state.num_processes})
    state.wait_for_everyone()
    if not state.is_main_process:
        return 0
    if sharded:
        merge_shards(out)
    hashes = {config_hash(fam.target, m, args.dataset, args.max_new_tokens) for m in methods}
    df = load_results(out)
    df = df[df["config_hash"].isin(hashes) & df["sample_id"].isin([str(i) for i, _ in prompts])]
    summary = summarize(df)
    machine = f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}, {device}"
    print(f"\n{len(prompts)} {args.dataset} {args.split} prompts, max_new_tokens={args.max_new_tokens}, "
          f"{state.num_processes} process(es); {machine}\n")
    print(table(summary))
    ok = bool(summary["equals AR"].dropna().all())
    print(f"\nevery method's output equals AR's on every sample: {'yes' if ok else 'NO'}")
    summary.round(3).to_csv(out.with_suffix(".csv"))
    out.with_suffix(".md").write_text(table(summary, "github") + "\n")
    if not args.no_figure:
        figure = Path(args.figures_dir) / f"{name}.png"
        plot(summary, figure, f"{name} ({len(prompts)} prompts)")
        print(f"figure: {figure}")
    print(f"records: {out}")
    return 0 if ok else 1


def cmd_seed_config(args) -> int:
    import torch

    from .compat import run_config
    from .experiment import summarize

    torch.set_num_threads(args.threads)
    config = json.loads(Path(args.config).read_text())
    paths = dict(p.split("=", 1) for p in args.model_path)
    df = run_config(config, model_paths=paths, bigram_path=args.bigram, data_dir=args.data_dir,
                    n_samples=args.n_samples, out=args.out, max_new_tokens=args.max_new_tokens)
    print(table(summarize(df)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="csd", description="Cascade Speculative Drafting experiments")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="AR vs SD vs CSD on a dataset (default: the embedded gsm8k-tiny family)")
    r.add_argument("--n-samples", type=int, default=100, help="prompts (first n of the split; default 100)")
    r.add_argument("--max-new-tokens", type=int, default=128)
    r.add_argument("--dataset", choices=["gsm8k", "mmlu", "sampled_mmlu"], default="gsm8k")
    r.add_argument("--split", default="dev")
    r.add_argument("--data-dir", default=None, help="folder with gsm8k/ and mmlu/ (default: $CSD_DATA_DIR)")
    r.add_argument("--target", default=None, help="target model directory (default: the embedded family)")
    r.add_argument("--drafter", action="append", default=[], help="drafter directory, largest first (repeat)")
    r.add_argument("--bigram", default=None, help="bigram table: adds MaG as the last drafter")
    r.add_argument("--mag-k", type=int, default=10)
    r.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the target's)")
    r.add_argument("--k-matrix", default=None, help="JSON, e.g. '[[4, 2, 4], [0, 2, 4], [0, 0, 4]]'")
    r.add_argument("--lenience", type=float, default=None)
    r.add_argument("--sd-k", type=int, default=4, help="draft tokens of single-drafter SD (default 4)")
    r.add_argument("--methods", nargs="*", default=None, help="subset of AR, SD(<name>), CSD")
    r.add_argument("--dtype", default=None, help="e.g. float16, bfloat16, float64")
    r.add_argument("--device", default=None, help="default: cuda:<local rank> if available, else cpu")
    r.add_argument("--device-map", default=None, help='"auto" places a large target across GPUs')
    r.add_argument("--warmup", type=int, default=1, help="untimed generations per method first")
    r.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    r.add_argument("--name", default=None, help="results file stem")
    r.add_argument("--results-dir", default=str(ROOT / "data" / "results"))
    r.add_argument("--figures-dir", default=str(ROOT / "figures"))
    r.add_argument("--no-figure", action="store_true")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)
    s = sub.add_parser("seed-config", help="run one of the seed's config dicts (JSON file)")
    s.add_argument("config")
    s.add_argument("--model-path", action="append", default=[], help="NAME=DIR (repeat)")
    s.add_argument("--bigram", default=None)
    s.add_argument("--data-dir", default=None)
    s.add_argument("--n-samples", type=int, default=None)
    s.add_argument("--max-new-tokens", type=int, default=200)
    s.add_argument("--out", default=None)
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(func=cmd_seed_config)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
