"""Max-Gram (MaG): the statistical drafter at the bottom of the cascade, and its bigram table.

MaG proposes tokens after the current sequence, at (almost) no cost: as many as the cascade asks for
(its k-matrix entry), at most its own `k` per call; in *seed mode* (`MaG(..., seed_mode=True)`, what
`csdlib.compat` uses) always `k`, whatever the k-matrix says, as the seed's code does. Its tokens:

1. find the longest suffix of the sequence that also occurs in the *prompt* and copy what followed it;
2. if that gave fewer than k tokens, the same search over the *sequence itself* (the generated text;
   for decoder-only models the sequence starts with the prompt);
3. fill the rest greedily from a bigram table: `next[token]` = the most frequent successor of `token`.

`MaG(..., copy_k=K)` lets a copy run longer than it was asked: when steps 1-2 copy more than the tokens
asked for, MaG proposes up to K of them (as prompt lookup decoding proposes its 10), and the bigram table
still fills only up to what was asked. Where the answer quotes its prompt (summaries, retrieved passages)
one review then checks a whole phrase; elsewhere the draft is as before.

`MaG(..., fill=False)` skips step 3: it proposes only what it copies, fewer tokens than asked or none,
and the cascade then reviews what it has. Where nothing is copied (translation, short answers) the target
takes a plain one-token step instead of verifying bigram guesses: dynamic draft length for MaG, whose
tokens carry no probability for `confidence=` to read.

For tree drafts, `MaG.alternatives` gives its other candidates for one position: the other max-gram
continuations, then the table's n most frequent successors (`BigramTable.top`, stored since version 2 of
the table's format; a table without it gives its one successor).

Only occurrences that have a continuation count, so the sequence never "matches itself" at its own end
(the seed's code concatenates prompt and sequence, so a decoder-only sequence matched its own copy of
the prompt and MaG proposed the prompt's beginning again; we do not copy that quirk). Among occurrences
of the longest match, the earliest is used (as in the seed).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .errors import CSDValueError, MissingFileError

FORMAT = "csdlib.bigram"


class BigramTable:
    """Next-token table: `next[t]` is the most frequent token after `t` in a corpus, and `top[t]` its
    `n_best` most frequent successors, best first (tree drafts; -1 pads a row with fewer).

    Ties are broken by the lowest token id. A token never seen with a successor maps to `default`,
    the corpus's most frequent token (lowest id on ties; 0 for an empty corpus), and has no `top` row.
    `top` is optional: the seed's tables and version 1 of ours store `next` only.
    """

    def __init__(self, next_ids, default: int | None = None, top=None):
        self.next = np.asarray(next_ids, dtype=np.int64)
        if self.next.ndim != 1 or len(self.next) == 0:
            raise CSDValueError("next_ids: expected a non-empty 1-D list of token ids")
        if self.next.min() < 0 or self.next.max() >= len(self.next):
            raise CSDValueError(f"next_ids: every entry must be a token id in [0, {len(self.next)})")
        self.default = int(default) if default is not None else None
        self.top = None if top is None else _check_top(top, self.next)

    @property
    def vocab_size(self) -> int:
        return len(self.next)

    @property
    def n_best(self) -> int:
        """Successors stored per token: `top`'s width, or 1 (`next` only)."""
        return 1 if self.top is None else self.top.shape[1]

    def __getitem__(self, token: int) -> int:
        return int(self.next[token])

    def successors(self, token: int, n: int) -> list[int]:
        """Up to n successors of `token`, most frequent first: its `top` row (without padding) if the
        table has one and the token was seen with a successor, else `[next[token]]`."""
        if self.top is not None:
            row = [int(t) for t in self.top[token, :n] if t >= 0]
            if row:
                return row
        return [int(self.next[token])][:n]

    def __repr__(self) -> str:
        return f"BigramTable(vocab_size={self.vocab_size}, n_best={self.n_best})"

    @classmethod
    def from_sequences(cls, sequences, vocab_size: int, n_best: int = 4) -> "BigramTable":
        """Count successor pairs in token-id sequences (lists or arrays); keep the n_best most frequent
        successors of each token (`next`: the first of them)."""
        vocab_size = int(vocab_size)
        if vocab_size < 1:
            raise CSDValueError(f"vocab_size: expected a positive int, got {vocab_size}")
        if isinstance(n_best, bool) or not isinstance(n_best, (int, np.integer)) or n_best < 1:
            raise CSDValueError(f"n_best: expected a positive int, got {n_best!r}")
        firsts, seconds, unigram = [], [], np.zeros(vocab_size, dtype=np.int64)
        for seq in sequences:
            seq = np.asarray(seq, dtype=np.int64)
            if len(seq) and (seq.min() < 0 or seq.max() >= vocab_size):
                raise CSDValueError(f"sequences: token ids must lie in [0, {vocab_size})")
            unigram += np.bincount(seq, minlength=vocab_size)
            firsts.append(seq[:-1])
            seconds.append(seq[1:])
        default = int(unigram.argmax())          # argmax takes the lowest id on ties
        nxt = np.full(vocab_size, default, dtype=np.int64)
        top = np.full((vocab_size, int(n_best)), -1, dtype=np.int64)
        if firsts:
            pairs = np.concatenate(firsts) * vocab_size + np.concatenate(seconds)
            keys, counts = np.unique(pairs, return_counts=True)
            a, b = keys // vocab_size, keys % vocab_size
            order = np.lexsort((b, -counts, a))   # by token, then most frequent, then lowest id
            a, b = a[order], b[order]
            first = np.r_[True, a[1:] != a[:-1]]
            rank = np.arange(len(a)) - np.maximum.accumulate(np.where(first, np.arange(len(a)), 0))
            keep = rank < n_best
            top[a[keep], rank[keep]] = b[keep]
            nxt[a[first]] = b[first]
        return cls(nxt, default=default, top=top)

    def save(self, path) -> None:
        """Our format: a JSON object with the table and its metadata (`load` also reads the seed's list).
        Version 2 adds `top`, one list of successors per token (empty for a token never seen)."""
        data = {"format": FORMAT, "version": 1, "vocab_size": self.vocab_size,
                "default": self.default, "next": self.next.tolist()}
        if self.top is not None:
            data["version"], data["n_best"] = 2, self.n_best
            data["top"] = [[int(t) for t in row if t >= 0] for row in self.top]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, separators=(",", ":")))

    @classmethod
    def load(cls, path, vocab_size: int | None = None) -> "BigramTable":
        """Read our JSON format or the seed's (a JSON list of next-token ids); check `vocab_size` if given."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"bigram table {os.fspath(path)!r} does not exist")
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CSDValueError(f"bigram table {os.fspath(path)!r} is not valid JSON: {e}") from None
        top = None
        if isinstance(data, dict) and data.get("format") == FORMAT:
            next_ids, default, top = data.get("next"), data.get("default"), data.get("top")
        elif isinstance(data, list):
            next_ids, default = data, None
        else:
            raise CSDValueError(f"bigram table {os.fspath(path)!r}: expected a JSON list of next-token ids "
                                f"(the seed's format) or an object with format={FORMAT!r}")
        if not isinstance(next_ids, list) or not all(isinstance(t, int) and not isinstance(t, bool)
                                                     for t in next_ids):
            raise CSDValueError(f"bigram table {os.fspath(path)!r}: entries must be integer token ids")
        try:
            top = None if top is None else _padded(top, data.get("n_best"))
            table = cls(next_ids, default=default, top=top)
        except CSDValueError as e:
            raise CSDValueError(f"bigram table {os.fspath(path)!r}: {e}") from None
        if vocab_size is not None and table.vocab_size != vocab_size:
            raise CSDValueError(f"bigram table {os.fspath(path)!r} has vocab_size {table.vocab_size}, "
                                f"expected {vocab_size} (the model's vocabulary)")
        return table


def _padded(rows, width=None) -> np.ndarray:
    """One list of successor ids per token as a (vocab, width) array padded with -1 (width: at least
    the longest row's)."""
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows) or not all(
            isinstance(t, int) and not isinstance(t, bool) for r in rows for t in r):
        raise CSDValueError("top: expected one list of integer token ids per token")
    width = max([len(r) for r in rows] + [width if isinstance(width, int) and width > 0 else 1])
    arr = np.full((len(rows), width), -1, dtype=np.int64)
    for t, row in enumerate(rows):
        arr[t, :len(row)] = row
    return arr


