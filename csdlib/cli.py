"""`csd` command line: the main experiment (AR vs SD vs CSD) and the seed's config dicts.

    csd run                                   # the embedded default (gsm8k-tiny) on GSM8K dev prompts
    csd run --n-samples 50 --max-new-tokens 96
    csd run --target DIR --drafter DIR --drafter DIR --bigram FILE --k-matrix '[[..]]'   # your models
    accelerate launch --num_processes 2 -m csdlib.cli run ...   # prompts sharded across processes
    csd seed-config config.json --model-path NAME=DIR --bigram FILE    # one of the seed's config dicts
    csd calibrate                             # latency model of the family's models on this machine
    csd tune                                  # choose the family's default cascade for wall clock
    csd tune --objective parameters --target DIR --drafter DIR --bigram FILE --out tuned.json

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
from pathlib import Path

# torch, transformers, pandas and numpy are imported inside the functions that use them, so that
# `csd --help` answers at once (tests/test_cli.py checks that it imports none of them).

from .errors import CSDValueError, MissingFileError

ROOT = Path(__file__).resolve().parent.parent


def _dtype(name: str | None):
    import torch

    if name is None:
        return None
    if not isinstance(getattr(torch, name, None), torch.dtype):
        raise CSDValueError(f"--dtype: expected a torch dtype such as float32, bfloat16, float64; got {name!r}")
    return getattr(torch, name)


def load_family(args, device):
    """The models named on the command line, else the embedded default `csdlib.zoo.load()`, as a
    `csdlib.zoo.Family` (`--k-matrix` / `--lenience` override the family's default cascade)."""
    from . import zoo

    k_matrix = _json_arg("--k-matrix", args.k_matrix)
    if args.target is None:
        fam = zoo.load(getattr(args, "family", None))
        for m in [fam.target, *fam.drafters]:
            if hasattr(m, "model"):
                m.model.to(device)
        fam.k_matrix = k_matrix or fam.k_matrix
        fam.lenience = args.lenience if args.lenience is not None else fam.lenience
        return fam
    if not args.drafter or not k_matrix:
        raise CSDValueError("--target: needs --drafter (one or more) and --k-matrix")
    return zoo.from_paths(args.target, args.drafter, bigram=args.bigram, mag_k=args.mag_k,
                          tokenizer=args.tokenizer, k_matrix=k_matrix, lenience=args.lenience or 1.0,
                          dtype=_dtype(args.dtype), device=device, device_map=args.device_map)


def _json_arg(flag: str, text):
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CSDValueError(f"{flag}: expected JSON, e.g. '[[4, 2], [0, 4]]'; got {text!r} ({e})") from None


def dataset_texts(dataset: str, split: str, data_dir, n: int) -> list[str]:
    from .datasets import prompt_texts

    return prompt_texts(dataset, split, data_dir, n)


def dataset_source(dataset: str, split: str) -> dict:
    """What identifies the prompts besides their token ids: dataset, split and template (record keys)."""
    from . import datasets as ds

    template = ds.GSM8K_TEMPLATE if dataset == "gsm8k" else ds.MMLU_TEMPLATE
    return {"split": split, "template": template}


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


def cmd_run(args) -> int:
    import torch
    from accelerate import PartialState

    from .latency import stored_latency
    from .experiment import measured_costs_for, run, standard_methods, summarize
    from .records import config_hash, environment, load_results, merge_shards, shard_path

    on_cpu = args.device == "cpu" or (args.device is None and not torch.cuda.is_available())
    state = PartialState(cpu=on_cpu)           # cpu=True: several CPU processes talk over gloo
    threads = args.threads or default_threads(state.num_processes)
    torch.set_num_threads(threads)
    device = state.device if args.device is None else torch.device(args.device)
    texts = dataset_texts(args.dataset, args.split, args.data_dir, args.n_samples)   # fails first, fast
    fam = load_family(args, device)
    prompts = [(i, fam.tokenizer(t)["input_ids"]) for i, t in enumerate(texts)]
    methods = standard_methods(fam.drafters, k_matrix=fam.k_matrix, lenience=fam.lenience, sd_k=args.sd_k)
    if args.methods:
        unknown = sorted(set(args.methods) - {m.name for m in methods})
        if unknown:
            raise CSDValueError(f"--methods: unknown {unknown}; expected some of {[m.name for m in methods]}")
        methods = [m for m in methods if m.name in args.methods]
    latency = stored_latency([fam.target, *fam.drafters], threads=threads)   # `csd calibrate` stores it
    name = args.name or f"{args.dataset}-{args.split}-n{args.n_samples}-t{args.max_new_tokens}"
    out = Path(args.results_dir) / f"{name}.jsonl"
    source = dataset_source(args.dataset, args.split)
    measured = None
    for turn in ("main", "others"):    # measured once (by the main process), then read by the others
        if prompts and state.is_main_process == (turn == "main"):
            measured = measured_costs_for([fam.target, *fam.drafters], prompts[0][1], out)
        state.wait_for_everyone()
    sharded = state.num_processes > 1
    with state.split_between_processes(prompts) as mine:
        run(fam.target, methods, mine, out=shard_path(out, state.process_index) if sharded else out,
            read_from=out, max_new_tokens=args.max_new_tokens, dataset=args.dataset, source=source,
            measured_costs=measured, latency=latency, warmup=args.warmup,
            progress=state.is_local_main_process and not args.quiet,
            tags={"process_index": state.process_index, "num_processes": state.num_processes})
    state.wait_for_everyone()
    if not state.is_main_process:
        return 0
    if sharded:
        merge_shards(out)
    env = environment(fam.target)
    hashes = {config_hash(fam.target, m, {"dataset": args.dataset, **source}, args.max_new_tokens, env)
              for m in methods}
    df = load_results(out)
    df = df[df["config_hash"].isin(hashes) & df["sample_id"].isin([str(i) for i, _ in prompts])]
    summary = summarize(df)
    machine = f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}, {device}"
    print(f"\n{len(prompts)} {args.dataset} {args.split} prompts, max_new_tokens={args.max_new_tokens}, "
          f"{state.num_processes} process(es); {machine}\n")
    print(table(summary))
    checked = summary["equals AR"].dropna()
    ok = bool(checked.all())
    if len(checked):
        print(f"\nevery method's output equals AR's on every sample: {'yes' if ok else 'NO'}")
    else:
        print("\noutputs not compared with AR's (no AR method among --methods, or sampling)")
    summary.round(3).to_csv(out.with_suffix(".csv"))
    out.with_suffix(".md").write_text(table(summary, "github") + "\n")
    if not args.no_figure:
        figure = Path(args.figures_dir) / f"{name}.png"
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from .plots import speedup_bars

        plt.close(speedup_bars(summary, figure, title=f"{name} ({len(prompts)} prompts)"))
        print(f"figure: {figure}")
    print(f"records: {out}")
    return 0 if ok else 1


