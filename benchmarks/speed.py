"""Wall-clock speed of csdlib against transformers, on one family, one process, same prompts.

    python benchmarks/speed.py --family gsm8k-tiny --prompts 50 --max-new-tokens 128 --threads 2 \
        --out data/results/speed-gsm8k-tiny

Methods, interleaved prompt by prompt (the order rotates from prompt to prompt) after a warm-up, on the
first `--prompts` GSM8K dev prompts:

- `HF greedy`: transformers' `generate(do_sample=False)` of the target: the baseline;
- `AR`: csdlib's autoregressive decoding;
- `SD(<drafter>)`: csdlib speculative decoding with each neural drafter and with MaG, each at its best k
  (from `--ks`, chosen by the latency model on `--tune-prompts` separate dev prompts, from dev item 250
  on, against the target-output cache: no prompt of the measurement is used to choose);
- `CSD`: csdlib's cascade with the family's default (`family.json`, e.g. chosen by `csd tune`);
- `HF assisted(<drafter>)`: transformers' assisted generation with each neural drafter, its default
  schedule and a constant k (the drafter's best k above, confidence threshold off);
- `HF prompt lookup`: `prompt_lookup_num_tokens=--lookup`.

Every output is checked against HF greedy's. The table: tokens/s, speedup over HF greedy, ratio to the
best csdlib SD, ratio to the best HF speculative method, SWI with parameter costs, measured and
predicted wall time (the calibrated latency model, `csd calibrate`) and their error, and the "limit":
the predicted time of the target's calls alone at the measured acceptance (what the method would take
if drafting were free), with how far the measured time is from it. Written as markdown, CSV and JSON
under `--out` (with the machine, thread count and command).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from csdlib import MaG, generate, zoo  # noqa: E402
from csdlib.cache import build_target_cache  # noqa: E402
from csdlib.cost import calibrate_latency, machine_id, parameter_costs, predict_wall_time, swi_total  # noqa: E402
from csdlib.datasets import load_gsm8k  # noqa: E402
from csdlib.tuning import evaluate_cascade  # noqa: E402

from csdlib.datasets import TUNE_OFFSET  # noqa: E402  (dev items 250..: the tuning prompts)


def parse_args(argv=None):
    import os

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="gsm8k-tiny", help="gsm8k-tiny, gsm8k-base or a family folder")
    p.add_argument("--prompts", type=int, default=50, help="GSM8K dev prompts measured (the first N)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    p.add_argument("--ks", default="1,2,3,4,5,6", help="draft lengths tried for single-drafter SD")
    p.add_argument("--tune-prompts", type=int, default=8, help="dev prompts (from item 250) to choose SD's k")
    p.add_argument("--lookup", type=int, default=10, help="prompt_lookup_num_tokens")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of every method first")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--latency-file", default=None, help="default: data/latency/<machine>.json")
    p.add_argument("--recalibrate", action="store_true",
                   help="measure the latency model again at the start of this run (and store it) instead of "
                        "reusing the stored one: these machines drift by about 10%% between runs")
    p.add_argument("--out", required=True, help="folder for speed.md, speed.csv, speed.json")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


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


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    fam = zoo.load(path=args.family) if Path(args.family).is_dir() else zoo.load(args.family)
    target, drafters = fam.target, list(fam.drafters)
    hf_target = target.model
    eos = sorted(target.eos_token_ids)
    neural = [d for d in drafters if not isinstance(d, MaG)]
    mag = next((d for d in drafters if isinstance(d, MaG)), None)
    dev = load_gsm8k("dev", args.data_dir)
    measure = [fam.prompt_ids(x["question"]) for x in dev[:args.prompts]]
    tune = [fam.prompt_ids(x["question"]) for x in dev[TUNE_OFFSET:TUNE_OFFSET + args.tune_prompts]]
    if set(map(tuple, measure)) & set(map(tuple, tune)):
        raise SystemExit("--prompts overlaps the tuning prompts (dev items 250...); use at most 250 prompts")
    models = [target, *drafters]
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))

    latency = calibrate_latency(models, threads=args.threads, path=args.latency_file, force=args.recalibrate,
                                note="benchmarks/speed.py --recalibrate" if args.recalibrate else "")
    log(f"latency model ({args.threads} threads): " + ", ".join(
        f"{n}: a1 {v['a1'] * 1e3:.2f} ms, a {v['a'] * 1e3:.2f} ms + {v['b'] * 1e3:.3f} ms/token"
        for n, v in latency.items() if n != getattr(mag, "name", None)))

    # choose SD's k per drafter on the tuning prompts, against the target-output cache
    cache_path = Path("tmp") / f"speed-target-cache-{fam.name}-t{args.max_new_tokens}.jsonl"
    cached = build_target_cache(target, tune, args.max_new_tokens, cache_path)
    ks = [int(k) for k in args.ks.split(",")]
    chosen = {}
    for d in drafters:
        chosen[d.name], scores = best_k(cached, d, tune, ks, latency, args.max_new_tokens)
        log(f"SD({d.name}): best k = {chosen[d.name]} (predicted speedup by k: "
            + ", ".join(f"{k}: {v:.2f}" for k, v in scores.items()) + ")")

    # methods: name -> (kind, run(prompt) -> (tokens, stats or None))
    def csd_method(ds, k, lenience=1.0):
        def run(prompt):
            o = generate(target, ds, prompt, k_matrix=k, lenience=lenience, max_new_tokens=args.max_new_tokens)
            return o.new_tokens, o.stats
        return run

    def hf_method(**kwargs):
        def run(prompt):
            return cut_at_eos(hf_generate(hf_target, prompt, args.max_new_tokens, eos, **kwargs), eos), None
        return run

    def assisted(d, **settings):
        def run(prompt):
            with assistant_settings(d.model, **settings):
                return hf_method(assistant_model=d.model)(prompt)
        return run

    methods = {"HF greedy": ("hf", hf_method()), "AR": ("csdlib", csd_method([], None))}
    for d in drafters:
        label = "MaG" if d is mag else d.name
        methods[f"SD({label}) k={chosen[d.name]}"] = ("csdlib SD", csd_method([d], [[chosen[d.name]]]))
    methods["CSD"] = ("csdlib CSD", csd_method(drafters, fam.k_matrix, fam.lenience))
    for d in neural:
        methods[f"HF assisted({d.name}) default"] = ("hf peer", assisted(d))
        methods[f"HF assisted({d.name}) k={chosen[d.name]}"] = ("hf peer", assisted(
            d, num_assistant_tokens=chosen[d.name], num_assistant_tokens_schedule="constant",
            assistant_confidence_threshold=0.0))
    methods[f"HF prompt lookup({args.lookup})"] = ("hf peer", hf_method(prompt_lookup_num_tokens=args.lookup))

    names = list(methods)
    for _ in range(args.warmup):
        for name in names:
            methods[name][1](measure[0][:])
    rows = {name: {"wall_s": 0.0, "tokens": 0, "equal": True, "stats": []} for name in names}
    for i, prompt in enumerate(measure):
        order = names[i % len(names):] + names[:i % len(names)]          # rotate the order
        outputs = {}
        for name in order:
            tic = time.perf_counter()
            tokens, stats = methods[name][1](prompt)
            wall = time.perf_counter() - tic
            outputs[name] = tokens
            rows[name]["wall_s"] += wall
            rows[name]["tokens"] += len(tokens)
            if stats is not None:
                rows[name]["stats"].append(stats)
        for name in names:
            rows[name]["equal"] &= outputs[name] == outputs["HF greedy"]
        log(f"prompt {i + 1}/{len(measure)}: " + ", ".join(f"{n} {rows[n]['wall_s']:.1f}s" for n in names[:4]) + " ...")

    base = rows["HF greedy"]
    params = parameter_costs(models)
    table = []
    for name in names:
        r, kind = rows[name], methods[name][0]
        row = {"method": name, "kind": kind, "prompts": len(measure), "new tokens": r["tokens"],
               "wall s": r["wall_s"], "tokens/s": r["tokens"] / r["wall_s"],
               "x HF greedy": base["wall_s"] / r["wall_s"], "equals HF greedy": r["equal"]}
        if r["stats"]:
            calls = [s["calls"] for s in r["stats"]]
            row["SWI parameters"] = swi_total([s["new_tokens"] for s in r["stats"]], calls, params, target.name)
            total = {k: {} for k in ("calls", "tokens_fed", "one_token_calls", "switch_calls")}
            for s in r["stats"]:
                for k in total:
                    for m, v in s[k].items():
                        total[k][m] = total[k].get(m, 0) + v
            row["predicted s"] = predict_wall_time(total, latency)
            row["prediction error"] = row["predicted s"] / r["wall_s"] - 1
            t = latency[target.name]
            c, f, o = (total[k][target.name] for k in ("calls", "tokens_fed", "one_token_calls"))
            row["limit s"] = t["a1"] * o + t["a"] * (c - o) + t["b"] * (f - o)
            row["x limit"] = r["wall_s"] / row["limit s"]
            row["tokens/target call"] = r["tokens"] / c
        table.append(row)
    df = pd.DataFrame(table).set_index("method")
    sd = df[df["kind"] == "csdlib SD"]
    peers = df[df["kind"] == "hf peer"]
    df["x best SD"] = sd["wall s"].min() / df["wall s"] if len(sd) else None
    df["x best HF peer"] = peers["wall s"].min() / df["wall s"] if len(peers) else None

    machine = {"machine": machine_id(), "platform": platform.platform(), "threads": args.threads,
               "torch": torch.__version__, "python": platform.python_version()}
    command = "python benchmarks/speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    cols = ["tokens/s", "x HF greedy", "x best SD", "x best HF peer", "SWI parameters", "wall s", "predicted s",
            "prediction error", "limit s", "x limit", "tokens/target call", "equals HF greedy"]
    md = [f"{args.family}, {len(measure)} GSM8K dev prompts, max_new_tokens={args.max_new_tokens}, "
          f"{args.threads} thread(s), {machine['machine']}, torch {machine['torch']}; `{command}`", "",
          "| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, row in df.iterrows():
        cells = []
        for c in cols:
            v = row.get(c)
            if v is None or (isinstance(v, float) and v != v):
                cells.append("-")
            elif isinstance(v, (bool,)) or c == "equals HF greedy":
                cells.append("yes" if v else "NO")
            elif c == "prediction error":
                cells.append(f"{v:+.1%}")
            else:
                cells.append(f"{v:.2f}")
        md.append(f"| {name} | " + " | ".join(cells) + " |")
    md.append("")
    md.append(f"SD's k per drafter (chosen by predicted speedup on dev items {TUNE_OFFSET}.."
              f"{TUNE_OFFSET + len(tune) - 1}): {chosen}; CSD: k_matrix={fam.k_matrix}, lenience={fam.lenience}; "
              f"limit = predicted time of the target's calls alone.")
    text = "\n".join(md) + "\n"
    print(text)
    (out_dir / "speed.md").write_text(text)
    df.to_csv(out_dir / "speed.csv")
    (out_dir / "speed.json").write_text(json.dumps({
        "family": args.family, "prompts": len(measure), "max_new_tokens": args.max_new_tokens, **machine,
        "command": command, "sd_k": chosen, "k_matrix": fam.k_matrix, "lenience": fam.lenience,
        "latency": latency, "rows": json.loads(df.reset_index().to_json(orient="records"))}, indent=1) + "\n")
    all_equal = bool(df["equals HF greedy"].all())
    print(f"every output equals HF greedy's: {'yes' if all_equal else 'NO'}; written to {out_dir}/speed.{{md,csv,json}}")
    return 0 if all_equal else 1


if __name__ == "__main__":
    sys.exit(main())
