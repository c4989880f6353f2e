"""What one generation (or many, merged) did: forwards per model and acceptance per level / position.

    out = csdlib.generate(...)
    out.stats.calls["target"], out.stats.tokens_fed["target"], out.stats.levels[0].acceptance
    total = Stats.merge_all(o.stats for o in outputs)        # sums over samples

`calls` counts every forward pass of each model (review or propose; MaG's proposals count as calls
too, at cost 0); `tokens_fed` the tokens those forwards fed, `one_token_calls` how many of them fed
exactly one token and `switch_calls` how many came right after another model's forward (the latency
model, `csdlib.cost`, needs all four). `levels` has one entry per reviewing level (every model but the last; the target alone for
AR), with drafted / accepted counts in total and per draft position (position 0 = the first token
after the accepted prefix). Only positions up to the output's EOS count.

`to_dict()` / `from_dict()` give the plain-JSON layout stored in result records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


def _add_lists(a: list[int], b: list[int]) -> list[int]:
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]


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

    def add_review(self, drafted: int, accepted: int) -> None:
        self.reviews += 1
        self.drafted += drafted
        self.accepted += accepted
        self.drafted_per_position = _add_lists(self.drafted_per_position, [1] * drafted)
        self.accepted_per_position = _add_lists(self.accepted_per_position, [1] * accepted)

    @property
    def acceptance(self) -> float | None:
        """accepted / drafted, None when nothing was drafted."""
        return self.accepted / self.drafted if self.drafted else None

    def merge(self, other: "LevelStats") -> "LevelStats":
        return LevelStats(self.level, other.model if other.model is not None else self.model,
                          self.reviews + other.reviews, self.drafted + other.drafted,
                          self.accepted + other.accepted,
                          _add_lists(self.drafted_per_position, other.drafted_per_position),
                          _add_lists(self.accepted_per_position, other.accepted_per_position))

    def __getitem__(self, key: str):      # dict-style reads, as in records (`lv["drafted"]`)
        return getattr(self, key)


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

    @classmethod
    def empty(cls, names: list[str]) -> "Stats":
        """Zero counters for models `names` (target first)."""
        reviewers = names[:max(1, len(names) - 1)]
        return cls(0, dict.fromkeys(names, 0), dict.fromkeys(names, 0), dict.fromkeys(names, 0),
                   [LevelStats(i, n) for i, n in enumerate(reviewers)], dict.fromkeys(names, 0),
                   dict.fromkeys(names, 0))

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
                     add(self.switch_calls, other.switch_calls))

    @classmethod
    def merge_all(cls, stats) -> "Stats":
        total = cls()
        for s in stats:
            total = total.merge(s if isinstance(s, Stats) else cls.from_dict(s))
        return total

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Stats":
        return cls(int(d.get("new_tokens", 0)), dict(d.get("calls", {})), dict(d.get("tokens_fed", {})),
                   dict(d.get("encoder_calls", {})), [LevelStats(**lv) for lv in d.get("levels", [])],
                   dict(d.get("one_token_calls", {})), dict(d.get("switch_calls", {})))

    def __getitem__(self, key: str):      # dict-style reads (`out.stats["calls"]`) for older code
        return getattr(self, key)
