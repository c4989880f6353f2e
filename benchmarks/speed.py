"""Wall-clock speed of csdlib against transformers, on one family, one process, same prompts.

    python benchmarks/speed.py --family gsm8k-tiny --prompts 50 --max-new-tokens 128 --threads 2 \
        --out data/results/speed-gsm8k-tiny
    python benchmarks/speed.py --family gsm8k-base --dtypes float32,bfloat16 --prompts 50 --threads 2 \
        --out tmp/speed-gsm8k-base

`--dataset spec-bench` measures Spec-Bench's questions instead (`--categories`, `--per-category`; MT-bench's
second turn is prompted with the first, HF greedy's own answer to it and the second question) and adds a
table in Spec-Bench's layout: the speedup per group, overall, and the mean tokens per target forward.

Methods, interleaved prompt by prompt (the order rotates from prompt to prompt) after a warm-up, on the
first `--prompts` GSM8K dev prompts:

- `HF greedy`: transformers' `generate(do_sample=False)` of the target: the baseline;
- `AR`: csdlib's autoregressive decoding;
- `SD(<drafter>)`: csdlib speculative decoding with each neural drafter and with MaG, each at its best k
  (from `--ks`, chosen by the latency model on `--tune-prompts` separate dev prompts, from dev item 250
  on, against the target-output cache: no prompt of the measurement is used to choose);
- `CSD`: csdlib's cascade with the family's default (`family.json`, e.g. chosen by `csd tune`);
- `tree CSD`: the same cascade with tree drafts (`csdlib.Tree`; `--tree`: the family's tuned tree, else
  width 3 at every draft position of the target's review with 3 MaG tokens per branch);
- with `--tune-csd SECONDS` both are tuned here first, for this machine and dtype: `csd tune`'s search on
  the tuning prompts, priced by this run's latency model; `CSD` runs the best chain found, `tree CSD` the
  best tree (what a machine with cheap verification needs: a default tuned elsewhere is not its best);
- with `--also-family NAME`, `CSD (NAME)`: another family's drafters (e.g. smollm2-general's) in its default cascade,
  drafting for this run's target, in the same process;
- with `--mag-copy K`, `SD(MaG copies up to K)` and `CSD (MaG copies up to K)`: MaG(copy_k=K), whose copies
  run on up to K tokens as prompt lookup's do (its bigram guesses stay as many as the k-matrix asks);
- with `--copies-only`, `CSD (MaG copies only)`: the same cascade with `MaG(fill=False)` (no bigram-table
  guesses: where MaG copies nothing the target takes a plain step);
- with `--confidence C[,C...]`, `CSD (confidence=C)`: the same cascade with dynamic draft length
  (`generate(confidence=C)`: a level stops drafting when a neural drafter's newest token had probability
  below C under it);
- with `--kv-cache both`, `HF greedy (static cache)` (transformers' `generate(cache_implementation="static")`)
  and `CSD (static cache)` (the default cascade, every neural member on a `StaticCache`); `--kv-cache static`
  runs every csdlib method on static caches; with `--compile` also `CSD (compiled)`, the members' forwards
  compiled at fixed shapes (the run records how many graphs were compiled, and how many of them while a method
  was timed: `--warmup-prompts N` warms the compiled methods up on N prompts, so that the fed lengths the run
  needs compile first);
- `HF assisted(<drafter>)`: transformers' assisted generation with each neural drafter, its default
  schedule and a constant k (the drafter's best k above, confidence threshold off);
- `HF prompt lookup`: `prompt_lookup_num_tokens=--lookup`.

Every output is audited against HF greedy's (`csdlib.precision.audit`): `identical`, `tie` (first
divergence at a tie of the target's own logits, within two units in the last place of its dtype; the
margin is listed) or `WRONG` (a bug: the script exits with status 1). `--dtypes float32,bfloat16` runs
the whole comparison once per dtype in the same process (a half-precision target computes its logits in
float32 unless `--float32-logits off`); the CPU's bf16 units (AMX-BF16, AVX512-BF16 or neither) and the
GPU are recorded. `--device auto` runs on CUDA when present (timings CUDA-synchronised). The table: tokens/s, speedup over HF greedy, ratio to the
best csdlib SD, ratio to the best HF speculative method, SWI with parameter costs, measured and
predicted wall time (the calibrated latency model, `csd calibrate`) and their error, and the "limit":
the predicted time of the target's calls alone at the measured acceptance (what the method would take
if drafting were free), with how far the measured time is from it. Written as markdown, CSV and JSON
under `--out` (with the machine, its ISA, dtype, thread count and command), rewritten after every prompt
(`"complete": false` until the run ends), so a run that is killed keeps the prompts it finished.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import compiled_graphs  # noqa: E402
from csdlib import Stats, arctic, flags, generate, onednn, zoo  # noqa: E402
from csdlib.precision import audit, counts, describe, hardware, has_float32_logits  # noqa: E402
from csdlib.cache import build_target_cache  # noqa: E402
from csdlib.checks import check_confidence  # noqa: E402
from csdlib.protocol import fingerprint, is_free  # noqa: E402
from csdlib.cost import parameter_costs, swi  # noqa: E402
from csdlib.latency import calibrate_latency, machine_id, model_seconds, predict_wall_time  # noqa: E402
from csdlib.experiment import by_group, turn_frame  # noqa: E402
from csdlib.datasets import SPEC_BENCH_NAMES, TUNE_OFFSET, load_gsm8k, load_spec_bench, spread  # noqa: E402
from csdlib.tuning import (best_chain_and_tree, evaluate_cascade, k_matrix_from_params, optimize,  # noqa: E402
                           tree_of, tree_over_draft)

STARTED = time.perf_counter()          # --max-seconds counts from here


def tree_flag(text: str) -> str:
    """--tree: auto, off or W:E[:B] (checked here, read by tree_of_flag)."""
    if text not in ("auto", "off"):
        flags.tree_shape(text)
    return text


def parse_args(argv=None):
    import os

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="gsm8k-tiny", help="gsm8k-tiny, gsm8k-base or a family folder")
    p.add_argument("--also-family", default="",
                   help="comma-separated families sharing this family's target (e.g. smollm2-general): a "
                        "'CSD (NAME)' row each, their drafters (named NAME:mid, ...) in their default cascade for "
                        "this dtype, drafting for this run's target")
    p.add_argument("--prompts", type=int, default=50, help="GSM8K dev prompts measured (the first N)")
    p.add_argument("--dataset", choices=["gsm8k", "spec-bench"], default="gsm8k",
                   help="what is measured: GSM8K's dev prompts, or Spec-Bench's questions (MT-bench's two turns "
                        "each, the second after the target's own greedy answer to the first); SD's k and CSD's "
                        "tuning always use GSM8K dev items 250+")
    p.add_argument("--categories", default="all", type=flags.spec_bench_categories,
                   help=f"with --dataset spec-bench: comma-separated, of {','.join(SPEC_BENCH_NAMES)} (or all)")
    p.add_argument("--per-category", type=int, default=20,
                   help="with --dataset spec-bench: questions per category (evenly spaced in it)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    p.add_argument("--ks", default="1,2,3,4,5,6", help="draft lengths tried for single-drafter SD")
    p.add_argument("--tune-prompts", type=int, default=8, help="dev prompts (from item 250) to choose SD's k")
    p.add_argument("--lookup", type=int, default=10, help="prompt_lookup_num_tokens")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of every method first")
    p.add_argument("--warmup-prompts", type=int, default=1,
                   help="with --compile: the warm-up runs the compiled methods on this many of the first prompts "
                        "(every other method on the first), so that the graphs of the fed lengths the run needs "
                        "compile before it is timed")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--latency-file", default=None, help="default: data/latency/<machine>.json")
    p.add_argument("--recalibrate", action="store_true",
                   help="measure the latency model again at the start of this run (and store it) instead of "
                        "reusing the stored one: these machines drift by about 10%% between runs")
    p.add_argument("--dtypes", default="float32",
                   help="comma-separated dtypes, each measured in turn in this process (e.g. float32,bfloat16)")
    p.add_argument("--float32-logits", choices=["auto", "on", "off"], default="auto",
                   help="the target's output layer in float32 (auto: on for a half-precision dtype)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="a time-boxed run: no new prompt is started once this many seconds have passed since "
                        "the script started (loading, calibration and tuning included); the table says how "
                        "many prompts were measured")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (CUDA when present)")
    p.add_argument("--tree", default="auto", type=tree_flag,
                   help="tree CSD's tree: W:E[:B] (width W at every draft position of the target's review, E MaG "
                        "tokens per branch, the B likeliest extra candidates), auto (the family's tuned tree, else "
                        "3:3) or off")
    _add_method_args(p)
    p.add_argument("--out", required=True, help="folder for speed.md, speed.csv, speed.json")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def _add_method_args(p):
    """The flags that choose which methods run and how the cascade is set up (tuning, MaG, packing, cache)."""
    p.add_argument("--tune-csd", type=float, default=0, metavar="SECONDS",
                   help="tune the cascade on this machine first: csd tune's search (k-matrix, lenience and the "
                        "target's tree up to --tree-max) on the tuning prompts, priced by this run's latency "
                        "model, for SECONDS per dtype; CSD then runs the best chain found and tree CSD the best "
                        "tree (0, the default: the family's stored default and --tree)")
    p.add_argument("--tree-max", default="4,8,4", help="with --tune-csd: WIDTH,DEPTH,EXTEND maxima of the trees searched")
    p.add_argument("--peers", choices=["default", "all"], default="all",
                   help="which HF assisted-generation peers: 'default' (each drafter on transformers' default "
                        "schedule) or 'all' (the default, adds each drafter at SD's constant k)")
    p.add_argument("--copies-only", action="store_true",
                   help="adds 'CSD (MaG copies only)': CSD with MaG(fill=False), which proposes only what it copies "
                        "from the prompt or the sequence (where nothing is copied the target steps alone)")
    p.add_argument("--mag-copy", type=int, default=None, metavar="K",
                   help="adds 'CSD (MaG copies up to K)' and 'SD(MaG copies up to K)': MaG(copy_k=K), whose copies "
                        "from the prompt or the sequence run on up to K tokens (as prompt lookup's do), more than "
                        "the k-matrix asks; its bigram guesses stay as many as asked")
    p.add_argument("--confidence", default="", type=confidences,
                   help="comma-separated thresholds: a 'CSD (confidence=C)' row for each, the default cascade with "
                        "dynamic draft length (a level stops drafting when a neural drafter's newest token had "
                        "probability below C under it)")
    p.add_argument("--arctic", choices=["auto", "on", "off"], default="auto",
                   help="'SD(SuffixDecoding, arctic-inference)': SuffixDecoding's own proposer over the family's suffix "
                        "corpus, at the suffix drafter's k (auto: when arctic-inference is installed)")
    p.add_argument("--suffix-learn", action="store_true",
                   help="adds 'SD(suffix, learning the run's answers)': the suffix drafter whose memory also grows with "
                        "each answer this run finished before (the warm-up's included), as a server's would")
    p.add_argument("--skip", default="",
                   help="comma-separated methods not run, by the start of their name (e.g. 'AR,tree CSD'); "
                        "HF greedy, the baseline, cannot be skipped")
    p.add_argument("--prepack", choices=["auto", "on", "off", "both"], default="auto",
                   help="linear layers multiplying by weights prepacked for oneDNN on the CPU (csdlib.onednn; auto: "
                        "the models with >= zoo.PREPACK_MIN_PARAMS parameters, on: every neural model); both: auto, plus 'HF greedy (eager)' and 'CSD (eager)' on plain layers")
    p.add_argument("--kv-cache", choices=["dynamic", "static", "both"], default="dynamic",
                   help="the csdlib members' KV cache (transformers' DynamicCache or StaticCache); both: dynamic, "
                        "plus 'HF greedy (static cache)' and 'CSD (static cache)'")
    p.add_argument("--compile", action="store_true",
                   help="with --kv-cache both: also 'CSD (compiled)', the members' forwards compiled at fixed shapes "
                        "(the warm-up compiles what its prompts need; the run records the graphs compiled, and how "
                        "many while timed)")


@contextmanager
def assistant_settings(model, **settings):
    """Temporarily set fields of a model's generation_config (what assisted generation reads)."""
    cfg = model.generation_config
    old = {k: getattr(cfg, k, None) for k in settings}
    for k, v in settings.items():
        setattr(cfg, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(cfg, k, v)


def hf_generate(target, prompt, max_new_tokens, eos, **kwargs):
    ids = torch.tensor([prompt], device=target.device)
    with torch.no_grad():
        out = target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=max_new_tokens, min_new_tokens=0, eos_token_id=eos,
                              pad_token_id=eos[0] if eos else None, **kwargs)
    return out[0, len(prompt):].tolist()


