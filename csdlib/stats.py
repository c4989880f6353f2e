"""What one generation (or many, merged) did: forwards per model and acceptance per level / position.

    out = csdlib.generate(...)
    out.stats.calls["target"], out.stats.tokens_fed["target"], out.stats.levels[0].acceptance
    total = Stats.merge_all(o.stats for o in outputs)        # sums over samples

`calls` counts every forward pass of each model (review or propose; MaG's proposals count as calls
too, at cost 0); `tokens_fed` the tokens those forwards fed, `one_token_calls` how many of them fed
exactly one token and `switch_calls` how many came right after another model's forward;
`tree_calls` / `tree_tokens_fed` count the forwards that verified a token tree (`csdlib.Tree`) and the
tokens they fed (a tree forward costs more than a chain forward of as many tokens: the latency model,
`csdlib.latency`, needs all of these). `levels` has one entry per reviewing level (every model but the last; the target alone for
AR), with drafted / accepted counts in total and per draft position (position 0 = the first token
after the accepted prefix). Only positions up to the output's EOS count. With tree drafts
(`csdlib.Tree`), `accepted_by_rank[d][r - 1]` counts the accepted tokens at depth d that were a branch of
rank r there (1: the chain's own token, 2: the best other candidate, ...).

`to_dict()` / `from_dict()` give the plain-JSON layout stored in result records (`csdlib.records`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


def _add_lists(a: list[int], b: list[int]) -> list[int]:
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]


def _add_ranks(a: list[list[int]], b: list[list[int]]) -> list[list[int]]:
    n = max(len(a), len(b))
    return [_add_lists(a[d] if d < len(a) else [], b[d] if d < len(b) else []) for d in range(n)]


@dataclass
class LevelStats:
    """Reviews of one level: drafted / accepted tokens in total and per draft position."""
    level: int
    model: str
    reviews: int = 0
    drafted: int = 0
    accepted: int = 0
    drafted_per_position: list[int] = field(default_factory=list)
    accepted_per_position: list[int] = field(default_factory=list)
    accepted_by_rank: list[list[int]] = field(default_factory=list)   # tree drafts: [depth][rank - 1]

    def add_review(self, drafted: int, accepted: int, ranks: list[int] | None = None) -> None:
        """One review; `ranks`: tree drafts only, the branch rank of each accepted token (depth order)."""
        self.reviews += 1
        self.drafted += drafted
        self.accepted += accepted
        self.drafted_per_position = _add_lists(self.drafted_per_position, [1] * drafted)
        self.accepted_per_position = _add_lists(self.accepted_per_position, [1] * accepted)
        if ranks:
            self.accepted_by_rank = _add_ranks(self.accepted_by_rank, [[0] * (r - 1) + [1] for r in ranks])

    @property
    def acceptance(self) -> float | None:
        """accepted / drafted, None when nothing was drafted."""
        return self.accepted / self.drafted if self.drafted else None

    def merge(self, other: "LevelStats") -> "LevelStats":
        return LevelStats(self.level, other.model if other.model is not None else self.model,
                          self.reviews + other.reviews, self.drafted + other.drafted,
                          self.accepted + other.accepted,
                          _add_lists(self.drafted_per_position, other.drafted_per_position),
                          _add_lists(self.accepted_per_position, other.accepted_per_position),
                          _add_ranks(self.accepted_by_rank, other.accepted_by_rank))


@dataclass
class Stats:
    """Counters of one generation, or of many merged (`merge`, `merge_all`)."""
    new_tokens: int = 0
    calls: dict[str, int] = field(default_factory=dict)
    tokens_fed: dict[str, int] = field(default_factory=dict)
    encoder_calls: dict[str, int] = field(default_factory=dict)
    levels: list[LevelStats] = field(default_factory=list)
    one_token_calls: dict[str, int] = field(default_factory=dict)
    switch_calls: dict[str, int] = field(default_factory=dict)
    tree_calls: dict[str, int] = field(default_factory=dict)
    tree_tokens_fed: dict[str, int] = field(default_factory=dict)

    @classmethod
    def empty(cls, names: list[str]) -> "Stats":
        """Zero counters for models `names` (target first)."""
        reviewers = names[:max(1, len(names) - 1)]
        return cls(0, dict.fromkeys(names, 0), dict.fromkeys(names, 0), dict.fromkeys(names, 0),
                   [LevelStats(i, n) for i, n in enumerate(reviewers)], *(dict.fromkeys(names, 0) for _ in range(4)))

    def merge(self, other: "Stats") -> "Stats":
        """Sum of two Stats (models and levels matched by name and index)."""
        def add(a, b):
            return {k: a.get(k, 0) + b.get(k, 0) for k in [*a, *(k for k in b if k not in a)]}

        levels = []
        for i in range(max(len(self.levels), len(other.levels))):
            mine = self.levels[i] if i < len(self.levels) else None
            theirs = other.levels[i] if i < len(other.levels) else None
            levels.append(theirs if mine is None else mine if theirs is None else mine.merge(theirs))
        return Stats(self.new_tokens + other.new_tokens, add(self.calls, other.calls),
                     add(self.tokens_fed, other.tokens_fed), add(self.encoder_calls, other.encoder_calls),
                     levels, add(self.one_token_calls, other.one_token_calls),
                     add(self.switch_calls, other.switch_calls), add(self.tree_calls, other.tree_calls),
                     add(self.tree_tokens_fed, other.tree_tokens_fed))

    @classmethod
    def merge_all(cls, stats) -> "Stats":
        """The sum of an iterable of Stats."""
        total = cls()
        for s in stats:
            total = total.merge(s)
        return total

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d) -> "Stats":
        """The inverse of `to_dict`. `d` may also be a results record (which holds these fields), a record
        from before a counter existed (it reads as empty), or a row of a results frame (`to_frame`), whose
        per-model dicts are flattened into columns `calls.<model>`, ... (missing values are skipped)."""
        d = _nested(dict(d))
        per_model = {name: {m: int(n) for m, n in d[name].items()} if isinstance(d.get(name), dict) else {}
                     for name in PER_MODEL}
        return cls(int(d.get("new_tokens", 0)), per_model["calls"], per_model["tokens_fed"],
                   per_model["encoder_calls"], [LevelStats(**lv) for lv in d.get("levels", [])],
                   per_model["one_token_calls"], per_model["switch_calls"], per_model["tree_calls"],
                   per_model["tree_tokens_fed"])


#: the per-model counters of `Stats` (dicts model name -> count)
PER_MODEL = ("calls", "tokens_fed", "encoder_calls", "one_token_calls", "switch_calls", "tree_calls", "tree_tokens_fed")


def _nested(d: dict) -> dict:
    """A row of a results frame holds its per-model dicts flattened into columns `calls.<model>`, ...:
    nest those of its record's `models` again (a counter the record lacks stays absent)."""
    for name in PER_MODEL:
        if name not in d and "models" in d:
            values = {m: d.get(f"{name}.{m}") for m in d["models"]}
            if all(v is not None and v == v for v in values.values()):     # v != v: NaN, a missing value
                d[name] = values
    return d
