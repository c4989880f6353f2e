"""A member on transformers' StaticCache (`HFModel(cache="static")`): buffers allocated once per prompt,
rejected drafts dropped by moving the write position back, trees kept in place. Its logits equal the
dynamic cache's at every step, and random cascades on it equal transformers' greedy output."""

import random

import pytest
import torch

import csdlib
from csdlib import HFModel, onednn, zoo
from csdlib.errors import CSDValueError
from csdlib.latency import latency_key
from csdlib.mag import MaG
from csdlib.models import COMPILE_BUCKET

from test_stress import VOCAB, check_bf16_random_cascades, check_exact_random_cascades   # the stress run's cascades
from tiny import hf_greedy, llama, perturbed, t5

SEED = random.SystemRandom().randrange(2**31)


def static(model):
    return HFModel(model, name="static", cache="static")


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_static_logits_equal_dynamic_ones_through_rollbacks_trees_and_a_reallocation(kind):
    torch.manual_seed(0)
    model = (llama if kind == "llama" else t5)(3, vocab=VOCAB)
    dyn, sta = HFModel(model, name="dynamic"), static(model)
    rng = random.Random(kind)
    prompt = [rng.randrange(VOCAB) for _ in range(9)]
    seq = {m: m.start(prompt) for m in (dyn, sta)}
    sta.reserve(len(seq[sta]) + 12)                # less than the steps below need: one reallocation

    def same(f):
        a, b = f(dyn), f(sta)
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)

    base = seq[dyn]
    same(lambda m: m.logits(base, 1))                                     # prefill
    draft = base + [rng.randrange(VOCAB) for _ in range(5)]
    same(lambda m: m.logits(draft, 6))                                    # verify 5 drafted tokens
    rolled = draft[:len(base) + 2] + [7]
    same(lambda m: m.logits(rolled, 1))                                   # 3 rejected: the cache rolls back
    tokens, parents = [1, 2, 3, 4, 5], [-1, -1, 0, 0, 2]
    same(lambda m: m.tree_logits(rolled, tokens, parents))                # a tree hung below the sequence
    for m in (dyn, sta):
        m.keep_path([0, 2, 4])                                            # its path 1, 3, 5 stays
    kept = rolled + [1, 3, 5]
    same(lambda m: m.logits(kept + [9], 1))                               # after the kept path
    same(lambda m: m.tree_logits(kept + [9], [6, 7], [-1, -1]))           # a tree whose path is not kept ...
    longer = kept + [9] + [rng.randrange(VOCAB) for _ in range(8)]
    same(lambda m: m.logits(longer, 3))                                   # ... dropped; and past the reserve
    assert sta.reallocations == 1 and dyn.reallocations == 0
    assert sta.calls == dyn.calls and sta.tokens_fed > dyn.tokens_fed   # the reallocation fed the prefix again


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_random_cascades_on_static_caches_equal_generate(kind):
    """Every neural member on a static cache (float64 models): the cascade's output is transformers'
    greedy output, token for token, for chains, trees and dynamic draft length."""
    torch.set_num_threads(1)
    rng = random.Random(f"{SEED}-{kind}")
    make = llama if kind == "llama" else t5
    raw = make(rng.randrange(10**6), vocab=VOCAB)
    pool = [perturbed(raw, noise, i) for i, noise in enumerate([0.0, 0.02, 0.2])]
    check_exact_random_cascades(rng, static(raw), raw, pool, 40, f"seed {SEED} {kind}", drafter_cache="static")


def test_random_bfloat16_cascades_on_static_caches_have_no_wrong_output():
    torch.set_num_threads(1)
    check_bf16_random_cascades(random.Random(f"{SEED}-bf16"), 30, lambda target, pool: static(target), "static")


def test_the_cascade_reserves_the_whole_output_and_nothing_is_reallocated():
    rng = random.Random(1)
    raw = llama(11, vocab=VOCAB)
    target, drafter = static(raw), HFModel(perturbed(raw, 0.02, 1), name="d", cache="static")
    prompt = [rng.randrange(VOCAB) for _ in range(20)]
    out = csdlib.generate(target, [drafter], prompt, k_matrix=[[4]], max_new_tokens=40)
    assert out.sequences[0].tolist() == hf_greedy(raw, prompt, 40)[0].tolist()
    assert target.reallocations == drafter.reallocations == 0
    assert target._capacity == drafter._capacity == 20 + 40


