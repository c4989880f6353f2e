"""Stress run: >= 1000 random greedy cascades, and 1000 with tree drafts, against transformers' own
`generate(do_sample=False)`.

Not part of the main suite (marker `stress`, deselected by default); CI runs it after the main suite:

    python -m pytest -n 2 -m stress                       # a new random seed every run
    CSD_STRESS_SEED=1234 python -m pytest -m stress        # replay a failing run (the seed is printed)
    CSD_STRESS_CASES=100 ...                               # fewer cases per model kind (default 500)

Each case draws: the kind (decoder-only Llama or encoder-decoder T5, one test each), a target of random
width / depth, 0-3 neural drafters (the target's twin, noisy copies, unrelated small models) with and
without a free drafter at the bottom (MaG with a random k and bigram table, or the suffix drafter over a
random corpus), a random k-matrix, lenience, prompt (random or with repeats),
max_new_tokens and EOS (none, one token of the target's own output, or several). Float64 models: the
cascade and `generate` then agree to ~1e-15, so any difference is a bug, not a near-tie.
"""

import os
import random

import pytest
import torch

import csdlib
from csdlib import BigramTable, HFModel, MaG, Tree
from csdlib.precision import audit, counts, float32_logits
from csdlib.suffix import SuffixCorpus, SuffixDrafter

from tiny import hf_greedy, llama, perturbed, t5

pytestmark = pytest.mark.stress

SEED = int(os.environ.get("CSD_STRESS_SEED") or random.SystemRandom().randrange(2**31))
CASES = int(os.environ.get("CSD_STRESS_CASES", "500"))   # per kind: 2 x 500 = 1000 cascades
VOCAB = 64


def pools(kind: str, rng: random.Random):
    """A few targets, each with its pool of candidate drafters (built once per test: building is slow)."""
    make = llama if kind == "llama" else t5
    out = []
    for t in range(3):
        width, layers = rng.choice([16, 32]), rng.choice([1, 2])
        seed = rng.randrange(10**6)
        target = make(seed, hidden=width, layers=layers, vocab=VOCAB) if kind == "llama" else \
            make(seed, d_model=width, layers=layers, vocab=VOCAB)
        small = make(seed + 1, hidden=16, layers=1, vocab=VOCAB) if kind == "llama" else \
            make(seed + 1, d_model=16, layers=1, vocab=VOCAB)
        drafters = [perturbed(target, 0.0, 1), perturbed(target, 0.01, 2), perturbed(target, 0.05, 3),
                    perturbed(target, 0.2, 4), small]
        out.append((target, drafters))
    return out


def random_case(rng: random.Random, target, pool):
    neural = [HFModel(m, name=f"d{i}") for i, m in enumerate(rng.sample(pool, rng.randint(0, 3)))]
    mag = []
    if rng.random() < 0.6:
        corpus = [[rng.randrange(VOCAB) for _ in range(rng.randint(2, 40))] for _ in range(rng.randint(1, 4))]
        if rng.random() < 0.5:
            mag = [MaG(BigramTable.from_sequences(corpus, VOCAB), k=rng.randint(1, 10))]
        else:                              # the free drafter with a memory: suffix matches in corpus + request
            mag = [SuffixDrafter(SuffixCorpus(corpus, VOCAB, max_order=rng.randint(1, 8)), k=rng.randint(1, 10),
                                 min_prob=rng.choice([0.0, 0.1, 0.5]), alpha=rng.choice([0.0, 1.0]))]
    drafters = neural + mag
    n = len(drafters)
    k_matrix = [[rng.randint(1 if j == i else 0, 4) if j >= i else 0 for j in range(n)] for i in range(n)]
    lenience = rng.choice([1, 1, 1.5, 2, 5, 100])
    prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 48))]
    if rng.random() < 0.3:                 # repeats: MaG's max-gram search finds matches
        prompt = (prompt[:rng.randint(1, 8)] * 48)[:rng.randint(1, 48)]
    return drafters, k_matrix, lenience, prompt, rng.randint(1, 48)


def check_exact_random_cascades(rng: random.Random, target, raw, pool, cases: int, label: str,
                                drafter_cache: str = "dynamic") -> None:
    """Random cascades (chains and small trees, with and without dynamic draft length) over `target` (an
    HFModel or the transformers model `raw` itself), drafters from `pool` on `drafter_cache`: each output
    is transformers' greedy output of `raw`, token for token."""
    for case in range(cases):
        drafters, k_matrix, lenience, prompt, max_new = random_case(rng, target, pool)
        for d in drafters:
            if isinstance(d, HFModel):
                d.set_cache(drafter_cache)
        tree = (Tree([[rng.randint(1, 3) for _ in range(rng.randint(0, 4))] for _ in range(max(1, len(drafters)))],
                     extend=rng.randint(0, 3)) if rng.random() < 0.3 else None)
        confidence = rng.choice([None, None, 0.5])
        out = csdlib.generate(target, drafters, prompt, k_matrix=k_matrix, lenience=lenience,
                              max_new_tokens=max_new, tree=tree, confidence=confidence)
        ref = hf_greedy(raw, prompt, max_new)[0].tolist()
        assert out.sequences[0].tolist() == ref, (f"{label} case {case}: K={k_matrix} lenience={lenience} "
                                                  f"tree={tree} confidence={confidence} prompt={prompt}")


