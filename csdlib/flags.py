"""Checks of `csd`'s flags, made while parsing, before any model or dataset loads: argparse `type=`
functions for one value, and `check(args, parser)` for what depends on several flags (and on the
family's `family.json`, read without loading a model). A bad flag is one line from `parser.error`
(``csd run: error: ...``) and exit status 2. Nothing here imports torch."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

DTYPES = ["float32", "float16", "bfloat16", "float64"]
# a hub name such as "gpt2" or "org/name"; anything else that is not a folder is a missing local folder
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DEVICE = re.compile(r"^(cpu|mps|(cuda|xpu|npu|hpu)(:\d+)?)$")
#: the family `csd run --dataset spec-bench` measures when neither --family nor --target is given: the one
#: made for general text (smollm2's target, drafters distilled on its answers to requests it wrote itself)
SPEC_BENCH_FAMILY = "smollm2-general"


def at_least(low, kind=int):
    """A `type=` for an int (or `kind`) >= `low`."""
    what = "an integer" if kind is int else "a number"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} >= {low}, got {text!r}") from None
        if not value >= low:
            raise argparse.ArgumentTypeError(f"expected {what} >= {low}, got {text}")
        return value
    return parse


def int_triple(text) -> tuple[int, int, int]:
    """W,D,E: three integers, W >= 1, D >= 0, E >= 0 (`csd tune --tree-max`)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or values[0] < 1 or min(values[1:]) < 0:
        raise argparse.ArgumentTypeError(f"expected W,D,E: three integers, W >= 1, D >= 0, E >= 0, got {text!r}")
    return values


def tree_shape(text):
    """off, or W:E[:B] (`csd run --tree`): W >= 1 candidates at each draft position of the target's review,
    E >= 0 MaG tokens continuing each, and B >= 1, the likeliest extra candidates kept (none: all)."""
    if text == "off":
        return "off"
    try:
        values = tuple(int(v) for v in text.split(":"))
    except ValueError:
        values = ()
    if len(values) not in (2, 3) or values[0] < 1 or values[1] < 0 or min(values[2:], default=1) < 1:
        raise argparse.ArgumentTypeError(f"expected off or W:E[:B] (integers, W >= 1, E >= 0, B >= 1), got {text!r}")
    return values


def positive(text) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _existing(is_kind, kind: str):
    def parse(text) -> str:
        if not is_kind(Path(text).expanduser()):
            raise argparse.ArgumentTypeError(f"no such {kind}: {text!r}")
        return text
    return parse


directory = _existing(Path.is_dir, "directory")
file = _existing(Path.is_file, "file")


def spec_bench_categories(text) -> str:
    """--categories: all, or comma-separated Spec-Bench short names (mt-bench, translation, ...)."""
    from .datasets import SPEC_BENCH_NAMES

    if text == "all":
        return text
    names = [c.strip() for c in text.split(",")]
    unknown = [c for c in names if c not in SPEC_BENCH_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; expected all or some of {', '.join(SPEC_BENCH_NAMES)}")
    return ",".join(names)


def model_source(text) -> str:
    """A local model folder, or a hub name; a path to a folder that does not exist is refused here,
    not in the hub's words later."""
    path = Path(text).expanduser()
    if path.is_dir():
        return text
    first = Path(text).parts[0] if Path(text).parts else text
    if path.exists() or not _HUB_NAME.match(text) or (first != text and Path(first).is_dir()):
        raise argparse.ArgumentTypeError(f"no such directory: {text!r}")
    return text


def device(text) -> str:
    if not _DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:<index> or mps, got {text!r}")
    return text


def name_equals_dir(text) -> str:
    name, eq, folder = text.partition("=")
    if not eq or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    directory(folder)
    return text


def file_stem(text) -> str:
    if not text or "/" in text or "\\" in text:
        raise argparse.ArgumentTypeError(f"expected a file name without a folder, got {text!r}")
    return text


def k_matrix(text) -> list:
    """JSON, a square upper-triangular matrix of non-negative integers."""
    try:
        k = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected JSON, e.g. '[[4, 2], [0, 4]]'; got {text!r} ({e})") from None
    n = len(k) if isinstance(k, list) else 0
    if not n or not all(isinstance(row, list) and len(row) == n for row in k):
        raise argparse.ArgumentTypeError(f"expected a square matrix (a list of n lists of n numbers), got {text}")
    for i, row in enumerate(k):
        for j, v in enumerate(row):
            if type(v) is not int or v < 0 or (j < i and v != 0):
                raise argparse.ArgumentTypeError(f"entry [{i}][{j}] = {v!r}: expected a non-negative integer, "
                                                 "0 below the diagonal")
    return k


def family_drafters(args) -> list[str]:
    """The drafters the command will load, by name (largest first, MaG last), without loading them."""
    from . import zoo

    if getattr(args, "target", None) is not None:
        return [Path(p).name for p in args.drafter] + (["MaG"] if args.bigram else ["suffix"] if args.corpus else [])
    try:
        return zoo.drafter_names(zoo.family_info(run_family(args), getattr(args, "family_path", None))[2],
                                 getattr(args, "bottom", None))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).replace("name: ", "", 1)) from None


def run_family(args) -> str | None:
    """The embedded family a command loads by name: --family, else with `csd run --dataset spec-bench` and
    no --target `SPEC_BENCH_FAMILY`, else None (`csdlib.zoo.DEFAULT_FAMILY`, or --family-path's folder)."""
    family = getattr(args, "family", None)
    if family is None and getattr(args, "dataset", None) == "spec-bench" and getattr(args, "target", None) is None:
        return SPEC_BENCH_FAMILY
    return family


