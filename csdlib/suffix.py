"""Suffix drafting: a free drafter that remembers the target's past answers (SuffixDecoding's idea,
Oliaro et al. 2025), for the bottom of a cascade.

At each call the drafter looks up the longest suffix of the sequence in two sources,

1. the *request*: the prompt and the tokens generated so far (what MaG and prompt lookup copy from);
2. a *corpus*: token ids of the target's own past answers (`SuffixCorpus`, stored in the family as
   ``corpus.npz``; with ``learn=True`` it also grows with each answer finished in the same run),

and walks on from each match by the continuations' counts: the most frequent next token, then the most
frequent one after that among the occurrences that went on that way, and so on. The walk's probability
is the product of `count(next) / (count(all) + alpha)` at each step (`alpha`: a pseudo-count, so that a
single occurrence is not trusted as a certainty); the walk stops below `min_prob`, so the draft length
grows with the match and the candidates' frequencies. Of the two walks the one with the higher score
(the sum of its step probabilities: the expected number of accepted tokens if the estimates held) is
proposed, the request's weighed by `request_weight`.

Every token is a point mass (q = 1), as MaG's are, so greedy, lenient and sampling reviews stay lossless.
`alternatives` gives tree candidates from the same counts.

The corpus index is a few arrays of numpy: for every n-gram (n <= `max_order`) of the corpus that has a
continuation, a 64-bit hash of it and where it ends, sorted by hash; a lookup is one `searchsorted` for
every order at once. (We hand-write this instead of arctic-inference's C++ suffix tree: that package is
source only, its build asks for torch and it drafts from one tree per call; see docs/suffix.md.)
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .errors import CSDValueError, MissingFileError
from .mag import suffix_ends

FORMAT = "csdlib.suffix-corpus"
CORPUS_FILE = "corpus.npz"
#: a family's suffix drafter unless its family.json's default says otherwise (`SuffixDrafter`'s own defaults,
#: chosen by the replay in docs/suffix.md: tokens per target call on the target's greedy answers)
DEFAULTS = {"k": 8, "min_prob": 0.0, "alpha": 0.0}
RULES = ("score", "longest")
_MASK = (1 << 64) - 1
_BASE = 0x9E3779B97F4A7C15          # the hash's multiplier (odd, 64-bit)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads the polynomial hashes over 64 bits (uint64, wraps around)."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _order_keys(hashes: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """The index keys of n-gram hashes of the given orders (n): one sorted array holds every order."""
    with np.errstate(over="ignore"):
        return _mix(hashes ^ (orders * np.uint64(0x632BE59BD9B4E019)))


def tokenizer_hash(tokenizer) -> str:
    """A short hash of a tokenizer's vocabulary (token -> id): a corpus is only read with the tokenizer
    it was written with."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else dict(tokenizer)
    return hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()[:16]