def default_threads(processes: int = 1) -> int:
    """All cores, shared among the processes of a sharded run."""
    import os

    return max(1, (os.cpu_count() or 1) // max(1, processes))


def tuning_prompts(tokenizer, args) -> list[list[int]]:
    """GSM8K dev prompts from `--offset` on (default 250: apart from the first ones that `csd run` and the
    benchmarks measure on)."""
    from . import datasets as ds

    items = ds.load_gsm8k("dev", args.data_dir)[args.offset:args.offset + args.prompts]
    return [tokenizer(ds.gsm8k_prompt(x["question"]))["input_ids"] for x in items]


def cmd_calibrate(args) -> int:
    from . import zoo
    from .latency import calibrate_latency, default_latency_path

    threads = args.threads or default_threads()
    fam = zoo.load(args.family, path=args.family_path)
    lat = calibrate_latency([fam.target, *fam.drafters], path=args.out, threads=threads, force=args.force,
                            note=args.note, repeats=args.repeats, context=args.context)
    print(f"latency file: {args.out or default_latency_path()} ({threads} thread(s))")
    for name, v in lat.items():
        print(f"  {name:<8} one token {v['a1'] * 1e3:7.3f} ms; n >= 2 tokens: {v['a'] * 1e3:7.3f} ms "
              f"+ n x {v['b'] * 1e3:6.4f} ms")
    return 0


def cmd_tune(args) -> int:
    import time

    import torch

    from .cache import build_target_cache
    from .latency import calibrate_latency, default_latency_path, machine_id
    from .tuning import evaluate_cascade, optimize, save_default

    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    device = torch.device(args.device or "cpu")
    if args.target is None:
        from . import zoo

        fam = zoo.load(args.family, path=args.family_path)
        tok, target, drafters = fam.tokenizer, fam.target, list(fam.drafters)
        start, family_dir = (fam.k_matrix, fam.lenience), fam.path
    else:
        args.k_matrix = args.k_matrix or "[[1]]"
        fam = load_family(args, device)
        tok, target, drafters, start, family_dir = fam.tokenizer, fam.target, fam.drafters, None, None
        if args.k_matrix != "[[1]]":
            start = (json.loads(args.k_matrix), args.lenience or 1.0)
    prompts = tuning_prompts(tok, args)
    latency = None
    if args.objective == "latency":
        latency = calibrate_latency([target, *drafters], threads=threads, path=args.latency_file)
    cache = Path(args.cache or ROOT / "tmp" / f"target-cache-{fam.name if args.target is None else 'custom'}.jsonl")
    tic = time.perf_counter()
    cached = build_target_cache(target, prompts, args.max_new_tokens, cache)
    print(f"target cache: {cache} ({len(prompts)} prompts, {time.perf_counter() - tic:.1f} s)")
    tuned = optimize(cached, drafters, prompts, args.objective, n_trials=args.n_trials, k_max=args.k_max,
                     mag_k_max=args.mag_k_max, max_new_tokens=args.max_new_tokens, latency=latency, start=start,
                     seed=args.seed, timeout=args.timeout, progress=not args.quiet)
    n_run = sum(t.state.is_finished() for t in tuned.study.trials)      # not the queued starts left over
    print(f"{n_run} trials in {tuned.seconds:.1f} s ({threads} thread(s), {machine_id()})")
    if start is not None:
        before = evaluate_cascade(cached, drafters, prompts, *start, max_new_tokens=args.max_new_tokens,
                                  latency=latency)
        key = "predicted_speedup" if latency else None
        was = before[key] if key else before["swi"]["parameters"] if args.objective == "parameters" else None
        print(f"start: k_matrix={start[0]} lenience={start[1]:g}" + (f": {args.objective} {was:.3f}" if was else ""))
    print(f"best:  k_matrix={tuned.k_matrix} lenience={tuned.lenience:g} mag_k={tuned.mag_k}: "
          f"{args.objective} {tuned.value:.3f}")
    chosen_by = (f"csd tune --objective {args.objective} --prompts {args.prompts} --offset {args.offset} "
                 f"--max-new-tokens {args.max_new_tokens} --n-trials {args.n_trials} --k-max {args.k_max} "
                 f"--timeout {args.timeout:g} "
                 f"--seed {args.seed} --threads {threads} (GSM8K dev prompts {args.offset}..{args.offset + len(prompts) - 1}, "
                 f"greedy; machine {machine_id()}; Optuna TPE, {tuned.seconds:.0f} s)")
    default = {**tuned.as_default(), "threads": threads, "chosen_by": chosen_by}
    if latency is not None:
        default["latency"] = latency
        lat_path = Path(args.latency_file or default_latency_path()).resolve()
        default["latency_file"] = str(lat_path.relative_to(ROOT)) if lat_path.is_relative_to(ROOT) else str(lat_path)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(default, indent=2) + "\n")
        print(f"written: {args.out}")
    elif family_dir is not None and not args.dry_run:
        save_default(family_dir, default)
        print(f"written: {family_dir / 'family.json'} (\"default\"; zoo.load and csd run use it)")
    return 0


