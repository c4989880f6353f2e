"""`csd`, the one command line: the main experiment (AR vs SD vs CSD), tuning, the seed's config dicts and
the embedded families' recipe.

    csd run                                   # the embedded default (gsm8k-tiny) on GSM8K dev prompts
    csd run --n-samples 50 --max-new-tokens 96 --force      # measure again instead of replaying
    csd run --target DIR --drafter DIR --drafter DIR --bigram FILE --k-matrix '[[..]]'   # your models
    accelerate launch --num_processes 2 -m csdlib.cli run ...   # prompts sharded across processes
    csd seed-config config.json --model-path NAME=DIR --bigram FILE    # one of the seed's config dicts
    csd calibrate                             # latency model of the family's models on this machine
    csd tune                                  # choose the family's default cascade for wall clock
    csd tune --objective parameters --target DIR --drafter DIR --bigram FILE --out tuned.json
    csd train --family gsm8k-tiny             # the recipe that made the embedded families (resumable)
    csd bigram                                # MaG's bigram table from GSM8K's training text
    csd corpus --family smollm2               # the suffix drafter's corpus: the target's own answers
    csd report --family gsm8k-base            # sizes, losses, latency, dev accuracy, drafter agreement

`csd run` runs AR, SD with each drafter alone (mid, small, MaG) and CSD with all of them on the same
prompts in one process (per shard), checks that every method's output equals AR's, prints a table
(`--wide`: every column) and writes the per-sample records (`<name>.jsonl`, resumable: a rerun replays
them and says so, `--force` measures again), the full table (`<name>.md`, `<name>.csv`) and a figure
under the git-ignored `results/`. Every flag is checked before any model or dataset loads
(`csdlib.flags`).
"""

from __future__ import annotations

import argparse
import sys

# torch, transformers, pandas and numpy are imported inside the commands (csdlib/commands.py), so that
# `csd --help` and a bad flag answer at once (tests/test_cli*.py check that they import none of them).

from . import flags
from .commands import (RESULTS_DIR, ROOT, cmd_bigram, cmd_calibrate, cmd_corpus, cmd_report, cmd_run, cmd_seed_config,
                       cmd_train, cmd_tune)
