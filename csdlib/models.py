"""Hugging Face models as cascade members: one forward per call, KV cache kept and cropped.

`HFModel` wraps any `AutoModelForCausalLM` or `AutoModelForSeq2SeqLM`. The cascade talks to it through
two methods:

- `start(prompt_ids)` — a new prompt: drop the cache, run the encoder once (encoder-decoder), and return
  the sequence generation continues (decoder-only: the prompt; encoder-decoder: `[decoder_start]`);
- `logits(seq, n)` — the logits at the last `n` positions of `seq` (row t predicts the token after
  `seq[len(seq) - n + t]`), computed by one forward pass over the tokens not yet in the KV cache.

The cascade reviews with those logits, and a neural drafter at the bottom of a cascade decodes with
them one token at a time. (MaG speaks `start` + `propose(seq, n)` instead: it has no logits.)

The cache is tied to the tokens it holds: before each forward it is cropped to the longest common prefix
of those tokens and `seq` (this is where rejected drafts are dropped), so it never needs to be told about
rejections and can never be stale.

Tree drafts (`csdlib.Tree`) add two calls: `tree_logits(seq, tokens, parents)` verifies a token tree
hung below `seq` in one forward (a 4D attention mask lets each node see the prefix and its own
ancestors only; position ids are prefix length + depth), and `keep_path(path)` keeps in the cache only
the accepted root path (every layer's keys and values gathered), so the cache again holds a plain
token sequence.

`HFModel(cache="static")` holds its keys and values in transformers' `StaticCache` instead: buffers
allocated once per prompt (`reserve`: the cascade reserves the prompt and every new token), written in
place. Cropping moves the write position back (gpt-fast's way of dropping a rejected draft), and
`keep_path` copies the path's slots up behind the prefix. `compile=True` adds compiled forwards at fixed
shapes for chain forwards (each fed length compiled once per cache size; the cache size is rounded up to
`COMPILE_BUCKET`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from contextlib import contextmanager

import torch

from .errors import CSDValueError


#: `HFModel(cache=)`: transformers' DynamicCache or StaticCache
CACHES = ("dynamic", "static")
#: static cache: extra positions (at least) allocated when a forward outgrows what was reserved
STATIC_SLACK = 64
#: compiled forwards: the longest feed compiled (a longer one, e.g. a prefill, runs eager)
COMPILE_MAX_FED = 16
#: compiled forwards: the static cache's size rounded up to a multiple of this, so that prompts of about
#: the same length share graphs (attention over the unused slots costs little next to the weights' products)
COMPILE_BUCKET = 512
#: compiled forwards on the CPU: inductor's `freezing` folds the weights into each graph as constants
#: (smollm2's small drafter: its step 1.9x faster than eager on a static cache, against 1.57x without;
#: docs/forward-cost.md)
CPU_COMPILE_OPTIONS = {"freezing": True}


def _first(value):
    """EOS ids may be an int or a list of ints in HF configs."""
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value


def _as_set(value) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, (list, tuple, set)):
        return {int(v) for v in value}
    return {int(value)}


def tree_depths(parents: list[int]) -> list[int]:
    """Depth of each node of a token tree given by parent indices (-1: the root; parents come first)."""
    depth = []
    for parent in parents:
        depth.append(0 if parent < 0 else depth[parent] + 1)
    return depth


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists (compared in C first: a member's cached
    tokens usually differ from the new sequence only in its last few, if at all)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    start = n - 16 if n > 16 and a[:n - 16] == b[:n - 16] else 0
    for i in range(start, n):
        if a[i] != b[i]:
            return i
    return n


class HFModel:
    """A transformers model with its own KV cache and a forward-pass counter.

    Args:
        hf_model: an `AutoModelForCausalLM` or `AutoModelForSeq2SeqLM` instance (detected from its config).
        name: label used in stats; defaults to the config's `name_or_path`, else its `model_type`.
        cost: cost of one forward pass for the SWI cost model; defaults to the parameter count.
        vocab: for a drafter with a vocabulary of its own, smaller than the target's (FR-Spec, Zhao et al.
            2025: its output layer covers only the tokens the target writes): the target's token id of
            each of the model's rows 0..N-1 (its last row, N, stands for every other token of an input).
            Its logits come back over the target's vocabulary, -inf outside `vocab`: it proposes only
            those tokens, and its distribution (for lenience and sampling) is zero elsewhere.
        full_vocab_size: the target's vocabulary size (with `vocab`).
        cache: "dynamic" (transformers' `DynamicCache`, grown by concatenation) or "static" (its
            `StaticCache`: buffers allocated once per prompt, sized by `reserve`, written in place; a
            rejected draft is dropped by moving the write position back, as gpt-fast does).
        compile: with a static cache, decoder-only: chain forwards of up to `COMPILE_MAX_FED` tokens run
            `torch.compile`d at fixed shapes (one graph per fed length and cache size; CUDA graphs on a
            GPU, inductor's default on the CPU); prefills and tree forwards run eager.
    """

    def __init__(self, hf_model, name: str | None = None, cost: float | None = None, vocab=None,
                 full_vocab_size: int | None = None, cache: str = "dynamic", compile: bool = False):
        self.model = hf_model.eval()
        config = hf_model.config
        self.is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        self.name = name or getattr(config, "name_or_path", "") or config.model_type
        self._compiled = None          # the model compiled (`compile`), made on first use
        self.set_cache(cache, compile)
        self.cost = float(cost) if cost is not None else float(sum(p.numel() for p in hf_model.parameters()))
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.vocab_size = int(text_config.vocab_size)
        gen = getattr(hf_model, "generation_config", None)
        self.generation_config = gen     # sampling defaults (csdlib.generate resolves them as generate() does)
        eos = getattr(gen, "eos_token_id", None) if gen is not None else None
        self.eos_token_ids = _as_set(eos if eos is not None else config.eos_token_id)
        self.vocab = None
        if vocab is not None:
            self._set_vocab(list(vocab), full_vocab_size)
        start = getattr(gen, "decoder_start_token_id", None) if gen is not None else None
        if start is None:
            start = getattr(config, "decoder_start_token_id", None)
        self.decoder_start_token_id = _first(start)
        if self.is_encoder_decoder and self.decoder_start_token_id is None:
            raise CSDValueError(f"model {self.name!r}: encoder-decoder config has no decoder_start_token_id")
        # Learned / rotary position tables have a hard limit; T5's relative positions have none.
        self.max_positions = getattr(text_config, "max_position_embeddings", None)
        self.calls = 0            # decoder forward passes since start()
        self.tokens_fed = 0       # tokens fed to those forwards since start() (prefill included)
        self.one_token_calls = 0  # those of the forwards that fed exactly one token (cheaper: see latency.py)
        self.encoder_calls = 0    # encoder forward passes since start() (one per prompt)
        self.forward_seconds = 0.0  # wall time inside the model's forward passes since start()
        self._cache = None
        self._cached: list[int] = []   # the tokens whose keys/values are in the cache
        # transformers >= 5.2x calls the KV cache `cache`, earlier 5.x releases `past_key_values`
        self._cache_arg = "cache" if "cache" in inspect.signature(hf_model.forward).parameters else "past_key_values"
        self._encoder_outputs = None
        self._tree: int | None = None  # after tree_logits: the prefix length; the cache then holds the tree too
        self._reserved = 0             # static cache: positions to allocate (`reserve`)
        self.reallocations = 0
        self._capacity = 0             # static cache: positions allocated

    def _set_vocab(self, vocab: list[int], full: int | None) -> None:
        own = self.vocab_size
        if full is None or not len(vocab) < own or len(set(vocab)) != len(vocab) or not all(0 <= t < full for t in vocab):
            raise CSDValueError(f"vocab: model {self.name!r} needs distinct target token ids in [0, {full}), at "
                                f"most {own - 1} of them (its vocabulary of {own} keeps one row for other tokens)")
        self.vocab = torch.tensor(vocab, dtype=torch.long)
        self._local = torch.full((full,), own - 1, dtype=torch.long)      # target id -> own row
        self._local[self.vocab] = torch.arange(len(vocab))
        self.eos_token_ids = {vocab[e] for e in self.eos_token_ids if e < len(vocab)}
        self.vocab_size = int(full)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def as_assistant(self):
        """The transformers model to hand to `generate(assistant_model=...)`: the model itself, or for a
        drafter with a vocabulary of its own a view of it (the same weights) that reads and writes the
        target's token ids, with -inf logits outside its vocabulary, as transformers needs."""
        if self.vocab is None:
            return self.model
        if getattr(self, "_assistant", None) is None:
            self._assistant = _full_vocab_view(self.model, self.vocab, self._local)
        return self._assistant

    def __repr__(self) -> str:
        kind = "encoder-decoder" if self.is_encoder_decoder else "decoder-only"
        return f"HFModel({self.name!r}, {kind}, vocab={self.vocab_size}, cost={self.cost:g})"

    def fingerprint(self) -> str:
        """A short hash of the model's behaviour: its HF config (minus paths and versions), its
        generation_config (EOS, sampling defaults) and every byte of every weight."""
        def plain(config) -> str:
            d = {k: v for k, v in config.to_dict().items() if not k.startswith("_") and k != "transformers_version"}
            return json.dumps(d, sort_keys=True, default=str)

        h = hashlib.sha256(plain(self.model.config).encode())
        if self.generation_config is not None:
            h.update(plain(self.generation_config).encode())
        h.update(json.dumps(sorted(self.eos_token_ids)).encode())
        if self.vocab is not None:
            h.update(self.vocab.numpy().tobytes())
        with torch.no_grad():
            for name, p in self.model.state_dict().items():
                h.update(name.encode())
                h.update(str(p.dtype).encode())
                h.update(p.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    def start(self, prompt_ids: list[int]) -> list[int]:
        self.calls = self.encoder_calls = self.tokens_fed = self.one_token_calls = 0
        self.forward_seconds = 0.0
        self._cache, self._cached, self._tree, self._capacity = None, [], None, 0
        self.reallocations = 0    # static cache: reallocated because a forward outgrew `reserve`
        if not self.is_encoder_decoder:
            return list(prompt_ids)
        ids = torch.tensor([prompt_ids], device=self.device)
        with torch.no_grad():
            self._encoder_outputs = self.model.get_encoder()(input_ids=ids)
        self.encoder_calls += 1
        return [self.decoder_start_token_id]

    def set_cache(self, cache: str, compile: bool = False) -> None:
        """The KV cache of the next `start`: "dynamic" or "static", and whether its forwards are compiled
        (see the class)."""
        if cache not in CACHES:
            raise CSDValueError(f"cache: expected one of {list(CACHES)}, got {cache!r}")
        if compile and (cache != "static" or self.is_encoder_decoder):
            raise CSDValueError(f"compile: needs cache='static' and a decoder-only model (model {self.name!r}: "
                                f"cache={cache!r}, encoder-decoder: {self.is_encoder_decoder})")
        self.cache, self.compile = cache, bool(compile)

    def reserve(self, length: int) -> None:
        """Static cache: allocate room for `length` positions (the cascade reserves the prompt and every new
        token before its first forward; a forward that needs more, e.g. a wide tree, reallocates the
        cache and feeds the prefix again). Nothing to do for a dynamic cache."""
        self._reserved = int(length)

    def logits(self, seq: list[int], n: int) -> torch.Tensor:
        # reuse cached prefix, feed rest
        keep = self._room(self._reuse(seq, n), len(seq))
        return self._forward(seq[keep:], n, list(seq))

    def tree_logits(self, seq: list[int], tokens: list[int], parents: list[int]) -> torch.Tensor:
        """Logits after `seq` (row 0) and after each node of a token tree hung below it (row 1 + t), in one
        forward. Node t holds `tokens[t]`; its parent is node `parents[t]` (-1: the end of `seq`; parents
        come before their children) and it sits at position `len(seq) + depth`. It sees the prefix and
        its ancestors only. The nodes stay in the cache until `keep_path` (or the next call drops them)."""
        keep = self._room(self._reuse(seq, 1), len(seq) + len(tokens))
        fed, m = seq[keep:] + list(tokens), len(seq) - keep     # m prefix tokens, then the tree
        depth, sees = tree_depths(parents), torch.eye(len(tokens), dtype=torch.bool)
        for t, parent in enumerate(parents):           # a node sees what its parent sees, and itself
            if parent >= 0:
                sees[t] |= sees[parent]
        width = self._capacity if self.cache == "static" else keep + len(fed)   # a static cache: every slot
        allowed = torch.ones(len(fed), width, dtype=torch.bool).tril(keep)      # causal
        allowed[:, keep + len(fed):] = False                                     # (slots not yet written)
        allowed[m:, keep + m:keep + len(fed)] = sees                             # tree
        positions = list(range(keep, len(seq))) + [len(seq) + d for d in depth]
        dtype = self.model.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
        logits = self._forward(fed, len(tokens) + 1, list(seq), mask=mask[None, None], positions=positions)
        self._tree, self._tree_tokens = len(seq), list(tokens)
        return logits

    def keep_path(self, path: list[int]) -> None:
        """After `tree_logits`: keep in the cache the prefix and the nodes of `path` (a root path), drop
        the rest of the tree: every layer's keys and values gathered at the kept positions (a static cache:
        the path's slots copied up behind the prefix, in place)."""
        if self._tree is None:
            raise CSDValueError("keep_path: no tree to keep a path of; call tree_logits first")
        cache = getattr(self._cache, "self_attention_cache", self._cache)   # T5: not the encoder's keys
        if self.cache == "static":                     # move the path's slots up behind the prefix, in place
            src = torch.tensor([self._tree + t for t in path], dtype=torch.long, device=self.device)
            dst = torch.arange(self._tree, self._tree + len(path), device=self.device)
            for layer in cache.layers:
                layer.keys.index_copy_(-2, dst, layer.keys.index_select(-2, src))
                layer.values.index_copy_(-2, dst, layer.values.index_select(-2, src))
                layer.cumulative_length.fill_(self._tree + len(path))
        else:
            kept = torch.tensor(list(range(self._tree)) + [self._tree + t for t in path], device=self.device)
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys.index_select(-2, kept), layer.values.index_select(-2, kept)
        self._cached = self._cached + [self._tree_tokens[t] for t in path]
        self._tree = None

    def _reuse(self, seq: list[int], n: int) -> int:
        """Crop the cache to what it shares with seq, leaving the last n tokens to feed; drops a tree left
        in it. Returns how many tokens of seq stay cached."""
        cache = getattr(self._cache, "self_attention_cache", self._cache)   # T5: not the encoder's keys
        if self._tree is not None:                       # a tree whose path was not kept: drop it all
            cache.crop(self._tree - int(cache.get_seq_length()))
            self._tree = None
        keep = min(common_prefix(self._cached, seq), len(seq) - n)
        if keep < len(self._cached):
            cache.crop(keep - len(self._cached))         # a static cache: the write position moves back
        return keep

    def _room(self, keep: int, end: int) -> int:
        """Static cache: make sure positions 0..end-1 fit, allocating the cache (or, when a forward needs
        more than was reserved, a larger one: the prefix is then fed again). Returns how many tokens stay
        cached (`keep`, or 0 after a reallocation)."""
        if self.cache != "static" or (self._cache is not None and end <= self._capacity):
            return keep
        from transformers import DynamicCache, EncoderDecoderCache, StaticCache

        grown = self._cache is not None
        fits = not grown and end <= self._reserved
        self._capacity = self._reserved if fits else end + max(STATIC_SLACK, end // 2)   # else: room to grow
        if self.compile:                               # prompts of about the same length share graphs
            self._capacity = -(-self._capacity // COMPILE_BUCKET) * COMPILE_BUCKET
        cache = StaticCache(config=self.model.config, max_cache_len=self._capacity)
        if self.is_encoder_decoder:                    # the encoder's keys: computed once, kept as they are
            cache = EncoderDecoderCache(cache, DynamicCache(config=self.model.config))
        self._cache, self._cached = cache, []
        self.reallocations += int(grown)
        return 0

    def _compiled_forward(self):
        """The model compiled at fixed shapes (`torch.compile(fullgraph=True, dynamic=False)`; CUDA graphs on
        a GPU, `CPU_COMPILE_OPTIONS` on the CPU): dynamo compiles one graph per fed length and cache size, on
        first use. With `freezing` the weights are read once, when a graph compiles: a model whose weights
        change after that must be wrapped again (a new `HFModel`)."""
        if self._compiled is None:
            import torch._dynamo

            config = torch._dynamo.config           # every member shares the model class's forward:
            config.cache_size_limit = max(config.cache_size_limit, 256)          # room for all their graphs
            config.accumulated_cache_size_limit = max(config.accumulated_cache_size_limit, 1024)
            if self.device.type == "cuda":
                self._compiled = torch.compile(self.model, fullgraph=True, dynamic=False, mode="reduce-overhead")
            else:                                   # CPU: weights folded in as constants, prepacked by inductor
                self._compiled = torch.compile(self.model, fullgraph=True, dynamic=False, options=CPU_COMPILE_OPTIONS)
        return self._compiled

    def _forward(self, fed: list[int], n: int, cached: list[int], mask=None, positions=None) -> torch.Tensor:
        """One forward over `fed` (the tokens not in the cache); the logits of the last n positions."""
        new = torch.tensor([fed])
        new = (self._local[new] if self.vocab is not None else new).to(self.device)
        extra = {}
        if mask is not None:
            extra["decoder_attention_mask" if self.is_encoder_decoder else "attention_mask"] = mask.to(self.device)
        if positions is not None and not self.is_encoder_decoder:
            extra["position_ids"] = torch.tensor([positions], device=self.device)
        tic = time.perf_counter()
        with torch.no_grad(), _t5_positions(self.model, positions):
            if self.is_encoder_decoder:
                out = self.model(encoder_outputs=self._encoder_outputs, decoder_input_ids=new,
                                 use_cache=True, **{self._cache_arg: self._cache}, **extra)
            else:
                forward = self._compiled_forward() if self.compile and mask is None and len(fed) <= COMPILE_MAX_FED \
                    else self.model
                out = forward(input_ids=new, use_cache=True, logits_to_keep=n, **{self._cache_arg: self._cache}, **extra)
        logits = out.logits[0, -n:].float()   # float32 like HF's generate: ties break the same way
        if self.vocab is not None:            # own rows -> the target's vocabulary, -inf elsewhere
            own, logits = logits, logits.new_full((logits.shape[0], self.vocab_size), float("-inf"))
            logits[:, self.vocab.to(logits.device)] = own[:, :len(self.vocab)]
        if logits.is_cuda:
            torch.cuda.synchronize(logits.device)   # the caller reads the logits next anyway
        self.forward_seconds += time.perf_counter() - tic
        self.calls += 1
        self.tokens_fed += new.shape[1]
        self.one_token_calls += int(new.shape[1] == 1)
        self._cache, self._cached = getattr(out, self._cache_arg), cached
        return logits


def _full_vocab_view(model, vocab: torch.Tensor, local: torch.Tensor):
    """A shallow copy of `model` (weights shared) whose forward maps the target's ids to the model's rows
    and its logits back to the target's vocabulary (-inf elsewhere); config and EOS in the target's ids."""
    import copy

    class FullVocab(type(model)):
        def forward(self, input_ids=None, **kwargs):
            out = super().forward(input_ids=None if input_ids is None else local.to(input_ids.device)[input_ids],
                                  **kwargs)
            own = out.logits
            out.logits = own.new_full((*own.shape[:-1], len(local)), float("-inf"))
            out.logits[..., vocab.to(own.device)] = own[..., :len(vocab)]
            return out

    view = copy.copy(model)
    view.__class__ = FullVocab
    view.config = copy.deepcopy(model.config)
    view.config.vocab_size = len(local)
    view.generation_config = copy.deepcopy(model.generation_config)
    for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
        for cfg in (view.config, view.generation_config):
            value = getattr(cfg, key, None)
            if value is not None:
                setattr(cfg, key, [int(vocab[v]) for v in value] if isinstance(value, list) else int(vocab[value]))
    return view


@contextmanager
def _t5_positions(model, positions):
    """T5's decoder has no position ids: its relative position bias assumes that key j sits at position j.
    In a tree forward the fed tokens sit at `positions` (the cached ones before them at 0, 1, ...): the
    first decoder layer (the one with the bias table) computes its bias from those for the block."""
    attn = None
    if positions is not None and getattr(model.config, "is_encoder_decoder", False):
        attn = model.get_decoder().block[0].layer[0].SelfAttention
    if attn is None:
        yield
        return
    key_pos = torch.tensor(list(range(positions[0])) + list(positions))

    def compute_bias(query_length, key_length, device=None, past_seen_tokens=0):
        pos = key_pos if key_length <= len(key_pos) else torch.cat([key_pos, torch.arange(len(key_pos), key_length)])
        relative = pos[None, :key_length] - key_pos[-query_length:, None]     # key minus query position
        buckets = attn._relative_position_bucket(relative, bidirectional=False,
                                                 num_buckets=attn.relative_attention_num_buckets,
                                                 max_distance=attn.relative_attention_max_distance)
        return attn.relative_attention_bias(buckets.to(attn.relative_attention_bias.weight.device)
                                            ).permute([2, 0, 1]).unsqueeze(0)

    attn.compute_bias = compute_bias
    try:
        yield
    finally:
        del attn.compute_bias


def as_model(model, name: str | None = None):
    """Pass csdlib models through; wrap raw transformers models in `HFModel`."""
    if hasattr(model, "start") and (hasattr(model, "logits") or hasattr(model, "propose")):
        return model        # HFModel, MaG, or anything else that speaks the protocol
    if hasattr(model, "config") and hasattr(model, "forward"):
        return HFModel(model, name=name)
    raise CSDValueError(f"model: expected a transformers model, an HFModel or a MaG, got {type(model).__name__}")


@contextmanager
def quiet_loading():
    """No transformers progress bars (the "Loading weights" bar of `from_pretrained`) inside the block;
    transformers' own setting (`transformers.utils.logging.disable_progress_bar`) is restored after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