def cut_at_eos(tokens, eos):
    """HF pads after EOS in a batch of one only if asked; keep everything up to the first EOS."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[:i + 1]
    return tokens


def best_k(cached, drafter, prompts, ks, latency, max_new_tokens):
    """The k of SD(drafter) with the highest predicted speedup on the tuning prompts."""
    scores = {}
    for k in ks:                                   # MaG proposes min(k, its own k) per call, asked again
        r = evaluate_cascade(cached, [drafter], prompts, [[k]], max_new_tokens=max_new_tokens, latency=latency)
        scores[k] = r["predicted_speedup"]
    return max(scores, key=scores.get), scores


def sync(device) -> None:
    """Wait for the GPU's queued work before reading a clock (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def kv_cache(models, kind, compile=False):
    """The neural members on `kind` of KV cache ("dynamic" / "static"), their forwards compiled or not,
    inside the block (kind None: as loaded)."""
    neural = [m for m in models if hasattr(m, "set_cache")] if kind is not None else []
    was = [(m.cache, m.compile) for m in neural]
    for m in neural:
        m.set_cache(kind, compile)
    try:
        yield
    finally:
        for m, old in zip(neural, was):
            m.set_cache(*old)


def confidences(text: str) -> list[float]:
    """--confidence: comma-separated thresholds in (0, 1)."""
    try:
        return [check_confidence(float(c)) for c in text.split(",") if c.strip()]
    except ValueError as e:                            # CSDValueError is a ValueError
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers in (0, 1), got {text!r} ({e})") from None


