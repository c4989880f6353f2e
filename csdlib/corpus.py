"""The suffix drafter's corpus for a family, and the replay that measures free drafters.

    answers = target_answers("smollm2", 1024)          # the target's greedy answers to GSM8K train questions
    build_corpus("smollm2", 1024)                      # data/models/smollm2/corpus.npz (``csd corpus``)
    rows = replay(drafter, items, k=8)                 # tokens per target call, as if each draft were verified

The corpus holds the target's own answers as token ids, without the runs they copy from their questions
(no dataset text, never dev or test data): for
smollm2 the answers `csd train` distils from (``distill.answers_for``: bfloat16, batched, 256 new tokens,
cached under ``~/.cache/csdlib``); for the gsm8k families their target's greedy answers in float32
(cached the same way). The replay reads the target's greedy answers to GSM8K *dev* questions (float32,
cached) and drafts at every position the target would call at.
"""

from __future__ import annotations

import time
from pathlib import Path

from .errors import CSDValueError

#: the families whose target writes its answers in its chat template (their answers come from `distill`)
CHAT_FAMILIES = ("smollm2", "smollm2-general")
#: answers per family corpus (the target's answers to the first N GSM8K train questions): replayed on smollm2,
#: tokens per target call reach 2.29 with 400 answers and 2.31 with 1,024 (docs/suffix.md), so 1,024 (256 for
#: gsm8k-base, a slow writer); smollm2-general has smollm2's (the same target) until its own requests' answers join
CORPUS_ANSWERS = {"smollm2": 1024, "smollm2-general": 1024, "gsm8k-tiny": 1024, "gsm8k-base": 256}


def _family_target(name: str, dtype: str = "float32"):
    """(tokenizer, HF target model, encode(question) -> prompt ids, cache folder) of an embedded family,
    loaded without its drafters."""
    import torch
    from transformers import AutoTokenizer

    from . import zoo
    from .smollm2 import cache_root

    _, path, info = zoo.family_info(name)
    if info.get("target") == "smollm2":
        from .smollm2 import target_dir

        source = target_dir()
        tok = AutoTokenizer.from_pretrained(source)
        model = zoo.load_model(source, dtype=getattr(torch, dtype))
        return tok, model, lambda q: zoo.chat_ids(tok, q), cache_root() / "smollm2"
    fam = zoo.load(name, dtype=dtype, progress=False, prepack=False)
    return fam.tokenizer, fam.target.model, fam.prompt_ids, cache_root() / name


#: a run of this many tokens or more that an answer copies from its own prompt (the question restated) is cut
#: out of the corpus: the corpus holds no dataset text, and the request source copies from the prompt anyway
COPIED_RUN = 6


def without_copies(answer: list[int], prompt: list[int], run: int = COPIED_RUN, *others) -> list[list[int]]:
    """The pieces of `answer` left when every stretch covered by a `run`-token window that also occurs in
    `prompt` (or in one of `others`: the dataset's reference answer) is cut out (pieces shorter than 2
    tokens dropped)."""
    windows = {tuple(t[i:i + run]) for t in (prompt, *others) for i in range(len(t) - run + 1)}
    copied = [False] * len(answer)
    for i in range(len(answer) - run + 1):
        if tuple(answer[i:i + run]) in windows:
            copied[i:i + run] = [True] * run
    pieces, piece = [], []
    for token, cut in zip(answer, copied):
        if cut:
            pieces, piece = pieces + [piece], []
        else:
            piece.append(token)
    return [p for p in pieces + [piece] if len(p) >= 2]


