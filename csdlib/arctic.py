"""SuffixDecoding's own proposer (Snowflake's arctic-inference, Apache-2.0) as a free drafter: the peer
that `benchmarks/speed.py` runs beside csdlib's suffix drafter, on the same corpus.

arctic-inference is source only on PyPI and its build asks for torch, so plain ``pip install`` would
build it against a second torch. Against the pinned one (about 30 s on 2 cores; the README's set-up):

    pip install -e ".[suffixdecoding]"        # nanobind, ninja, cmake, grpcio-tools
    pip install --no-build-isolation --no-deps arctic-inference==0.3.0

Its `SuffixDecodingCache` keeps one suffix tree per request (the prompt) and one over past responses; the
corpus goes into the latter as cached responses. Like vLLM's integration, the request's tokens are added
as they are verified: in SD the sequence a free drafter is asked to continue is verified up to its end.
(In a cascade it is not: inner levels ask after unverified drafts. This adapter is for SD rows only.)
"""

from __future__ import annotations

import hashlib
import itertools

import numpy as np

from .errors import CSDValueError

#: vLLM's defaults for SuffixDecoding (its speculative_config): tree depth, spec factor, min token prob
VLLM_DEFAULTS = {"max_tree_depth": 24, "max_spec_factor": 1.0, "min_token_prob": 0.1}


def available() -> bool:
    """True where arctic-inference's suffix decoding is installed (and its C++ part built)."""
    try:
        from arctic_inference.suffix_decoding import SuffixDecodingCache  # noqa: F401
    except ImportError:
        return False
    return True


class ArcticSuffix:
    """arctic-inference's `SuffixDecodingCache` behind the free-drafter protocol (SD rows)."""

    free = True
    seed_mode = False

    def __init__(self, answers, vocab_size: int, k: int = 8, name: str = "arctic-suffix", **settings):
        if not available():
            raise CSDValueError("arctic-inference is not installed; see csdlib/arctic.py for its two install lines")
        from arctic_inference.suffix_decoding import SuffixDecodingCache

        self.settings = {**VLLM_DEFAULTS, **settings}
        self.cache = SuffixDecodingCache(max_tree_depth=self.settings["max_tree_depth"])
        h = hashlib.sha256()
        for i, answer in enumerate(answers):               # past responses: the global tree
            ids = np.asarray(answer, dtype=np.int32)
            self.cache.start_request(("corpus", i), [])
            self.cache.add_active_response(("corpus", i), ids)
            self.cache.stop_request(("corpus", i))
            h.update(ids.tobytes())
        self._hash = h.hexdigest()[:16]
        self.vocab_size, self.k, self.name, self.cost = vocab_size, int(k), name, 0.0
        self.calls = self.tokens_fed = self.one_token_calls = self.encoder_calls = 0
        self._ids = itertools.count()
        self._req, self._seen, self._last = None, 0, None

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self._hash}{sorted(self.settings.items())}{self.k}".encode()).hexdigest()[:16]

    def start(self, prompt_ids: list[int]) -> None:
        if self._req is not None:
            self.cache.stop_request(self._req)
            self.cache.evict_cached_response(self._req)    # the corpus stays as it was: no learning
        self._req, self._seen, self.calls = ("request", next(self._ids)), len(prompt_ids), 0
        self.cache.start_request(self._req, np.asarray(prompt_ids, dtype=np.int32))

    def propose(self, seq: list[int], n: int) -> tuple[list[int], list[float]]:
        size = max(0, min(int(n), self.k))
        if size == 0 or list(seq) == self._last:         # asked again after its own draft: it stopped there
            return [], []
        if len(seq) > self._seen:                          # the tokens verified since the last call
            self.cache.add_active_response(self._req, np.asarray(seq[self._seen:], dtype=np.int32))
            self._seen = len(seq)
        self.calls += 1
        depth = self.settings["max_tree_depth"]
        draft = self.cache.speculate(self._req, np.asarray(seq[-depth:], dtype=np.int32), max_spec_tokens=size,
                                     max_spec_factor=self.settings["max_spec_factor"],
                                     min_token_prob=self.settings["min_token_prob"])
        tokens = list(draft.token_ids)[:size]
        self._last = list(seq) + tokens
        return tokens, [1.0] * len(tokens)
