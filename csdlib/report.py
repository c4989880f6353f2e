"""Report on an embedded family: sizes, losses, latency, dev quality, drafter agreement.

    csd report [--family gsm8k-tiny|gsm8k-base | --family-path DIR] [--data-dir DIR] [--out report.json]

Measures, for the target and each neural drafter (gsm8k-tiny: target / mid / small; gsm8k-base:
target / tiny / mid / small):

- parameter counts (tied embeddings counted once), train / validation loss (from ``training.json``) and
  the validation loss of the model as loaded (``val_loss_loaded``: a bf16 checkpoint runs in fp32);
- median latency of a one-token forward with KV cache (prompt prefilled, then greedy decode steps),
  and of a 6-token forward (verifying 5 drafts + 1), with 1 and 2 torch threads;
- on the 300 GSM8K dev prompts (seed template): the fraction of the target's greedy completions
  (``max_new_tokens`` 200) that contain ``#### <number>``, and the accuracy of that number against the
  dev answer's ``####`` number;
- greedy agreement of each drafter (and MaG) with the target: teacher-forced on the target's own greedy
  continuations of the first 50 dev prompts, the fraction of positions where the drafter's argmax equals
  the target's token.

Writes ``<family>/report.json``. GSM8K text is read from the data directory and never written out.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch

from . import zoo
from .datasets import gsm8k_final_answer, gsm8k_prompt, load_gsm8k
from .recipe import count_parameters


def load_models(family: str | None = None, path=None):
    """``(tokenizer, {name: HF model}, MaG, family folder)``, target first, for a family name or folder."""
    fam = zoo.load(family, path=path)
    models = {"target": fam.target.model, **{d.name: d.model for d in fam.drafters if hasattr(d, "model")}}
    mag = (fam.free or {}).get("mag", fam.drafters[-1])     # MaG, whichever free drafter the cascade ends in
    mag.k = 1
    return fam.tokenizer, models, mag, fam.path


@torch.no_grad()
def forward_latency_ms(model, prompt_ids: list[int], n_steps: int = 100, warmup: int = 10, width: int = 1):
    """Median ms of a ``width``-token forward with a KV cache holding the prompt (+ decoded tokens)."""
    from transformers import DynamicCache

    times = []
    cache = DynamicCache(config=model.config)
    out = model(input_ids=torch.tensor([prompt_ids]), cache=cache, use_cache=True)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    n0 = cache.get_seq_length()
    nxt = int(out.logits[0, -1].argmax())
    for i in range(warmup + n_steps):
        x = torch.tensor([[nxt] * width])
        t0 = time.perf_counter()
        out = model(input_ids=x, cache=cache, use_cache=True)
        dt = time.perf_counter() - t0
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        nxt = int(out.logits[0, -1].argmax())
        if width > 1:  # keep the context length fixed: drop what this forward added
            cache.crop(n0 - cache.get_seq_length())  # negative: tokens to drop
        if i >= warmup:
            times.append(dt * 1e3)
    return statistics.median(times)


@torch.no_grad()
def greedy_batched(model, tok, prompts: list[str], max_new_tokens: int, batch: int = 16):
    """Greedy completions (token id lists, cut after EOS) for prompts, left-padded batches."""
    outs = []
    for b in range(0, len(prompts), batch):
        enc = tok(prompts[b:b + batch], return_tensors="pt", padding=True)
        gen = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        for row in gen[:, enc["input_ids"].shape[1]:].tolist():
            if tok.eos_token_id in row:
                row = row[: row.index(tok.eos_token_id) + 1]
            row = [t for t in row if t != tok.pad_token_id]
            outs.append(row)
    return outs


@torch.no_grad()
def greedy_single(model, prompt_ids: list[int], max_new_tokens: int, eos_id: int) -> list[int]:
    gen = model.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=max_new_tokens,
                         eos_token_id=eos_id, pad_token_id=eos_id)
    return gen[0, len(prompt_ids):].tolist()


@torch.no_grad()
def agreement(drafter, prompt_ids: list[int], cont: list[int]) -> tuple[int, int]:
    """(matches, positions): drafter argmax == target token, teacher-forced on prompt + cont."""
    if not cont:
        return 0, 0
    x = torch.tensor([prompt_ids + cont])
    logits = drafter(input_ids=x).logits[0]
    pred = logits[len(prompt_ids) - 1: len(prompt_ids) - 1 + len(cont)].argmax(-1)
    return int((pred == torch.tensor(cont)).sum()), len(cont)


def mag_agreement(mag, prompt_ids: list[int], cont: list[int]) -> tuple[int, int]:
    """(matches, positions): MaG's first proposed token == target token, on prompt + cont[:t]."""
    hits = sum(mag.draft(prompt_ids, prompt_ids + cont[:t], k=1)[0] == cont[t] for t in range(len(cont)))
    return hits, len(cont)


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_val_loss(report: dict, models: dict, tok, data_dir=None):
    """Validation loss of each model as loaded (a bf16 checkpoint is fp32 in memory) on the recipe's 149
    held-out training examples, into ``report`` (``val_loss_loaded``; ``val_loss`` is what training measured
    before saving)."""
    from .recipe import BUDGETS, _split, evaluate_loss, tokenize_examples

    b = BUDGETS["full"]
    _, val_ex = _split(load_gsm8k("train", data_dir), b["val_fraction"], 0)
    val = tokenize_examples(tok, val_ex)
    for name, m in models.items():
        report["models"][name]["val_loss_loaded"] = round(evaluate_loss(m, val, 16, b["seq_len"], tok.pad_token_id), 5)
        print(f"[val] {name}: {report['models'][name]['val_loss_loaded']} (as loaded)", flush=True)


