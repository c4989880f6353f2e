"""Tiny HF models built from configs (no download) for the unit tests.

Float64 weights: a cascade verifies several tokens in one forward while `generate` decodes one at a
time, and in float32 a near-tie between two logits can flip under that reordering. In float64 the
two paths agree to ~1e-15, so any mismatch a test sees is a real bug.
"""

import copy

import torch
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

VOCAB = 96


def llama(seed: int, hidden: int = 32, layers: int = 2, vocab: int = VOCAB, eos=None, max_pos: int = 192):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=max_pos, bos_token_id=None, eos_token_id=eos,
                      pad_token_id=None)
    model = LlamaForCausalLM(cfg).double().eval()
    model.generation_config.eos_token_id = eos
    return model


def t5(seed: int, d_model: int = 32, layers: int = 2, vocab: int = VOCAB, eos=None):
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=vocab, d_model=d_model, d_ff=2 * d_model, num_layers=layers,
                   num_decoder_layers=layers, num_heads=4, d_kv=8, decoder_start_token_id=0,
                   pad_token_id=0, eos_token_id=eos)
    model = T5ForConditionalGeneration(cfg).double().eval()
    model.generation_config.eos_token_id = eos
    return model


def perturbed(model, noise: float, seed: int):
    """A drafter that agrees with `model` more or less often: its weights plus Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(noise * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return other


def hf_greedy(model, prompt, max_new_tokens, eos=None):
    """The reference: transformers' own greedy decoding."""
    kwargs = dict(do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=0)
    if eos is not None:
        kwargs.update(eos_token_id=eos, pad_token_id=eos[0] if isinstance(eos, list) else eos)
    with torch.no_grad():
        return model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              **kwargs)
