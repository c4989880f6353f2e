"""Half precision: the float32 output layer, the audit (identical / tie / WRONG) and random cascades with
bfloat16 and float16 targets against the same model's step-by-step greedy output.

A fresh seed every run (printed in a failure; replay with CSD_PRECISION_SEED=...). The normal suite runs
>= 300 random cascades; the stress run (`-m stress`) 1000 more.
"""

import os
import random

import pytest
import torch
from transformers import LlamaForCausalLM

import csdlib
from csdlib import BigramTable, HFModel, MaG
from csdlib.cascade import Cascade
from csdlib.precision import (Float32Head, audit, counts, first_divergence, float32_logits, has_float32_logits,
                              step_logits, tolerance)

from tiny import hf_greedy, llama, perturbed, t5

SEED = int(os.environ.get("CSD_PRECISION_SEED") or random.SystemRandom().randrange(2**31))
VOCAB = 64


def half(model, dtype=torch.bfloat16):
    return model.to(dtype)


# ---------------------------------------------------------------- the float32 output layer


def test_float32_logits_computes_the_output_layer_in_float32_from_the_half_hidden_state():
    torch.manual_seed(0)
    config = llama(0, vocab=VOCAB).config
    config.tie_word_embeddings = True
    model = half(LlamaForCausalLM(config).eval())
    embed = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight.data_ptr() == embed.data_ptr()     # tied before
    float32_logits(model)
    head = model.get_output_embeddings()
    assert isinstance(head, Float32Head) and head.weight.dtype == torch.float32 and has_float32_logits(model)
    assert head.weight.data_ptr() != embed.data_ptr() and embed.dtype == torch.bfloat16   # untied copy
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        hidden = out.hidden_states[-1]
        assert hidden.dtype == torch.bfloat16 and out.logits.dtype == torch.float32
        torch.testing.assert_close(out.logits, hidden.float() @ embed.float().T, rtol=0, atol=1e-5)
    assert float32_logits(model).get_output_embeddings() is head                     # idempotent


def test_float32_logits_keeps_greedy_decoding_of_a_float32_model():
    model = llama(1, vocab=VOCAB).float()
    before = hf_greedy(model, [1, 5, 9], 20)
    assert torch.equal(hf_greedy(float32_logits(model), [1, 5, 9], 20), before)


def test_float32_logits_works_for_t5_and_keeps_its_tied_output_scaling():
    model = t5(2, vocab=VOCAB).float()
    before = hf_greedy(model, [3, 4, 5], 12)
    assert torch.equal(hf_greedy(float32_logits(model), [3, 4, 5], 12), before)


# ---------------------------------------------------------------- the audit itself


def test_tolerance_is_two_units_in_the_last_place_of_the_dtype():
    assert tolerance(torch.bfloat16, 9.625) == 0.125           # bf16 steps of 0.0625 in [8, 16)
    assert tolerance(torch.bfloat16, -3.0) == 2 * 2**-7 * 2
    assert tolerance(torch.float16, 9.625) == 2 * 2**-10 * 8
    assert tolerance(torch.float32, 9.625) == 0.0
    assert tolerance(torch.float64, 9.625) == 0.0


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2, 3], [1, 2]) == 2


def test_step_logits_are_the_reference_decodings_own():
    model = half(llama(3, vocab=VOCAB))
    prompt = [1, 7, 2]
    ref = csdlib.generate(model, [], prompt, max_new_tokens=10).new_tokens
    for d in (0, 4, 9):
        assert int(step_logits(model, prompt, ref[:d]).argmax()) == ref[d]


