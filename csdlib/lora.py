"""Low-rank adapters (LoRA, Hu et al. 2021) for a drafter grown from its target (`csdlib.grow`): the
target's copied layers stay frozen, each linear layer learns ``W + B A`` (rank r), the norms learn in full.
What a grown drafter commits is only its difference from the target (`low_rank_delta`: the factors, a few
MB; a drafter whose every weight trained keeps its difference's best rank-r part, an SVD), and the rest comes
from the fetched target when the family loads (`apply_delta`).

Hand-written where `peft` does the same: 40 lines against a dependency whose releases follow transformers'
own; a merged model is a plain `LlamaForCausalLM`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

NORMS = ("input_layernorm", "post_attention_layernorm")


class LoRALinear(nn.Module):
    """``base(x) + x A^T B^T``: `base` frozen, A (r x in) small and random, B (out x r) zero at the start."""

    def __init__(self, base: nn.Linear, rank: int):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.T) @ self.lora_B.T

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += self.lora_B @ self.lora_A
        return self.base


def _linears(model):
    """(parent module, attribute) of every linear layer inside the model's decoder layers."""
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, (nn.Linear, LoRALinear)):
                    yield parent, name


def add_lora(model, rank: int):
    """Freeze everything but the norms; each decoder layer's linear layer gets a rank-`rank` adapter."""
    model.requires_grad_(False)
    for parent, name in _linears(model):
        setattr(parent, name, LoRALinear(getattr(parent, name), rank))
    for layer in model.model.layers:
        for n in NORMS:
            getattr(layer, n).requires_grad_(True)
    model.model.norm.requires_grad_(True)
    return model


def merge_lora(model):
    """Each adapter folded into its linear layer (in place): a plain model again."""
    for parent, name in _linears(model):
        child = getattr(parent, name)
        if isinstance(child, LoRALinear):
            setattr(parent, name, child.merged())
    return model.requires_grad_(True)


@torch.no_grad()
def low_rank_delta(trained, start, rank: int) -> dict[str, torch.Tensor]:
    """What `trained` (merged) adds to `start` (the same architecture, e.g. the target's copied layers):
    for each decoder linear layer ``<name>.lora_B`` (out x r) and ``<name>.lora_A`` (r x in) with
    ``B A = W_trained - W_start`` (an SVD: exact up to rounding where adapters of rank <= r made the
    difference), every norm's weight, and in full any other weight that changed by more than rounding to
    bf16 (e.g. trained embeddings; frozen ones went through a bf16 checkpoint between two stages)."""
    out, ref = {}, dict(start.named_parameters())
    for name, p in trained.named_parameters():
        changed = not torch.all((p - ref[name]).abs() <= ref[name].abs() * 2 ** -8)
        if name.endswith("norm.weight") or (not name.endswith("proj.weight") and changed):
            out[name] = p.detach().clone()
        elif ".layers." in name and name.endswith("proj.weight"):
            u, s, vh = torch.linalg.svd((p - ref[name]).double(), full_matrices=False)
            root = s[:rank].sqrt()
            stem = name.removesuffix(".weight")
            out[f"{stem}.lora_B"] = (u[:, :rank] * root).float()
            out[f"{stem}.lora_A"] = (root[:, None] * vh[:rank]).float()
    return out


@torch.no_grad()
def apply_delta(model, delta: dict[str, torch.Tensor]):
    """`model` (its target's copied layers) plus a `low_rank_delta`, in place."""
    params = dict(model.named_parameters())
    for name, t in delta.items():
        if not name.endswith((".lora_A", ".lora_B")):
            params[name].copy_(t)
        elif name.endswith(".lora_B"):
            stem = name.removesuffix(".lora_B")
            w = params[f"{stem}.weight"]
            w += (t.to(torch.float32) @ delta[f"{stem}.lora_A"].to(torch.float32)).to(w.dtype)
    return model