class SuffixCorpus:
    """Token-id sequences (the target's past answers) indexed for suffix lookups.

    `tokens`: the sequences joined with -1 between them; `lookup(context)` gives, for the longest suffix
    of `context` (at most `max_order` tokens) found in the corpus with a continuation, the positions
    where its occurrences end (so ``tokens[ends + 1]`` are the tokens that followed them)."""

    def __init__(self, sequences=(), vocab_size: int | None = None, max_order: int = 8, tokenizer: str | None = None,
                 source: str = ""):
        if isinstance(max_order, bool) or not isinstance(max_order, (int, np.integer)) or max_order < 1:
            raise CSDValueError(f"max_order: expected a positive int, got {max_order!r}")
        self.max_order, self.tokenizer, self.source = int(max_order), tokenizer, source
        seqs = [np.asarray(s, dtype=np.int64).ravel() for s in sequences]
        for s in seqs:
            if len(s) and (s.min() < 0 or (vocab_size is not None and s.max() >= vocab_size)):
                raise CSDValueError(f"sequences: token ids must lie in [0, {vocab_size})")
        self.vocab_size = None if vocab_size is None else int(vocab_size)
        self.lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        parts = [x for s in seqs for x in (s, np.array([-1]))]
        self.tokens = np.concatenate([np.array([-1]), *parts]) if parts else np.array([-1])
        self._index()

    def __len__(self) -> int:
        return len(self.lengths)

    def answers(self) -> list[np.ndarray]:
        """The sequences, as they were given."""
        toks = self.tokens[self.tokens >= 0]
        return np.split(toks, np.cumsum(self.lengths)[:-1]) if len(self.lengths) else []

    def __repr__(self) -> str:
        return f"SuffixCorpus({len(self)} answers, {int(self.lengths.sum())} tokens, max_order={self.max_order})"

    def _index(self) -> None:
        """Hash every n-gram that ends before a token (its continuation), n = 1..max_order; sort by hash."""
        t = self.tokens
        has_next = np.r_[t[1:] >= 0, False]               # a token follows position i
        h = (t + 1).astype(np.uint64)                      # the n-gram ending at i: sum of (t+1) B^age
        whole = t >= 0                                     # positions i-n+1..i are all tokens
        keys, ends = [], []
        with np.errstate(over="ignore"):
            for n in range(1, self.max_order + 1):
                if n > 1:
                    h = np.concatenate([[np.uint64(0)], h[:-1]]) * np.uint64(_BASE) + (t + 1).astype(np.uint64)
                    whole = np.concatenate([[False], whole[:-1]]) & (t >= 0)
                at = np.flatnonzero(whole & has_next)
                if len(at) == 0:
                    break
                keys.append(_order_keys(h[at], np.full(len(at), n, dtype=np.uint64)))
                ends.append(at)
        keys = np.concatenate(keys) if keys else np.zeros(0, dtype=np.uint64)
        ends = np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)
        order = np.argsort(keys, kind="stable")           # equal hashes keep their positions in order
        self.keys, self.ends = keys[order], ends[order].astype(np.int64)

    def context_keys(self, context) -> np.ndarray:
        """The index keys of the suffixes of `context` of length 1, 2, .. (at most max_order)."""
        hs, h, power = [], 0, 1
        for x in reversed(context[-self.max_order:]):     # the suffix grows to the left
            h = (h + (int(x) + 1) * power) & _MASK
            power = power * _BASE & _MASK
            hs.append(h)
        return _order_keys(np.array(hs, dtype=np.uint64), np.arange(1, len(hs) + 1, dtype=np.uint64))

    def lookup(self, context, max_occurrences: int = 4096) -> tuple[int, np.ndarray]:
        """(match length, end positions) of the longest suffix of `context` in the corpus that has a
        continuation (length 0 and no positions when even its last token never occurs)."""
        found = self.lookups(context, 1, max_occurrences)
        return found[0] if found else (0, self.ends[:0])

    def lookups(self, context, tries: int = 1, max_occurrences: int = 4096) -> list[tuple[int, np.ndarray]]:
        """`lookup` for the longest suffix and for up to tries - 1 shorter ones, longest first."""
        if len(context) == 0 or len(self.keys) == 0:
            return []
        q = self.context_keys(context)
        lo, hi = np.searchsorted(self.keys, q, "left"), np.searchsorted(self.keys, q, "right")
        ok = hi > lo                 # a longer suffix occurs only where its shorter ones do: a run from 1
        m = len(ok) if ok.all() else int(ok.argmin())
        return [(n, self.ends[lo[n - 1]:min(hi[n - 1], lo[n - 1] + max_occurrences)])
                for n in range(m, max(0, m - tries), -1)]

    # -------------------------------------------------------------------- files

    def save(self, path, meta: dict | None = None) -> None:
        """``corpus.npz``: the answers' tokens (uint16 when the vocabulary allows), their lengths and a
        JSON header (format, vocab_size, the tokenizer's hash, how the corpus was made)."""
        toks = self.tokens[self.tokens >= 0]
        dtype = np.uint16 if self.vocab_size is not None and self.vocab_size <= 1 << 16 else np.int32
        header = {"format": FORMAT, "version": 1, "vocab_size": self.vocab_size, "tokenizer": self.tokenizer,
                  "answers": len(self), "tokens": int(len(toks)), "source": self.source, **(meta or {})}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(path) + ".tmp.npz")
        np.savez_compressed(tmp, tokens=toks.astype(dtype), lengths=self.lengths,
                            header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))
        tmp.replace(path)

    @classmethod
    def load(cls, path, vocab_size: int | None = None, tokenizer: str | None = None, max_order: int = 8) -> "SuffixCorpus":
        """Read a ``corpus.npz``; with `vocab_size` / `tokenizer` (a `tokenizer_hash`) given, a corpus
        made for another vocabulary or tokenizer is refused (one line naming the file)."""
        path = Path(path)
        where = repr(os.fspath(path))
        if not path.is_file():
            raise MissingFileError(f"suffix corpus {where} does not exist; build it with `csd corpus`")
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(z["header"].tobytes().decode())
                toks, lengths = z["tokens"].astype(np.int64), z["lengths"].astype(np.int64)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:   # not our file
            raise CSDValueError(f"suffix corpus {where} is not a readable corpus file ({type(e).__name__}: {e})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise CSDValueError(f"suffix corpus {where}: not a {FORMAT} file")
        if lengths.sum() != len(toks) or (lengths < 0).any():
            raise CSDValueError(f"suffix corpus {where}: its lengths ({int(lengths.sum())} tokens) do not match "
                                f"its tokens ({len(toks)}); the file is damaged")
        if vocab_size is not None and header.get("vocab_size") != vocab_size:
            raise CSDValueError(f"suffix corpus {where} has vocab_size {header.get('vocab_size')}, expected "
                                f"{vocab_size} (the model's vocabulary)")
        if tokenizer is not None and header.get("tokenizer") not in (None, tokenizer):
            raise CSDValueError(f"suffix corpus {where} was built with another tokenizer (hash "
                                f"{header.get('tokenizer')}, this one {tokenizer}); rebuild it with `csd corpus`")
        if len(toks) and (toks.min() < 0 or (header.get("vocab_size") and toks.max() >= header["vocab_size"])):
            raise CSDValueError(f"suffix corpus {where}: token ids outside [0, {header.get('vocab_size')})")
        seqs = np.split(toks, np.cumsum(lengths)[:-1]) if len(lengths) else []
        corpus = cls(seqs, vocab_size=header.get("vocab_size"), max_order=max_order,
                     tokenizer=header.get("tokenizer"), source=header.get("source", ""))
        corpus.header = header
        return corpus


def _walk(tokens: np.ndarray, ends: np.ndarray, n: int, alpha: float, min_prob: float):
    """Up to n tokens after the occurrences ending at `ends`: at each step the most frequent next token
    (lowest id on ties), narrowed to the occurrences that went on that way. Returns (tokens, the
    walk's probability after each)."""
    out, probs, p = [], [], 1.0
    limit = len(tokens) - 1
    while len(out) < n and len(ends):
        ends = ends[ends < limit]
        nxt = tokens[ends + 1]
        keep = nxt >= 0
        ends, nxt = ends[keep], nxt[keep]
        if len(nxt) == 0:
            break
        values, counts = np.unique(nxt, return_counts=True)
        best = int(counts.argmax())
        p *= counts[best] / (len(nxt) + alpha)
        if p < min_prob:
            break
        token = int(values[best])
        out.append(token)
        probs.append(p)
        ends = ends[nxt == token] + 1
    return out, probs


def _counts(tokens: np.ndarray, ends: np.ndarray) -> dict[int, int]:
    """How often each token followed the occurrences ending at `ends`."""
    ends = ends[ends < len(tokens) - 1]
    nxt = tokens[ends + 1]
    values, counts = np.unique(nxt[nxt >= 0], return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


class SuffixDrafter:
    """A free drafter with a memory: suffix matches in the request and in a corpus of the target's
    past answers, continued by their counts (see the module's docstring).

    Args:
        corpus: a `SuffixCorpus`, a path to a ``corpus.npz``, or None (the request only, like prompt lookup).
        k: the most tokens one call proposes (the cascade asks for its k-matrix entry, at most this).
        min_prob: a draft stops where its walk's probability falls below this.
        alpha: the pseudo-count in each step's probability `count / (total + alpha)`.
        request_weight: the request's walk is chosen when its score times this is at least the corpus's.
        learn: the corpus also grows with each answer of the run (`remember`), as a server's would.
        max_request_match: the longest suffix matched in the request.
        rule: how a source is chosen: ``"score"`` (the walk with the higher weighted score, as
            SuffixDecoding chooses between its prompt tree and its global tree) or ``"longest"`` (the
            source with the longer match; the request on ties).
        tries: the corpus's walks compared per call: from its longest match and from up to tries - 1
            shorter ones (a shorter context has more occurrences to count; SuffixDecoding tries them all).
    """

    free = True          # the cascade's protocol: no forward pass, point-mass proposals, cannot review
    seed_mode = False    # proposes what the k-matrix asks for (tuning treats it as MaG outside seed mode)

    def __init__(self, corpus=None, k: int = 8, min_prob: float = 0.0, alpha: float = 0.0,
                 request_weight: float = 1.0, learn: bool = False, name: str = "suffix", cost: float = 0.0,
                 vocab_size: int | None = None, max_request_match: int = 32, rule: str = "score", tries: int = 1):
        if corpus is not None and not isinstance(corpus, SuffixCorpus):
            corpus = SuffixCorpus.load(corpus, vocab_size=vocab_size)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise CSDValueError(f"k: expected a positive int, got {k!r}")
        for flag, value, low in (("min_prob", min_prob, 0.0), ("alpha", alpha, 0.0), ("request_weight", request_weight, 0.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low or value != value:
                raise CSDValueError(f"{flag}: expected a number >= {low}, got {value!r}")
        if min_prob > 1:
            raise CSDValueError(f"min_prob: expected a number in [0, 1], got {min_prob!r}")
        if rule not in RULES:
            raise CSDValueError(f"rule: expected one of {list(RULES)}, got {rule!r}")
        if not isinstance(learn, bool):
            raise CSDValueError(f"learn: expected True or False, got {learn!r}")
        self.corpus, self.k, self.min_prob, self.alpha = corpus, int(k), float(min_prob), float(alpha)
        self.request_weight, self.learn, self.name, self.cost = float(request_weight), learn, name, float(cost)
        self.max_request_match, self.rule, self.tries = int(max_request_match), rule, int(tries)
        self._vocab = vocab_size if vocab_size is not None else (corpus.vocab_size if corpus is not None else None)
        self.learned: SuffixCorpus | None = None           # answers of this run (learn=True)
        self._answers: list[list[int]] = []
        self.calls = 0
        self.tokens_fed = self.one_token_calls = self.encoder_calls = 0
        self._prompt: list[int] = []
        self._last: tuple[list[int], bool] = ([], False)    # the last call's sequence + draft, stopped short?

    @property
    def vocab_size(self):
        return self._vocab

    def __repr__(self) -> str:
        corpus = "no corpus" if self.corpus is None else f"{len(self.corpus)} answers"
        return (f"SuffixDrafter({corpus}, k={self.k}, min_prob={self.min_prob}, alpha={self.alpha}"
                + (", learn=True" if self.learn else "") + ("" if self.rule == "score" else f", rule={self.rule!r}") + ")")

    def with_options(self, **changes) -> "SuffixDrafter":
        """The same drafter (same corpus, not copied) with some arguments changed."""
        args = dict(corpus=self.corpus, k=self.k, min_prob=self.min_prob, alpha=self.alpha,
                    request_weight=self.request_weight, learn=self.learn, name=self.name, cost=self.cost,
                    vocab_size=self._vocab, max_request_match=self.max_request_match, rule=self.rule,
                    tries=self.tries)
        return SuffixDrafter(**{**args, **changes})

    # ---------------------------------------------------------------- the protocol

    def fingerprint(self) -> str:
        """A short hash of what it proposes: its corpus and settings."""
        h = hashlib.sha256(b"" if self.corpus is None else self.corpus.tokens.tobytes())
        h.update(json.dumps([self.k, self.min_prob, self.alpha, self.request_weight, self.learn,
                             self.max_request_match, None if self.corpus is None else self.corpus.max_order]
                            + ([] if self.rule == "score" else [self.rule])
                            + ([] if self.tries == 1 else [f"tries {self.tries}"])).encode())
        return h.hexdigest()[:16]

    def start(self, prompt_ids: list[int]) -> None:
        self.calls, self._prompt, self._last = 0, list(prompt_ids), ([], False)

    def remember(self, answer_ids) -> None:
        """With learn=True: add a finished answer (token ids) to the drafter's memory for later prompts."""
        if self.learn and len(answer_ids):
            self._answers.append([int(t) for t in answer_ids])
            order = self.corpus.max_order if self.corpus is not None else 8
            self.learned = SuffixCorpus(self._answers, vocab_size=self._vocab, max_order=order)

    def forget(self) -> None:
        """Drop what `remember` added (a run's answers)."""
        self._answers, self.learned = [], None

    def _request(self, seq: list[int]) -> np.ndarray:
        """The request's tokens: the sequence (a decoder-only sequence starts with its prompt), or the
        prompt, -1 and the sequence (an encoder-decoder's sequence is its decoder's)."""
        p = self._prompt
        if len(seq) >= len(p) and seq[:len(p)] == p:
            return np.asarray(seq, dtype=np.int64)
        return np.asarray(p + [-1] + list(seq), dtype=np.int64)

    def _sources(self, seq: list[int]):
        """(tokens, match length, end positions, weight) of each source with a match."""
        hay = self._request(seq)
        arr = hay if len(hay) == len(seq) else np.asarray(seq, dtype=np.int64)
        m, ends = suffix_ends(hay, arr, self.max_request_match)
        out = [(hay, m, ends, self.request_weight)] if m else []
        for corpus in (self.corpus, self.learned):
            if corpus is not None:
                out += [(corpus.tokens, m, ends, 1.0) for m, ends in corpus.lookups(seq, self.tries)]
        return out

    def draft(self, seq: list[int], n: int) -> tuple[list[int], list[float]]:
        """Up to n tokens after `seq` and the walk's probability after each: the best-scoring walk."""
        sources = self._sources(seq)
        if self.rule == "longest" and sources:           # the longest match (the first listed on ties)
            sources = [max(sources, key=lambda s: s[1])]
        best, best_score = ([], []), 0.0
        for tokens, _, ends, weight in sources:
            walk = _walk(tokens, ends, n, self.alpha, self.min_prob)
            score = weight * sum(walk[1])
            if score > best_score:
                best, best_score = walk, score
        return best

    def propose(self, seq: list[int], n: int) -> tuple[list[int], list[float]]:
        """Up to min(n, k) tokens after `seq`, each a point mass (q = 1); fewer, or none, where the walk's
        probability falls below min_prob (the cascade then reviews what it has). A draft that stopped
        short stays stopped: asked again right after it (the cascade fills its k-matrix entry by asking
        again), the drafter proposes nothing."""
        size = max(0, min(int(n), self.k))
        if size == 0 or self._stopped_at(seq):
            return [], []
        self.calls += 1
        tokens, _ = self.draft(list(seq), size)
        self._last = (list(seq) + tokens, len(tokens) < size)
        return tokens, [1.0] * len(tokens)

    def _stopped_at(self, seq) -> bool:
        """True when `seq` is the last call's sequence and draft, and that draft stopped short."""
        last, short = self._last
        return short and len(seq) == len(last) and seq == last

    def alternatives(self, seq: list[int], n: int) -> list[int]:
        """Up to n candidates for the token after `seq`, best first (tree drafts): the request's
        continuations (by count) then the corpus's, at each source's longest match. One call (counted)."""
        self.calls += 1
        out: list[int] = []
        for tokens, _, ends, _ in self._sources(list(seq)):
            counts = _counts(tokens, ends)
            for t in sorted(counts, key=lambda t: (-counts[t], t)):
                if t not in out:
                    out.append(t)
        return out[:n]
