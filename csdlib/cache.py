"""Target-output cache (the seed's cheap mode): run the target once per prompt, then evaluate many
cascade settings without running it again.

`build_target_cache(target, prompts, max_new_tokens, path)` stores the target's greedy continuation of
each prompt; `CachedTarget.load(path, expect=target)` is a stand-in for the target that implements the
same protocol as `csdlib.HFModel` (`start`, `logits`, `calls`, `tokens_fed`, ...) and can be passed to
`csdlib.generate` as the target. Its logits put all the mass on the cached greedy token at each
position; the target reviews by argmax (lenience applies to inner levels only), so every decision of
the cascade - tokens, calls of every model, acceptance per level - is exactly what it is with the real
target, and each review still counts as one target call in the cost model.

The stored continuation ignores EOS (the cascade cuts at EOS itself): a draft may run past the target's
EOS within one step, and reviewing it needs the target's greedy tokens there too.

Guards: the file is keyed by the target's `fingerprint` (config, generation_config, every weight) and each entry by the prompt's token ids; loading it for another target, or asking it about a
prompt it does not hold or beyond the tokens it holds, raises a `CSDValueError`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .errors import CSDValueError, MissingFileError
from .models import HFModel, common_prefix, tree_depths

__all__ = ["prompt_key", "build_target_cache", "CachedTarget"]

FORMAT = "csdlib.target_cache"


def prompt_key(prompt_ids) -> str:
    ids = prompt_ids.tolist() if hasattr(prompt_ids, "tolist") else list(prompt_ids)
    return hashlib.sha256(json.dumps([int(t) for t in ids]).encode()).hexdigest()[:24]


def _describe(target: HFModel) -> dict:
    return {"name": target.name, "cost": target.cost, "vocab_size": target.vocab_size,
            "eos_token_ids": sorted(target.eos_token_ids), "is_encoder_decoder": target.is_encoder_decoder,
            "decoder_start_token_id": target.decoder_start_token_id, "max_positions": target.max_positions}


def build_target_cache(target: HFModel, prompts, max_new_tokens: int, path) -> "CachedTarget":
    """Store `target`'s greedy continuation (max_new_tokens tokens, EOS ignored) of each prompt in the
    JSONL file `path` and return the `CachedTarget`. Prompts already cached are skipped; a file made
    for another target raises."""
    from .cascade import generate

    path = Path(path)
    fp = target.fingerprint()
    have = {}
    if path.is_file():
        cached = CachedTarget.load(path, expect=fp)
        have = cached.entries
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"format": FORMAT, "version": 1, "fingerprint": fp,
                                    "target": _describe(target)}) + "\n")
    with open(path, "a", encoding="utf-8") as f:
        for prompt in prompts:
            key = prompt_key(prompt)
            if key in have and len(have[key]) >= max_new_tokens:
                continue
            out = generate(target, [], prompt, max_new_tokens=max_new_tokens, eos_token_id=[])
            have[key] = out.new_tokens
            f.write(json.dumps({"prompt": key, "tokens": out.new_tokens}) + "\n")
            f.flush()
    return CachedTarget.load(path, expect=fp)


class CachedTarget:
    """The target, replayed from a cache file: same protocol as `HFModel`, counts every call. It
    `replays` greedy outputs: `generate(..., do_sample=True)` refuses it, and its calls take no time."""

    replays = True

    def __init__(self, header: dict, entries: dict[str, list[int]]):
        t = header["target"]
        self._fingerprint = header["fingerprint"]
        self.name, self.cost = t["name"], float(t["cost"])
        self.vocab_size, self.eos_token_ids = int(t["vocab_size"]), set(t["eos_token_ids"])
        self.is_encoder_decoder = bool(t["is_encoder_decoder"])
        self.decoder_start_token_id = t["decoder_start_token_id"]
        self.max_positions = t["max_positions"]
        self.entries = entries
        self.calls = self.encoder_calls = self.tokens_fed = self.one_token_calls = 0
        self.forward_seconds = 0.0
        self.generation_config = None
        self.device = torch.device("cpu")
        self._tokens: list[int] = []
        self._fed: list[int] = []     # what the real target's KV cache would hold (to count tokens_fed)
        self._begin = 0

    def __repr__(self) -> str:
        return f"CachedTarget({self.name!r}, fingerprint={self._fingerprint}, prompts={len(self.entries)})"

    @classmethod
    def load(cls, path, expect=None) -> "CachedTarget":
        """Read a cache file; `expect` (an HFModel or a fingerprint string) must be the target it holds."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"target cache {str(path)!r} does not exist; build it with build_target_cache")
        lines = path.read_text(encoding="utf-8").splitlines()
        try:
            header = json.loads(lines[0])
        except (IndexError, json.JSONDecodeError):
            header = None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise CSDValueError(f"target cache {str(path)!r}: not a csdlib target cache (bad header)")
        if expect is not None:
            want = expect if isinstance(expect, str) else expect.fingerprint()
            if want != header["fingerprint"]:
                raise CSDValueError(f"target cache {str(path)!r} holds the outputs of target "
                                    f"{header['target']['name']!r} (fingerprint {header['fingerprint']}), "
                                    f"not of the given target (fingerprint {want}); use another cache file")
        entries = {}
        for n, line in enumerate(lines[1:], start=2):
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                if n == len(lines):        # a torn last line (interrupted write): ignore it
                    break
                raise CSDValueError(f"target cache {str(path)!r}: line {n} is not valid JSON") from None
            if len(e["tokens"]) >= len(entries.get(e["prompt"], [])):
                entries[e["prompt"]] = e["tokens"]
        return cls(header, entries)

    # ---- the cascade's model protocol (see csdlib.cascade.Reviewer)

    def fingerprint(self) -> str:
        """The cached target's fingerprint (`HFModel.fingerprint`)."""
        return self._fingerprint

    def start(self, prompt_ids: list[int]) -> list[int]:
        key = prompt_key(prompt_ids)
        if key not in self.entries:
            raise CSDValueError(f"prompt_ids: the target cache of {self.name!r} holds no output for this prompt "
                                f"({len(prompt_ids)} tokens, key {key}); add it with build_target_cache")
        self._tokens = self.entries[key]
        self.calls = self.encoder_calls = self.tokens_fed = self.one_token_calls = 0
        self._fed = []
        seq = [self.decoder_start_token_id] if self.is_encoder_decoder else list(prompt_ids)
        self.encoder_calls = int(self.is_encoder_decoder)
        self._begin, self._fed = len(seq), []
        return seq

    def logits(self, seq: list[int], n: int) -> torch.Tensor:
        first = len(seq) - n + 1 - self._begin       # index (in the output) of the token row 0 predicts
        if seq[self._begin:self._begin + first] != self._tokens[:first]:
            raise CSDValueError(f"CachedTarget {self.name!r}: asked to continue a sequence that is not the "
                                "cached greedy output; a cached target can only be the cascade's target")
        if first + n > len(self._tokens):
            raise CSDValueError(f"max_new_tokens: the target cache holds {len(self._tokens)} tokens for this "
                                f"prompt, {first + n} needed; rebuild it with a larger max_new_tokens")
        out = torch.full((n, self.vocab_size), float("-inf"))
        out[torch.arange(n), torch.tensor(self._tokens[first:first + n])] = 0.0
        self.calls += 1
        keep = min(common_prefix(self._fed, seq), len(seq) - n)    # exactly as HFModel.logits feeds
        self.tokens_fed += len(seq) - keep
        self.one_token_calls += int(len(seq) - keep == 1)
        self._fed = list(seq)
        return out

    def tree_logits(self, seq: list[int], tokens: list[int], parents: list[int]) -> torch.Tensor:
        """As `HFModel.tree_logits`: row 0 after seq, row 1 + t after node t. A node at depth d gets the
        cached token at that depth: right for every node on the cached path, which is the only path the
        target's argmax walk reads."""
        first = len(seq) - self._begin                 # index (in the output) of the token row 0 predicts
        if seq[self._begin:] != self._tokens[:first]:
            raise CSDValueError(f"CachedTarget {self.name!r}: asked to continue a sequence that is not the "
                                "cached greedy output; a cached target can only be the cascade's target")
        rows = [first] + [first + 1 + d for d in tree_depths(parents)]
        if max(rows) >= len(self._tokens):
            raise CSDValueError(f"max_new_tokens: the target cache holds {len(self._tokens)} tokens for this "
                                f"prompt, {max(rows) + 1} needed; rebuild it with a larger max_new_tokens")
        out = torch.full((len(rows), self.vocab_size), float("-inf"))
        out[torch.arange(len(rows)), torch.tensor([self._tokens[r] for r in rows])] = 0.0
        keep = min(common_prefix(self._fed, seq), len(seq) - 1)    # exactly as HFModel.tree_logits feeds
        fed = len(seq) - keep + len(tokens)
        self.calls += 1
        self.tokens_fed += fed
        self.one_token_calls += int(fed == 1)
        self._fed, self._tree = list(seq), (list(seq), list(tokens))
        return out

    def keep_path(self, path: list[int]) -> None:
        """As `HFModel.keep_path`: what the real target's cache would hold is the prefix and the path."""
        seq, tokens = self._tree
        self._fed = seq + [tokens[t] for t in path]
