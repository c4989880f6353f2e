"""Report on an embedded family: sizes, losses, latency, dev quality, drafter agreement.

    python benchmarks/zoo_report.py [--family gsm8k-tiny|gsm8k-base|PATH] [--data-dir DIR] [--out report.json]

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

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from csdlib.datasets import gsm8k_final_answer, gsm8k_prompt, load_gsm8k  # noqa: E402
from csdlib import zoo  # noqa: E402
from csdlib.zoo import count_parameters  # noqa: E402


def load_models(family: str):
    """``(tokenizer, {name: HF model}, MaG, family folder)``, target first, for a family name or folder."""
    fam = zoo.load(family) if family in zoo.FAMILY_DIRS else zoo.load(path=family)
    models = {"target": fam.target.model, **{d.name: d.model for d in fam.drafters if hasattr(d, "model")}}
    mag = fam.drafters[-1]
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
    from csdlib.recipe import BUDGETS, _split, evaluate_loss
    from csdlib.zoo import tokenize_examples

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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="gsm8k-tiny", help="family name or folder")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="default: <family>/report.json")
    p.add_argument("--n-dev", type=int, default=300)
    p.add_argument("--n-agree", type=int, default=50)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--show", type=int, default=0, help="print this many target completions (not saved)")
    p.add_argument("--val-loss-only", action="store_true",
                   help="only measure the loaded models' validation loss and update it in an existing report")
    p.add_argument("--latency-only", action="store_true",
                   help="only re-measure the latencies and update them in an existing report")
    a = p.parse_args(argv)

    tok, models, mag, fam = load_models(a.family)
    out = Path(a.out) if a.out else fam / "report.json"
    if a.val_loss_only:
        report = json.loads(out.read_text())
        measure_val_loss(report, models, tok, a.data_dir)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"updated validation losses in {out}")
        return
    if a.latency_only:
        report = json.loads(out.read_text())
        report["machine"]["cpu"] = _cpu_name()
        measure_latency(report, models, tok(gsm8k_prompt(load_gsm8k("dev", a.data_dir)[0]["question"]))["input_ids"])
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"updated latencies in {out}")
        return
    dev = load_gsm8k("dev", a.data_dir)[: a.n_dev]
    prompts = [gsm8k_prompt(ex["question"]) for ex in dev]
    report = {
        "family": fam.name,
        "machine": {"cpu": _cpu_name(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "models": {},
    }

    # sizes and losses
    for name, m in models.items():
        tj = Path(m.name_or_path) / "training.json"
        tr = json.loads(tj.read_text()) if tj.is_file() else {}
        report["models"][name] = {
            "parameters": count_parameters(m),
            "config": {k: getattr(m.config, k) for k in
                       ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                        "vocab_size")},
            "train_loss": tr.get("final_train_loss"),
            "val_loss": tr.get("val_loss"),
            "epochs": tr.get("epochs"),
            "train_time_s": tr.get("train_time_s"),
            "train_tok_per_s": tr.get("tok_per_s"),
        }
    measure_val_loss(report, models, tok, a.data_dir)
    tp = report["models"]["target"]["parameters"]
    report["param_ratios"] = {n: round(tp / report["models"][n]["parameters"], 2) for n in models if n != "target"}

    measure_latency(report, models, tok(prompts[0])["input_ids"])

    # dev quality of the target
    t0 = time.perf_counter()
    outs = greedy_batched(models["target"], tok, prompts, a.max_new_tokens, a.batch)
    texts = [tok.decode(o, skip_special_tokens=True) for o in outs]
    has = [gsm8k_final_answer(t) is not None for t in texts]
    correct = [gsm8k_final_answer(t) is not None and gsm8k_final_answer(t) == gsm8k_final_answer(ex["answer"])
               for t, ex in zip(texts, dev)]
    report["dev"] = {
        "n": len(dev),
        "max_new_tokens": a.max_new_tokens,
        "hash_answer_fraction": round(sum(has) / len(dev), 4),
        "accuracy": round(sum(correct) / len(dev), 4),
        "ended_with_eos_fraction": round(sum(tok.eos_token_id in o for o in outs) / len(dev), 4),
        "mean_new_tokens": round(sum(len(o) for o in outs) / len(dev), 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(f"[dev] {report['dev']}", flush=True)
    for t in texts[: a.show]:
        print("-" * 60 + "\n" + t)

    # greedy agreement (teacher-forced on the target's own greedy continuations)
    counts = {n: [0, 0] for n in (*models, "mag")}
    for ex_prompt in prompts[: a.n_agree]:
        ids = tok(ex_prompt)["input_ids"]
        cont = greedy_single(models["target"], ids, a.max_new_tokens, tok.eos_token_id)
        for n in (*models, "mag"):
            m_, t_ = mag_agreement(mag, ids, cont) if n == "mag" else agreement(models[n], ids, cont)
            counts[n][0] += m_
            counts[n][1] += t_
    report["agreement"] = {
        "n_prompts": a.n_agree,
        "positions": counts["target"][1],
        **{n: round(counts[n][0] / max(counts[n][1], 1), 4) for n in counts},
    }
    print(f"[agreement] {report['agreement']}", flush=True)

    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
