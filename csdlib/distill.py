"""Drafters distilled for a real target (the "smollm2" family): the target's own greedy answers to GSM8K
*train* questions, generated in batches and cached outside git, then small LLaMA drafters and MaG's bigram
table trained on them (``csd distill``).

    answers = generate_answers(target_dir, questions, cache_dir)     # resumable: one file per shard
    vocab = frequent_tokens(answers, n=8192, keep=special_ids)       # the drafters' output vocabulary

Each answer keeps, per generated token, the target's top-`top_k` log-probabilities (recorded by a logits
processor while `generate` runs): the soft labels the drafters are distilled from. GSM8K's text is never
written into the project: the cache holds token ids only, under ``~/.cache/csdlib`` (or ``$CSD_CACHE``).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from .errors import CSDValueError

#: answers are generated (and cached) in shards of this many questions
SHARD = 32


class TopK:
    """A logits processor that records, at each generated position, the top-`k` log-probabilities of the
    scores `generate` passes it (the target's own logits, for greedy decoding) and returns them unchanged."""

    def __init__(self, k: int):
        self.k, self.steps = k, []

    def __call__(self, input_ids, scores):
        logp = torch.log_softmax(scores.float(), -1)
        values, ids = logp.topk(self.k, -1)
        self.steps.append((ids.to(torch.int32), values.to(torch.float16)))
        return scores


def _shard_path(cache: Path, i: int) -> Path:
    return cache / f"shard-{i:05d}.pt"


def generate_answers(model, tokenizer, prompts: list[list[int]], cache_dir, *, max_new_tokens: int = 256,
                     batch: int = SHARD, top_k: int = 16, progress: bool = True) -> list[dict]:
    """The target's greedy answers to `prompts` (token ids), `batch` prompts per `generate` call (left
    padded), each shard saved to `cache_dir` as soon as it is done; a shard already there is read back
    (resume). Returns one dict per prompt: ``prompt`` and ``answer`` (token ids; the answer ends at EOS,
    included, or after `max_new_tokens`), ``top_ids`` / ``top_logp`` (per answer token, the target's
    top-`top_k` next-token ids and log-probabilities at that position)."""
    from tqdm.auto import tqdm
    from transformers import LogitsProcessorList

    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    eos = set(_as_list(model.generation_config.eos_token_id)) if model is not None else {tokenizer.eos_token_id}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    out: list[dict] = []
    n_shards = (len(prompts) + batch - 1) // batch
    bar = tqdm(total=len(prompts), disable=not progress, desc="target's answers", unit="answer", mininterval=5)
    for s in range(n_shards):
        chunk = prompts[s * batch:(s + 1) * batch]
        path = _shard_path(cache, s)
        if path.is_file():
            rows = torch.load(path)
            if [r["prompt"] for r in rows] != chunk:
                raise CSDValueError(f"cache: {path} holds other prompts than shard {s}; delete {cache} to start again")
            out += rows
            bar.update(len(chunk))
            continue
        if model is None:
            raise CSDValueError(f"cache: shard {s} is not in {cache} and no model was given to generate it")
        width = max(map(len, chunk))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        rec = TopK(top_k)
        tic = time.perf_counter()
        with torch.no_grad():
            gen = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                                 do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad,
                                 logits_processor=LogitsProcessorList([rec]))
        new = gen[:, width:].cpu()
        top_ids = torch.stack([i for i, _ in rec.steps], 1).cpu()       # batch x steps x k
        top_logp = torch.stack([v for _, v in rec.steps], 1).cpu()
        rows = []
        for b, p in enumerate(chunk):
            answer = new[b].tolist()
            end = next((t + 1 for t, x in enumerate(answer) if x in eos), len(answer))
            rows.append({"prompt": p, "answer": answer[:end], "top_ids": top_ids[b, :end].clone(),
                         "top_logp": top_logp[b, :end].clone(), "seconds": time.perf_counter() - tic})
        tmp = path.with_suffix(".tmp")
        torch.save(rows, tmp)
        tmp.replace(path)                                               # a killed run leaves no half shard
        out += rows
        bar.update(len(chunk))
        bar.set_postfix(tok_s=f"{sum(len(r['answer']) for r in rows) / (time.perf_counter() - tic):.0f}")
    bar.close()
    return out


