"""The target's own text, generated in batches and cached outside git: its greedy answers to prompts, with
its top-k log-probabilities per answer token (the soft labels drafters are distilled from), and requests it
writes itself (Magpie) for general-purpose drafters and for tuning on them.

    rows = generate_answers(model, tokenizer, prompts, cache_dir)    # resumable: one file per shard
    requests = self_instructions(model, tokenizer, 1024, cache_dir)  # the target's own user requests

The cache holds token ids (and the requests' text) only, under ``~/.cache/csdlib`` (or ``$CSD_CACHE``):
GSM8K's text is never written into the project. `csdlib.distill` turns these into drafters.
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