def check(args, parser: argparse.ArgumentParser) -> None:
    """What depends on several flags; `parser.error` (one line, exit status 2) on the first problem."""
    try:
        CHECKS.get(args.command, lambda a: None)(args)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))


def _models(args) -> None:
    """--target, --drafter, --bigram, --k-matrix and --methods of `run` and `tune`, against each other."""
    own = ("--drafter", "--bigram", "--corpus", "--tokenizer", "--device-map", "--mag-k")
    if args.target is not None and getattr(args, "bottom", None) is not None:
        raise argparse.ArgumentTypeError("--bottom: only with a family (with --target, --bigram or --corpus says it)")
    if args.target is not None and args.bigram and args.corpus:
        raise argparse.ArgumentTypeError("--corpus: one free drafter ends a cascade; give --bigram or --corpus, not both")
    if args.target is None:
        given = [f for f in own if getattr(args, f[2:].replace("-", "_")) not in (None, [])]
        if given:
            raise argparse.ArgumentTypeError(f"{given[0]}: only with --target (the family brings its own models)")
    elif getattr(args, "family", None) is not None or getattr(args, "family_path", None) is not None:
        raise argparse.ArgumentTypeError("--target: give your models or a family (--family), not both")
    elif not args.drafter:
        raise argparse.ArgumentTypeError("--target: needs --drafter (one or more, largest first)")
    drafters = family_drafters(args)
    if args.k_matrix is not None and len(args.k_matrix) != len(drafters):
        raise argparse.ArgumentTypeError(f"--k-matrix: expected {len(drafters)}x{len(drafters)} for the drafters "
                                         f"{drafters}, got {len(args.k_matrix)}x{len(args.k_matrix)}")
    names = ["AR", *(f"SD({d})" for d in drafters), "CSD"]
    if args.target is None and _has_corpus(args):      # the family's other free drafter: its SD and CSD rows
        other = "suffix" if drafters[-1] == "MaG" else "MaG"
        names += [f"SD({other})", f"CSD ({other} at the bottom)"]
    if getattr(args, "tree", None) not in (None, "off"):          # csd run --tree W:E[:B]
        names.append("tree CSD")
    unknown = sorted(set(getattr(args, "methods", None) or []) - set(names))
    if unknown:
        raise argparse.ArgumentTypeError(f"--methods: unknown {unknown}; expected some of {names}")


def _has_corpus(args) -> bool:
    """The family has the suffix drafter's corpus (so both free drafters)."""
    from . import zoo
    from .suffix import CORPUS_FILE

    return (zoo.family_info(run_family(args), getattr(args, "family_path", None))[1] / CORPUS_FILE).is_file()


def _run(args) -> None:
    _models(args)
    if args.target is not None and args.k_matrix is None:
        raise argparse.ArgumentTypeError("--target: needs --k-matrix (one row per drafter)")
    for flag in ("results_dir", "figures_dir"):
        if getattr(args, flag) is not None and Path(getattr(args, flag)).is_file():
            raise argparse.ArgumentTypeError(f"--{flag.replace('_', '-')}: {getattr(args, flag)!r} is a file, "
                                             "expected a directory")
    if args.dataset != "spec-bench" and args.categories != "all":
        raise argparse.ArgumentTypeError("--categories: only with --dataset spec-bench")
    if args.dataset == "gsm8k" and args.split not in ("train", "dev", "test"):
        raise argparse.ArgumentTypeError(f"--split: GSM8K has train, dev and test, got {args.split!r}")


def _family_or_path(args) -> None:
    """`--family` or `--family-path`, a family that exists (its family.json is read)."""
    if args.family is not None and args.family_path is not None:
        raise argparse.ArgumentTypeError("--family-path: give a family name or a folder, not both")
    family_drafters(args)


def _tune(args) -> None:
    if args.target is None:
        _family_or_path(args)
    _models(args)


def _train(args) -> None:
    if args.only and args.family not in ("gsm8k-tiny", "smollm2", "smollm2-general"):
        raise argparse.ArgumentTypeError("--only: only with --family gsm8k-tiny, smollm2 or smollm2-general "
                                         "(gsm8k-base trains one model)")
    if args.only and args.family.startswith("smollm2") and "target" in args.only:
        raise argparse.ArgumentTypeError(f"--only: {args.family}'s target is fetched, not trained; its drafters are "
                                         "mid, small")
    if getattr(args, "base", None) and args.family != "smollm2-general":
        raise argparse.ArgumentTypeError("--base: only with --family smollm2-general")
    if args.from_target_layers is not None and args.family != "smollm2":
        raise argparse.ArgumentTypeError("--from-target-layers: grows a drafter for --family smollm2 (a fetched "
                                         "target); for your own target, csdlib.grow.from_target_layers")
    if args.name is not None and args.from_target_layers is None:
        raise argparse.ArgumentTypeError("--name: only with --from-target-layers")
    if args.from_target_layers is not None and (args.only or args.stage != "all"):
        raise argparse.ArgumentTypeError("--from-target-layers: grows one drafter; not with --only or --stage")


def _report(args) -> None:
    _family_or_path(args)
    if args.val_loss_only and args.latency_only:
        raise argparse.ArgumentTypeError("--latency-only: not with --val-loss-only (one update at a time)")


CHECKS = {"run": _run, "tune": _tune, "calibrate": _family_or_path, "report": _report, "train": _train}