def _check_top(top, nxt: np.ndarray) -> np.ndarray:
    """`top` (an array, or one list of ids per token) as a checked (vocab, n) array padded with -1."""
    arr = top.astype(np.int64) if isinstance(top, np.ndarray) else _padded(top)
    if arr.ndim != 2 or arr.shape[0] != len(nxt) or arr.shape[1] < 1:
        raise CSDValueError(f"top: expected one row of successors per token ({len(nxt)} rows), got shape {arr.shape}")
    if arr.min() < -1 or arr.max() >= len(nxt):
        raise CSDValueError(f"top: every successor must be a token id in [0, {len(nxt)}) (-1 pads a row)")
    if ((arr[:, 1:] >= 0) & (arr[:, :-1] < 0)).any():
        raise CSDValueError("top: -1 may only pad the end of a row")
    seen = arr[:, 0] >= 0
    if (arr[seen, 0] != nxt[seen]).any():
        raise CSDValueError("top: a token's first successor must be its `next` entry")
    return arr


def suffix_ends(haystack: np.ndarray, seq: np.ndarray, max_len: int | None = None) -> tuple[int, np.ndarray]:
    """(length, end positions, earliest first) of the longest suffix of seq (at most max_len tokens) that
    occurs in haystack with a continuation (at least one haystack token follows it); (0, none) if none."""
    if len(seq) == 0 or len(haystack) < 2:
        return 0, haystack[:0]
    ends = np.flatnonzero(haystack[:-1] == seq[-1])      # end positions with a continuation
    length, most = 1, len(seq) if max_len is None else min(len(seq), max_len)
    while len(ends) and length < most:
        starts = ends - length                             # candidate position of seq[-length-1]
        longer = ends[(starts >= 0) & (haystack[np.maximum(starts, 0)] == seq[-length - 1])]
        if len(longer) == 0:
            break
        ends, length = longer, length + 1
    return (length, ends) if len(ends) else (0, ends)