def instruction_prefix(tokenizer) -> str:
    """The chat template's text up to the user's turn (the system turn and the user's header): what the
    target continues with a user's request of its own (Magpie, Xu et al. 2024)."""
    marker = "\x00INSTRUCTION\x00"
    text = tokenizer.apply_chat_template([{"role": "user", "content": marker}], add_generation_prompt=True,
                                         tokenize=False)
    return text[:text.index(marker)]


def self_instructions(model, tokenizer, n: int, cache_dir, *, seed: int = 0, max_new_tokens: int = 96,
                      batch: int = SHARD, progress: bool = True) -> list[str]:
    """`n` user requests written by the target itself (Magpie): the chat template's prefix up to the
    user's turn, continued by sampling (temperature 1, no top-k / top-p) until the end-of-turn marker. A
    request is kept if it ends within `max_new_tokens`, is not empty and was not written before. Each
    batch is drawn with its own seed (``seed * 1_000_003 + batch index``) and cached in `cache_dir` as soon
    as it is done, so a killed run resumes where it stopped and gives the same requests."""
    from tqdm.auto import tqdm

    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    stop = [t for t in {end, tokenizer.eos_token_id} if t is not None]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    prefix = tokenizer(instruction_prefix(tokenizer), return_tensors="pt").input_ids
    out: list[str] = []
    bar = tqdm(total=n, disable=not progress, desc="the target's own requests", unit="request", mininterval=5)
    s = 0
    while len(out) < n:
        if s >= 8 + 4 * n // batch:
            raise CSDValueError(f"requests: only {len(out)} of {n} ended within {max_new_tokens} tokens in {s} "
                                f"batches; allow more tokens")
        path = cache / f"requests-{s:05d}.json"
        if path.is_file():
            texts = json.loads(path.read_text())
        else:
            if model is None:
                raise CSDValueError(f"cache: batch {s} of requests is not in {cache} and no model was given")
            torch.manual_seed(seed * 1_000_003 + s)
            with torch.no_grad():
                gen = model.generate(input_ids=prefix.repeat(batch, 1).to(model.device),
                                     attention_mask=torch.ones(batch, prefix.shape[1], dtype=torch.long,
                                                               device=model.device),
                                     do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                     max_new_tokens=max_new_tokens, eos_token_id=stop, pad_token_id=pad)
            texts = []
            for row in gen[:, prefix.shape[1]:].tolist():
                ended = next((i for i, t in enumerate(row) if t in stop), None)
                texts.append(None if ended is None else tokenizer.decode(row[:ended]).strip())
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(texts))
            tmp.replace(path)
        for t in texts:
            if t and t not in out and len(out) < n:
                out.append(t)
                bar.update(1)
        s += 1
    bar.close()
    return out


def tuning_requests(model, tokenizer, n: int, cache=None, progress: bool = True) -> list[str]:
    """`n` requests the target writes itself (`self_instructions`, seed 1: apart from the seed-0 requests
    that smollm2-general's drafters were trained on), for `csd tune --prompts-from requests`; cached."""
    from .smollm2 import cache_root

    folder = Path(cache or cache_root()) / "smollm2" / "requests-seed1-96"
    return self_instructions(model, tokenizer, n, folder, seed=1, max_new_tokens=96, progress=progress)


def overlapping(texts: list[str], references: list[str], n: int = 8) -> list[int]:
    """Indices of `texts` that share a run of `n` words (lower-cased) with any of `references`: the
    decontamination check that keeps a benchmark's prompts out of the training data."""
    def grams(t):
        w = t.lower().split()
        return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}
    seen = set().union(*(grams(r) for r in references)) if references else set()
    return [i for i, t in enumerate(texts) if grams(t) & seen]


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def settings_key(**settings) -> str:
    """A short hash of the generation settings (the target, dtype, lengths): the cache folder's name. More
    prompts later add shards to the same folder; each shard checks that it holds the prompts asked for."""
    h = hashlib.sha256(json.dumps(sorted(settings.items()), default=str).encode())
    return h.hexdigest()[:12]


# --------------------------------------------------------------------------------------------------
# The drafters' vocabulary and training data
# --------------------------------------------------------------------------------------------------