def test_audit_says_tie_at_a_constructed_tie():
    """Two output rows made equal: their logits tie exactly at every position; greedy takes the lower id,
    an output that takes the other one there is a tie with margin 0, not WRONG."""
    model = half(llama(4, vocab=VOCAB))
    float32_logits(model)
    prompt = [1, 2, 3]
    ref = csdlib.generate(model, [], prompt, max_new_tokens=12).new_tokens
    a = ref[5]
    b = max(t for t in range(VOCAB) if t > a) if a < VOCAB - 1 else None
    assert b is not None
    with torch.no_grad():
        head = model.get_output_embeddings()
        head.weight[b] = head.weight[a]
    ref = csdlib.generate(model, [], prompt, max_new_tokens=12).new_tokens
    d = ref.index(a)
    output = ref[:d] + [b] + ref[d + 1:]
    v = audit(model, prompt, ref, output)
    assert (v.verdict, v.position, v.margin, v.reference_token, v.output_token) == ("tie", d, 0.0, a, b)


def test_audit_says_wrong_for_a_broken_verifier(monkeypatch):
    """A verifier that accepts every drafted token: its outputs differ at margins far above a tie."""
    def accept_all(self, i, seq, q, start):
        self.reviews.append((i, start, len(seq) - start, len(seq) - start, None))
        logits = self.models[i].logits(seq, 1)
        return seq + [int(logits[0].argmax())], q + [1.0] * (len(seq) - len(q) + 1)

    target = half(llama(5, vocab=VOCAB))
    float32_logits(target)
    drafter = HFModel(llama(6, hidden=16, layers=1, vocab=VOCAB), name="random")
    prompts = [[1, 2, 3], [9, 8, 7, 6], [4, 4, 5]]
    refs = [csdlib.generate(target, [], p, max_new_tokens=24).new_tokens for p in prompts]
    monkeypatch.setattr(Cascade, "review_greedy", accept_all)
    verdicts = [audit(target, p, r, csdlib.generate(target, [drafter], p, k_matrix=[[4]], max_new_tokens=24).new_tokens)
                for p, r in zip(prompts, refs)]
    assert counts(verdicts)["WRONG"] == len(prompts), verdicts
    assert all(abs(v.margin) > v.tolerance for v in verdicts if v.margin is not None)


def test_audit_says_wrong_when_one_output_stops_early():
    model = llama(7, vocab=VOCAB).float()
    assert audit(model, [1, 2], [5, 6, 7], [5, 6]).verdict == "WRONG"
    assert audit(model, [1, 2], [5, 6, 7], [5, 6, 7]).verdict == "identical"


def test_in_float32_any_difference_is_wrong():
    model = llama(8, vocab=VOCAB).float()
    prompt = [3, 1, 4]
    ref = csdlib.generate(model, [], prompt, max_new_tokens=8).new_tokens
    second = int(step_logits(model, prompt, ref[:2]).topk(2).indices[1])
    v = audit(model, prompt, ref, ref[:2] + [second] + ref[3:])
    assert v.verdict == "WRONG" and v.tolerance == 0.0 and v.margin > 0


# ---------------------------------------------------------------- random cascades in half precision


def pools(kind: str, dtype, rng: random.Random):
    out = []
    for _ in range(2):
        seed = rng.randrange(10**6)
        width = rng.choice([16, 32])
        if kind == "llama":
            target, small = llama(seed, hidden=width, vocab=VOCAB), llama(seed + 1, hidden=16, layers=1, vocab=VOCAB)
        else:
            target, small = t5(seed, d_model=width, vocab=VOCAB), t5(seed + 1, d_model=16, layers=1, vocab=VOCAB)
        pool = [perturbed(target, 0.0, 1), perturbed(target, 0.02, 2), perturbed(target, 0.2, 3), small]
        target = target.to(dtype)
        if rng.random() < 0.5:
            float32_logits(target)
        pool = [m.to(rng.choice([dtype, torch.float32])) for m in pool]
        out.append((target, pool))
    return out


