"""Half precision: what "lossless" means when the target computes in bfloat16 or float16, and the audit
that checks it.

**The contract.** In float32 (or float64) the cascade's greedy output is the target's own greedy output,
token for token. In half precision it is identical except at positions where the target's own two best
tokens are tied within the resolution of its logits there: a verification forward over k tokens and a
one-token decoding step round the hidden state differently, so at a tie they may pick different tokens
(transformers' assisted generation and prompt lookup do the same). Any other difference is a bug.
Sampling: exactly the target's distribution given the logits the target computed.

**Fewer ties.** `float32_logits(model)` computes the output layer in float32 from the half-precision last
hidden state (an untied float32 copy of the output embeddings): logits no longer move in bf16 steps of
0.0625 near 10, so exact ties become rare; what is left are ties of the hidden state's rounding.

**The audit.** `audit(target, prompt, reference, output)` compares an output with the reference (the
target's own step-by-step greedy output) and says

- ``identical``: token for token;
- ``tie``: the first divergence is at a position where the reference's logit for its own token and for
  the output's token differ by at most `tolerance(dtype, logit)`: two units in the last place of the
  target's dtype at that logit's magnitude (0 in float32: only exactly equal logits tie there), either as
  step-by-step decoding computes them or as a verification forward does (`path_margins`: the last j = 2..8
  tokens fed in one forward; in a deep half-precision model such as SmolLM2's 30 layers the margin moves
  by about 0.1 between the two orders of computation); both margins are recorded;
- ``WRONG``: anything else (a bug: an error in tables, in CI and in exit statuses).

The reference's logits at the divergence are recomputed as step-by-step decoding computes them (prefill
the prompt, then one token per forward, with a KV cache), so a margin is the reference's own.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from . import onednn
from .errors import CSDValueError

HALF = (torch.bfloat16, torch.float16)
VERDICTS = ("identical", "tie", "WRONG")


# ---------------------------------------------------------------- fewer ties: a float32 output layer


class Float32Head(torch.nn.Module):
    """An output layer computed in float32 from a half-precision hidden state."""

    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.weight = torch.nn.Parameter(head.weight.detach().float().clone(), requires_grad=False)
        bias = getattr(head, "bias", None)
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.packed = None       # the weight prepacked for oneDNN (`csdlib.onednn.prepack`)

    def prepack(self) -> None:
        """Multiply by a float32 copy of the weight packed for oneDNN (`csdlib.onednn.prepack` calls this)."""
        self.packed = onednn.pack(self.weight.detach().float())
        self.key = onednn.register(self.packed)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.float()
        if self.packed is not None:
            return onednn.product(hidden.float(), self.packed, self.key, self.weight, bias)
        return torch.nn.functional.linear(hidden.float(), self.weight.float(), bias)   # float32 logits


def float32_logits(model):
    """Give a transformers model a float32 output layer (an untied copy when the embeddings are tied);
    the rest stays in its dtype. Returns the model. Idempotent."""
    head = model.get_output_embeddings()
    if head is None:
        raise CSDValueError(f"model: {type(model).__name__} has no output embeddings to compute in float32")
    if not isinstance(head, Float32Head):
        model.set_output_embeddings(Float32Head(head))
    return model


def _hf(model):
    """The transformers model of an `HFModel`, or the model itself."""
    return model if hasattr(model, "get_output_embeddings") else getattr(model, "model", model)


def has_float32_logits(model) -> bool:
    get = getattr(_hf(model), "get_output_embeddings", None)
    return get is not None and isinstance(get(), Float32Head)


def compute_dtype(model) -> torch.dtype:
    """The dtype the model computes its hidden states in (its first floating parameter's)."""
    for p in _hf(model).parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def default_float32_logits(dtype) -> bool:
    """The default of `float32_logits`: on for a half-precision target."""
    return dtype in HALF


# ---------------------------------------------------------------- the audit


def tolerance(dtype: torch.dtype, logit: float) -> float:
    """Two units in the last place of `dtype` at the magnitude of `logit`; 0 in float32 and wider."""
    if dtype not in HALF or logit == 0 or not math.isfinite(logit):
        return 0.0
    return 2 * torch.finfo(dtype).eps * 2.0 ** math.floor(math.log2(abs(logit)))


@dataclass
class Verdict:
    verdict: str                   # "identical", "tie" or "WRONG"
    position: int | None = None    # first divergence, counted in new tokens
    margin: float | None = None    # reference's logit of its token minus that of the output's token there
    tolerance: float | None = None
    reference_token: int | None = None
    output_token: int | None = None
    path_margin: float | None = None   # the smallest margin of a verification forward (`path_margins`)

    def to_dict(self) -> dict:
        return asdict(self)


def first_divergence(reference: list[int], output: list[int]) -> int | None:
    for i, (a, b) in enumerate(zip(reference, output)):
        if a != b:
            return i
    return None if len(reference) == len(output) else min(len(reference), len(output))


def step_logits(target, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """The target's logits for the token after `prompt + tokens`, computed as step-by-step decoding does."""
    from .models import as_model

    model = as_model(target)
    seq = model.start(list(prompt))
    logits = model.logits(seq, 1)
    for t in tokens:
        seq = seq + [int(t)]
        logits = model.logits(seq, 1)
    return logits[0].float().cpu()


def audit(target, prompt, reference, output) -> Verdict:
    """Is `output` the target's greedy output `reference` (new tokens of both), a tie, or WRONG?"""
    reference, output = [int(t) for t in reference], [int(t) for t in output]
    d = first_divergence(reference, output)
    if d is None:
        return Verdict("identical")
    if d >= len(reference) or d >= len(output):     # one stops where the other goes on: no tie explains it
        return Verdict("WRONG", d)
    logits = step_logits(target, prompt, reference[:d])
    ref_tok, out_tok = reference[d], output[d]
    margin = float(logits[ref_tok] - logits[out_tok])
    tol = tolerance(compute_dtype(target), float(logits.max()))
    if abs(margin) <= tol:
        return Verdict("tie", d, margin, tol, ref_tok, out_tok)
    path = min(path_margins(target, prompt, reference[:d], ref_tok, out_tok), default=None) if tol > 0 else None
    verdict = "tie" if path is not None and path <= tol else "WRONG"
    return Verdict(verdict, d, margin, tol, ref_tok, out_tok, path)


def path_margins(target, prompt, tokens, ref_tok: int, out_tok: int, chunks=range(2, 9)) -> list[float]:
    """The margin logit[ref_tok] - logit[out_tok] after `prompt + tokens` as a verification forward computes
    it: the sequence prefilled but for its last j tokens, then those j in one forward (j in `chunks`)."""
    from .models import as_model

    model = as_model(target)
    margins = []
    for j in chunks:
        seq = model.start(list(prompt)) + [int(t) for t in tokens]
        if j >= len(seq):
            break
        model.logits(seq[:len(seq) - j], 1)
        logits = model.logits(seq, j)[-1].float().cpu()
        margins.append(float(logits[ref_tok] - logits[out_tok]))
    return margins


def counts(verdicts) -> dict[str, int]:
    """{"identical": n, "tie": n, "WRONG": n} of Verdicts (or their dicts / verdict strings)."""
    out = dict.fromkeys(VERDICTS, 0)
    for v in verdicts:
        name = v if isinstance(v, str) else v["verdict"] if isinstance(v, dict) else v.verdict
        out[name] += 1
    return out


def describe(c: dict[str, int]) -> str:
    """'identical 18, tie 2, WRONG 0'."""
    return ", ".join(f"{k} {c.get(k, 0)}" for k in VERDICTS)


# ---------------------------------------------------------------- where half precision pays


def cpu_info() -> dict:
    """The CPU's model name and flags, from /proc/cpuinfo (empty where there is none)."""
    info = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "flags") and key.strip() not in info:
                    info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def cpu_isa() -> str:
    """The CPU's bf16 matrix units: "AMX-BF16", "AVX512-BF16" or "neither" (from /proc/cpuinfo)."""
    flags = cpu_info().get("flags")
    if flags is None:
        return "unknown"
    flags = flags.split()
    return "AMX-BF16" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else "neither"


def hardware(device=None) -> dict:
    """What a speed number depends on: CPU model and its bf16 units, torch's CPU kernels, the GPU."""
    import platform

    info = {"cpu": cpu_info().get("model name") or platform.processor() or platform.machine(), "cpu_isa": cpu_isa(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "gpu": None}
    if device is not None and torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
