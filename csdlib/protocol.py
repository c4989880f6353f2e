"""What the cascade talks to: the small protocol every member follows (a neural reviewer, or a free
drafter such as MaG at the bottom), and the three questions the rest of csdlib asks of a member."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from .errors import CSDValueError


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