def run_cases(kind: str, dtype, n: int, seed: int):
    rng = random.Random(f"{seed}-{kind}-{dtype}")
    targets = pools(kind, dtype, rng)
    verdicts = []
    for case in range(n):
        target, pool = rng.choice(targets)
        neural = [HFModel(m, name=f"d{i}") for i, m in enumerate(rng.sample(pool, rng.randint(1, 3)))]
        mag = []
        if rng.random() < 0.5:
            corpus = [[rng.randrange(VOCAB) for _ in range(rng.randint(2, 30))] for _ in range(3)]
            mag = [MaG(BigramTable.from_sequences(corpus, VOCAB), k=rng.randint(1, 8))]
        drafters = neural + mag
        m = len(drafters)
        k_matrix = [[rng.randint(1 if j == i else 0, 4) if j >= i else 0 for j in range(m)] for i in range(m)]
        lenience = rng.choice([1, 1, 2, 10])
        prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 16))]
        max_new = rng.randint(4, 20)
        ref = csdlib.generate(target, [], prompt, max_new_tokens=max_new).new_tokens
        out = csdlib.generate(target, drafters, prompt, k_matrix=k_matrix, lenience=lenience,
                              max_new_tokens=max_new).new_tokens
        v = audit(target, prompt, ref, out)
        verdicts.append(v)
        where = (f"seed {seed} (replay: CSD_PRECISION_SEED={seed}), {kind} {dtype} case {case}: K={k_matrix} "
                 f"lenience={lenience} prompt={prompt} max_new_tokens={max_new}: {v}")
        assert v.verdict != "WRONG", where
    return verdicts


CASES = [("llama", torch.bfloat16, 110), ("t5", torch.bfloat16, 90), ("llama", torch.float16, 60),
         ("t5", torch.float16, 40)]        # 300 in all


@pytest.mark.parametrize("kind,dtype,n", CASES, ids=[f"{k}-{str(d)[6:]}" for k, d, _ in CASES])
def test_random_half_precision_cascades_have_no_wrong_output(kind, dtype, n):
    verdicts = run_cases(kind, dtype, n, SEED)
    assert len(verdicts) == n and counts(verdicts)["WRONG"] == 0


def test_step_by_step_references_agree_with_transformers_generate():
    """The audit's reference (csdlib's step-by-step decoding) is transformers' own greedy decoding."""
    rng = random.Random(SEED)
    for dtype in (torch.bfloat16, torch.float16):
        target = llama(rng.randrange(10**6), vocab=VOCAB).to(dtype)
        for _ in range(5):
            prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 20))]
            ours = csdlib.generate(target, [], prompt, max_new_tokens=24).new_tokens
            theirs = hf_greedy(target, prompt, 24)[0, len(prompt):].tolist()
            assert ours == theirs, (SEED, dtype, prompt)


@pytest.mark.stress
@pytest.mark.parametrize("kind,dtype", [("llama", torch.bfloat16), ("t5", torch.bfloat16),
                                        ("llama", torch.float16), ("t5", torch.float16)])
def test_stress_random_half_precision_cascades(kind, dtype):
    verdicts = run_cases(kind, dtype, 250, SEED + 1)     # 4 x 250 = 1000
    assert counts(verdicts)["WRONG"] == 0


def test_latency_calibrations_and_target_caches_are_keyed_by_dtype(tmp_path):
    """A calibration or a target cache made in float32 is never used for the same weights in bfloat16."""
    from csdlib.cache import build_target_cache
    from csdlib.protocol import fingerprint
    from csdlib.errors import CSDValueError

    fp32 = HFModel(llama(9, vocab=VOCAB).float(), name="t")
    bf16 = HFModel(llama(9, vocab=VOCAB).to(torch.bfloat16), name="t")
    with_head = HFModel(float32_logits(llama(9, vocab=VOCAB).to(torch.bfloat16)), name="t")
    assert len({fingerprint(fp32), fingerprint(bf16), fingerprint(with_head)}) == 3
    path = tmp_path / "cache.jsonl"
    build_target_cache(fp32, [[1, 2, 3]], 4, path)
    with pytest.raises(CSDValueError, match="another target|fingerprint"):
        build_target_cache(bf16, [[1, 2, 3]], 4, path)