def measure_latency(report: dict, models: dict, prompt_ids: list[int]):
    """Median 1-token and 6-token forward latencies (KV cache) with 1 and 2 threads, into ``report``."""
    import os

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, m in models.items():
            r = report["models"][name]
            r[f"forward_1tok_ms_{threads}t"] = round(forward_latency_ms(m, prompt_ids), 3)
            r[f"forward_6tok_ms_{threads}t"] = round(forward_latency_ms(m, prompt_ids, width=6), 3)
            print(f"[latency] {name} {threads} thread(s): 1 tok {r[f'forward_1tok_ms_{threads}t']:.2f} ms, "
                  f"6 tok {r[f'forward_6tok_ms_{threads}t']:.2f} ms", flush=True)
    torch.set_num_threads(1)
    report["latency"] = {
        "prompt_tokens": len(prompt_ids),
        "method": "median of 100 forwards after 10 warm-up, KV cache holding the prompt (+ decoded tokens)",
        "cpu_count": os.cpu_count(),
        "loadavg_1min_before": load_before,
        "note": "2-thread numbers are only meaningful when no other process uses the second core",
    }
    report.pop("latency_prompt_tokens", None)


def main(args) -> Path:
    """`csd report` (flags in `csdlib.cli`): measure the family and write its report; or, with
    ``--val-loss-only`` / ``--latency-only``, update that part of an existing report."""
    tok, models, mag, fam = load_models(args.family, args.family_path)
    out = Path(args.out) if args.out else fam / "report.json"
    if args.val_loss_only or args.latency_only:
        report = json.loads(out.read_text())
        if args.val_loss_only:
            measure_val_loss(report, models, tok, args.data_dir)
        else:
            report["machine"]["cpu"] = _cpu_name()
            first = load_gsm8k("dev", args.data_dir)[0]["question"]
            measure_latency(report, models, tok(gsm8k_prompt(first))["input_ids"])
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"updated {'validation losses' if args.val_loss_only else 'latencies'} in {out}")
        return out
    dev = load_gsm8k("dev", args.data_dir)[: args.n_dev]
    prompts = [gsm8k_prompt(ex["question"]) for ex in dev]
    report = {"family": fam.name, "machine": {"cpu": _cpu_name(), "python": platform.python_version(),
                                              "torch": torch.__version__},
              "models": {name: model_sizes(m) for name, m in models.items()}}
    measure_val_loss(report, models, tok, args.data_dir)
    tp = report["models"]["target"]["parameters"]
    report["param_ratios"] = {n: round(tp / report["models"][n]["parameters"], 2) for n in models if n != "target"}
    measure_latency(report, models, tok(prompts[0])["input_ids"])
    report["dev"] = measure_dev(models["target"], tok, dev, prompts, args.max_new_tokens, args.batch, args.show)
    report["agreement"] = measure_agreement(models, mag, tok, prompts[: args.n_agree], args.max_new_tokens)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return out


def model_sizes(m) -> dict:
    """Parameters, architecture and what training measured (``training.json`` next to the weights)."""
    tj = Path(m.name_or_path) / "training.json"
    tr = json.loads(tj.read_text()) if tj.is_file() else {}
    return {
        "parameters": count_parameters(m),
        "config": {k: getattr(m.config, k) for k in
                   ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")},
        "train_loss": tr.get("final_train_loss"),
        "val_loss": tr.get("val_loss"),
        "epochs": tr.get("epochs"),
        "train_time_s": tr.get("train_time_s"),
        "train_tok_per_s": tr.get("tok_per_s"),
    }


def measure_dev(target, tok, dev, prompts, max_new_tokens: int, batch: int, show: int = 0) -> dict:
    """The target's greedy completions of the dev prompts: ``#### <number>`` present, and correct."""
    t0 = time.perf_counter()
    outs = greedy_batched(target, tok, prompts, max_new_tokens, batch)
    texts = [tok.decode(o, skip_special_tokens=True) for o in outs]
    has = [gsm8k_final_answer(t) is not None for t in texts]
    correct = [gsm8k_final_answer(t) is not None and gsm8k_final_answer(t) == gsm8k_final_answer(ex["answer"])
               for t, ex in zip(texts, dev)]
    dev_report = {
        "n": len(dev),
        "max_new_tokens": max_new_tokens,
        "hash_answer_fraction": round(sum(has) / len(dev), 4),
        "accuracy": round(sum(correct) / len(dev), 4),
        "ended_with_eos_fraction": round(sum(tok.eos_token_id in o for o in outs) / len(dev), 4),
        "mean_new_tokens": round(sum(len(o) for o in outs) / len(dev), 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(f"[dev] {dev_report}", flush=True)
    for t in texts[:show]:
        print("-" * 60 + "\n" + t)
    return dev_report


def measure_agreement(models: dict, mag, tok, prompts, max_new_tokens: int) -> dict:
    """Greedy agreement with the target, teacher-forced on the target's own greedy continuations."""
    counts = {n: [0, 0] for n in (*models, "mag")}
    for prompt in prompts:
        ids = tok(prompt)["input_ids"]
        cont = greedy_single(models["target"], ids, max_new_tokens, tok.eos_token_id)
        for n in (*models, "mag"):
            hits, positions = mag_agreement(mag, ids, cont) if n == "mag" else agreement(models[n], ids, cont)
            counts[n][0] += hits
            counts[n][1] += positions
    agreement_report = {"n_prompts": len(prompts), "positions": counts["target"][1],
                        **{n: round(counts[n][0] / max(counts[n][1], 1), 4) for n in counts}}
    print(f"[agreement] {agreement_report}", flush=True)
    return agreement_report