def _longest_suffix_match(haystack: np.ndarray, seq: np.ndarray, n: int) -> list[int]:
    """Up to n tokens that followed the earliest occurrence, in haystack, of the longest suffix of seq."""
    _, ends = suffix_ends(haystack, seq)
    if len(ends) == 0:
        return []
    e = int(ends[0])
    return haystack[e + 1:e + 1 + n].tolist()


def _successors(haystack: np.ndarray, seq: np.ndarray, n: int) -> list[int]:
    """Up to n distinct tokens that followed occurrences, in haystack, of suffixes of seq: the longest
    suffix's first (earliest occurrence first), then shorter suffixes'. The first is what
    `_longest_suffix_match` continues with."""
    if len(seq) == 0 or len(haystack) < 2:
        return []
    ends = np.flatnonzero(haystack[:-1] == seq[-1])
    found, length = [ends], 1
    while len(ends) and length < len(seq):
        starts = ends - length
        ends = ends[(starts >= 0) & (haystack[np.maximum(starts, 0)] == seq[-length - 1])]
        if len(ends) == 0:
            break
        found.append(ends)
        length += 1
    out: list[int] = []
    for ends in reversed(found):                           # longest match first
        for t in haystack[ends + 1].tolist():
            if t not in out:
                out.append(t)
                if len(out) == n:
                    return out
    return out


