"""Linear layers whose weights are prepacked for oneDNN, on the CPU: the same maths, the weights read at
the memory's speed.

On the CPU, `nn.Linear` reaches MKL's sgemm in float32 and reorders its weight into oneDNN's layout at
every call in bfloat16. For a forward over a few tokens, both read the weights well below the memory's
bandwidth, and MKL's float32 product over 2..8 rows costs about twice its one-row product, so a
verification forward costs 1.3-1.8x a one-token step in float32 (`benchmarks/forward_cost.py` measures
it). `prepack(model)` swaps every linear layer for a `PackedLinear`: the same parameters, plus a copy of the
weight reordered once into oneDNN's blocked layout, which its forward multiplies by. Any other module
with ``packed = None`` and a ``prepack()`` method that sets it (csdlib's float32 output layer,
`precision.Float32Head`, which then multiplies by ``linear(x, self.packed, bias)``) is asked to pack itself.

This is what inductor does to linear weights when it compiles a model with ``freezing`` on; it is
hand-written here (two private ops, `torch.ops.mkldnn._reorder_linear_weight` and `_linear_pointwise`)
because a compiled forward is specialized to its shapes, and a KV cache gives every step a new one; and
because in float32 inductor's own product reads the weights at MKL's speed, not oneDNN's. Inside a
compiled forward a packed layer calls the custom op ``csdlib::packed_linear`` (`product`), which inductor
runs as it is: the packed weight is found by a key, since a tensor in oneDNN's layout cannot be traced.

Packing is for inference on the CPU, once the weights are final: the packed copy does not follow
`.to(device)` or later changes of the weight, and is not saved (`state_dict` holds the plain weight);
with gradients on, a packed layer multiplies by its plain weight. Results equal the eager forward's up to float
rounding (float32: about 1e-4 on SmolLM2's logits; bfloat16 runs oneDNN either way).
"""

from __future__ import annotations

import weakref

import torch

from .errors import CSDValueError


def supported(dtype: torch.dtype) -> bool:
    """Whether this CPU's oneDNN multiplies `dtype` with packed weights (bfloat16 needs AVX512 (BW, VL,
    DQ); float16 needs AVX512-FP16 or AVX-NE-CONVERT)."""
    if not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.float32:
        return True
    if dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if dtype == torch.float16:
        return torch.ops.mkldnn._is_mkldnn_fp16_supported()
    return False


def pack(weight: torch.Tensor) -> torch.Tensor:
    """`weight` (out x in, on the CPU) reordered into oneDNN's layout for a product with one row."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)


def linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ W.T + bias`` with `W` packed by `pack`."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")


#: the packed weights, by key, for `csdlib::packed_linear` inside compiled forwards (each layer keeps its own)
_PACKED: "weakref.WeakValueDictionary[int, torch.Tensor]" = weakref.WeakValueDictionary()


def register(packed: torch.Tensor) -> int:
    """The key under which a compiled forward finds `packed` (held as long as its layer holds it)."""
    _PACKED[id(packed)] = packed
    return id(packed)


@torch.library.custom_op("csdlib::packed_linear", mutates_args=())
def _packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, key: int) -> torch.Tensor:
    return linear(x, _PACKED[key], bias)


@_packed_linear.register_fake
def _(x, weight, bias, key):             # the shape: `weight` is the plain one, only its size is read
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def product(x: torch.Tensor, packed: torch.Tensor, key: int, weight: torch.Tensor,
            bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias`` by the packed copy: `linear` eager, ``csdlib::packed_linear`` when compiling."""
    if torch.compiler.is_compiling():
        return torch.ops.csdlib.packed_linear(x.contiguous(), weight, bias, key)
    return linear(x, packed, bias)


class PackedLinear(torch.nn.Linear):
    """An `nn.Linear` (its own weight and bias, shared) whose forward multiplies by a packed copy."""

    @classmethod
    def of(cls, layer: torch.nn.Linear) -> "PackedLinear":
        new = cls.__new__(cls)
        torch.nn.Module.__init__(new)
        new.in_features, new.out_features = layer.in_features, layer.out_features
        new.weight, new.bias = layer.weight, layer.bias          # the same Parameters (ties kept)
        new.packed = pack(layer.weight)
        new.key = register(new.packed)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.weight.requires_grad:    # training: the plain, differentiable product
            return super().forward(x)
        return product(x, self.packed, self.key, self.weight, self.bias)


def prepack(model) -> int:
    """Pack every linear layer of a transformers model (or an `HFModel`'s) in place, where its device and
    dtype allow (the CPU; `supported`); returns how many layers were packed (0: left as it was).
    Idempotent."""
    hf = _torch_model(model)
    if not isinstance(hf, torch.nn.Module):
        raise CSDValueError(f"model: prepack needs a torch model or an HFModel, not {type(model).__name__}")
    first = next(hf.parameters(), None)
    if first is None or first.device.type != "cpu":
        return 0
    n = 0
    for module in list(hf.modules()):
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.Linear and supported(child.weight.dtype):
                setattr(module, name, PackedLinear.of(child))
                n += 1
            elif getattr(child, "packed", False) is None and callable(getattr(child, "prepack", None)):
                child.prepack()                                  # e.g. precision.Float32Head
                n += 1
    return n


def is_packed(model) -> bool:
    """Whether any linear layer of the model (or an `HFModel`'s) multiplies by a packed weight."""
    hf = _torch_model(model)
    return isinstance(hf, torch.nn.Module) and any(getattr(m, "packed", None) is not None for m in hf.modules())


def _torch_model(model):
    """The torch model of an `HFModel`, or the model itself."""
    return model if isinstance(model, torch.nn.Module) else getattr(model, "model", model)