def load_family(args, dtype, device, prepack="flag"):
    """The family as the flags say (`prepack`: `zoo.load`'s, else `--prepack`'s)."""
    f32 = {"auto": None, "on": True, "off": False}[args.float32_logits]
    where = {"path": args.family} if Path(args.family).is_dir() else {"name": args.family}
    if prepack == "flag":
        prepack = {"auto": None, "on": True, "off": False, "both": None}[args.prepack]
    return zoo.load(**where, dtype=dtype, float32_logits=f32, device=device, prepack=prepack,
                    cache="static" if args.kv_cache == "static" else "dynamic")


def other_families(args, fam, dtype, device) -> dict:
    """--also-family: name -> (drafters, k-matrix, lenience) of each family that shares `fam`'s target,
    its drafters renamed ``NAME:mid``... (their latency and costs apart from this family's)."""
    out = {}
    for name in [n.strip() for n in args.also_family.split(",") if n.strip()]:
        other = load_family(argparse.Namespace(**{**vars(args), "family": name}), dtype, device)
        if fingerprint(other.target) != fingerprint(fam.target) or other.chat != fam.chat:
            raise SystemExit(f"--also-family {name}: its target is not {fam.name}'s")
        for d in other.drafters:
            d.name = f"{name}:{d.name}"
        out[name] = (list(other.drafters), other.k_matrix, other.lenience)
        del other
    return out


def arctic_peer(fam, args):
    """SuffixDecoding's own proposer (`csdlib.arctic`) over the family's suffix corpus, or None (no corpus,
    `--arctic off`, or arctic-inference not installed with `--arctic auto`)."""
    free = getattr(fam, "free", None) or {}
    if "suffix" not in free or args.arctic == "off":
        return None
    if not arctic.available():
        if args.arctic == "on":
            raise SystemExit("--arctic on: arctic-inference is not installed (csdlib/arctic.py says how)")
        return None
    return arctic.ArcticSuffix(free["suffix"].corpus.answers(), fam.target.vocab_size)