def check_bf16_random_cascades(rng: random.Random, cases: int, prepare=lambda target, pool: target,
                               drafter_cache: str = "dynamic") -> None:
    """Random bfloat16 cascades over a Llama target with a float32 output layer (`prepare(target, pool)`
    may pack or wrap it; the drafters run on `drafter_cache`): no output WRONG against the target's own
    autoregressive one (`csdlib.precision.audit`)."""
    plain = llama(rng.randrange(10**6), vocab=VOCAB).to(torch.bfloat16)
    pool = [perturbed(plain, noise, i) for i, noise in enumerate([0.0, 0.02, 0.2])]
    target = prepare(float32_logits(plain), pool)
    verdicts = []
    for case in range(cases):
        drafters, k_matrix, lenience, prompt, max_new = random_case(rng, target, pool)
        for d in drafters:
            if isinstance(d, HFModel):
                d.set_cache(drafter_cache)
        ref = csdlib.generate(target, [], prompt, max_new_tokens=max_new).new_tokens
        out = csdlib.generate(target, drafters, prompt, k_matrix=k_matrix, lenience=lenience,
                              max_new_tokens=max_new).new_tokens
        verdicts.append(audit(target, prompt, ref, out))
        assert verdicts[-1].verdict != "WRONG", (case, k_matrix, prompt, verdicts[-1])
    assert counts(verdicts)["identical"] + counts(verdicts)["tie"] == cases


def check_random_case(rng: random.Random, kind: str, targets, case: int, tree: bool = False):
    target, pool = rng.choice(targets)
    drafters, k_matrix, lenience, prompt, max_new = random_case(rng, target, pool)
    free = hf_greedy(target, prompt, max_new)[0].tolist()
    new = free[(1 if kind == "t5" else len(prompt)):]
    eos, ref = None, free
    choice = rng.random()
    if choice < 0.4 and new:           # one token of the target's own output is the EOS
        eos = new[rng.randrange(len(new))]
    elif choice < 0.55 and new:        # several EOS ids
        eos = sorted({new[rng.randrange(len(new))], rng.randrange(VOCAB)})
    if eos is not None:
        ref = hf_greedy(target, prompt, max_new, eos=eos)[0].tolist()
    confidence = rng.choice([None, None, 0.2, 0.5, 0.9])      # dynamic draft length or not
    shape = None
    if tree:                           # widths 1-4 at the first 0-8 draft positions of each level
        shape = Tree([[rng.randint(1, 4) for _ in range(rng.randint(0, 8))] for _ in range(max(1, len(drafters)))],
                     extend=rng.randint(0, 4), budget=rng.choice([None, None, 1, 2, 4, 8]))
    out = csdlib.generate(target, drafters, prompt, k_matrix=k_matrix, lenience=lenience,
                          max_new_tokens=max_new, eos_token_id=eos, confidence=confidence, tree=shape)
    where = (f"stress seed {SEED} ({kind}, case {case}; replay: CSD_STRESS_SEED={SEED} pytest -m stress): "
             f"confidence={confidence} tree={shape} "
             f"drafters={[d.name for d in drafters]} mag_k={[d.k for d in drafters if isinstance(d, MaG)]} "
             f"K={k_matrix} lenience={lenience} prompt={prompt} max_new_tokens={max_new} eos={eos}")
    assert out.sequences[0].tolist() == ref, where
    assert len(out.new_tokens) == out.stats.new_tokens, where
    top = out.stats.levels[0]
    if drafters:      # each review adds its accepted tokens + 1 (the last one may be cut after EOS)
        assert len(out.new_tokens) <= top.accepted + top.reviews <= len(out.new_tokens) + 1, where


@pytest.mark.parametrize("tree", [False, True], ids=["chain", "tree"])     # tree drafts: 2 x 500 more
@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_random_greedy_cascades_equal_generate(kind, tree):
    torch.set_num_threads(1)
    rng = random.Random(f"{SEED}-{kind}" + ("-tree" if tree else ""))
    targets = pools(kind, rng)
    for case in range(CASES):
        check_random_case(rng, kind, targets, case, tree=tree)