def frequent_tokens(rows: list[dict], n: int, keep=(), vocab_size: int | None = None) -> list[int]:
    """The drafters' output vocabulary (FR-Spec), `n` tokens: those in `keep` (EOS, the chat markers), then
    the tokens of the target's answers and of their prompts by frequency (answers copy names and numbers
    from their questions; ties: the lower id first), then, up to `n`, the lowest ids of the tokenizer
    (`vocab_size`): byte-level BPE numbers its merges in order, so those are its most frequent tokens."""
    counts: dict[int, int] = {}
    for r in rows:
        for t in [*r["answer"], *r["prompt"]]:
            counts[t] = counts.get(t, 0) + 1
    ids = [int(t) for t in keep]
    ids += [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    ids += range(vocab_size or 0)
    return list(dict.fromkeys(ids))[:n]


def coverage(rows: list[dict], vocab: list[int]) -> float:
    """The fraction of the answers' tokens that `vocab` holds (what a drafter on it can propose)."""
    inside, total = set(vocab), 0
    hit = 0
    for r in rows:
        total += len(r["answer"])
        hit += sum(t in inside for t in r["answer"])
    return hit / max(1, total)


def local_ids(vocab: list[int], full_vocab_size: int) -> torch.Tensor:
    """target id -> the drafter's row (`len(vocab)`, the last row, for every token outside `vocab`)."""
    table = torch.full((full_vocab_size,), len(vocab), dtype=torch.long)
    table[torch.tensor(vocab)] = torch.arange(len(vocab))
    return table


def sequences(rows: list[dict], table: torch.Tensor) -> list[list[int]]:
    """Each row's prompt + answer in the drafter's own ids."""
    return [table[torch.tensor(r["prompt"] + r["answer"])].tolist() for r in rows]


class SoftLabels:
    """Sparse soft labels for `training.train_model`'s distillation (a "teacher" with a `kl` method): at each
    answer position of a training sequence, KL(target || drafter) over the target's recorded top-k tokens
    (their probabilities renormalised over those k, tokens outside the drafter's vocabulary dropped) against
    the drafter's log-probabilities over its whole vocabulary. Sequences are recognised by their token ids;
    prompt positions get the cross-entropy only."""

    def __init__(self, rows: list[dict], seqs: list[list[int]], table: torch.Tensor, seq_len: int):
        self.outside = int(table.max())                  # the row for tokens outside the vocabulary
        self.by_seq = {}
        for r, s in zip(rows, seqs):
            ids = table[r["top_ids"].long()]                       # answer positions x k, own rows
            logp = r["top_logp"].float().masked_fill(ids == self.outside, float("-inf"))
            # a position whose top-k all lie outside the vocabulary (a name the drafter cannot write) has
            # no soft label: its row is all zeros (softmax over nothing) and it is left out of the mean
            probs = torch.softmax(logp, -1).nan_to_num(0.0)
            self.by_seq[tuple(s[:seq_len])] = (len(r["prompt"]), ids, probs)

    def eval(self):
        return self

    def requires_grad_(self, flag: bool = True):
        return self

    def kl(self, logits, x, mask):
        """Mean KL(target's top-k || drafter) over the answer positions of the batch `x`."""
        at_b, at_t, ids, probs = [], [], [], []
        for i in range(x.shape[0]):
            n = int(mask[i].sum())
            start, top, p = self.by_seq[tuple(x[i, :n].tolist())]
            m = min(len(top), n - start)            # answer token j sits at start + j, predicted at start + j - 1
            if m > 0:
                at_b.append(torch.full((m,), i))
                at_t.append(torch.arange(start - 1, start - 1 + m))
                ids.append(top[:m])
                probs.append(p[:m])
        if not ids:
            return logits.sum() * 0
        own = logits[torch.cat(at_b), torch.cat(at_t)].float()               # positions x vocabulary
        logq = own.gather(-1, torch.cat(ids)) - torch.logsumexp(own, -1, keepdim=True)
        p = torch.cat(probs)
        labelled = p.sum(-1) > 0
        if not labelled.any():
            return logits.sum() * 0
        return (p * (torch.log(p.clamp_min(1e-12)) - logq)).sum(-1)[labelled].mean()


def held_out(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """(held-out rows, training rows): a seeded shuffle, `fraction` of the rows (at least one) held out."""
    import random

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(fraction * len(rows)))
    return [rows[i] for i in order[:n_val]], [rows[i] for i in order[n_val:]]


def drafter_config(arch: dict, vocab: list[int], special: dict) -> dict:
    """`LlamaConfig` fields of a drafter on `vocab` (+ one row for other tokens), special ids in own rows."""
    own = {t: i for i, t in enumerate(vocab)}
    return {**arch, "vocab_size": len(vocab) + 1, "max_position_embeddings": 8192, "rope_theta": 100000.0,
            **{k: own[v] for k, v in special.items()}}


@torch.no_grad()
def agreement(model, rows: list[dict], table: torch.Tensor, vocab: list[int]) -> float:
    """Teacher-forced agreement on `rows`: the fraction of answer tokens that the drafter's argmax (over
    its vocabulary, mapped back to the target's ids) equals: the acceptance rate of a one-token draft."""
    model.eval()
    vocab_t = torch.tensor(vocab)
    hit = total = 0
    for r in rows:
        s = table[torch.tensor(r["prompt"] + r["answer"])][None]
        logits = model(input_ids=s).logits[0, len(r["prompt"]) - 1:-1, :len(vocab)]
        hit += int((vocab_t[logits.argmax(-1)] == torch.tensor(r["answer"])).sum())
        total += len(r["answer"])
    return hit / max(1, total)


# --------------------------------------------------------------------------------------------------
# The recipe: `csd distill`
# --------------------------------------------------------------------------------------------------

#: sizes chosen by measurement (one-token latency about 1/10 and 1/25 of the target's, float32, 2 threads)
RECIPE = {
    "questions": 2048,          # GSM8K train questions answered by the target (its first N)
    "max_new_tokens": 256,
    "top_k": 16,                # soft labels: the target's top-16 log-probabilities per answer token
    "dtype": "bfloat16",        # the target generates the answers in bf16 (batched; 5x float32's speed)
    "vocab": 8192,              # the drafters' output vocabulary (FR-Spec)
    "seq_len": 384,
    "batch": 16,
    "val_fraction": 0.02,
    "distill": 0.5,             # loss = 0.5 cross-entropy on the target's tokens + 0.5 KL to its top-16
    "models": {
        "mid": {"arch": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
                         "num_attention_heads": 4}, "epochs": 2, "lr": 2e-3,
                "then": {"epochs": 3, "lr": 1e-3}},   # a warm restart: after 2 epochs mid agreed less than small
        "small": {"arch": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
                           "num_attention_heads": 2}, "epochs": 4, "lr": 3e-3},
    },
    # a second round (`distill_more`): the target's answers to the next 2,048 train questions, and each
    # drafter trained on to them from the first round's weights (same loss, a new warm-up and cosine)
    "more": {"questions": [2048, 4096],
             "models": {"mid": {"epochs": 3, "lr": 1e-3}, "small": {"epochs": 3, "lr": 2e-3}}},
    # general-purpose drafters (`distill_general`, the family smollm2-general): the target's answers to
    # requests it wrote itself (Magpie), mixed with as many GSM8K answers of the second round
    "general": {"requests": 1024, "request_tokens": 96, "seed": 0, "gsm8k": 1024,
                "models": {"mid": {"epochs": 3, "lr": 1e-3}, "small": {"epochs": 3, "lr": 2e-3}}},
}
#: the whole recipe in a minute (tests): 8 questions, 16 new tokens, two tiny drafters
TOY_RECIPE = {**RECIPE, "questions": 8, "max_new_tokens": 16, "vocab": 256, "val_fraction": 0.25, "batch": 4,
              "models": {"mid": {"arch": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                          "num_attention_heads": 2}, "steps": 4, "lr": 3e-3},
                         "small": {"arch": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                            "num_attention_heads": 1}, "steps": 4, "lr": 3e-3}},
              "more": {"questions": [8, 12], "models": {"mid": {"steps": 2, "lr": 1e-3},
                                                          "small": {"steps": 2, "lr": 1e-3}}},
              "general": {"requests": 4, "request_tokens": 16, "seed": 0, "gsm8k": 4,
                          "models": {"mid": {"steps": 2, "lr": 1e-3}, "small": {"steps": 2, "lr": 1e-3}}}}
