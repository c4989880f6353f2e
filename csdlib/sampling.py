"""Speculative sampling's settings: temperature / top-k / top-p resolved exactly as transformers'
`generate(do_sample=True)` resolves them, and the distribution p they turn logits into."""

from __future__ import annotations

import torch
from transformers import GenerationConfig, LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from .errors import CSDValueError


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


def accept_prob(p_x: torch.Tensor, q_x: torch.Tensor) -> torch.Tensor:
    return (p_x / q_x).clamp(max=1.0)              # min(1, p/q)