def free_methods(csd, args, free, drafters, bottoms, mag, chosen, setting, peer) -> dict:
    """The rows of the family's other free drafters: the default cascade ending in each; with
    --suffix-learn the suffix drafter learning the run's answers; SuffixDecoding's own proposer (`peer`)."""
    methods = {}
    for d in bottoms:                                 # the default cascade with another free bottom level
        label = "MaG" if d is mag else d.name
        methods[f"CSD ({label} at the bottom)"] = ("csdlib CSD", csd([*drafters[:-1], d], setting["k_matrix"],
                                                                       setting["lenience"]))
    if args.suffix_learn and "suffix" in free:        # its memory grows with the run's answers (warm-up's too)
        learner = free["suffix"].with_options(learn=True)      # its calls cost what the suffix drafter's do
        methods[f"SD(suffix, learning the run's answers) k={chosen['suffix']}"] = (
            "csdlib SD", csd([learner], [[chosen["suffix"]]]))
    if peer is not None:                              # SuffixDecoding's own proposer, at the suffix drafter's k
        methods[f"SD(SuffixDecoding, arctic-inference) k={chosen['suffix']}"] = (
            "peer", csd([peer], [[chosen["suffix"]]]) if not isinstance(peer, str) else None)
    return methods


def build_methods(fam, args, chosen, eos, setting, eager=None, others=None, skip=None, peer=None):
    """name -> (kind, run(prompt) -> (new tokens, Stats or None)), every method on the same target;
    `setting`: CSD's (`csd_setting`); `eager`: the family again with plain linear layers (`--prepack
    both`), for `HF greedy (eager)` and `CSD (eager)`; `others`: `other_families`, a `CSD (NAME)` each;
    `skip`: the methods left out (default `--skip`); `peer`: `arctic_peer`'s (a string: its name only)."""
    target, drafters = fam.target, list(fam.drafters)
    free = getattr(fam, "free", None) or {}
    mag = free.get("mag") or next((d for d in drafters if is_free(d)), None)

    def csd(ds, k, lenience=1.0, tree=None, target=target, confidence=None, cache=None, compile=False):
        def run(prompt):
            with kv_cache([target, *ds], cache, compile):
                o = generate(target, ds, prompt, k_matrix=k, lenience=lenience, max_new_tokens=args.max_new_tokens,
                             tree=tree, confidence=confidence)
            return o.new_tokens, o.stats
        return run

    def hf(hf_target=target.model, **kwargs):
        def run(prompt):
            return cut_at_eos(hf_generate(hf_target, prompt, args.max_new_tokens, eos, **kwargs), eos), None
        return run

    def assisted(d, **settings):
        def run(prompt):
            with assistant_settings(d.as_assistant(), **settings):
                return hf(assistant_model=d.as_assistant())(prompt)
        return run

    methods = {"HF greedy": ("hf", hf()), "AR": ("csdlib", csd([], None))}
    bottoms = fam.other_free() if hasattr(fam, "other_free") else []   # the family's other free drafters
    for d in [*drafters, *bottoms]:
        label = "MaG" if d is mag else d.name
        methods[f"SD({label}) k={chosen[d.name]}"] = ("csdlib SD", csd([d], [[chosen[d.name]]]))
    methods["CSD"] = ("csdlib CSD", csd(drafters, setting["k_matrix"], setting["lenience"]))
    methods.update(free_methods(csd, args, free, drafters, bottoms, mag, chosen, setting, peer))
    for name, (ds, k, lenience) in (others or {}).items():   # another family's drafters for this target
        methods[f"CSD ({name})"] = ("csdlib CSD", csd(ds, k, lenience))
    if args.copies_only and mag is not None:          # dynamic draft length for MaG: no bigram guesses
        copies = [mag.copies_only() if d is mag else d for d in drafters]
        methods["CSD (MaG copies only)"] = ("csdlib CSD", csd(copies, setting["k_matrix"], setting["lenience"]))
    if args.mag_copy and mag is not None:             # MaG's copies as long as prompt lookup's
        long_mag = mag.copying(args.mag_copy)
        long = [long_mag if d is mag else d for d in drafters]
        methods[f"SD(MaG copies up to {args.mag_copy}) k={chosen[mag.name]}"] = (
            "csdlib SD", csd([long_mag], [[chosen[mag.name]]]))
        methods[f"CSD (MaG copies up to {args.mag_copy})"] = ("csdlib CSD", csd(long, setting["k_matrix"],
                                                                                 setting["lenience"]))
    for c in args.confidence:                          # dynamic draft length for the neural drafters
        methods[f"CSD (confidence={c:g})"] = ("csdlib CSD", csd(drafters, setting["k_matrix"], setting["lenience"],
                                                                confidence=c))
    if setting["tree"] is not None:
        methods[f"tree CSD {tree_label(setting['tree'])}"] = ("csdlib CSD", csd(
            drafters, setting["tree_k_matrix"], setting["tree_lenience"], setting["tree"]))
    for d in drafters:
        if is_free(d):                  # MaG or the suffix drafter at the bottom: no model to assist with
            continue
        methods[f"HF assisted({d.name}) default"] = ("hf peer", assisted(d))
        if args.peers == "all":
            methods[f"HF assisted({d.name}) k={chosen[d.name]}"] = ("hf peer", assisted(
                d, num_assistant_tokens=chosen[d.name], num_assistant_tokens_schedule="constant",
                assistant_confidence_threshold=0.0))
    methods[f"HF prompt lookup({args.lookup})"] = ("hf peer", hf(prompt_lookup_num_tokens=args.lookup))
    if eager is not None:                  # what oneDNN's packed weights gain, end to end
        methods["HF greedy (eager)"] = ("eager", hf(eager.target.model))
        methods["CSD (eager)"] = ("eager", csd(list(eager.drafters), setting["k_matrix"], setting["lenience"],
                                              target=eager.target))
    if args.kv_cache == "both":               # what a static KV cache gains, end to end
        methods["HF greedy (static cache)"] = ("static", hf(cache_implementation="static"))
        methods["CSD (static cache)"] = ("static", csd(drafters, setting["k_matrix"], setting["lenience"],
                                                       cache="static"))
        if args.compile:                   # and compiled at fixed shapes (each compiles on first use)
            methods["CSD (compiled)"] = ("static", csd(drafters, setting["k_matrix"], setting["lenience"],
                                                       cache="static", compile=True))
    skip = skip_prefixes(args.skip if skip is None else skip, methods)
    return {name: m for name, m in methods.items() if not any(name.startswith(s) for s in skip)}