def target_answers(name: str, n: int, data_dir=None, progress: bool = True) -> list[list[list[int]]]:
    """The target's greedy answers (token ids, EOS kept where it ended) to GSM8K train questions 0..n-1,
    each as its pieces without what it copies from its question (`without_copies`)."""
    from .datasets import load_gsm8k
    from .distill import RECIPE, SHARD, answers_for, generate_answers, settings_key

    train = load_gsm8k("train", data_dir)
    questions = [x["question"] for x in train]
    if n > len(questions):
        raise CSDValueError(f"n: GSM8K's training split has {len(questions)} questions, asked for {n}")
    if name in CHAT_FAMILIES:               # the answers distillation uses (its cache), in whole shards
        from .smollm2 import target_dir

        tdir = target_dir(progress=progress)
        rows = answers_for(questions[:-(-n // SHARD) * SHARD], tdir, RECIPE, progress=progress)[1]
        return _scrubbed(rows[:n], train, tdir_tokenizer(tdir))
    tok, model, encode, cache = _family_target(name)
    key = settings_key(family=name, dtype="float32", max_new_tokens=RECIPE["max_new_tokens"])
    rows = generate_answers(model, tok, [encode(q) for q in questions[:-(-n // SHARD) * SHARD]], cache / f"answers-{key}",
                            max_new_tokens=RECIPE["max_new_tokens"], batch=SHARD, top_k=1, progress=progress)
    return _scrubbed(rows[:n], train, tok)


def tdir_tokenizer(source):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


def _scrubbed(rows, train, tok) -> list[list[list[int]]]:
    """Each answer's pieces without the runs it copies from its question or from the dataset's reference
    answer to it (a target trained on GSM8K, such as gsm8k-tiny's, writes the reference back)."""
    return [without_copies(list(r["answer"]), list(r["prompt"]), COPIED_RUN,
                           tok(" " + x["answer"])["input_ids"], tok(x["answer"])["input_ids"])
            for r, x in zip(rows, train)]


def build_corpus(name: str, n: int | None = None, out=None, data_dir=None, progress: bool = True) -> Path:
    """The family's ``corpus.npz`` (default: in its folder) from its target's answers to the first n
    GSM8K train questions (default `CORPUS_ANSWERS[name]`); returns its path."""
    n = n if n is not None else CORPUS_ANSWERS.get(name, 1024)
    from . import zoo
    from .suffix import CORPUS_FILE, SuffixCorpus, tokenizer_hash

    _, path, info = zoo.family_info(name)
    tok, vocab_size = _tokenizer(name)
    pieces = [p for answer in target_answers(name, n, data_dir, progress) for p in answer]
    corpus = SuffixCorpus(pieces, vocab_size=vocab_size, tokenizer=tokenizer_hash(tok),
                          source=f"the target's greedy answers to GSM8K train questions 0..{n - 1}, without the "
                                 f"runs of {COPIED_RUN}+ tokens they copy from their questions or reference answers")
    out = Path(out) if out is not None else Path(path) / CORPUS_FILE
    corpus.save(out, meta={"answers": n, "pieces": len(pieces)})
    return out


def _tokenizer(name: str):
    """(tokenizer, the target's vocabulary size) of an embedded family, without loading a model."""
    from transformers import AutoConfig, AutoTokenizer

    from . import zoo

    _, path, info = zoo.family_info(name)
    if info.get("target") == "smollm2":
        from .smollm2 import target_dir

        source = target_dir()
        return AutoTokenizer.from_pretrained(source), AutoConfig.from_pretrained(source).vocab_size
    shared = (path / info["shares"]).resolve() if "shares" in info else path
    return AutoTokenizer.from_pretrained(shared / "tokenizer"), AutoConfig.from_pretrained(path / "target").vocab_size


def dev_items(name: str, n: int, max_new_tokens: int = 128, offset: int = 0, data_dir=None,
              progress: bool = True) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, the target's greedy answer ids) for GSM8K dev questions offset..offset+n-1: float32,
    batched (left padded), cached; EOS kept where the answer ended."""
    from .datasets import load_gsm8k
    from .distill import generate_answers, settings_key

    questions = [x["question"] for x in load_gsm8k("dev", data_dir)][offset:offset + n]
    tok, model, encode, cache = _family_target(name)
    key = settings_key(family=name, dtype="float32", max_new_tokens=max_new_tokens, dev=offset, batch=10)
    rows = generate_answers(model, tok, [encode(q) for q in questions], cache / f"dev-answers-{key}",
                            max_new_tokens=max_new_tokens, batch=10, top_k=1, progress=progress)
    return [(list(r["prompt"]), list(r["answer"])) for r in rows]


def replay(drafter, items, k: int, timer: list | None = None, latency: dict | None = None) -> dict:
    """Speculative decoding with a free drafter replayed on known greedy answers: at each position the
    drafter proposes up to k tokens, the longest prefix that the answer goes on with is accepted and the
    target adds its own token. Returns target calls, tokens, tokens per call, the tokens drafted and the
    calls with no draft; with `latency` (name -> a target's latency fit, e.g. ``{"float32": {"a1", "a",
    "b"}}``) the speedup over plain decoding that each fit predicts (a call verifying d drafted tokens
    costs a + b (d + 1), a plain step a1; the drafter is taken as free). `timer`: each propose call's
    seconds are appended to it."""
    calls = tokens = drafted = empty = 0
    fed: list[int] = []
    for prompt, answer in items:
        drafter.start(prompt)
        p = 0
        while p < len(answer):
            seq = prompt + answer[:p]
            tic = time.perf_counter()
            draft, _ = drafter.propose(seq, k)
            if timer is not None:
                timer.append(time.perf_counter() - tic)
            n = 0
            while n < len(draft) and p + n < len(answer) and draft[n] == answer[p + n]:
                n += 1
            p += n + 1
            calls, drafted, empty = calls + 1, drafted + len(draft), empty + (not draft)
            fed.append(len(draft))
        tokens += len(answer)
        if callable(getattr(drafter, "remember", None)):
            drafter.remember(answer)
    out = {"calls": calls, "tokens": tokens, "tokens_per_call": tokens / max(1, calls), "drafted": drafted,
           "empty_calls": empty}
    for name, fit in (latency or {}).items():
        seconds = sum(fit["a1"] if d == 0 else fit["a"] + fit["b"] * (d + 1) for d in fed)
        out[f"x AR {name}"] = tokens * fit["a1"] / seconds if seconds else None
    return out
