"""What each `csd` command does (`csdlib.cli` parses and checks the flags, then calls `cmd_<command>`
with them): `run` (the main experiment, with its replay / `--force` / machine-load bookkeeping),
`calibrate`, `tune`, `seed-config`, `train`, `bigram`, `report`. Heavy libraries are imported inside the
functions, so importing this module costs nothing."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import CSDValueError
from .flags import SPEC_BENCH_FAMILY, run_family
# with_audit_column is not used here: tests and callers take the report's helpers from commands, as before
from .run_report import TERMINAL_COLUMNS, report_run, table, with_audit_column  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
#: where a user's `csd run` writes (git-ignored); the committed reference results are in data/results/
RESULTS_DIR = ROOT / "results"


def family_from_args(args, device):
    """The models named on the command line, else the embedded family `csdlib.zoo.load()`, as a
    `csdlib.zoo.Family` (`--k-matrix` / `--lenience` override the family's default cascade)."""
    from . import zoo

    prepack = {"auto": None, "on": True, "off": False}[getattr(args, "prepack", "auto")]
    cache, compile = getattr(args, "kv_cache", "dynamic"), getattr(args, "compile", False)
    if args.target is None:
        fam = zoo.load(args.family, dtype=args.dtype or "float32", device=device, prepack=prepack, cache=cache,
                       compile=compile, bottom=getattr(args, "bottom", None))
        fam.k_matrix = args.k_matrix or fam.k_matrix
        fam.lenience = args.lenience if args.lenience is not None else fam.lenience
        return fam
    return zoo.from_paths(args.target, args.drafter, bigram=args.bigram, corpus=args.corpus, mag_k=args.mag_k or 10,
                          tokenizer=args.tokenizer, k_matrix=args.k_matrix, lenience=args.lenience or 1.0,
                          dtype=args.dtype, device=device, device_map=args.device_map, prepack=prepack, cache=cache,
                          compile=compile)


def members(fam) -> list:
    """The family's target, its drafters and its other free drafters (`Family.free`): every model a run
    or a calibration of the family may call."""
    return [fam.target, *fam.drafters, *(fam.other_free() if hasattr(fam, "other_free") else [])]


def cmd_run(args) -> int:
    import torch
    from accelerate import PartialState

    from .latency import stored_latency
    from .experiment import measured_costs_for, run, standard_methods
    from .records import config_hash, environment, shard_path

    on_cpu = args.device == "cpu" or (args.device is None and not torch.cuda.is_available())
    state = PartialState(cpu=on_cpu)           # cpu=True: several CPU processes talk over gloo
    threads = args.threads or default_threads(state.num_processes)
    torch.set_num_threads(threads)
    device = state.device if args.device is None else torch.device(args.device)
    spec_bench = args.dataset == "spec-bench"
    fam, items, prompts = _family_and_prompts(args, device)
    methods = standard_methods(fam.drafters, k_matrix=fam.k_matrix, lenience=fam.lenience, sd_k=args.sd_k,
                               tree=_tree_of_flag(args.tree, fam), free=getattr(fam, "free", None))
    methods = [m for m in methods if not args.methods or m.name in args.methods]
    if spec_bench and not any(m.is_ar for m in methods) and any(len(q["turns"]) > 1 for q in items):
        raise CSDValueError("--dataset spec-bench: MT-bench's second turn is prompted with AR's answer to the "
                            "first; keep AR in --methods (or choose --categories without mt-bench)")
    latency = stored_latency(members(fam), threads=threads)   # `csd calibrate` stores it
    if spec_bench:
        args.split = spec_bench_split(args)      # what the records' key and the file name say was measured
    name = args.name or f"{args.dataset}-{args.split}-n{args.n_samples}-t{args.max_new_tokens}"
    out = Path(args.results_dir) / f"{name}.jsonl"
    source = dataset_source(args.dataset, args.split, chat=fam.chat)
    env = environment(fam.target)
    hashes = {config_hash(fam.target, m, {"dataset": args.dataset, **source}, args.max_new_tokens, env)
              for m in methods}
    tags = {"process_index": state.process_index, "num_processes": state.num_processes}
    if state.is_main_process:
        tags.update(_before_measuring(args, out, hashes, [i for i, _ in prompts], len(methods) * len(prompts)))
    if state.num_processes > 1:                   # the main process's run_id and load, for every shard
        from accelerate.utils import broadcast_object_list

        tags = {**broadcast_object_list([tags])[0], "process_index": state.process_index}
    measured = None
    for turn in ("main", "others"):    # measured once (by the main process), then read by the others
        if prompts and state.is_main_process == (turn == "main"):
            measured = measured_costs_for(members(fam), prompts[0][1], out)
        state.wait_for_everyone()
    sharded = state.num_processes > 1

    def measure(prompts):
        with state.split_between_processes(prompts) as mine:
            run(fam.target, methods, mine, out=shard_path(out, state.process_index) if sharded else out,
                read_from=out, max_new_tokens=args.max_new_tokens, dataset=args.dataset, source=source,
                measured_costs=measured, latency=latency, warmup=args.warmup,
                progress=state.is_local_main_process and not args.quiet, tags=tags)
        state.wait_for_everyone()

    measure(prompts)
    groups = None
    if spec_bench:                        # MT-bench's second turns, after AR's own answers to the first
        second = second_turns(fam, items, out, next((m for m in methods if m.is_ar), None), hashes)
        if second:
            check_fits(fam, second, args.max_new_tokens)
            measure(second)
        prompts = prompts + second
        groups = {f"{q['question_id']}.{t}": q["group"] for q in items for t in (1, 2)}
    if not state.is_main_process:
        return 0
    if sharded:
        from .records import merge_shards

        merge_shards(out)
    warning = _after_measuring(out, tags, threads * state.num_processes)
    return report_run(args, out, name, hashes, prompts, device, state.num_processes, warning, groups)


def _family_and_prompts(args, device):
    """`csd run`'s family and its (sample id, prompt ids); with `--dataset spec-bench` also the questions
    (else None), and the family made for that data (`flags.SPEC_BENCH_FAMILY`) when no family or target is
    named. The dataset is read before any model loads, so that a missing one fails first, fast."""
    items = None
    if args.dataset == "spec-bench":
        items = spec_bench_items(args)                                      # fails first, fast
        if args.family is None and args.target is None:
            args.family = run_family(args)
            print(f"--dataset spec-bench: the {args.family} family, made for general text (--family or --target "
                  "chooses another)")
    else:
        dataset_texts(args.dataset, args.split, args.data_dir, args.n_samples)   # fails first, fast
    fam = family_from_args(args, device)
    if items is not None:
        prompts = [(f"{q['question_id']}.1", fam.encode_turns(q["turns"][:1], [])) for q in items]
        check_fits(fam, prompts, args.max_new_tokens)
    else:
        texts = dataset_texts(args.dataset, args.split, args.data_dir, args.n_samples, chat=fam.chat)
        prompts = [(i, fam.encode(t)) for i, t in enumerate(texts)]
    return fam, items, prompts


def spec_bench_items(args) -> list[dict]:
    """Spec-Bench's questions for `csd run` (`--categories`, `--n-samples` per category), in an order whose
    every prefix covers the groups alike (`datasets.spread`)."""
    from .datasets import load_spec_bench, spread

    return spread(load_spec_bench(args.categories, args.n_samples, args.data_dir))


def spec_bench_split(args) -> str:
    """What of Spec-Bench a run measures, for its records' key and file name: the categories (sorted)."""
    return "all" if args.categories == "all" else "+".join(sorted(c.strip() for c in args.categories.split(",")))


def check_fits(fam, prompts, max_new_tokens: int) -> None:
    """Every prompt and its new tokens within the models' positions, checked before measuring anything."""
    limit = min((m.max_positions for m in [fam.target, *fam.drafters] if getattr(m, "max_positions", None)),
                default=None)
    over = [sid for sid, ids in prompts if limit is not None and len(ids) + max_new_tokens > limit]
    if over:
        raise CSDValueError(f"{len(over)} of {len(prompts)} prompts (e.g. {over[0]}) need more than the "
                            f"{limit} positions of {fam.name}'s models with max_new_tokens={max_new_tokens}; "
                            f"choose --categories with shorter prompts, or a family with a longer context "
                            f"(--family {SPEC_BENCH_FAMILY})")


def second_turns(fam, items, out: Path, ar, hashes) -> list[tuple[str, list[int]]]:
    """(sample id, prompt) of MT-bench's second turns: the first question, AR's answer to it (read back
    from the run's records) and the second question, through the family's chat template."""
    from .records import read_all_records

    if ar is None:
        return []
    answers = {r["sample_id"]: r["token_ids"] for r in read_all_records(out)
               if r.get("config_hash") in hashes and r.get("method") == ar.name}
    return [(f"{q['question_id']}.2", fam.encode_turns(q["turns"][:2], [fam.decode(answers[f"{q['question_id']}.1"])]))
            for q in items if len(q["turns"]) > 1]


def _before_measuring(args, out, hashes, sample_ids, wanted: int) -> dict:
    """The first line of a replay (when and where its records were measured), or `--force` setting
    them aside; then the machine's load, warned about when busy. Returns the tags of the new records."""
    import uuid

    from . import provenance

    earlier = provenance.earlier_records(out, hashes, sample_ids)
    if earlier and args.force:
        moved = provenance.set_aside(out)
        print(f"--force: {len(earlier)} earlier records set aside ({', '.join(p.name for p in moved)}); "
              "measuring again")
    elif earlier:
        print(provenance.replay_line(earlier, wanted))
    load = provenance.machine_load()
    warning = provenance.busy_warning(load, "before") if len(earlier) < wanted or args.force else None
    if warning:
        print(warning)
    return {"run_id": uuid.uuid4().hex[:12], "load_before": load, "load_warning": warning}


def _after_measuring(out, tags: dict, own_threads: int) -> str | None:
    """The machine's load after measuring (this run's own threads discounted), kept in the records this
    run measured (in every shard's); None when it measured nothing (a replay) or the machine was quiet."""
    from . import provenance

    load = provenance.machine_load(own_threads)
    warning = tags["load_warning"] or provenance.busy_warning(load, "during")
    measured = provenance.stamp(out, tags["run_id"], {"load_after": load, "load_warning": warning})
    return warning if measured else None


def dataset_texts(dataset: str, split: str, data_dir, n: int, chat: bool = False) -> list[str]:
    from .datasets import prompt_texts

    return prompt_texts(dataset, split, data_dir, n, chat=chat)


def dataset_source(dataset: str, split: str, chat: bool = False) -> dict:
    """What identifies the prompts besides their token ids: dataset, split and template (record keys)."""
    from . import datasets as ds

    if dataset == "spec-bench":                  # the user's turns (and AR's answers) of question.jsonl
        return {"split": split, "template": "chat template, turns" if chat else "turns joined by newlines"}
    template = ds.GSM8K_TEMPLATE if dataset == "gsm8k" else ds.MMLU_TEMPLATE
    if chat:
        template = "chat template, user turn: " + ("{question}" if dataset == "gsm8k" else ds.MMLU_TEMPLATE)
    return {"split": split, "template": template}


def default_threads(processes: int = 1) -> int:
    """All cores, shared among the processes of a sharded run."""
    import os

    return max(1, (os.cpu_count() or 1) // max(1, processes))


def tuning_prompts(fam, args) -> list[list[int]]:
    """GSM8K dev prompts from `--offset` on (default `datasets.TUNE_OFFSET`, 250: apart from the first
    ones that `csd run` and the benchmarks measure), in the family's prompt format; with
    ``--prompts-from requests`` (a chat family), the first `--prompts` requests the target writes itself
    (`distill.tuning_requests`: drawn apart from those its drafters were trained on; no offset)."""
    from . import datasets as ds

    if getattr(args, "prompts_from", "gsm8k") == "requests":
        from .distill import tuning_requests

        if not fam.chat:
            raise CSDValueError(f"--prompts-from requests: family {fam.name!r} has no chat template")
        return [fam.prompt_ids(t) for t in tuning_requests(fam.target.model, fam.tokenizer, args.prompts)]
    items = ds.load_gsm8k("dev", args.data_dir)[args.offset:args.offset + args.prompts]
    return [fam.prompt_ids(x["question"]) for x in items]


def cmd_calibrate(args) -> int:
    from . import zoo
    from .latency import calibrate_latency, default_latency_path

    threads = args.threads or default_threads()
    fam = zoo.load(args.family, path=args.family_path, dtype=args.dtype or "float32")
    lat = calibrate_latency(members(fam), path=args.out, threads=threads, force=args.force,
                            note=args.note, repeats=args.repeats, context=args.context)
    print(f"latency file: {args.out or default_latency_path()} ({threads} thread(s), {args.dtype or 'float32'})")
    for name, v in lat.items():
        tree = (f"; a tree of n tokens: {v['tree_a'] * 1e3:7.3f} ms + n x {v['tree_b'] * 1e3:6.4f} ms"
                if "tree_a" in v else "")
        print(f"  {name:<8} one token {v['a1'] * 1e3:7.3f} ms; n >= 2 tokens: {v['a'] * 1e3:7.3f} ms "
              f"+ n x {v['b'] * 1e3:6.4f} ms{tree}")
    return 0


def cmd_tune(args) -> int:
    import time

    import torch

    from .cache import build_target_cache
    from .latency import calibrate_latency, machine_id
    from .tuning import optimize

    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    if args.target is None:
        from . import zoo

        fam = zoo.load(args.family, path=args.family_path, dtype=args.dtype or "float32", bottom=args.bottom)
        start = (fam.k_matrix, fam.lenience)
    else:
        fam = family_from_args(args, torch.device(args.device or "cpu"))
        start = (args.k_matrix, args.lenience or 1.0) if args.k_matrix else None
    prompts = tuning_prompts(fam, args)
    latency = None
    if args.objective == "latency":
        latency = calibrate_latency([fam.target, *fam.drafters], threads=threads, path=args.latency_file)
    cache = Path(args.cache or ROOT / "tmp" / f"target-cache-{fam.name}-{args.dtype or 'float32'}.jsonl")
    tic = time.perf_counter()
    cached = build_target_cache(fam.target, prompts, args.max_new_tokens, cache)
    print(f"target cache: {cache} ({len(prompts)} prompts, {time.perf_counter() - tic:.1f} s)")
    tuned = optimize(cached, fam.drafters, prompts, args.objective, n_trials=args.n_trials, k_max=args.k_max,
                     mag_k_max=args.mag_k_max, max_new_tokens=args.max_new_tokens, latency=latency, start=start,
                     seed=args.seed, timeout=args.timeout, progress=not args.quiet,
                     tree_max=tuple(args.tree_max))
    n_run = sum(t.state.is_finished() for t in tuned.study.trials)      # not the queued starts left over
    print(f"{n_run} trials in {tuned.seconds:.1f} s ({threads} thread(s), {machine_id()})")
    _print_start(args, cached, fam.drafters, prompts, start, latency)
    print(f"best:  k_matrix={tuned.k_matrix} lenience={tuned.lenience:g} mag_k={tuned.mag_k} "
          f"tree={tuned.tree}: {args.objective} {tuned.value:.3f}")
    _print_best_tree(tuned)
    _save_tuned(args, tuned, threads, latency, fam.path if args.target is None else None, len(prompts))
    return 0


def _tree_of_flag(flag, fam):
    """`csd run --tree`: None (the family's tuned tree, if any), "off", or (W, E[, B]) over the target's draft."""
    from .tuning import tree_over_draft

    if flag is None:
        return getattr(fam, "tree", None)
    return None if flag == "off" else tree_over_draft(fam.k_matrix, *flag)


def _print_best_tree(tuned) -> None:
    """When the tuner kept a chain although trees were searched: how close the best tree came."""
    from .tuning import TREE_MARGIN, best_chain_and_tree, k_matrix_from_params, tree_of

    chain, tree = best_chain_and_tree(tuned.study)
    if tuned.tree is not None or tree is None or chain is None:
        return
    print(f"best tree: k_matrix={k_matrix_from_params(tree.params, len(tuned.k_matrix))} tree={tree_of(tree.params)}: "
          f"{tuned.objective} {tree.value:.3f}, {tree.value / chain.value - 1:+.1%} against the best chain (a tree is "
          f"taken from {TREE_MARGIN:+.0%}: the latency model's error between two settings)")


def _print_start(args, cached, drafters, prompts, start, latency) -> None:
    from .tuning import evaluate_cascade

    if start is None:
        return
    before = evaluate_cascade(cached, drafters, prompts, *start, max_new_tokens=args.max_new_tokens, latency=latency)
    was = (before["predicted_speedup"] if latency else before["swi"]["parameters"] if args.objective == "parameters"
           else None)
    print(f"start: k_matrix={start[0]} lenience={start[1]:g}" + (f": {args.objective} {was:.3f}" if was else ""))


def _save_tuned(args, tuned, threads: int, latency, family_dir, n_prompts: int) -> None:
    """The chosen cascade with how it was chosen: to `--out`, else the family's family.json."""
    from .latency import default_latency_path, machine_id
    from .tuning import save_default

    requests = getattr(args, "prompts_from", "gsm8k") == "requests"
    source = ("the target's own requests (seed 1) " if requests else "GSM8K dev prompts ")
    first = 0 if requests else args.offset
    chosen_by = (f"csd tune --objective {args.objective} --prompts {args.prompts} "
                 + ("--prompts-from requests " if requests else f"--offset {args.offset} ") +
                 f"--max-new-tokens {args.max_new_tokens} --n-trials {args.n_trials} --k-max {args.k_max} "
                 f"--timeout {args.timeout:g} --seed {args.seed} --threads {threads} "
                 f"--tree-max {','.join(map(str, args.tree_max))}"
                 + (f" --dtype {args.dtype}" if args.dtype else "") + (f" --bottom {args.bottom}" if args.bottom else "")
                 + (f" --latency-file {args.latency_file}" if args.latency_file else "") + f" ({source}"
                 f"{first}..{first + n_prompts - 1}, greedy; machine {machine_id()}; Optuna TPE, "
                 f"{tuned.seconds:.0f} s)")
    default = {**tuned.as_default(), "threads": threads, "chosen_by": chosen_by}
    if args.bottom:                            # the free drafter the tuned cascade ends in
        default["bottom"] = args.bottom
    if latency is not None:
        default["latency"] = latency
        lat_path = Path(args.latency_file or default_latency_path()).resolve()
        default["latency_file"] = str(lat_path.relative_to(ROOT)) if lat_path.is_relative_to(ROOT) else str(lat_path)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(default, indent=2) + "\n")
        print(f"written: {args.out}")
    elif family_dir is not None and not args.dry_run:
        dtype = args.dtype or "float32"
        save_default(family_dir, default, dtype=dtype)
        where = '"default"' if dtype == "float32" else f'"defaults"["{dtype}"]'
        print(f"written: {family_dir / 'family.json'} ({where}; zoo.load and csd run use it in {dtype})")


def cmd_seed_config(args) -> int:
    import torch

    from .compat import run_config
    from .experiment import summarize

    torch.set_num_threads(args.threads or default_threads())
    try:
        config = json.loads(Path(args.config).read_text())
    except json.JSONDecodeError as e:
        raise CSDValueError(f"config: {args.config!r} is not JSON ({e})") from None
    paths = dict(p.split("=", 1) for p in args.model_path)
    df = run_config(config, model_paths=paths, bigram_path=args.bigram, data_dir=args.data_dir,
                    n_samples=args.n_samples, out=args.out, max_new_tokens=args.max_new_tokens)
    print(table(summarize(df), columns=TERMINAL_COLUMNS))
    return 0


def cmd_train(args) -> int:
    import torch

    from . import recipe, zoo

    torch.set_num_threads(args.threads)
    if args.from_target_layers is not None:     # a drafter grown from the target's layers
        from .grow import GROW_RECIPES, grow_drafter

        report = grow_drafter(args.out or zoo.FAMILY_DIRS[args.family], args.from_target_layers, args.name,
                              args.data_dir, GROW_RECIPES[args.budget], seed=args.seed)
        print(json.dumps(report, indent=2))
    elif args.family == "smollm2":               # drafters distilled for a fetched target
        from .distill import RECIPES, distill_family, distill_more

        run = distill_more if args.stage == "more" else distill_family
        report = run(args.out or zoo.FAMILY_DIRS[args.family], args.data_dir, RECIPES[args.budget],
                     only=args.only, seed=args.seed)
        print(json.dumps(report, indent=2))
    elif args.family == "smollm2-general":     # general-purpose drafters, started from smollm2's
        from .distill import RECIPES, distill_general

        report = distill_general(args.out or zoo.FAMILY_DIRS[args.family], args.base or zoo.FAMILY_DIRS["smollm2"],
                                 args.data_dir, RECIPES[args.budget], only=args.only, seed=args.seed)
        print(json.dumps(report, indent=2))
    elif args.family == "gsm8k-base":
        recipe.train_base(args.out, args.data_dir, args.budget, args.seed)
    else:
        recipe.train_family(args.out or zoo.FAMILY_DIRS[args.family], args.data_dir, args.budget, args.seed,
                            only=args.only)
    return 0


def cmd_bigram(args) -> int:
    import torch

    from .recipe import build_bigram_table

    torch.set_num_threads(args.threads)
    print(build_bigram_table(args.out, args.data_dir))
    return 0


def cmd_corpus(args) -> int:
    import torch

    from .corpus import build_corpus
    from .suffix import SuffixCorpus

    torch.set_num_threads(args.threads)
    path = build_corpus(args.family, args.answers, out=args.out, data_dir=args.data_dir)
    print(f"{path}: {SuffixCorpus.load(path)!r}")
    return 0


def cmd_report(args) -> int:
    import torch

    from . import report

    torch.set_num_threads(1)
    report.main(args)
    return 0
