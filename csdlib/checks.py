"""`generate`'s argument checks: each bad input is a `CSDValueError` that names the argument, says
what was expected and what was given."""

from __future__ import annotations

import torch

from .errors import CSDValueError
from .protocol import is_free


def unique_names(models) -> list[str]:
    names, seen = [], {}
    for m in models:
        name = str(m.name)
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return names


def eos_set(eos) -> set[int]:
    if isinstance(eos, int):
        return {eos}
    try:
        return {int(e) for e in eos}
    except TypeError:
        raise CSDValueError(f"eos_token_id: expected an int or a list of ints, got {eos!r}") from None


def check_models(models):
    target = models[0]
    if is_free(target) or not hasattr(target, "logits"):
        raise CSDValueError(f"target: {target.name!r} cannot be the target (a free drafter such as MaG has no "
                            "distribution to review with)")
    for pos, m in enumerate(models[1:-1], start=1):
        if is_free(m) or not hasattr(m, "logits"):
            raise CSDValueError(f"drafters[{pos - 1}]: {m.name!r} can only be the last drafter (a free drafter "
                                "such as MaG cannot review)")
    if len({id(m) for m in models}) < len(models):
        raise CSDValueError("drafters: the same model object appears twice; wrap it twice "
                            "(HFModel(hf_model, name=...)) so each level keeps its own cache")
    for pos, m in enumerate(models[1:]):
        if m.vocab_size != target.vocab_size:
            raise CSDValueError(f"drafters[{pos}] ({m.name!r}) has vocabulary size {m.vocab_size}, "
                                f"expected the target's {target.vocab_size}")
    kinds = {m.is_encoder_decoder for m in models if not is_free(m)}
    if len(kinds) > 1:
        raise CSDValueError("drafters: mixing decoder-only and encoder-decoder models is not supported")
    return models


def check_k_matrix(k_matrix, n: int) -> list[list[int]]:
    if n == 0 and (k_matrix is None or len(k_matrix) == 0):
        return []
    if k_matrix is None:
        raise CSDValueError(f"k_matrix: required with drafters; expected a {n}x{n} upper-triangular matrix")
    rows = [list(r) if hasattr(r, "__len__") else None for r in
            (k_matrix.tolist() if hasattr(k_matrix, "tolist") else k_matrix)]
    if any(r is None for r in rows) or any(len(r) != len(rows) for r in rows):
        raise CSDValueError(f"k_matrix: expected a square matrix (a list of equal-length rows), got {k_matrix!r}")
    if len(rows) != n:
        raise CSDValueError(f"k_matrix: expected {n}x{n} for {n} drafter(s), got {len(rows)}x{len(rows)}")
    for i, r in enumerate(rows):
        for j, v in enumerate(r):
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            if not number or not float(v).is_integer() or v < 0:
                raise CSDValueError(f"k_matrix[{i}][{j}]: expected a non-negative integer, got {v!r}")
            if j < i and v != 0:
                raise CSDValueError(f"k_matrix[{i}][{j}]: expected 0 below the diagonal (upper-triangular), got {v!r}")
    return [[int(v) for v in r] for r in rows]


def check_confidence(confidence) -> float | None:
    if confidence is None:
        return None
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise CSDValueError(f"confidence: expected None or a number in (0, 1), got {confidence!r}")
    return float(confidence)


def check_lenience(lenience) -> float:
    if isinstance(lenience, bool) or not isinstance(lenience, (int, float)) or not lenience >= 1:
        raise CSDValueError(f"lenience: expected a number >= 1, got {lenience!r}")
    return float(lenience)


def check_prompt(prompt_ids) -> list[int]:
    if isinstance(prompt_ids, torch.Tensor):
        if prompt_ids.dim() == 2:
            if prompt_ids.shape[0] != 1:
                raise CSDValueError(f"prompt_ids: batch size 1 expected, got shape {tuple(prompt_ids.shape)}")
            prompt_ids = prompt_ids[0]
        prompt_ids = prompt_ids.tolist()
    prompt = list(prompt_ids)
    if not prompt:
        raise CSDValueError("prompt_ids: expected at least one token, got an empty prompt")
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        raise CSDValueError("prompt_ids: expected a list of int token ids")
    return prompt


def check_max_new_tokens(max_new_tokens, prompt: list[int], models) -> int:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise CSDValueError(f"max_new_tokens: expected a non-negative int, got {max_new_tokens!r}")
    for m in models:
        bad = [t for t in prompt if not 0 <= t < m.vocab_size]
        if bad:
            raise CSDValueError(f"prompt_ids: token id {bad[0]} is outside {m.name!r}'s vocabulary of {m.vocab_size}")
        limit = getattr(m, "max_positions", None)
        need = max(len(prompt), 1 + max_new_tokens) if getattr(m, "is_encoder_decoder", False) \
            else len(prompt) + max_new_tokens
        if limit is not None and need > limit:
            raise CSDValueError(f"max_new_tokens: prompt ({len(prompt)} tokens) + max_new_tokens ({max_new_tokens}) "
                                f"needs {need} positions, more than {m.name!r}'s limit of {limit}")
    return max_new_tokens
