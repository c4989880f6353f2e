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
other candidates of the model that chose the chain's token there (a neural drafter's top-n; MaG's other
max-gram continuations and its bigram table's best successors), each continued by the bottom free drafter;
with a budget, only the likeliest of them (the drafters' probability of the path). It keeps the longest root path of its
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

import torch

from .checks import (check_confidence, check_k_matrix, check_lenience, check_max_new_tokens, check_models,
                     check_prompt, eos_set, unique_names)
from .errors import CSDValueError
from .models import as_model, tree_depths
from .protocol import FreeDrafter, Model, Reviewer, fingerprint, is_free, replays  # noqa: F401 (re-exported)
from .sampling import Sampler, accept_prob, resolve_sampling  # noqa: F401 (re-exported)
from .stats import Stats


@dataclass(frozen=True)
class Tree:
    """The shape of tree drafts. `widths[i][d]`: candidates at draft position d of level i's review (1:
    the chain's token only; rows and positions not given: 1); the extra candidates are the best other
    tokens of the model that chose the chain's token there. `extend`: tokens of the bottom free drafter
    (MaG) that continue each extra candidate (free; 0 without MaG). `budget`: at most this many extra
    candidates per review, the likeliest (None: every one the widths allow).

        Tree([[3, 2, 2]], extend=2)            # the target's review: 2 + 1 + 1 side branches of 3 tokens
        Tree([[4] * 6], extend=3, budget=4)    # the 4 likeliest of the 3 x 6 candidates
    """
    widths: tuple = ()
    extend: int = 0
    budget: int | None = None

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
    prompt = check_prompt(prompt_ids)
    max_new_tokens = check_max_new_tokens(max_new_tokens, prompt, cascade.models)
    eos = target.eos_token_ids if eos_token_id is None else eos_set(eos_token_id)
    return cascade.generate(prompt, max_new_tokens, eos)


class Cascade:
    def __init__(self, models, k_matrix, lenience: float = 1.0, sampler: Sampler | None = None,
                 confidence: float | None = None, tree: Tree | None = None):
        self.models = check_models(models)
        self.tree = _check_tree(tree, self.models, sampler)
        self.k = check_k_matrix(k_matrix, len(models) - 1)
        self.lenience = check_lenience(lenience)
        self.confidence = check_confidence(confidence)
        if sampler is not None and self.confidence is not None:
            raise CSDValueError("confidence: dynamic draft length is implemented for greedy decoding only; "
                                "leave it None with do_sample=True")
        if sampler is not None and self.lenience > 1:
            raise CSDValueError(f"lenience: must be 1 with do_sample=True (got {lenience}); lenient "
                                "acceptance at an inner level changes the distribution its tokens are "
                                "drawn from, and the target's review would no longer be lossless")
        self.sampler = sampler
        self.names = unique_names(self.models)
        self.reviews = []                  # (level, start, drafted, accepted, ranks or None) of every review
        self.alts = []                     # tree drafts: per position, the other candidates [(token, q)]
        self.trees = []                    # tree drafts: every tree verified (for plots.verified_tree)
        self.switches = [0] * len(self.models)         # per level: forwards right after another model's
        self.tree_calls = [0] * len(self.models)       # per level: tree forwards ...
        self.tree_tokens = [0] * len(self.models)      # ... and the tokens they fed
        self.last_forward = None                       # the level whose forward ran last

    def generate(self, prompt: list[int], max_new_tokens: int, eos: set[int]) -> Output:
        seq = self.models[0].start(prompt)
        for m in self.models[1:]:
            m.start(prompt)
        for m in self.models:                          # a static KV cache: room for every token to come
            if hasattr(m, "reserve"):
                m.reserve(len(seq) + max_new_tokens)
        self.reviews, self.switches, self.last_forward = [], [0] * len(self.models), None
        self.tree_calls, self.tree_tokens = [0] * len(self.models), [0] * len(self.models)
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
        for m in self.models[1:]:                      # a drafter that learns from finished answers
            if callable(getattr(m, "remember", None)):  # (the suffix drafter with learn=True)
                m.remember(seq[begin:])
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
        for name, calls, fed in zip(self.names, self.tree_calls, self.tree_tokens):
            stats.tree_calls[name], stats.tree_tokens_fed[name] = calls, fed
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
                before = len(seq)
                seq, q = self.step(j, seq, q, need=goal - len(seq), cap=cap - 1)
                if len(seq) == before:                 # a free drafter found nothing: next level
                    break
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
        """Level i's logits after seq and after each node of a token tree below it (one forward; counted
        apart for the latency model: a tree forward costs more than a chain forward of as many tokens)."""
        self.switches[i] += int(self.last_forward != i)
        self.last_forward = i
        before = self.models[i].tokens_fed
        logits = self.models[i].tree_logits(seq, tokens, parents)
        self.tree_calls[i] += 1
        self.tree_tokens[i] += self.models[i].tokens_fed - before
        return logits

    def propose(self, i: int, seq: list[int], n: int):
        """Level i's (the bottom drafter's) own tokens, and q for each (greedy: q(x); sampling: the
        distribution). A free drafter decides itself how many tokens to propose for `n`; its tokens are
        point masses."""
        if is_free(self.models[i]):
            tokens, _ = self.models[i].propose(seq, n)
            self.note_free(i, seq, tokens)
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
        `tree.width(i, d) - 1` best other candidates noted there (ranks 2, 3, ...; with a budget, only
        the likeliest), each continued by the bottom free drafter. Returns tokens, parents (-1: the root;
        parents come first), ranks, q."""
        deepest = cap - start - 2                      # an accepted node there still leaves room for one token
        side = self.side_branches(i, q, start, len(seq) - start)
        tokens, parents, ranks, qs = [], [], [], []

        def add(token, parent, rank, q_token):
            tokens.append(token), parents.append(parent), ranks.append(rank), qs.append(q_token)
            return len(tokens) - 1

        parent = -1
        for d, token in enumerate(seq[start:]):
            chain = add(token, parent, 1, q[start + d])
            for rank, (alt, q_alt) in enumerate(self.alts[start + d][:self.tree.width(i, d) - 1], start=2):
                if (d, rank) not in side:
                    continue
                branch = add(alt, parent, rank, q_alt)
                for more in self.continue_branch(seq[:start + d] + [alt], min(self.tree.extend, deepest - d)):
                    branch = add(more, branch, 1, 1.0)
            parent = chain
        return tokens, parents, ranks, qs

    def side_branches(self, i: int, q: list, start: int, n: int) -> set:
        """(draft position, rank) of the extra candidates level i's tree takes: all that its widths allow,
        or with a budget the likeliest, by the drafters' probability of the chain before the position
        times the candidate's own (earlier positions first on ties)."""
        scored, chain = [], 1.0
        for d in range(n):
            for rank, (_, q_alt) in enumerate(self.alts[start + d][:self.tree.width(i, d) - 1], start=2):
                scored.append((-chain * q_alt, d, rank))
            chain *= q[start + d]                      # P(the chain is right up to here), by its drafters
        return {(d, rank) for _, d, rank in sorted(scored)[:self.tree.budget]}

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

    def note_free(self, i: int, seq: list[int], tokens: list[int]) -> None:
        """Tree drafts: a free drafter's tokens are point masses; its other candidates at each position
        come from its `alternatives` (MaG: other max-gram continuations, the bigram successor), each a
        point mass too (q = 1)."""
        model = self.models[i]
        if self.tree is None or self.tree.most < 2 or not callable(getattr(model, "alternatives", None)):
            return self.note(len(seq), [None] * len(tokens), tokens)
        alts = [[(t, 1.0) for t in model.alternatives(seq + tokens[:j], self.tree.most) if t != token][:self.tree.most - 1]
                for j, token in enumerate(tokens)]
        self.alts = self.alts[:len(seq)] + alts

    def review_sampling(self, i: int, seq: list[int], q: list, start: int):
        """Speculative sampling: seq[start:] drawn from q is turned into tokens drawn from level i's p."""
        drafted = torch.tensor(seq[start:], dtype=torch.long)
        p = self.sampler.probs(self.logits(i, seq, len(drafted) + 1).cpu())
        q_rows = torch.stack([torch.nn.functional.one_hot(x, p.shape[-1]).to(p.dtype) if d is None else d
                              for x, d in zip(drafted, q[start:])]) if len(drafted) else p[:0]
        idx = torch.arange(len(drafted))
        ok = self.sampler.uniform(len(drafted)) < accept_prob(p[idx, drafted], q_rows[idx, drafted])
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


# ---------------------------------------------------------------- the tree's argument check (the others: checks.py)


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
    if tree.budget is not None and (isinstance(tree.budget, bool) or not isinstance(tree.budget, int) or tree.budget < 1):
        raise CSDValueError(f"tree: budget must be None (every candidate) or an int >= 1, got {tree.budget!r}")
    if sampler is not None:
        raise CSDValueError("tree: tree drafts are implemented for greedy decoding only; leave tree=None "
                            "with do_sample=True (lossless multi-draft sampling is not built)")
    for i, m in enumerate(models[:len(rows)]):
        if any(w > 1 for w in rows[i]) and not callable(getattr(m, "tree_logits", None)):
            raise CSDValueError(f"tree: level {i} ({m.name!r}) cannot verify a tree: it has no tree_logits()")
    return Tree(tuple(tuple(r) for r in rows), tree.extend, tree.budget)