def test_a_bad_cache_is_refused_and_zoo_and_the_latency_model_know_the_static_one():
    with pytest.raises(CSDValueError, match=r"cache: expected one of \['dynamic', 'static'\], got 'paged'"):
        HFModel(llama(1, vocab=VOCAB), cache="paged")
    fam = zoo.load("gsm8k-tiny", cache="static")
    neural = [m for m in [fam.target, *fam.drafters] if not isinstance(m, MaG)]
    assert len(neural) == 3 and all(m.cache == "static" for m in neural)
    plain = zoo.load("gsm8k-tiny")
    assert plain.target.cache == "dynamic"
    assert latency_key(fam.target) == latency_key(plain.target) + "|static"
    prompt = fam.prompt_ids("Tom has 3 apples and buys 4 more. How many apples does he have?")
    a = csdlib.generate(fam.target, fam.drafters, prompt, k_matrix=fam.k_matrix, lenience=fam.lenience,
                        max_new_tokens=24).new_tokens
    b = csdlib.generate(plain.target, plain.drafters, prompt, k_matrix=plain.k_matrix, lenience=plain.lenience,
                        max_new_tokens=24).new_tokens
    assert a == b


def test_records_and_calibrations_of_a_static_member_are_kept_apart():
    from csdlib.experiment import Method
    from csdlib.latency import runtime
    from csdlib.records import config_hash

    raw = llama(2, vocab=VOCAB)
    dyn, sta = HFModel(raw, name="t"), HFModel(raw, name="t", cache="static")
    drafter = HFModel(perturbed(raw, 0.02, 1), name="d")
    method = Method("SD", [drafter], [[3]])
    env = {"machine": "m"}
    assert runtime(dyn) == "" and runtime(sta) == "|static"
    assert runtime(HFModel(raw, cache="static", compile=True)) == "|static|compiled"
    assert config_hash(dyn, method, "gsm8k", 32, env) != config_hash(sta, method, "gsm8k", 32, env)
    before = config_hash(dyn, method, "gsm8k", 32, env)
    drafter.set_cache("static")
    assert config_hash(dyn, method, "gsm8k", 32, env) != before
    drafter.set_cache("dynamic")
    assert config_hash(dyn, method, "gsm8k", 32, env) == before      # as before: old records still match


def test_csd_run_kv_cache_static_loads_every_neural_member_on_a_static_cache():
    from csdlib.cli import build_parser
    from csdlib.commands import family_from_args

    args = build_parser().parse_args(["run", "--family", "gsm8k-tiny", "--kv-cache", "static"])
    fam = family_from_args(args, None)
    assert [m.cache for m in [fam.target, *fam.drafters] if not isinstance(m, MaG)] == ["static"] * 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--kv-cache", "paged"])


def test_compiled_members_equal_generate_and_compile_each_shape_once():
    """compile=True: chain forwards of the target and a drafter run compiled at fixed shapes (float32);
    the output is transformers' greedy output, and a second run of the same prompt compiles nothing."""
    import torch._dynamo

    torch.set_num_threads(1)
    raw = llama(21, vocab=VOCAB).float()
    drafter = HFModel(perturbed(raw, 0.02, 1).float(), name="d", cache="static", compile=True)
    onednn.prepack(raw)                                 # compiled, a packed layer calls csdlib::packed_linear
    target = HFModel(raw, name="t", cache="static", compile=True)
    rng = random.Random(5)
    prompt = [rng.randrange(VOCAB) for _ in range(12)]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    out = csdlib.generate(target, [drafter], prompt, k_matrix=[[3]], max_new_tokens=24)
    assert out.sequences[0].tolist() == hf_greedy(raw, prompt, 24)[0].tolist()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs >= 2                                  # the drafter's step and the target's verification
    again = csdlib.generate(target, [drafter], prompt, k_matrix=[[3]], max_new_tokens=24)
    assert again.new_tokens == out.new_tokens
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs      # nothing recompiled
    assert target._capacity % COMPILE_BUCKET == 0      # a bucket: prompts of about this length share graphs
    for bad in (dict(cache="dynamic", compile=True), dict(cache="static", compile=True)):
        model = t5(1, vocab=VOCAB) if bad["cache"] == "static" else raw
        with pytest.raises(CSDValueError, match="compile: needs cache='static' and a decoder-only model"):
            HFModel(model, **bad)


def test_time_split_compares_default_and_compiled_members_on_the_same_prompts(tmp_path):
    """benchmarks/time_split.py: each member's share of the wall time, default against compiled; in
    float32 the compiled cascade's output is the default's, and the warm-up leaves nothing to compile."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import time_split

    assert time_split.main(["--family", "gsm8k-tiny", "--dtypes", "float32", "--prompts", "2", "--max-new-tokens", "8",
                            "--threads", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "time_split.json").read_text())["rows"]
    assert [r["members"] for r in rows] == ["default", "compiled"]
    for r in rows:
        assert r["same output as default"] == "2/2" and r["graphs compiled while timed"] == 0
        assert r["target calls"] > 0 and 0 < r["target %"] < 100 and r["rest %"] > 0
        assert r["x if drafters were free"] >= 1
    assert rows[1]["compiled / default"] > 0