def skip_prefixes(skip: str, names) -> list:
    """`--skip`'s prefixes, each checked to start one of `names` (a '?' in a name, SD's k or the tree not
    yet chosen, matches whatever follows)."""
    skip = [s.strip() for s in skip.split(",") if s.strip()]
    if any("HF greedy".startswith(s) for s in skip):
        raise SystemExit("--skip: HF greedy is the baseline every output is audited against; it cannot be skipped")

    def starts(s, name):
        return name.startswith(s) or ("?" in name and s.startswith(name[:name.index("?")]))
    unused = [s for s in skip if not any(starts(s, name) for name in names)]
    if unused:
        raise SystemExit(f"--skip: {unused} match no method (methods: {list(names)})")
    return skip


def method_names(fam, args, eos, others) -> list:
    """Every method's name before SD's k and CSD's tree are chosen (each '?'): `--skip` is checked against
    them before the latency model and the tuning run, not minutes later."""
    undecided = {"k_matrix": None, "lenience": 1.0, "tree": None}
    peer = "name only" if "suffix" in (getattr(fam, "free", None) or {}) and args.arctic != "off" and (
        args.arctic == "on" or arctic.available()) else None
    names = list(build_methods(fam, args, defaultdict(lambda: "?"), eos, undecided,
                               fam if args.prepack == "both" else None, others, skip="", peer=peer))
    return names + (["tree CSD ?"] if args.tree != "off" or args.tune_csd else [])


def csd_setting(args, fam, cached, prompts, latency, log) -> dict:
    """CSD's chain and tree CSD's tree: the family's default and `--tree`, or with `--tune-csd` the best
    chain and the best tree of `csd tune`'s search on this machine (`tuning.optimize`, the tuning prompts
    replayed from the target's cache, this run's latency model; the family's default tried first)."""
    tree = tree_of_flag(args.tree, fam)
    setting = {"k_matrix": fam.k_matrix, "lenience": fam.lenience, "tree": tree, "tree_k_matrix": fam.k_matrix,
               "tree_lenience": fam.lenience, "tuned": None}
    if not args.tune_csd:
        return setting
    width, depth, extend = (int(v) for v in args.tree_max.split(","))
    if "tree_a" not in latency[fam.target.name]:      # no tree line (an old calibration file): chains only
        log(f"--tune-csd: the calibration of {fam.target.name!r} has no tree line; searching chains only")
        width = 1
    res = optimize(cached, list(fam.drafters), prompts, latency=latency, n_trials=100_000, timeout=args.tune_csd,
                   max_new_tokens=args.max_new_tokens, start=(fam.k_matrix, fam.lenience),
                   tree_max=(width, depth, extend) if width > 1 else None)
    done = [t for t in res.study.trials if t.value is not None and t.state.name == "COMPLETE"]
    n = len(fam.drafters)
    chain, best_tree = best_chain_and_tree(res.study)
    if chain is None:                                  # no chain completed: the family's chain stays
        log("--tune-csd: no chain completed its evaluation in time; CSD runs the family's default")
    else:
        setting.update(k_matrix=k_matrix_from_params(chain.params, n), lenience=float(chain.params.get("lenience", 1.0)))
    if best_tree is not None:
        setting.update(tree=tree_of(best_tree.params), tree_k_matrix=k_matrix_from_params(best_tree.params, n),
                       tree_lenience=float(best_tree.params.get("lenience", 1.0)))
    setting["tuned"] = {"seconds": round(res.seconds, 1), "trials": len(res.study.trials), "completed": len(done),
                        "prompts": len(prompts), "tree_max": [width, depth, extend],
                        "chain_predicted": None if chain is None else chain.value,
                        "tree_predicted": None if best_tree is None else best_tree.value,
                        "tree_k_matrix": setting["tree_k_matrix"] if best_tree is not None else None,
                        "chosen": "tree" if res.tree is not None else "chain"}
    log(f"tuned here ({res.seconds:.0f} s, {len(done)} trials): chain {setting['k_matrix']} predicted "
        f"{res.value if chain is None else chain.value:.2f}x AR" + ("" if best_tree is None else f"; tree {tree_label(setting['tree'])} over "
                                   f"{setting['tree_k_matrix']} predicted {best_tree.value:.2f}x AR")
        + f"; the tuner would choose the {setting['tuned']['chosen']}")
    return setting


def tree_of_flag(flag: str, fam):
    """`--tree`: off, auto (the family's tuned tree, else 3:3) or W:E[:B] over the target row's draft."""
    if flag == "off":
        return None
    if flag == "auto":
        if fam.tree is not None:
            return fam.tree
        flag = "3:3"
    return tree_over_draft(fam.k_matrix, *flags.tree_shape(flag))


