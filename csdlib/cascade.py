"""Cascade Speculative Drafting (Chen et al., NeurIPS 2024): lossless, greedy or sampling.

Models are ordered `target, d_1, ..., d_n`, largest first; `d_n` is usually MaG. The k-matrix is the
seed's: an n x n upper-triangular matrix whose row i belongs to the model at level i (row 0 = the
target) and whose column c counts the draft tokens that drafter d_{c+1} adds for that reviewer.

One *step* of level i:

- **horizontal cascade**: the drafters below i fill the draft in turn, largest first: drafter j keeps
  drafting until the draft holds `sum(K[i][i:j])` tokens (its share is `K[i][j-1]`);
- **vertical cascade**: a neural drafter never decodes on its own: each of its drafting turns is
  itself a step of its level, reviewing what the drafters below it proposed;
- **review**: level i runs one forward pass over the draft and keeps the accepted prefix plus one
  token of its own (its correction, or a bonus token after a full accept).

The bottom drafter decodes on its own: a neural one decodes the tokens asked for; a free drafter such as
MaG decides itself how many to propose: what was asked, at most its own k per call (in seed mode,
`MaG(seed_mode=True)`, always its own k whatever the k-matrix entry says, as the seed's code did;
`csdlib.compat` uses that). Generation repeats
steps of level 0 until `max_new_tokens` or EOS.

**Greedy**: the target accepts a token only if it is its own argmax, so the output is exactly the
target's greedy output. Inner levels may be lenient: a token `x` drafted with probability `q(x)` is
also accepted when `p(x) > q(x) / lenience`.

**Tree drafts** (`tree=Tree(...)`, greedy): a reviewing level verifies a token tree instead of a chain,
in one forward pass (`HFModel.tree_logits`): the draft chain, plus at chosen draft positions the best
other candidates of the model that chose the chain's token there (a neural drafter's top-n; MaG's
tokens have none), each continued by the bottom free drafter. It keeps the longest root path of its
own choices (lenient at inner levels, as in the chain) plus one token of its own, and only that path in
its KV cache. The target still accepts only its argmax: the output stays the target's greedy output.

**Sampling** (speculative sampling at every level): accept `x` with probability `min(1, p(x)/q(x))`;
on rejection draw from `norm(max(p - q, 0))`; after a full accept draw a bonus token from `p`. `p` and
`q` are distributions after the same temperature / top-k / top-p. Why it stays lossless through the
cascade: a review by speculative sampling outputs tokens distributed exactly as its reviewer's own
sampling, token by token given everything before (also across the steps that the horizontal loop
strings together, whose number depends only on the past). So each draft token the level above sees
was drawn from a known distribution `q`: that of the level which produced it (a point mass for MaG),
which is what the level above uses. Lenience > 1 would break this (the lenient level's output
distribution is no longer its own `p`, and it has no closed form), so it is refused with sampling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from transformers import (GenerationConfig, LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper,
                          TopPLogitsWarper)

from .errors import CSDValueError
from .models import as_model, tree_depths
from .stats import Stats


# ---------------------------------------------------------------- what the cascade talks to


@runtime_checkable
class Model(Protocol):
    """A cascade member. Neural models (`csdlib.HFModel`) review with `logits`; a *free* drafter such as
    MaG (`free = True`: no forward pass, cost 0, point-mass proposals) can only be the bottom drafter and
    decides itself how many tokens to `propose` when the cascade asks for `need`. Every member carries
    its own counters since `start()` (the cascade's `Stats` reads them) and its `fingerprint()`."""
    name: str
    vocab_size: int
    cost: float           # cost of one call in the parameter cost model (0 for a free drafter)
    calls: int            # calls (forwards, or a free drafter's proposals)
    tokens_fed: int       # tokens fed to its forwards (prefill included; 0 for a free drafter)
    one_token_calls: int  # forwards that fed exactly one token
    encoder_calls: int    # encoder forwards (one per prompt for an encoder-decoder model)

    def start(self, prompt_ids: list[int]): ...

    def fingerprint(self) -> str: ...    # a short hash of its behaviour (records and calibrations are keyed by it)


class Reviewer(Model, Protocol):
    free: bool            # False (or absent)
    replays: bool         # True (or absent) for a stand-in that replays cached greedy outputs (CachedTarget)
    is_encoder_decoder: bool

    def logits(self, seq: list[int], n: int) -> torch.Tensor: ...


class FreeDrafter(Model, Protocol):
    free: bool            # True

    def propose(self, seq: list[int], need: int) -> tuple[list[int], list]: ...


def is_free(model) -> bool:
    """True for a free drafter (MaG): proposes point masses, costs nothing, cannot review."""
    return bool(getattr(model, "free", False))


def replays(model) -> bool:
    """True for a target that replays cached greedy outputs (`CachedTarget`): it cannot sample, and its
    calls run no forward (wall times mean nothing)."""
    return bool(getattr(model, "replays", False))


def fingerprint(model) -> str:
    """The member's `fingerprint()`: a short hash of its behaviour (an HF model's config,
    generation_config and every weight; MaG's table and k; a `CachedTarget`'s target's)."""
    if not callable(getattr(model, "fingerprint", None)):
        raise CSDValueError(f"model: cannot fingerprint {type(model).__name__}; it has no fingerprint() method")
    return model.fingerprint()


@dataclass(frozen=True)
class Tree:
    """The shape of tree drafts. `widths[i][d]`: candidates at draft position d of level i's review (1:
    the chain's token only; rows and positions not given: 1); the extra candidates are the best other
    tokens of the model that chose the chain's token there. `extend`: tokens of the bottom free drafter
    (MaG) that continue each extra candidate (free; 0 without MaG).

        Tree([[3, 2, 2]], extend=2)    # the target's review: 2 + 1 + 1 side branches of 3 tokens each
    """
    widths: tuple = ()
    extend: int = 0

    def width(self, level: int, position: int) -> int:
        row = self.widths[level] if level < len(self.widths) else ()
        return row[position] if position < len(row) else 1

    @property
    def most(self) -> int:
        """The largest width: how many candidates per position the cascade notes."""
        return max([1, *(w for row in self.widths for w in row)])


@dataclass
class Output:
    sequences: torch.Tensor   # (1, L): decoder-only: prompt + new tokens; enc-dec: decoder tokens from start
    new_tokens: list[int]     # the target's own continuation, cut at max_new_tokens / after EOS
    stats: Stats = field(default_factory=Stats)
    trees: list = field(default_factory=list)   # tree drafts: every verified tree (see Cascade.review_tree)


def generate(target, drafters, prompt_ids, *, k_matrix=None, lenience: float = 1.0,
             max_new_tokens: int = 128, eos_token_id=None, do_sample: bool = False,
             temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
             seed: int | None = None, generator: torch.Generator | None = None,
             confidence: float | None = None, tree: Tree | None = None) -> Output:
    """CS Drafting: exactly `target`'s own output (greedy), or its own distribution (sampling).

    Exactness, in a GPU user's words: in float32 the output is the target's greedy output, token for
    token. In bfloat16 / float16 it is identical except at positions where the target's own two best
    tokens are tied within the resolution of its logits there (a k-token verification and a one-token
    step round differently; transformers' assisted generation does the same); any other difference is a
    bug. Sampling: exactly the target's distribution given the logits the target computed.
    `csdlib.precision.audit` tells a tie from a bug; `csdlib.precision.float32_logits` (on by default in
    `zoo.load` for half precision) makes ties rare.

    Args:
        target: an `HFModel` or a transformers model (wrapped).
        drafters: models largest first, MaG (if any) last; `[]` is plain autoregressive decoding.
        prompt_ids: token ids (list, 1-D tensor or a (1, L) tensor).
        k_matrix: n x n upper-triangular non-negative ints, n = len(drafters); `[[k]]` with one
            drafter is classic speculative decoding with k draft tokens.
        lenience: >= 1; used at inner levels only (the target always reviews strictly); greedy only.
        max_new_tokens: tokens to generate at most.
        eos_token_id: int or list; defaults to the target's generation_config / config.
        do_sample: speculative sampling at every level instead of greedy review.
        temperature, top_k, top_p: as `target.generate(do_sample=True, ...)`: a value not given comes
            from the target's `generation_config`, else transformers' default (temperature 1,
            top_k 50, top_p 1); `top_k=0` turns top-k off. Applied to every model of the cascade.
        seed / generator: source of randomness for sampling (same seed, same output).
        confidence: dynamic draft length (greedy only): a level stops drafting, and reviews what it
            has, as soon as a neural drafter's newest token had probability below `confidence` under
            that drafter (as transformers' `assistant_confidence_threshold` does for one drafter).
            None (default): every level drafts what its k-matrix row asks for. Still lossless.
        tree: a `Tree` (or its `widths`, a list of rows, one per reviewing level): tree drafts, verified
            in one forward pass per review (greedy only). None (default): chains.

    Returns:
        `Output` with `sequences`, `new_tokens` and `stats` (a `csdlib.Stats`: calls and tokens fed per
        model; drafted / accepted per level and per draft position).
    """
    target = as_model(target)
    drafters = [as_model(d) for d in drafters]
    if do_sample:
        if replays(target):
            raise CSDValueError(f"do_sample: target {target.name!r} replays cached greedy outputs and cannot "
                                "sample; pass the real model as the target")
        sampler = Sampler(**resolve_sampling(target, temperature, top_k, top_p), seed=seed, generator=generator)
    else:
        if temperature is not None or top_k is not None or top_p is not None:
            raise CSDValueError("temperature / top_k / top_p: only used with do_sample=True")
        sampler = None
    cascade = Cascade([target, *drafters], k_matrix, lenience, sampler, confidence, tree)
    prompt = _check_prompt(prompt_ids)
    max_new_tokens = _check_max_new_tokens(max_new_tokens, prompt, cascade.models)
    eos = target.eos_token_ids if eos_token_id is None else _eos_set(eos_token_id)
    return cascade.generate(prompt, max_new_tokens, eos)


#: generation_config fields that change sampling and that the cascade does not apply: refused.
_UNSUPPORTED = {"min_p": None, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "top_h": None,
                "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "bad_words_ids": None,
                "suppress_tokens": None, "begin_suppress_tokens": None}


def resolve_sampling(target, temperature=None, top_k=None, top_p=None) -> dict:
    """temperature / top_k / top_p exactly as `target.generate(do_sample=True, ...)` resolves them:
    the caller's value, else the target's `generation_config`, else transformers' global default."""
    config = getattr(target, "generation_config", None)
    defaults = GenerationConfig._get_default_generation_params()
    given = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    settings = {}
    for key, value in given.items():
        if value is None and config is not None:
            value = getattr(config, key, None)
        settings[key] = defaults[key] if value is None else value
    for key, neutral in _UNSUPPORTED.items():
        value = getattr(config, key, None) if config is not None else None
        if value is not None and value != neutral:
            raise CSDValueError(f"target: its generation_config sets {key}={value!r}, which the cascade does not "
                                f"apply; set model.generation_config.{key} = {neutral!r} first")
    return settings


class Sampler:
    """Sampling settings: transformers' warpers turn logits into the distribution p that is sampled
    (the same warpers, in the same order, as `generate(do_sample=True)`)."""

    def __init__(self, temperature=1.0, top_k=0, top_p=1.0, seed=None, generator=None):
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise CSDValueError(f"temperature: expected a number > 0, got {temperature!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise CSDValueError(f"top_k: expected an int >= 0 (0: no top-k filter), got {top_k!r}")
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise CSDValueError(f"top_p: expected a number in (0, 1], got {top_p!r}")
        self.settings = {"temperature": float(temperature), "top_k": top_k, "top_p": float(top_p)}
        self.warpers = LogitsProcessorList(
            ([TemperatureLogitsWarper(float(temperature))] if temperature != 1.0 else [])
            + ([TopKLogitsWarper(top_k)] if top_k != 0 else [])
            + ([TopPLogitsWarper(float(top_p))] if top_p < 1.0 else []))
        self.generator = generator if generator is not None else torch.Generator()
        if generator is None:
            self.generator.manual_seed(seed) if seed is not None else self.generator.seed()

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Rows of logits -> rows of sampling distributions (the warpers ignore input_ids)."""
        return self.warpers(None, logits).softmax(-1)

    def draw(self, probs: torch.Tensor) -> int:
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def uniform(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.generator)


def _accept_prob(p_x: torch.Tensor, q_x: torch.Tensor) -> torch.Tensor:
    return (p_x / q_x).clamp(max=1.0)              # min(1, p/q)


class Cascade:
    def __init__(self, models, k_matrix, lenience: float = 1.0, sampler: Sampler | None = None,
                 confidence: float | None = None, tree: Tree | None = None):
        self.models = _check_models(models)
        self.tree = _check_tree(tree, self.models, sampler)
        self.k = _check_k_matrix(k_matrix, len(models) - 1)
        self.lenience = _check_lenience(lenience)
        self.confidence = _check_confidence(confidence)
        if sampler is not None and self.confidence is not None:
            raise CSDValueError("confidence: dynamic draft length is implemented for greedy decoding only; "
                                "leave it None with do_sample=True")
        if sampler is not None and self.lenience > 1:
            raise CSDValueError(f"lenience: must be 1 with do_sample=True (got {lenience}); lenient "
                                "acceptance at an inner level changes the distribution its tokens are "
                                "drawn from, and the target's review would no longer be lossless")
        self.sampler = sampler
        self.names = _unique_names(self.models)
        self.reviews = []                  # (level, start, drafted, accepted, ranks or None) of every review
        self.alts = []                     # tree drafts: per position, the other candidates [(token, q)]
        self.trees = []                    # tree drafts: every tree verified (for plots.verified_tree)
        self.switches = [0] * len(self.models)         # per level: forwards right after another model's
        self.last_forward = None                       # the level whose forward ran last

    def generate(self, prompt: list[int], max_new_tokens: int, eos: set[int]) -> Output:
        seq = self.models[0].start(prompt)
        for m in self.models[1:]:
            m.start(prompt)
        self.reviews, self.switches, self.last_forward = [], [0] * len(self.models), None
        self.alts, self.trees = [[] for _ in seq], []
        begin = len(seq)
        limit = begin + max_new_tokens
        while len(seq) < limit:
            before = len(seq)
            seq, _ = self.step(0, seq, [None] * len(seq), need=1, cap=limit)
            hits = [i for i in range(before, len(seq)) if seq[i] in eos]
            if hits:                                   # stop after the first EOS
                seq = seq[:hits[0] + 1]
                break
        return Output(torch.tensor([seq]), seq[begin:], self._stats(len(seq), begin), self.trees)

    def _stats(self, end: int, begin: int) -> Stats:
        """Calls of every model, and acceptance counted only at positions before `end` (the output's
        end: drafts past an EOS were reviewed, but are not part of the output)."""
        stats = Stats.empty(self.names)
        stats.new_tokens = end - begin
        for name, m, switches in zip(self.names, self.models, self.switches):
            stats.calls[name], stats.tokens_fed[name] = m.calls, m.tokens_fed
            stats.encoder_calls[name], stats.one_token_calls[name] = m.encoder_calls, m.one_token_calls
            stats.switch_calls[name] = switches
        for level, start, drafted, accepted, ranks in self.reviews:
            if start < end:
                room = end - start
                stats.levels[level].add_review(min(drafted, room), min(accepted, room),
                                               None if ranks is None else ranks[:room])
        return stats

    def step(self, i: int, seq: list[int], q: list, need: int, cap: int):
        """One step of level i. Returns the longer sequence and, per token, what the level above needs
        to know of how it was drawn (q). Never grows seq beyond cap."""
        if i == len(self.models) - 1:                  # bottom: drafts on its own
            tokens, probs = self.propose(i, seq, need)
            room = cap - len(seq)
            return seq + tokens[:room], q + probs[:room]
        start, row = len(seq), self.k[i]
        for j in range(i + 1, len(self.models)):       # horizontal cascade
            goal = min(start + sum(row[i:j]), cap - 1)   # leave room for the review's own token
            while len(seq) < goal and not self.unsure(q, start):   # vertical cascade: j reviews those below it
                seq, q = self.step(j, seq, q, need=goal - len(seq), cap=cap - 1)
        if self.sampler:
            return self.review_sampling(i, seq, q, start)
        if self.tree and any(self.tree.width(i, d) > 1 for d in range(len(seq) - start)):
            return self.review_tree(i, seq, q, start, cap)
        return self.review_greedy(i, seq, q, start)

    def unsure(self, q: list, start: int) -> bool:
        """Dynamic draft length: the newest draft token (after `start`) had probability below
        `confidence` under the neural drafter that produced it (MaG's tokens have q = 1)."""
        return self.confidence is not None and len(q) > start and q[-1] < self.confidence

    def logits(self, i: int, seq: list[int], n: int) -> torch.Tensor:
        """Level i's logits at the last n positions of seq (one forward). A forward right after another
        model's is slower (that model's weights pushed this one's out of the CPU caches): counted per
        level in `switches` (a generation's first forward counts as one) for the latency model."""
        self.switches[i] += int(self.last_forward != i)
        self.last_forward = i
        return self.models[i].logits(seq, n)

    def tree_logits(self, i: int, seq: list[int], tokens: list[int], parents: list[int]) -> torch.Tensor:
        """Level i's logits after seq and after each node of a token tree below it (one forward)."""
        self.switches[i] += int(self.last_forward != i)
        self.last_forward = i
        return self.models[i].tree_logits(seq, tokens, parents)

    def propose(self, i: int, seq: list[int], n: int):
        """Level i's (the bottom drafter's) own tokens, and q for each (greedy: q(x); sampling: the
        distribution). A free drafter decides itself how many tokens to propose for `n`; its tokens are
        point masses."""
        if is_free(self.models[i]):
            tokens, _ = self.models[i].propose(seq, n)
            self.note(len(seq), [None] * len(tokens), tokens)        # point masses: no alternatives
            return tokens, [1.0 if self.sampler is None else None] * len(tokens)
        seq, tokens, qs = list(seq), [], []
        for _ in range(n):
            logits = self.logits(i, seq, 1).cpu()
            if self.sampler is None:
                token, p = int(logits[0].argmax()), logits.softmax(-1)
                qs.append(float(p[0, token]))
                self.note(len(seq), p, [token])
            else:
                p = self.sampler.probs(logits)[0]
                token = self.sampler.draw(p)
                qs.append(p)
            tokens.append(token)
            seq.append(token)
            if self.unsure(qs, 0):                     # dynamic draft length: stop when unsure
                break
        return tokens, qs

    def review_greedy(self, i: int, seq: list[int], q: list, start: int):
        """Level i keeps the accepted prefix of seq[start:] and appends one token of its own."""
        drafted = torch.tensor(seq[start:], dtype=torch.long)
        logits = self.logits(i, seq, len(drafted) + 1).cpu()
        p = logits.softmax(-1)
        best = logits.argmax(-1)                       # greedy choice per position
        ok = best[:-1] == drafted                      # accept the reviewer's argmax
        if i > 0 and self.lenience > 1:                # inner levels: lenient acceptance
            p_x = p[:-1].gather(1, drafted[:, None])[:, 0]
            ok |= p_x > torch.tensor(q[start:]) / self.lenience
        n = int(ok.cumprod(0).sum())                   # accepted prefix length
        seq = seq[:start + n] + [int(best[n])]         # plus correction or bonus
        q = q[:start] + p[:n + 1].gather(1, torch.tensor(seq[start:])[:, None])[:, 0].tolist()
        self.note(start, p[:n + 1], seq[start:])
        self.reviews.append((i, start, len(drafted), n, None))
        return seq, q

    def review_tree(self, i: int, seq: list[int], q: list, start: int, cap: int):
        """Level i verifies the tree grown from the draft seq[start:] in one forward, keeps the longest
        root path of its own choices and appends one token of its own."""
        tokens, parents, ranks, qs = self.grow_tree(i, seq, q, start, cap)
        logits = self.tree_logits(i, seq[:start], tokens, parents).cpu()   # row 1 + t: after node t
        p = logits.softmax(-1)
        best = logits.argmax(-1)                       # greedy choice after the root and each node
        children = {}
        for t, parent in enumerate(parents):
            children.setdefault(parent, []).append(t)
        node, path = -1, []
        while True:                                    # walk down the reviewer's own choices
            kids = children.get(node, [])
            pick = [t for t in kids if tokens[t] == best[node + 1]]
            if not pick and i > 0 and self.lenience > 1:   # inner levels: lenient acceptance
                pick = [t for t in kids if p[node + 1, tokens[t]] > qs[t] / self.lenience]
            if not pick:
                break
            node = pick[0]
            path.append(node)
        self.models[i].keep_path(path)                 # the cache keeps the accepted path only
        new = [tokens[t] for t in path] + [int(best[node + 1])]   # plus correction or bonus
        rows = p[[0] + [t + 1 for t in path]]
        seq, q = seq[:start] + new, q[:start] + rows.gather(1, torch.tensor(new)[:, None])[:, 0].tolist()
        self.note(start, rows, new)
        depth = max(tree_depths(parents)) + 1          # the tree's deepest draft position + 1
        self.reviews.append((i, start, depth, len(path), [ranks[t] for t in path]))
        self.trees.append({"level": i, "start": start, "tokens": tokens, "parents": parents, "ranks": ranks,
                           "path": path, "next": new[-1]})
        return seq, q

    def grow_tree(self, i: int, seq: list[int], q: list, start: int, cap: int):
        """The tree level i verifies: the chain seq[start:] (rank 1) and, at draft position d, the
        `tree.width(i, d) - 1` best other candidates noted there (ranks 2, 3, ...), each continued by
        the bottom free drafter. Returns tokens, parents (-1: the root; parents come first), ranks, q."""
        deepest = cap - start - 2                      # an accepted node there still leaves room for one token
        tokens, parents, ranks, qs = [], [], [], []

        def add(token, parent, rank, q_token):
            tokens.append(token), parents.append(parent), ranks.append(rank), qs.append(q_token)
            return len(tokens) - 1

        parent = -1
        for d, token in enumerate(seq[start:]):
            chain = add(token, parent, 1, q[start + d])
            for rank, (alt, q_alt) in enumerate(self.alts[start + d][:self.tree.width(i, d) - 1], start=2):
                branch = add(alt, parent, rank, q_alt)
                for more in self.continue_branch(seq[:start + d] + [alt], min(self.tree.extend, deepest - d)):
                    branch = add(more, branch, 1, 1.0)
            parent = chain
        return tokens, parents, ranks, qs

    def continue_branch(self, seq: list[int], n: int) -> list[int]:
        """Up to n tokens of the bottom free drafter (MaG) after seq: free continuations of a branch."""
        bottom = self.models[-1]
        if n <= 0 or not is_free(bottom):
            return []
        return bottom.propose(seq, n)[0][:n]

    def note(self, start: int, probs, tokens: list[int]) -> None:
        """Tree drafts: remember, for each position from start, the best other candidates (token, q) of
        the model that chose the token there (`probs`: its distributions; None: a point mass)."""
        if self.tree is None:
            return
        alts = []
        for row, token in zip(probs, tokens):
            best = [] if row is None else zip(*[x.tolist() for x in row.topk(min(self.tree.most, len(row)))])
            alts.append([(int(t), float(v)) for v, t in best if t != token][:self.tree.most - 1])
        self.alts = self.alts[:start] + alts

    def review_sampling(self, i: int, seq: list[int], q: list, start: int):
        """Speculative sampling: seq[start:] drawn from q is turned into tokens drawn from level i's p."""
        drafted = torch.tensor(seq[start:], dtype=torch.long)
        p = self.sampler.probs(self.logits(i, seq, len(drafted) + 1).cpu())
        q_rows = torch.stack([torch.nn.functional.one_hot(x, p.shape[-1]).to(p.dtype) if d is None else d
                              for x, d in zip(drafted, q[start:])]) if len(drafted) else p[:0]
        idx = torch.arange(len(drafted))
        ok = self.sampler.uniform(len(drafted)) < _accept_prob(p[idx, drafted], q_rows[idx, drafted])
        n = int(ok.cumprod(0).sum())                   # accepted prefix length
        if n < len(drafted):                           # rejected: draw from norm(max(p - q, 0))
            residual = (p[n] - q_rows[n]).clamp(min=0)
            token = self.sampler.draw(residual if residual.sum() > 0 else p[n])
        else:                                          # all accepted: bonus token from p
            token = self.sampler.draw(p[n])
        seq = seq[:start + n] + [token]
        q = q[:start] + list(p[:n + 1])                # its tokens are now distributed as p
        self.reviews.append((i, start, len(drafted), n, None))
        return seq, q


# ---------------------------------------------------------------- stats and argument checks


def _check_tree(tree, models, sampler) -> Tree | None:
    if tree is None:
        return None
    if isinstance(tree, (list, tuple)):
        tree = Tree(tree)
    if not isinstance(tree, Tree):
        raise CSDValueError(f"tree: expected None, a csdlib.Tree or a list of width rows, got {tree!r}")
    rows = tree.widths
    if not isinstance(rows, (list, tuple)) or any(not isinstance(r, (list, tuple)) for r in rows):
        raise CSDValueError(f"tree: widths must be a list of rows (one per reviewing level), got {rows!r}")
    if len(rows) > max(1, len(models) - 1):
        raise CSDValueError(f"tree: {len(rows)} width rows for {len(models) - 1} reviewing level(s)")
    for i, row in enumerate(rows):
        for d, w in enumerate(row):
            if isinstance(w, bool) or not isinstance(w, int) or w < 1:
                raise CSDValueError(f"tree: widths[{i}][{d}] must be an int >= 1 (1: the chain only), got {w!r}")
    if isinstance(tree.extend, bool) or not isinstance(tree.extend, int) or tree.extend < 0:
        raise CSDValueError(f"tree: extend must be an int >= 0, got {tree.extend!r}")
    if sampler is not None:
        raise CSDValueError("tree: tree drafts are implemented for greedy decoding only; leave tree=None "
                            "with do_sample=True (lossless multi-draft sampling is not built)")
    for i, m in enumerate(models[:len(rows)]):
        if any(w > 1 for w in rows[i]) and not callable(getattr(m, "tree_logits", None)):
            raise CSDValueError(f"tree: level {i} ({m.name!r}) cannot verify a tree: it has no tree_logits()")
    return Tree(tuple(tuple(r) for r in rows), tree.extend)


def _unique_names(models) -> list[str]:
    names, seen = [], {}
    for m in models:
        name = str(m.name)
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return names


def _eos_set(eos) -> set[int]:
    if isinstance(eos, int):
        return {eos}
    try:
        return {int(e) for e in eos}
    except TypeError:
        raise CSDValueError(f"eos_token_id: expected an int or a list of ints, got {eos!r}") from None


def _check_models(models):
    target = models[0]
    if is_free(target) or not hasattr(target, "logits"):
        raise CSDValueError(f"target: {target.name!r} cannot be the target (a free drafter such as MaG has no "
                            "distribution to review with)")
    for pos, m in enumerate(models[1:-1], start=1):
        if is_free(m) or not hasattr(m, "logits"):
            raise CSDValueError(f"drafters[{pos - 1}]: {m.name!r} can only be the last drafter (a free drafter "
                                "such as MaG cannot review)")
    if len({id(m) for m in models}) < len(models):
        raise CSDValueError("drafters: the same model object appears twice; wrap it twice "
                            "(HFModel(hf_model, name=...)) so each level keeps its own cache")
    for pos, m in enumerate(models[1:]):
        if m.vocab_size != target.vocab_size:
            raise CSDValueError(f"drafters[{pos}] ({m.name!r}) has vocabulary size {m.vocab_size}, "
                                f"expected the target's {target.vocab_size}")
    kinds = {m.is_encoder_decoder for m in models if not is_free(m)}
    if len(kinds) > 1:
        raise CSDValueError("drafters: mixing decoder-only and encoder-decoder models is not supported")
    return models


def _check_k_matrix(k_matrix, n: int) -> list[list[int]]:
    if n == 0 and (k_matrix is None or len(k_matrix) == 0):
        return []
    if k_matrix is None:
        raise CSDValueError(f"k_matrix: required with drafters; expected a {n}x{n} upper-triangular matrix")
    rows = [list(r) if hasattr(r, "__len__") else None for r in
            (k_matrix.tolist() if hasattr(k_matrix, "tolist") else k_matrix)]
    if any(r is None for r in rows) or any(len(r) != len(rows) for r in rows):
        raise CSDValueError(f"k_matrix: expected a square matrix (a list of equal-length rows), got {k_matrix!r}")
    if len(rows) != n:
        raise CSDValueError(f"k_matrix: expected {n}x{n} for {n} drafter(s), got {len(rows)}x{len(rows)}")
    for i, r in enumerate(rows):
        for j, v in enumerate(r):
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            if not number or not float(v).is_integer() or v < 0:
                raise CSDValueError(f"k_matrix[{i}][{j}]: expected a non-negative integer, got {v!r}")
            if j < i and v != 0:
                raise CSDValueError(f"k_matrix[{i}][{j}]: expected 0 below the diagonal (upper-triangular), got {v!r}")
    return [[int(v) for v in r] for r in rows]


def _check_confidence(confidence) -> float | None:
    if confidence is None:
        return None
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise CSDValueError(f"confidence: expected None or a number in (0, 1), got {confidence!r}")
    return float(confidence)


def _check_lenience(lenience) -> float:
    if isinstance(lenience, bool) or not isinstance(lenience, (int, float)) or not lenience >= 1:
        raise CSDValueError(f"lenience: expected a number >= 1, got {lenience!r}")
    return float(lenience)


def _check_prompt(prompt_ids) -> list[int]:
    if isinstance(prompt_ids, torch.Tensor):
        if prompt_ids.dim() == 2:
            if prompt_ids.shape[0] != 1:
                raise CSDValueError(f"prompt_ids: batch size 1 expected, got shape {tuple(prompt_ids.shape)}")
            prompt_ids = prompt_ids[0]
        prompt_ids = prompt_ids.tolist()
    prompt = list(prompt_ids)
    if not prompt:
        raise CSDValueError("prompt_ids: expected at least one token, got an empty prompt")
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        raise CSDValueError("prompt_ids: expected a list of int token ids")
    return prompt


def _check_max_new_tokens(max_new_tokens, prompt: list[int], models) -> int:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise CSDValueError(f"max_new_tokens: expected a non-negative int, got {max_new_tokens!r}")
    for m in models:
        bad = [t for t in prompt if not 0 <= t < m.vocab_size]
        if bad:
            raise CSDValueError(f"prompt_ids: token id {bad[0]} is outside {m.name!r}'s vocabulary of {m.vocab_size}")
        limit = getattr(m, "max_positions", None)
        need = max(len(prompt), 1 + max_new_tokens) if getattr(m, "is_encoder_decoder", False) \
            else len(prompt) + max_new_tokens
        if limit is not None and need > limit:
            raise CSDValueError(f"max_new_tokens: prompt ({len(prompt)} tokens) + max_new_tokens ({max_new_tokens}) "
                                f"needs {need} positions, more than {m.name!r}'s limit of {limit}")
    return max_new_tokens