RECIPES = {"full": RECIPE, "toy": TOY_RECIPE}
#: what a drafter folder holds (copied from the training folder in the cache into the family folder)
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "training.json", "loss_log.jsonl")


def answers_for(questions: list[str], target_dir, recipe: dict = RECIPE, cache=None, progress: bool = True,
                first: int = 0, origin: str | None = None):
    """(tokenizer, rows): the target's greedy answers to `questions` (chat template), from the cache or
    generated now (`generate_answers`). `first`: the index of ``questions[0]`` in GSM8K's training split
    (answers to questions further on are cached in a folder of their own); `origin`: where the questions
    come from when they are not GSM8K's (e.g. the target's own requests), a folder of its own too)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .smollm2 import cache_root
    from .zoo import chat_ids

    tok = AutoTokenizer.from_pretrained(target_dir)
    prompts = [chat_ids(tok, q) for q in questions]
    done_file = Path(target_dir) / "converted.json"      # smollm2.convert's record: the GGUF's checksum
    source = json.loads(done_file.read_text())["gguf_sha256"] if done_file.is_file() else str(target_dir)
    key = settings_key(target=source,
                       dtype=recipe["dtype"], max_new_tokens=recipe["max_new_tokens"], top_k=recipe["top_k"],
                       batch=SHARD, **({"first": first} if first else {}),
                       **({"origin": origin} if origin else {}))
    folder = Path(cache or cache_root()) / "smollm2" / f"answers-{key}"
    done = sum(1 for _ in folder.glob("shard-*.pt")) if folder.is_dir() else 0
    if done * SHARD >= len(prompts):
        model = None                     # every shard is cached: no need to load the target
    else:
        model = AutoModelForCausalLM.from_pretrained(target_dir, dtype=getattr(torch, recipe["dtype"])).eval()
    return tok, generate_answers(model, tok, prompts, folder, max_new_tokens=recipe["max_new_tokens"],
                                 batch=SHARD, top_k=recipe["top_k"], progress=progress)


def _train_or_reuse(folder: Path, config, train, val, cfg, teacher, init_from, progress):
    """(model, summary) of `training.train_model` in `folder` (resumable), or of the model a complete run
    left there before."""
    from transformers import LlamaForCausalLM

    from .training import train_model

    done = folder / "training.json"
    if done.is_file() and json.loads(done.read_text()).get("complete"):
        return LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32), json.loads(done.read_text())
    return train_model(config, train, val, cfg, out_dir=folder, teacher=teacher, init_from=init_from, progress=progress)


def distill_family(out_dir, data_dir=None, recipe: dict = RECIPE, only=None, cache=None, progress: bool = True,
                   seed: int = 0) -> dict:
    """The smollm2 family's drafters and bigram table in `out_dir` (``data/models/smollm2``): the target's
    answers to the first ``recipe["questions"]`` GSM8K train questions, the drafters' vocabulary
    (``vocab.json``), each drafter trained (in the cache, resumable, then copied to `out_dir/<name>`) and
    MaG's bigram table (``bigram.json``) over the target's tokenizer; returns what it measured."""
    import shutil
    from dataclasses import replace

    from .datasets import load_gsm8k
    from .mag import BigramTable
    from .smollm2 import cache_root, target_dir
    from .training import TrainConfig

    out_dir = Path(out_dir)
    tdir = target_dir(cache, progress=progress)
    questions = [x["question"] for x in load_gsm8k("train", data_dir)][:recipe["questions"]]
    tok, rows = answers_for(questions, tdir, recipe, cache, progress)
    full = len(tok)
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    val_rows, train_rows = held_out(rows, recipe["val_fraction"], seed)
    vocab = frequent_tokens(train_rows, recipe["vocab"], keep=[t for t in special.values() if t is not None],
                            vocab_size=full)
    table = local_ids(vocab, full)
    train_seqs, val_seqs = sequences(train_rows, table), sequences(val_rows, table)
    teacher = SoftLabels(train_rows, train_seqs, table, recipe["seq_len"]) if recipe["distill"] > 0 else None
    report = {"questions": len(rows), "answer_tokens": sum(len(r["answer"]) for r in rows),
              "answers_ending_in_eos": sum(r["answer"][-1] == tok.eos_token_id for r in rows if r["answer"]),
              "vocab": len(vocab), "vocab_coverage_val": round(coverage(val_rows, vocab), 5), "models": {}}
    settings = {k: v for k, v in recipe.items() if k not in ("models", "more")}
    work = Path(cache or cache_root()) / "smollm2" / f"train-{settings_key(**settings, vocab_ids=vocab, seed=seed)}"
    for name, spec in recipe["models"].items():
        if only and name not in only:
            continue
        config = drafter_config(spec["arch"], vocab, special)
        cfg = TrainConfig(epochs=spec.get("epochs"), steps=spec.get("steps"), lr=spec["lr"], warmup=100,
                          batch=recipe["batch"], seq_len=recipe["seq_len"], seed=seed, distill=recipe["distill"],
                          save_dtype=torch.bfloat16)
        model, summary = _train_or_reuse(work / name, config, train_seqs, val_seqs, cfg, teacher, None, progress)
        folder = work / name
        if "then" in spec:                    # a second stage, warm-started from the first
            stage1, folder = summary, work / f"{name}.2"
            model, summary = _train_or_reuse(folder, config, train_seqs, val_seqs,
                                             replace(cfg, epochs=spec["then"]["epochs"], lr=spec["then"]["lr"]),
                                             teacher, work / name, progress)
            summary["stage_1"] = {k: stage1[k] for k in ("steps", "epochs", "lr", "val_loss", "train_time_s")}
        summary["recipe"] = settings
        dest = out_dir / name
        dest.mkdir(parents=True, exist_ok=True)
        for f in MODEL_FILES:
            shutil.copy2(folder / f, dest / f)
        (dest / "vocab.json").write_text(json.dumps({"target_vocab_size": full, "ids": vocab}))
        summary["agreement_val"] = round(agreement(model, val_rows, table, vocab), 4)
        (dest / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
        report["models"][name] = {"parameters": summary["parameters"], "val_loss": summary["val_loss"],
                                  "agreement_val": summary["agreement_val"], "train_time_s": summary["train_time_s"]}
        if progress:
            print(f"{name}: {report['models'][name]}", flush=True)
    # what the target writes: its answers (after the assistant's header), not the questions
    BigramTable.from_sequences([r["prompt"][-2:] + r["answer"] for r in train_rows], vocab_size=full).save(
        out_dir / "bigram.json")
    if recipe.get("more"):
        report["more"] = distill_more(out_dir, data_dir, recipe, only, cache, progress, seed)
    return report


def distill_more(out_dir, data_dir=None, recipe: dict = RECIPE, only=None, cache=None, progress: bool = True,
                 seed: int = 0) -> dict:
    """The recipe's second round (``recipe["more"]``): the target's answers to GSM8K train questions
    ``[first, last)`` (cached like the first round's), 2 % held out, and each drafter of `out_dir` trained on
    to them from its first-round weights, with its own vocabulary and the same loss. A drafter whose
    ``training.json`` already records this round is left as it is. Returns, per drafter, its held-out
    agreement on the new answers before and after."""
    import shutil

    from transformers import LlamaForCausalLM

    from .datasets import load_gsm8k
    from .smollm2 import cache_root, target_dir
    from .training import TrainConfig

    out_dir, spec = Path(out_dir), recipe["more"]
    first, last = spec["questions"]
    tdir = target_dir(cache, progress=progress)
    questions = [x["question"] for x in load_gsm8k("train", data_dir)][first:last]
    tok, rows = answers_for(questions, tdir, recipe, cache, progress, first=first)
    val_rows, train_rows = held_out(rows, recipe["val_fraction"], seed)
    report = {"questions": [first, first + len(rows)], "answer_tokens": sum(len(r["answer"]) for r in rows),
              "models": {}}
    for name, m in spec["models"].items():
        if only and name not in only:
            continue
        dest = out_dir / name
        before = json.loads((dest / "training.json").read_text())
        if before.get("more", {}).get("questions") == report["questions"]:
            report["models"][name] = {"skipped": "already trained on these answers"}
            continue
        vocab = json.loads((dest / "vocab.json").read_text())["ids"]
        table = local_ids(vocab, len(tok))
        train_seqs, val_seqs = sequences(train_rows, table), sequences(val_rows, table)
        teacher = SoftLabels(train_rows, train_seqs, table, recipe["seq_len"]) if recipe["distill"] > 0 else None
        config = {k: v for k, v in json.loads((dest / "config.json").read_text()).items()
                  if k not in ("architectures", "dtype", "transformers_version")}
        cfg = TrainConfig(epochs=m.get("epochs"), steps=m.get("steps"), lr=m["lr"], warmup=100,
                          batch=recipe["batch"], seq_len=recipe["seq_len"], seed=seed, distill=recipe["distill"],
                          save_dtype=torch.bfloat16)
        start = LlamaForCausalLM.from_pretrained(dest, dtype=torch.float32)
        agreement_before = round(agreement(start, val_rows, table, vocab), 4)
        weights = hashlib.sha256((dest / "model.safetensors").read_bytes()).hexdigest()[:12]
        work = Path(cache or cache_root()) / "smollm2" / f"more-{settings_key(**spec, m=m, init=weights, seed=seed)}"
        model, summary = _train_or_reuse(work / name, config, train_seqs, val_seqs, cfg, teacher, dest, progress)
        for f in ("config.json", "generation_config.json", "model.safetensors"):
            shutil.copy2(work / name / f, dest / f)
        shutil.copy2(work / name / "loss_log.jsonl", dest / "loss_log.more.jsonl")
        after = round(agreement(model, val_rows, table, vocab), 4)
        summary = {**before, "more": {"questions": report["questions"], "answer_tokens": report["answer_tokens"],
                                      **{k: summary[k] for k in ("steps", "epochs", "lr", "val_loss", "train_time_s",
                                                                 "threads", "final_train_loss")},
                                      "agreement_val_before": agreement_before, "agreement_val": after}}
        (dest / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
        report["models"][name] = summary["more"]
        if progress:
            print(f"{name} (more): agreement on the new held-out answers {agreement_before} -> {after}", flush=True)
    return report


# --------------------------------------------------------------------------------------------------
# General-purpose drafters: the family smollm2-general
# --------------------------------------------------------------------------------------------------

def remap_vocab(model, old: list[int], new: list[int]) -> None:
    """Move a drafter's embedding rows (tied to its output layer) from vocabulary `old` to `new` (same
    size, each plus one row for every other token), in place: a token in both keeps its trained row, a
    token new to it starts from the old "every other token" row."""
    if len(old) != len(new):
        raise CSDValueError(f"vocabularies: expected the same size, got {len(old)} and {len(new)}")
    pos = {t: i for i, t in enumerate(old)}
    rows = torch.tensor([pos.get(t, len(old)) for t in new] + [len(old)])
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        emb.copy_(emb[rows].clone())
        head = model.get_output_embeddings()
        if head is not None and head.weight is not emb:
            head.weight.copy_(head.weight[rows].clone())


def distill_general(out_dir, base_dir, data_dir=None, recipe: dict = RECIPE, only=None, cache=None,
                    progress: bool = True, seed: int = 0) -> dict:
    """General-purpose drafters for SmolLM2 (the family smollm2-general, `out_dir`), from `base_dir`'s
    (smollm2's, distilled on GSM8K): the target's greedy answers to ``recipe["general"]["requests"]``
    requests it wrote itself (`self_instructions`; any that shares 8 words in a row with a Spec-Bench
    question, when that file is at hand, is dropped), mixed with as many of the second round's GSM8K
    answers; a vocabulary of their own (FR-Spec, over both), each drafter started from `base_dir`'s
    weights (`remap_vocab`) and trained on the mix with the first round's loss; MaG's bigram table over
    both. Returns the held-out agreement on each source, before (the GSM8K drafter) and after."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from .datasets import load_gsm8k, load_spec_bench
    from .errors import MissingFileError
    from .mag import BigramTable
    from .smollm2 import cache_root, target_dir
    from .training import TrainConfig

    out_dir, base_dir, g = Path(out_dir), Path(base_dir), recipe["general"]
    root = Path(cache or cache_root()) / "smollm2"
    tdir = target_dir(cache, progress=progress)
    tok = AutoTokenizer.from_pretrained(tdir)
    origin = f"requests-seed{g['seed']}-{g['request_tokens']}"
    model = AutoModelForCausalLM.from_pretrained(tdir, dtype=getattr(torch, recipe["dtype"])).eval()
    requests = self_instructions(model, tok, g["requests"], root / origin, seed=g["seed"],
                                 max_new_tokens=g["request_tokens"], progress=progress)
    del model
    try:
        refs = [t for q in load_spec_bench(data_dir=data_dir) for t in q["turns"]]
    except MissingFileError:
        refs = []
    dropped = overlapping(requests, refs)
    requests = [r for i, r in enumerate(requests) if i not in set(dropped)]
    _, own_rows = answers_for(requests, tdir, recipe, cache, progress, origin=origin)
    first = recipe["more"]["questions"][0]
    questions = [x["question"] for x in load_gsm8k("train", data_dir)][first:first + g["gsm8k"]]
    _, gsm_rows = answers_for(questions, tdir, recipe, cache, progress, first=first)
    own_val, own_train = held_out(own_rows, recipe["val_fraction"], seed)
    gsm_val, gsm_train = held_out(gsm_rows, recipe["val_fraction"], seed)
    train_rows, full = own_train + gsm_train, len(tok)
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    vocab = frequent_tokens(train_rows, recipe["vocab"], keep=[t for t in special.values() if t is not None],
                            vocab_size=full)
    table = local_ids(vocab, full)
    report = {"requests": len(requests), "requests_dropped_spec_bench_overlap": len(dropped),
              "spec_bench_checked": bool(refs), "gsm8k_questions": [first, first + len(gsm_rows)],
              "answer_tokens": {"requests": sum(len(r["answer"]) for r in own_rows),
                                "gsm8k": sum(len(r["answer"]) for r in gsm_rows)},
              "vocab_coverage_val": {"requests": round(coverage(own_val, vocab), 5),
                                     "gsm8k": round(coverage(gsm_val, vocab), 5)},
              "models": {}}
    train_seqs = sequences(train_rows, table)
    val_seqs = sequences(own_val + gsm_val, table)
    teacher = SoftLabels(train_rows, train_seqs, table, recipe["seq_len"]) if recipe["distill"] > 0 else None
    for name, m in g["models"].items():
        if only and name not in only:
            continue
        base = base_dir / name
        old_vocab = json.loads((base / "vocab.json").read_text())["ids"]
        old_table = local_ids(old_vocab, full)
        start = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
        before = {"requests": round(agreement(start, own_val, old_table, old_vocab), 4),
                  "gsm8k": round(agreement(start, gsm_val, old_table, old_vocab), 4)}
        remap_vocab(start, old_vocab, vocab)
        weights = hashlib.sha256((base / "model.safetensors").read_bytes()).hexdigest()[:12]
        work = root / f"general-{settings_key(**g, m=m, init=weights, vocab_ids=vocab, split_seed=seed)}"
        start.save_pretrained(work / f"{name}.init")
        config = {k: v for k, v in start.config.to_dict().items() if k in json.loads((base / "config.json").read_text())
                  and k not in ("architectures", "dtype", "transformers_version")}
        cfg = TrainConfig(epochs=m.get("epochs"), steps=m.get("steps"), lr=m["lr"], warmup=100,
                          batch=recipe["batch"], seq_len=recipe["seq_len"], seed=seed, distill=recipe["distill"],
                          save_dtype=torch.bfloat16)
        model, summary = _train_or_reuse(work / name, config, train_seqs, val_seqs, cfg, teacher,
                                         work / f"{name}.init", progress)
        after = {"requests": round(agreement(model, own_val, table, vocab), 4),
                 "gsm8k": round(agreement(model, gsm_val, table, vocab), 4)}
        dest = out_dir / name
        dest.mkdir(parents=True, exist_ok=True)
        for f in MODEL_FILES:
            shutil.copy2(work / name / f, dest / f)
        (dest / "vocab.json").write_text(json.dumps({"target_vocab_size": full, "ids": vocab}))
        summary = {**summary, "init_from": f"smollm2/{name} (its vocabulary remapped)",
                   "general": {k: v for k, v in report.items() if k != "models"},
                   "recipe": {k: v for k, v in g.items() if k != "models"},
                   "agreement_val_before": before, "agreement_val": after}
        (dest / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
        report["models"][name] = {"parameters": summary["parameters"], "val_loss": summary["val_loss"],
                                  "train_time_s": summary["train_time_s"], "agreement_val_before": before,
                                  "agreement_val": after}
        if progress:
            print(f"{name} (general): held-out agreement {before} -> {after}", flush=True)
    BigramTable.from_sequences([r["prompt"][-2:] + r["answer"] for r in train_rows], vocab_size=full).save(
        out_dir / "bigram.json")
    if not (out_dir / "family.json").is_file():        # the base family's default until `csd tune` chooses one
        base_info = base_dir / "family.json"     # (a toy base has none: zoo's default cascade then)
        info = json.loads(base_info.read_text()) if base_info.is_file() else {}
        info = {"name": out_dir.name, "target": "smollm2", "prompt": "chat", "drafters": list(g["models"]),
                **{k: info[k] for k in ("default", "defaults") if k in info},
                "default_from": f"{base_dir.name}'s (not tuned for these drafters yet)"}
        (out_dir / "family.json").write_text(json.dumps(info, indent=2) + "\n")
    return report