def tree_label(tree) -> str:
    """w<widths>e<extend>[b<budget>], e.g. w3333e3 or w444444e3b6."""
    budget = f"b{tree.budget}" if tree.budget is not None else ""
    return "w" + "".join(map(str, tree.widths[0])) + f"e{tree.extend}{budget}"


def questions(args) -> list[dict]:
    """What is measured, one {"group", "turns"} per question: the first --prompts GSM8K dev questions
    (group "GSM8K"), or Spec-Bench's (--categories, --per-category; MT-bench's have two turns)."""
    if args.dataset == "gsm8k":
        return [{"group": "GSM8K", "turns": [x["question"]]} for x in load_gsm8k("dev", args.data_dir)[:args.prompts]]
    picked = [{"group": q["group"], "turns": q["turns"]}
              for q in load_spec_bench(args.categories, args.per_category, args.data_dir)]
    return spread(picked)


def encoder(fam, dataset: str):
    """(question, the target's answers to its earlier turns) -> prompt ids: a GSM8K question as the family's
    prompt (`prompt_ids`), a Spec-Bench turn after the turns and answers before it (`encode_turns`)."""
    if dataset == "gsm8k":
        return lambda q, answers: fam.prompt_ids(q["turns"][0])
    return lambda q, answers: fam.encode_turns(q["turns"][:len(answers) + 1], answers)


def run_interleaved(methods, items, encode, decode, target, device, warmup, log, max_seconds=None,
                    checkpoint=None, warmup_prompts=1):
    """Every method on every turn of every question (`items`, `questions`; `encode(item, answers)` gives a
    turn's prompt), the order rotating from prompt to prompt; each output audited against HF greedy's,
    whose answer (`decode`) goes into the next turn's prompt; `checkpoint(rows)` after each question.
    Returns {name: {"wall_s", "tokens", "stats", "verdicts", "turns"}} ("turns": group, wall time, tokens
    and target calls of each prompt)."""
    names = list(methods)
    for _ in range(warmup):                   # every method on the first prompt, compiled ones on more
        for j, item in enumerate(items[:warmup_prompts]):
            first = encode(item, [])
            for name in names if j == 0 else [n for n in names if "(compiled)" in n]:
                methods[name][1](first[:])
    rows = {name: {"wall_s": 0.0, "tokens": 0, "stats": [], "verdicts": [], "turns": [], "compiled_while_timed": 0}
            for name in names}
    i = 0                                                 # prompts (turns) measured so far
    for q, item in enumerate(items):
        if max_seconds is not None and time.perf_counter() - STARTED > max_seconds and q > 0:
            log(f"--max-seconds {max_seconds:g}: stopping after {q} of {len(items)} questions")
            break
        answers = []
        for turn in range(len(item["turns"])):
            prompt = encode(item, answers)
            outputs = {}
            for name in names[i % len(names):] + names[:i % len(names)]:
                graphs = compiled_graphs()
                sync(device)
                tic = time.perf_counter()
                tokens, stats = methods[name][1](prompt)
                sync(device)
                dt = time.perf_counter() - tic
                rows[name]["compiled_while_timed"] += compiled_graphs() - graphs   # a compile inside the timing
                rows[name]["wall_s"] += dt
                rows[name]["tokens"] += len(tokens)
                rows[name]["turns"].append({"group": item["group"], "turn": turn + 1, "wall_s": dt, "tokens": len(tokens),
                                            "target_calls": None if stats is None else stats.calls[target.name]})
                outputs[name] = tokens
                if stats is not None:
                    rows[name]["stats"].append(stats)
            for name in names:
                v = audit(target, prompt, outputs["HF greedy"], outputs[name])
                rows[name]["verdicts"].append({"prompt": i, **v.to_dict()})
            answers.append(decode(outputs["HF greedy"]))
            i += 1
        log(f"question {q + 1}/{len(items)}: " + ", ".join(f"{n} {rows[n]['wall_s']:.1f}s" for n in names[:4]) + " ...")
        if checkpoint is not None:
            checkpoint(rows)
    return rows


def group_table(rows) -> pd.DataFrame:
    """Spec-Bench's layout (`experiment.by_group`): a row per method; per group its speedup over HF greedy
    on the same prompts (tokens per second), "Overall" and the mean number of tokens per target forward."""
    return by_group(turn_frame({name: r["turns"] for name, r in rows.items()}), "HF greedy")


def table(rows, methods, target, models, latency) -> pd.DataFrame:
    base, params = rows["HF greedy"], parameter_costs(models)
    out = []
    for name, r in rows.items():
        row = {"method": name, "kind": methods[name][0], "prompts": len(r["verdicts"]), "new tokens": r["tokens"],
               "wall s": r["wall_s"], "tokens/s": r["tokens"] / r["wall_s"], "x HF greedy": base["wall_s"] / r["wall_s"],
               **counts(r["verdicts"])}
        if r["stats"]:
            total = Stats.merge_all(r["stats"])
            row["SWI parameters"] = swi(total.new_tokens, total.calls, params, target.name)
            row["tokens/target call"] = r["tokens"] / total.calls[target.name]
        if r["stats"] and methods[name][0] not in ("eager", "static"):   # the latency model is the family's own
            row["predicted s"] = predict_wall_time(total, latency)
            row["prediction error"] = row["predicted s"] / r["wall_s"] - 1
            row["limit s"] = model_seconds(total, target.name, latency)   # if drafting were free
            row["x limit"] = r["wall_s"] / row["limit s"]
        out.append(row)
    df = pd.DataFrame(out).set_index("method")
    sd, peers = df[df["kind"] == "csdlib SD"], df[df["kind"].isin(["hf peer", "peer"])]   # peer: SuffixDecoding
    df["x best SD"] = sd["wall s"].min() / df["wall s"] if len(sd) else None
    df["x best HF peer"] = peers["wall s"].min() / df["wall s"] if len(peers) else None
    return df