def cmd_seed_config(args) -> int:
    import torch

    from .compat import run_config
    from .experiment import summarize

    torch.set_num_threads(args.threads or default_threads())
    if not Path(args.config).is_file():
        raise MissingFileError(f"config: {args.config!r} does not exist (a JSON file with the seed's config dict)")
    config = _json_arg("config", Path(args.config).read_text())
    bad = [p for p in args.model_path if "=" not in p]
    if bad:
        raise CSDValueError(f"--model-path: expected NAME=DIR, got {bad[0]!r}")
    paths = dict(p.split("=", 1) for p in args.model_path)
    df = run_config(config, model_paths=paths, bigram_path=args.bigram, data_dir=args.data_dir,
                    n_samples=args.n_samples, out=args.out, max_new_tokens=args.max_new_tokens)
    print(table(summarize(df)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="csd", description="Cascade Speculative Drafting experiments")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="AR vs SD vs CSD on a dataset (default: an embedded family)")
    r.add_argument("--family", default=None, help="embedded family: gsm8k-tiny or gsm8k-base "
                                                 "(default: csdlib.zoo.DEFAULT_FAMILY)")
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
    r.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: all cores, shared among processes)")
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
    s.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    s.set_defaults(func=cmd_seed_config)

    c = sub.add_parser("calibrate", help="measure each model's forward latency (a1, a + b*n) on this machine")
    c.add_argument("--family", default=None, help="embedded family name (default: csdlib.zoo.DEFAULT_FAMILY)")
    c.add_argument("--family-path", default=None, help="a family folder instead of an embedded name")
    c.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    c.add_argument("--force", action="store_true", help="re-measure even if a calibration is stored")
    c.add_argument("--out", default=None, help="latency file (default: data/latency/<machine>.json)")
    c.add_argument("--repeats", type=int, default=15)
    c.add_argument("--context", type=int, default=96, help="tokens in the KV cache while timing (default 96)")
    c.add_argument("--note", default="", help="stored with the calibration (e.g. how loaded the machine was)")
    c.set_defaults(func=cmd_calibrate)

    t = sub.add_parser("tune", help="choose the k-matrix, lenience and MaG's draft size (Optuna, target cache)")
    t.add_argument("--family", default=None, help="embedded family to tune (default: csdlib.zoo.DEFAULT_FAMILY)")
    t.add_argument("--family-path", default=None, help="a family folder instead of an embedded name")
    t.add_argument("--objective", default="latency",
                   help="latency (predicted wall-clock speedup) or a cost table name, e.g. parameters")
    t.add_argument("--prompts", type=int, default=8, help="GSM8K dev prompts to tune on (default 8)")
    t.add_argument("--offset", type=int, default=250, help="first dev prompt used (default 250, apart "
                                                           "from those csd run and the benchmarks measure)")
    t.add_argument("--max-new-tokens", type=int, default=64)
    t.add_argument("--n-trials", type=int, default=60)
    t.add_argument("--k-max", type=int, default=6, help="largest entry tried for a neural drafter")
    t.add_argument("--mag-k-max", type=int, default=None, help="largest MaG entry (default: MaG's k)")
    t.add_argument("--timeout", type=float, default=100.0, help="stop searching after this many seconds")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    t.add_argument("--latency-file", default=None, help="default: data/latency/<machine>.json")
    t.add_argument("--cache", default=None, help="target-output cache (default: tmp/target-cache-<family>.jsonl)")
    t.add_argument("--out", default=None, help="write the chosen cascade here instead of the family.json")
    t.add_argument("--dry-run", action="store_true", help="print the result, write nothing")
    t.add_argument("--data-dir", default=None)
    t.add_argument("--quiet", action="store_true")
    for flag in ("--target", "--tokenizer", "--bigram", "--k-matrix", "--dtype", "--device", "--device-map"):
        t.add_argument(flag, default=None)
    t.add_argument("--drafter", action="append", default=[])
    t.add_argument("--mag-k", type=int, default=10)
    t.add_argument("--lenience", type=float, default=None)
    t.set_defaults(func=cmd_tune)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CSDValueError as e:          # bad input: one clear message, no traceback
        print(f"csd {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