class MaG:
    """Max-Gram drafter: prompt max-gram, then sequence max-gram, then bigram table. Costs nothing.

    Args:
        table: a `BigramTable` (or a path to one).
        k: the most tokens proposed per call (the seed uses 10).
        seed_mode: False (default): each call proposes the tokens the cascade asks for (its k-matrix
            entry, i.e. `need`), at most `k`. True: the seed's behaviour, always `k` tokens whatever the
            k-matrix says (what `csdlib.compat` and the seed's config dicts use).
        fill: True (default): what the max-gram searches leave is filled from the bigram table. False:
            only copied tokens are proposed (maybe none); tree drafts still branch at the table's successors.
        copy_k: None (default): a call proposes at most what was asked. An int K: copied tokens (steps 1-2)
            run on up to K, more than asked when the copy goes on (not in seed mode).
    """

    free = True     # the cascade's protocol: no forward pass, point-mass proposals, cannot review

    def __init__(self, table, k: int = 10, name: str = "mag", cost: float = 0.0, seed_mode: bool = False,
                 fill: bool = True, copy_k: int | None = None):
        if not isinstance(table, BigramTable):
            table = BigramTable.load(table)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise CSDValueError(f"k: expected a positive int, got {k!r}")
        for flag, value in (("seed_mode", seed_mode), ("fill", fill)):
            if not isinstance(value, bool):
                raise CSDValueError(f"{flag}: expected True or False, got {value!r}")
        if seed_mode and not fill:
            raise CSDValueError("fill=False: the seed's MaG always proposes k tokens; leave seed_mode False")
        if copy_k is not None and (isinstance(copy_k, bool) or not isinstance(copy_k, (int, np.integer)) or copy_k < 1):
            raise CSDValueError(f"copy_k: expected None or a positive int, got {copy_k!r}")
        if seed_mode and copy_k is not None:
            raise CSDValueError("copy_k: the seed's MaG always proposes k tokens; leave seed_mode False")
        self.table, self.k, self.name, self.cost = table, int(k), name, float(cost)
        self.seed_mode, self.fill = seed_mode, fill
        self.copy_k = None if copy_k is None else int(copy_k)
        self.calls = 0
        self.tokens_fed = self.one_token_calls = self.encoder_calls = 0   # MaG runs no forward pass
        self._prompt: list[int] = []

    @property
    def vocab_size(self) -> int:
        return self.table.vocab_size

    def __repr__(self) -> str:
        mode = ", seed_mode=True" if self.seed_mode else "" if self.fill else ", fill=False"
        mode += f", copy_k={self.copy_k}" if self.copy_k is not None else ""
        return f"MaG(k={self.k}, vocab={self.vocab_size}{mode})"

    def draft(self, prompt_ids, sequence_ids, k: int | None = None) -> list[int]:
        """Exactly k proposed ids after `sequence_ids` (the sequence being continued); with fill=False the
        copied ones only (at most k); with copy_k, copied ones up to max(k, copy_k)."""
        k = self.k if k is None else int(k)
        n = max(k, self.copy_k or 0)                   # copied tokens: up to copy_k
        seq = np.asarray(sequence_ids, dtype=np.int64)
        out = _longest_suffix_match(np.asarray(prompt_ids, dtype=np.int64), seq, n)
        if len(out) < n:
            seq = np.concatenate([seq, np.asarray(out, dtype=np.int64)])
            more = _longest_suffix_match(seq, seq, n - len(out))
            out += more
            seq = np.concatenate([seq, np.asarray(more, dtype=np.int64)])
        if not self.fill:
            return out
        token = int(seq[-1]) if len(seq) else None
        while len(out) < k:
            token = self.table[token] if token is not None else self.table.default or 0
            out.append(token)
        return out

    # the cascade's drafter protocol (see csdlib.cascade.FreeDrafter)
    def fingerprint(self) -> str:
        """A short hash of what MaG proposes: its table, k and mode."""
        h = hashlib.sha256(self.table.next.tobytes())
        if self.table.top is not None:         # tree drafts branch at its successors
            h.update(self.table.top.tobytes())
        # seed mode hashes as before the k-matrix-sized mode existed (same behaviour, same fingerprint)
        h.update(json.dumps([self.k, self.table.default] + ([] if self.seed_mode else ["sized"])
                            + ([] if self.fill else ["copies only"])
                            + ([] if self.copy_k is None else [f"copies up to {self.copy_k}"])).encode())
        return h.hexdigest()[:16]

    def start(self, prompt_ids: list[int]) -> None:
        self.calls, self._prompt = 0, list(prompt_ids)

    def draft_size(self, need: int) -> int:
        """Tokens one call proposes when the cascade asks for `need`: min(need, k), or k in seed mode
        (with copy_k, a copy may run longer: `propose`)."""
        return self.k if self.seed_mode else max(0, min(int(need), self.k))

    def alternatives(self, seq: list[int], n: int) -> list[int]:
        """Up to n candidates for the token after `seq`, best first (tree drafts): what followed the
        suffix matches in the prompt (longest match first, earliest occurrence first), then in the
        sequence itself, then the bigram table's most frequent successors of the last token (as many as
        it stores). The first is the token MaG would propose. One call (counted)."""
        self.calls += 1
        arr = np.asarray(seq, dtype=np.int64)
        out = _successors(np.asarray(self._prompt, dtype=np.int64), arr, n)
        for t in _successors(arr, arr, n) + (self.table.successors(int(arr[-1]), n) if len(arr) else []):
            if t not in out and len(out) < n:
                out.append(t)
        return out

    def propose(self, seq: list[int], n: int) -> tuple[list[int], list[float]]:
        """`draft_size(n)` tokens after `seq`, each a point mass (q = 1). The cascade asks again while
        its k-matrix entry is not filled, so an entry larger than k takes several (free) calls; with
        fill=False it may give fewer, or none (the cascade then reviews what it has); with copy_k, more
        when the copy goes on (the cascade reviews them all, within its length cap)."""
        size = self.draft_size(n)
        if size == 0:
            return [], []
        self.calls += 1
        tokens = self.draft(self._prompt, seq, k=size)
        return tokens, [1.0] * len(tokens)

    def copies_only(self) -> "MaG":
        """This MaG (same table, k, copy_k and name) with fill=False."""
        return MaG(self.table, k=self.k, name=self.name, cost=self.cost, fill=False, copy_k=self.copy_k)

    def copying(self, copy_k: int) -> "MaG":
        """This MaG (same table, k, fill and name) whose copies run on up to `copy_k` tokens."""
        return MaG(self.table, k=self.k, name=self.name, cost=self.cost, fill=self.fill, copy_k=copy_k)