def measure(args, dtype, device, log, checkpoint=lambda run: None) -> dict:
    """The whole comparison for one dtype: latency model, SD's k, then every method on every prompt
    (`checkpoint(run)`: the result so far, after each prompt)."""
    fam = load_family(args, dtype, device)
    target, drafters = fam.target, list(fam.drafters)
    others = other_families(args, fam, dtype, device)
    bottoms = fam.other_free()
    peer = arctic_peer(fam, args)
    models = [target, *drafters, *bottoms, *([peer] if peer else []), *(d for ds, _, _ in others.values() for d in ds)]
    eos = sorted(target.eos_token_ids)
    skip_prefixes(args.skip, method_names(fam, args, eos, others))
    dev = load_gsm8k("dev", args.data_dir)
    items, encode = questions(args), encoder(fam, args.dataset)
    tune = [fam.prompt_ids(x["question"]) for x in dev[TUNE_OFFSET:TUNE_OFFSET + args.tune_prompts]]
    if args.dataset == "gsm8k" and set(map(tuple, (encode(q, []) for q in items))) & set(map(tuple, tune)):
        raise SystemExit("--prompts overlaps the tuning prompts (dev items 250...); use at most 250 prompts")
    latency = calibrate_latency(models, threads=args.threads, path=args.latency_file, force=args.recalibrate,
                                note="benchmarks/speed.py --recalibrate" if args.recalibrate else "")
    log(f"{dtype}: latency model ({args.threads} threads, {device}): " + ", ".join(
        f"{n}: a1 {v['a1'] * 1e3:.2f} ms, a {v['a'] * 1e3:.2f} ms + {v['b'] * 1e3:.3f} ms/token"
        for n, v in latency.items() if v.get("a1")))
    # choose SD's k per drafter on the tuning prompts, against a target-output cache of this dtype
    cache_path = Path("tmp") / f"speed-target-cache-{fam.name}-{dtype}-{device.type}-t{args.max_new_tokens}.jsonl"
    cached = build_target_cache(target, tune, args.max_new_tokens, cache_path)
    ks, chosen = [int(k) for k in args.ks.split(",")], {}
    for d in [*drafters, *bottoms]:
        chosen[d.name], scores = best_k(cached, d, tune, ks, latency, args.max_new_tokens)
        log(f"SD({d.name}): best k = {chosen[d.name]} (predicted speedup by k: "
            + ", ".join(f"{k}: {v:.2f}" for k, v in scores.items()) + ")")
    if peer is not None:
        peer.k = chosen["suffix"]
    setting = csd_setting(args, fam, cached, tune, latency, log)
    eager = load_family(args, dtype, device, prepack=False) if args.prepack == "both" else None
    methods = build_methods(fam, args, chosen, eos, setting, eager, others, peer=peer)
    tree = setting["tree"]

    def result(rows) -> dict:
        df = table(rows, methods, target, models, latency)
        ties = [{"method": n, **v} for n, r in rows.items() for v in r["verdicts"] if v["verdict"] != "identical"]
        extra = ({"dataset": args.dataset, "groups": group_table(rows),
                  "turns": {name: r["turns"] for name, r in rows.items()}} if args.dataset != "gsm8k" else {})
        return {**extra, "dtype": dtype, "df": df, "prompts": len(rows["HF greedy"]["verdicts"]), "ties": ties, "sd_k": chosen,
                "k_matrix": setting["k_matrix"], "lenience": setting["lenience"],
                "mag_k": next((d.k for d in fam.drafters if is_free(d)), None),
                "tree": tree_label(tree) if tree is not None else None, "tree_k_matrix": setting["tree_k_matrix"],
                "tuned": setting["tuned"], "latency": latency,
                "tune": (TUNE_OFFSET, TUNE_OFFSET + len(tune) - 1), "float32_logits": has_float32_logits(target),
                "prepacked": onednn.is_packed(target), "cache": getattr(target, "cache", "dynamic"),
                "compiled_graphs": compiled_graphs() if args.compile else None,
                "compiled_while_timed": {n: r["compiled_while_timed"] for n, r in rows.items() if r["compiled_while_timed"]}}

    rows = run_interleaved(methods, items, encode, fam.decode, target, device, args.warmup, log, args.max_seconds,
                           checkpoint=lambda rows: checkpoint(result(rows)), warmup_prompts=args.warmup_prompts)
    return result(rows)


COLUMNS = ["tokens/s", "x HF greedy", "x best SD", "x best HF peer", "SWI parameters", "predicted s",
           "prediction error", "x limit", "tokens/target call", "identical", "tie", "WRONG"]


def setting_note(run: dict) -> str:
    """Where CSD's and tree CSD's settings came from: the family's default, or tuned in this run."""
    note = f" (tree CSD: {run['tree']} over {run['tree_k_matrix']})" if run.get("tree") else ""
    t = run.get("tuned")
    if not t:
        return note + " (the family's default)"
    predicted = [f"{v:.2f}x AR for the {kind}" for kind, v in (("chain", t["chain_predicted"]), ("tree", t["tree_predicted"]))
                 if v is not None]
    return (note + f", both tuned in this run ({t['completed']} trials in {t['seconds']:g} s on the tuning prompts; "
            f"predicted {', '.join(predicted) or 'nothing completed'}; the tuner would choose the {t['chosen']})")