from .errors import CSDValueError
from .zoo import PREPACK_MIN_PARAMS


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after each flag's help, unless the help already says it in words (a default
    of None, such as "all cores", is spelled out there)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if any(action.default is v for v in (None, False, argparse.SUPPRESS)) or action.default == [] or "default" in text:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """A bad flag is one line, ``csd run: error: argument --n-samples: expected ...``, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add(sub, name: str, help: str, func):
    p = sub.add_parser(name, help=help, description=help, formatter_class=_Formatter)
    p.set_defaults(func=func, parser=p)
    return p


_DATA_DIR_HELP = ("folder with gsm8k/ (and mmlu/) (default: $CSD_DATA_DIR, else ../shared/datasets next to the "
                  "repository, else the Hugging Face hub)")


def _model_flags(p, k_matrix_example: str) -> None:
    """Your own models instead of a family (`run` and `tune`)."""
    p.add_argument("--target", type=flags.model_source, default=None,
                   help="target model: a folder or a hub name (default: the family's target)")
    p.add_argument("--drafter", type=flags.model_source, action="append", default=[],
                   help="drafter model folder or hub name, largest first (repeat; only with --target)")
    p.add_argument("--bigram", type=flags.file, default=None,
                   help="bigram table file: adds MaG as the last drafter (only with --target)")
    p.add_argument("--corpus", type=flags.file, default=None,
                   help="a suffix corpus (corpus.npz, `csdlib.suffix`): adds the suffix drafter as the last drafter "
                        "(only with --target; not with --bigram)")
    p.add_argument("--bottom", choices=["mag", "suffix"], default=None,
                   help="the free drafter a family's cascade ends in: MaG or the suffix drafter over the target's "
                        "past answers (default: the family's; the other one gets its SD row and a 'CSD (... at "
                        "the bottom)' row in csd run)")
    p.add_argument("--mag-k", type=flags.at_least(1), default=None,
                   help="MaG's largest draft per call (only with --target; default 10)")
    p.add_argument("--tokenizer", type=flags.model_source, default=None,
                   help="tokenizer folder or hub name (default: the target's)")
    p.add_argument("--k-matrix", type=flags.k_matrix, default=None,
                   help=f"JSON, one row per drafter, e.g. '{k_matrix_example}' (default: the family's default)")
    p.add_argument("--lenience", type=flags.at_least(1.0, float), default=None,
                   help="lenience >= 1 of the inner levels (default: the family's, 1 for your models)")
    p.add_argument("--dtype", choices=flags.DTYPES, default=None,
                   help="weights' dtype (default: float32 for a family, as saved for your models); a family in "
                        "bfloat16 / float16 computes its target's logits in float32 and uses the cascade tuned "
                        "for that dtype (csd tune --dtype) if there is one")
    p.add_argument("--device", type=flags.device, default=None,
                   help="cpu, cuda, cuda:N (default: cuda:<local rank> if available, else cpu)")
    p.add_argument("--device-map", choices=["auto"], default=None,
                   help='"auto" places a large target across GPUs (only with --target; default: one device)')
    p.add_argument("--prepack", choices=["auto", "on", "off"], default="auto",
                   help="on the CPU, linear layers multiply by weights prepacked for oneDNN (csdlib.onednn); auto: "
                        f"the models with at least {PREPACK_MIN_PARAMS / 1e6:g} M parameters "
                        "(csdlib.zoo.PREPACK_MIN_PARAMS), where it was measured faster")
    p.add_argument("--kv-cache", choices=["dynamic", "static"], default="dynamic",
                   help="the neural members' KV cache: transformers' DynamicCache, or its StaticCache (allocated "
                        "once per prompt, rejected drafts dropped by moving the write position back)")
    p.add_argument("--compile", action="store_true",
                   help="compile the neural members' forwards at fixed shapes (torch.compile; on static KV caches; "
                        "CUDA graphs on a GPU); each shape compiles on first use")


def _threads(p) -> None:
    p.add_argument("--threads", type=flags.at_least(1), default=None,
                   help="torch threads per process (default: all cores, shared among the processes)")


def _run_parser(sub, families) -> None:
    r = _add(sub, "run", "AR vs SD vs CSD on a dataset (default: an embedded family)", cmd_run)
    r.add_argument("--family", choices=families, default=None,
                   help=f"embedded family (default: {families[0]}, csdlib.zoo.DEFAULT_FAMILY; with --dataset "
                        f"spec-bench: {flags.SPEC_BENCH_FAMILY}, the family made for general text)")
    r.add_argument("--n-samples", type=flags.at_least(1), default=100,
                   help="prompts: the first n of the split (spec-bench: n questions per category, evenly spaced)")
    r.add_argument("--max-new-tokens", type=flags.at_least(1), default=128, help="new tokens per prompt")
    r.add_argument("--dataset", choices=["gsm8k", "mmlu", "sampled_mmlu", "spec-bench"], default="gsm8k",
                   help="prompts (spec-bench: Spec-Bench's questions, MT-bench's second turn after AR's answer to the "
                        f"first, a table per category; the {flags.SPEC_BENCH_FAMILY} family, made for general text, "
                        "unless --family or --target says otherwise)")
    r.add_argument("--categories", type=flags.spec_bench_categories, default="all",
                   help="with --dataset spec-bench: comma-separated, of mt-bench, translation, summarization, qa, "
                        "math_reasoning, rag (or all)")
    r.add_argument("--split", default="dev", help="dataset split (GSM8K: train, dev = the first 300 of test, test)")
    r.add_argument("--data-dir", type=flags.directory, default=None, help=_DATA_DIR_HELP)
    _model_flags(r, "[[4, 2, 4], [0, 2, 4], [0, 0, 4]]")
    r.add_argument("--sd-k", type=flags.at_least(1), default=4, help="draft tokens of single-drafter SD")
    r.add_argument("--tree", type=flags.tree_shape, default=None, metavar="W:E[:B]",
                   help="adds tree CSD: W candidates at each draft position of the target's review, E MaG tokens "
                        "per branch, the B likeliest kept (default: the family's tuned tree, if it has one; off: none)")
    r.add_argument("--methods", nargs="+", default=None,
                   help="a subset of AR, SD(<drafter>), CSD (default: all of them)")
    r.add_argument("--warmup", type=flags.at_least(0), default=1, help="untimed generations per method first")
    _threads(r)
    r.add_argument("--name", type=flags.file_stem, default=None,
                   help="results file stem (default: <dataset>-<split>-n<n-samples>-t<max-new-tokens>)")
    r.add_argument("--results-dir", default=str(RESULTS_DIR),
                   help="records, tables and figure (default: results/ in the repository, git-ignored; the committed "
                        "reference results are in data/results/)")
    r.add_argument("--figures-dir", default=None, help="where the figure goes (default: --results-dir)")
    r.add_argument("--force", action="store_true",
                   help="measure again: earlier records of this command are set aside, not replayed")
    r.add_argument("--wide", action="store_true", help="print every column (the .md / .csv files have them all)")
    r.add_argument("--no-figure", action="store_true", help="draw no figure")
    r.add_argument("--quiet", action="store_true", help="no progress bar")


def _tune_parser(sub, families) -> None:
    from .datasets import TUNE_OFFSET

    t = _add(sub, "tune", "choose the k-matrix, lenience and MaG's draft size (Optuna, target cache)", cmd_tune)
    t.add_argument("--family", choices=families, default=None, help=f"embedded family (default: {families[0]})")
    t.add_argument("--family-path", type=flags.directory, default=None, help="a family folder instead of a name")
    t.add_argument("--objective", choices=["latency", "parameters", "model_parameters", "previous_work"],
                   default="latency", help="latency (predicted wall-clock speedup) or a cost table's SWI")
    t.add_argument("--prompts", type=flags.at_least(1), default=8, help="prompts to tune on")
    t.add_argument("--prompts-from", choices=["gsm8k", "requests"], default="gsm8k",
                   help="gsm8k: GSM8K dev questions from --offset; requests (a chat family): the first requests the target "
                        "writes itself, drawn apart from its drafters' training data (csdlib.distill.tuning_requests)")
    t.add_argument("--offset", type=flags.at_least(0), default=TUNE_OFFSET,
                   help="first dev prompt used (apart from those csd run and the benchmarks measure)")
    t.add_argument("--max-new-tokens", type=flags.at_least(1), default=64, help="new tokens per prompt")
    t.add_argument("--n-trials", type=flags.at_least(1), default=60, help="Optuna trials at most")
    t.add_argument("--k-max", type=flags.at_least(1), default=6, help="largest entry tried for a neural drafter")
    t.add_argument("--mag-k-max", type=flags.at_least(1), default=None, help="largest MaG entry (default: MaG's k)")
    t.add_argument("--timeout", type=flags.positive, default=100.0, help="stop searching after this many seconds")
    t.add_argument("--seed", type=int, default=0, help="Optuna's seed")
    t.add_argument("--tree-max", type=flags.int_triple, default=(4, 6, 4), metavar="W,D,E",
                   help="tree drafts searched for the target's review: up to W candidates at each of the first "
                        "D draft positions, each continued by up to E MaG tokens (1,0,0: chains only)")
    _threads(t)
    t.add_argument("--latency-file", default=None, help="latency calibration (default: data/latency/<machine>.json)")
    t.add_argument("--cache", default=None,
                   help="target-output cache (default: tmp/target-cache-<family>-<dtype>.jsonl)")
    t.add_argument("--out", default=None, help="write the chosen cascade here (default: the family's family.json)")
    t.add_argument("--dry-run", action="store_true", help="print the result, write nothing")
    t.add_argument("--data-dir", type=flags.directory, default=None, help=_DATA_DIR_HELP)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    _model_flags(t, "[[1, 1], [0, 1]]")


def _other_parsers(sub, families) -> None:
    s = _add(sub, "seed-config", "run one of the seed's config dicts (JSON file)", cmd_seed_config)
    s.add_argument("config", type=flags.file, help="JSON file with the seed's config dict")
    s.add_argument("--model-path", type=flags.name_equals_dir, action="append", default=[],
                   help="NAME=DIR: load the model NAME from a local folder (repeat; default: the hub)")
    s.add_argument("--bigram", type=flags.file, default=None, help="MaG's bigram table (needed with use_mag)")
    s.add_argument("--data-dir", type=flags.directory, default=None, help=_DATA_DIR_HELP)
    s.add_argument("--n-samples", type=flags.at_least(1), default=None, help="the first n prompts (default: all)")
    s.add_argument("--max-new-tokens", type=flags.at_least(1), default=200, help="the seed's max_length")
    s.add_argument("--out", default=None, help="JSONL records file, resumable (default: kept in memory only)")
    _threads(s)

    c = _add(sub, "calibrate", "measure each model's forward latency (a1, a + b*n) on this machine", cmd_calibrate)
    c.add_argument("--family", choices=families, default=None, help=f"embedded family (default: {families[0]})")
    c.add_argument("--family-path", type=flags.directory, default=None, help="a family folder instead of a name")
    c.add_argument("--dtype", choices=flags.DTYPES, default=None,
                   help="the models' dtype (default: float32); each dtype is calibrated on its own")
    _threads(c)
    c.add_argument("--force", action="store_true", help="measure again even if a calibration is stored")
    c.add_argument("--out", default=None, help="latency file (default: data/latency/<machine>.json)")
    c.add_argument("--repeats", type=flags.at_least(1), default=15, help="timed forwards per size")
    c.add_argument("--context", type=flags.at_least(1), default=96, help="tokens in the KV cache while timing")
    c.add_argument("--note", default="", help="stored with the calibration (e.g. how loaded the machine was)")

    tr = _add(sub, "train", "train an embedded family with the recipe (resumes: skips trained models); smollm2: "
                            "distil its drafters from the fetched target's answers (csdlib.distill)", cmd_train)
    tr.add_argument("--family", choices=families, default="gsm8k-tiny", help="which family")
    tr.add_argument("--out", default=None, help="family folder (default: data/models/<family>)")
    tr.add_argument("--budget", choices=["full", "toy"], default="full",
                    help="full: the committed family; toy: the whole recipe in seconds")
    tr.add_argument("--data-dir", type=flags.directory, default=None, help=_DATA_DIR_HELP)
    tr.add_argument("--seed", type=int, default=0, help="seed of the data split, initialisation and batches")
    tr.add_argument("--threads", type=flags.at_least(1), default=1, help="torch threads")
    tr.add_argument("--only", nargs="+", choices=["target", "mid", "small"], default=None,
                    help="train only these models of gsm8k-tiny or smollm2 (default: all)")
    tr.add_argument("--stage", choices=["all", "more"], default="all",
                    help="smollm2: all (both rounds of csdlib.distill.RECIPE) or more (only its second round, "
                         "from the drafters in the family folder)")
    tr.add_argument("--from-target-layers", type=flags.at_least(1), default=None, metavar="N",
                    help="smollm2: grow a drafter from the target's first N layers, embeddings, final norm and "
                         "output layer (its most written tokens), distilled on its answers (csdlib.grow; "
                         "resumable; smollm2's big: 8)")
    tr.add_argument("--name", default=None, help="with --from-target-layers: the drafter's folder name (default: big)")
    tr.add_argument("--base", type=flags.directory, default=None,
                    help="smollm2-general: the family folder whose drafters it starts from (default: data/models/smollm2)")

    bg = _add(sub, "bigram", "build MaG's bigram table from GSM8K's training text", cmd_bigram)
    bg.add_argument("--out", type=flags.directory, default=str(ROOT / "data" / "models" / "gsm8k-tiny"),
                    help="family folder with tokenizer/ (the table is written there as bigram.json)")
    bg.add_argument("--data-dir", type=flags.directory, default=None, help=_DATA_DIR_HELP)
    bg.add_argument("--threads", type=flags.at_least(1), default=1, help="torch threads")

    cp = _add(sub, "corpus", "build the suffix drafter's corpus: the family's target's answers to GSM8K train "
              "questions, as token ids (data/models/<family>/corpus.npz)", cmd_corpus)
    cp.add_argument("--family", choices=families, default=families[0], help="embedded family")
    cp.add_argument("--answers", type=flags.at_least(1), default=None,
                    help="the target's answers to the first N training questions (default: csdlib.corpus.CORPUS_ANSWERS)")
    cp.add_argument("--out", default=None, help="corpus file (default: <family folder>/corpus.npz)")
    cp.add_argument("--data-dir", type=flags.directory, default=None, help=_DATA_DIR_HELP)
    cp.add_argument("--threads", type=flags.at_least(1), default=2, help="torch threads")

    rp = _add(sub, "report", "measure a family: sizes, losses, latency, dev accuracy, drafter agreement", cmd_report)
    rp.add_argument("--family", choices=families, default=None, help=f"embedded family (default: {families[0]})")
    rp.add_argument("--family-path", type=flags.directory, default=None, help="a family folder instead of a name")
    rp.add_argument("--data-dir", type=flags.directory, default=None, help=_DATA_DIR_HELP)
    rp.add_argument("--out", default=None, help="report file (default: <family folder>/report.json)")
    rp.add_argument("--n-dev", type=flags.at_least(1), default=300, help="dev prompts for the accuracy")
    rp.add_argument("--n-agree", type=flags.at_least(1), default=50, help="dev prompts for the drafters' agreement")
    rp.add_argument("--max-new-tokens", type=flags.at_least(1), default=200, help="new tokens per dev prompt")
    rp.add_argument("--batch", type=flags.at_least(1), default=16, help="prompts per batch of the target")
    rp.add_argument("--show", type=flags.at_least(0), default=0, help="print this many completions (not saved)")
    rp.add_argument("--val-loss-only", action="store_true", help="only update the validation losses of --out")
    rp.add_argument("--latency-only", action="store_true", help="only update the latencies of --out")


def build_parser() -> argparse.ArgumentParser:
    from .zoo import DEFAULT_FAMILY, FAMILY_DIRS

    families = [DEFAULT_FAMILY, *(f for f in FAMILY_DIRS if f != DEFAULT_FAMILY)]
    p = _Parser(prog="csd", description="Cascade Speculative Drafting experiments")
    sub = p.add_subparsers(dest="command", required=True)
    _run_parser(sub, families)
    _tune_parser(sub, families)
    _other_parsers(sub, families)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    flags.check(args, args.parser)       # what depends on several flags, still before anything loads
    try:
        return args.func(args)
    except CSDValueError as e:          # bad input found later: one clear message, no traceback
        print(f"csd {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