def markdown(run: dict) -> list[str]:
    df = run["df"]
    md = [f"**{run['dtype']}**" + (" (target logits in float32)" if run["float32_logits"] else "")
          + (", linear layers prepacked for oneDNN" if run.get("prepacked") else "")
          + (", static KV caches" if run.get("cache") == "static" else "")
          + f", {run['prompts']} prompts", "",
          "| method | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for name, row in df.iterrows():
        cells = []
        for c in COLUMNS:
            v = row.get(c)
            if v is None or (isinstance(v, float) and v != v):
                cells.append("-")
            elif c in ("identical", "tie", "WRONG"):
                cells.append(f"{int(v)}")
            elif c == "prediction error":
                cells.append(f"{v:+.1%}")
            else:
                cells.append(f"{v:.2f}")
        md.append(f"| {name} | " + " | ".join(cells) + " |")
    md += ["", f"SD's k per drafter (chosen by predicted speedup on dev items {run['tune'][0]}..{run['tune'][1]}): "
           f"{run['sd_k']}; CSD: k_matrix={run['k_matrix']}, lenience={run['lenience']}" + setting_note(run)
           + "; limit = predicted time of "
           "the target's calls alone. Audit against HF greedy, all methods: "
           + describe({k: int(df[k].sum()) for k in ("identical", "tie", "WRONG")}) + "."]
    if run.get("compiled_graphs") is not None:
        timed = run.get("compiled_while_timed") or {}
        md.append(f"Graphs compiled in this process: {run['compiled_graphs']}; while timed: "
                  + (", ".join(f"{n} {g}" for n, g in timed.items()) or "none") + ".")
    for t in run["ties"]:
        path = (f", {t['path_margin']:.4g} in a verification forward's order" if t.get("path_margin") is not None
                else "")
        md.append(f"- {t['method']}, prompt {t['prompt']}: {t['verdict']} at new token {t['position']}, "
                  f"margin {t['margin']:.4g} step by step{path} (tolerance {t['tolerance']:.4g})" if t["margin"] is not None else
                  f"- {t['method']}, prompt {t['prompt']}: {t['verdict']} at new token {t['position']} (length)")
    if run.get("groups") is not None:
        md += ["", "Spec-Bench's layout: speedup over HF greedy on the same prompts (tokens per second, summed over "
               "the group's prompts), per group, overall, and the mean number of tokens per target forward:", ""] + group_markdown(run["groups"])
    return md + [""]


def group_markdown(groups: pd.DataFrame) -> list[str]:
    cols = list(groups.columns)
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, row in groups.iterrows():
        lines.append(f"| {name} | " + " | ".join("-" if v is None or v != v else f"{v:.2f}" for v in row) + " |")
    return lines


def write(args, argv, device, runs, complete: bool) -> dict:
    """speed.md / .csv / .json under --out for the runs so far; `complete` False while a run is going (each
    prompt rewrites them, so a run killed part-way leaves its table of the prompts it finished)."""
    out_dir = Path(args.out)
    machine = {"machine": machine_id(), **hardware(device), "device": str(device), "platform": platform.platform(),
               "threads": args.threads, "torch": torch.__version__, "transformers": transformers.__version__,
               "python": platform.python_version()}
    command = "python benchmarks/speed.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    what = (f"GSM8K dev prompts (the first {args.prompts} at most)" if args.dataset == "gsm8k" else
            f"Spec-Bench ({args.categories}, {args.per_category} questions per category at most)")
    head = (f"{args.family}, {what}, max_new_tokens={args.max_new_tokens}, "
            f"{args.threads} thread(s), {device}" + (f" ({machine['gpu']})" if machine["gpu"] else "")
            + f", CPU {machine['cpu']} (bf16 units: {machine['cpu_isa']}), torch {machine['torch']}, "
            f"transformers {machine['transformers']}; `{command}`")
    if not complete:
        head += "\n\n**Incomplete**: the run was still going (or was stopped) when this was written."
    text = "\n".join([head, ""] + [line for r in runs for line in markdown(r)])
    (out_dir / "speed.md").write_text(text)
    pd.concat([r["df"].assign(dtype=r["dtype"]) for r in runs]).to_csv(out_dir / "speed.csv")
    (out_dir / "speed.json").write_text(json.dumps({
        "family": args.family, "prompts": args.prompts, "max_new_tokens": args.max_new_tokens, **machine,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "complete": complete,
        "dataset": args.dataset, "command": command,
        "runs": [{**{k: v for k, v in r.items() if k not in ("df", "groups")},
                  "rows": json.loads(r["df"].reset_index().to_json(orient="records")),
                  **({"groups": json.loads(r["groups"].reset_index().to_json(orient="records"))}
                     if r.get("groups") is not None else {})}
                                     for r in runs]}, indent=1, default=str) + "\n")
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = zoo.resolve_device(args.device)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    runs = []
    for dtype in args.dtypes.split(","):
        runs.append(measure(args, dtype.strip(), device, log,
                            checkpoint=lambda run: write(args, argv, device, runs + [run], complete=False)))
    print(write(args, argv, device, runs, complete=True))
    wrong = sum(int(r["df"]["WRONG"].sum()) for r in runs)
    print(f"audit: {describe({k: sum(int(r['df'][k].sum()) for r in runs) for k in ('identical', 'tie', 'WRONG')})}"
          f"; written to {out_dir}/speed.{{md,csv,json}}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
