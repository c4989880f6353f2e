"""The cascade's greedy output equals transformers' own greedy decoding, token for token."""

import random

import pytest
import torch

import csdlib
from csdlib import BigramTable, HFModel, MaG

from tiny import VOCAB, hf_greedy, llama, perturbed, t5

N_DECODER_CASES = 130
N_T5_CASES = 90


def _family(kind: str):
    target = llama(0) if kind == "llama" else t5(0)
    small = llama(1, hidden=16, layers=1) if kind == "llama" else t5(1, d_model=16, layers=1)
    pool = [perturbed(target, 0.0, 1), perturbed(target, 0.01, 2), perturbed(target, 0.05, 3), small]
    rng = random.Random(0)
    outs = [hf_greedy(target, [rng.randrange(VOCAB) for _ in range(8)], 48)[0].tolist() for _ in range(6)]
    table = BigramTable.from_sequences(outs, VOCAB)
    return target, pool, table


@pytest.fixture(scope="module")
def llama_family():
    return _family("llama")


@pytest.fixture(scope="module")
def t5_family():
    return _family("t5")


def random_case(seed: int, pool, table):
    """0-3 neural drafters +- MaG, a random k-matrix and lenience, prompt 1-64, max_new_tokens 1-64."""
    rng = random.Random(seed)
    neural = [HFModel(m, name=f"d{i}") for i, m in enumerate(rng.sample(pool, rng.randint(0, 3)))]
    drafters = neural + ([MaG(table, k=rng.randint(1, 10))] if rng.random() < 0.6 else [])
    n = len(drafters)
    k_matrix = [[rng.randint(1 if j == i else 0, 3) if j >= i else 0 for j in range(n)] for i in range(n)]
    lenience = rng.choice([1, 2, 5])
    prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 64))]
    if rng.random() < 0.3:             # a prompt with repeats, so MaG's max-gram search finds matches
        prompt = (prompt[:8] * 8)[:rng.randint(1, 64)]
    eos_at = rng.random() if rng.random() < 0.5 else None    # where in the output an EOS is hit
    return drafters, k_matrix, lenience, prompt, rng.randint(1, 64), eos_at


def check_case(seed: int, target, pool, table, tree=None):
    """One random case against `generate()`; `tree(n_drafters)` gives tree drafts (tests/test_tree.py)."""
    drafters, k_matrix, lenience, prompt, max_new, eos_at = random_case(seed, pool, table)
    tree = tree(len(drafters)) if tree is not None else None
    ref = hf_greedy(target, prompt, max_new)
    ref_new = ref[0].tolist()[(1 if target.config.is_encoder_decoder else len(prompt)):]
    eos = None
    if eos_at is not None:                     # make a token of the target's output the EOS
        eos = ref_new[int(eos_at * len(ref_new))]
        ref = hf_greedy(target, prompt, max_new, eos=eos)
    confidence = random.Random(-seed).choice([None, None, 0.3, 0.7, 0.95])   # dynamic draft length or not
    out = csdlib.generate(HFModel(target, name="target"), drafters, prompt, k_matrix=k_matrix,
                          lenience=lenience, max_new_tokens=max_new, eos_token_id=eos, confidence=confidence,
                          tree=tree)
    case = (f"seed={seed} drafters={[d.name for d in drafters]} K={k_matrix} l={lenience} eos={eos} c={confidence} "
            f"tree={tree}")
    assert out.sequences.tolist() == ref.tolist(), case
    assert out.new_tokens == out.sequences[0].tolist()[len(out.sequences[0]) - len(out.new_tokens):]
    assert out.stats.new_tokens == len(out.new_tokens)
    return out


@pytest.mark.parametrize("seed", range(N_DECODER_CASES))
def test_greedy_equals_hf_decoder_only(seed, llama_family):
    check_case(seed, *llama_family)


@pytest.mark.parametrize("seed", range(N_T5_CASES))
def test_greedy_equals_hf_encoder_decoder(seed, t5_family):
    check_case(1000 + seed, *t5_family)


def test_cases_cover_eos_and_every_cascade_depth(llama_family):
    target, pool, table = llama_family
    depths, eos_hits, lenience = set(), 0, set()
    for seed in range(N_DECODER_CASES):
        drafters, _, l, _, _, eos_at = random_case(seed, pool, table)
        depths.add((sum(isinstance(d, HFModel) for d in drafters), any(isinstance(d, MaG) for d in drafters)))
        eos_hits += eos_at is not None
        lenience.add(l)
    assert depths == {(n, mag) for n in range(4) for mag in (False, True)}
    assert 0.3 * N_DECODER_CASES < eos_hits < 0.7 * N_DECODER_CASES
    assert lenience == {1, 2, 5}


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_drafter_equal_to_target_accepts_everything(kind):
    target = llama(0) if kind == "llama" else t5(0)
    k, max_new = 4, 40
    prompt = list(range(3, 15))
    out = csdlib.generate(target, [HFModel(target, name="same")], prompt, k_matrix=[[k]], max_new_tokens=max_new)
    assert out.sequences.tolist() == hf_greedy(target, prompt, max_new).tolist()
    level = out.stats.levels[0]
    assert level.accepted == level.drafted > 0
    assert out.stats.calls[out.stats.levels[0].model] == -(-max_new // (k + 1))   # ceil


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_random_drafter_accepts_almost_nothing(kind):
    target = llama(0) if kind == "llama" else t5(0)
    drafter = llama(7) if kind == "llama" else t5(7)
    prompt = list(range(20, 40))
    out = csdlib.generate(target, [drafter], prompt, k_matrix=[[5]], max_new_tokens=48)
    assert out.sequences.tolist() == hf_greedy(target, prompt, 48).tolist()
    level = out.stats.levels[0]
    assert level.accepted / level.drafted < 0.15


def test_no_drafters_is_autoregressive_and_counts_every_forward():
    target = llama(0)
    out = csdlib.generate(target, [], [1, 2, 3], max_new_tokens=17)
    assert out.sequences.tolist() == hf_greedy(target, [1, 2, 3], 17).tolist()
    assert list(out.stats.calls.values()) == [17]


def test_eos_from_config_stops_generation():
    target = llama(0)
    free = hf_greedy(target, [4, 5, 6], 30)[0].tolist()[3:]
    eos = free[10]
    target.config.eos_token_id = target.generation_config.eos_token_id = eos
    try:
        out = csdlib.generate(target, [perturbed(target, 0.01, 5)], [4, 5, 6], k_matrix=[[3]], max_new_tokens=30)
    finally:
        target.config.eos_token_id = target.generation_config.eos_token_id = None
    assert out.new_tokens == free[:free.index(eos) + 1]


def test_stats_per_level_and_position_are_consistent(llama_family):
    target, pool, table = llama_family
    drafters = [HFModel(pool[1], name="mid"), HFModel(pool[3], name="small"), MaG(table, k=10)]
    out = csdlib.generate(target, drafters, [1, 2, 3, 1, 2, 3], k_matrix=[[5, 14, 10], [0, 1, 10], [0, 0, 10]],
                          lenience=2, max_new_tokens=60)
    levels = out.stats.levels
    assert [lv.model for lv in levels] == ["llama", "mid", "small"]
    for lv in levels:
        assert sum(lv.drafted_per_position) == lv.drafted
        assert sum(lv.accepted_per_position) == lv.accepted <= lv.drafted
        # acceptance is a prefix: position p accepted at most as often as position p-1
        acc = lv.accepted_per_position
        assert all(a >= b for a, b in zip(acc, acc[1:]))
    assert levels[0].reviews == out.stats.calls["llama"]
    assert levels[0].accepted + levels[0].reviews == 60      # each review adds accepted + 1
    assert out.stats.calls["mag"] > 0


def test_raw_hf_models_and_tensor_prompts_are_accepted():
    target = llama(0)
    prompt = torch.tensor([[9, 8, 7]])
    out = csdlib.generate(target, [perturbed(target, 0.02, 4)], prompt, k_matrix=[[2]], max_new_tokens=12)
    assert out.sequences.tolist() == hf_greedy(target, [9, 8, 7], 12).tolist()


def test_dynamic_draft_length_drafts_less_and_stays_exact(llama_family):
    """confidence: a level stops drafting after a neural drafter's token below the threshold; the output
    is unchanged, drafts are shorter, and a threshold of ~0 changes nothing at all."""
    target, pool, table = llama_family
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    ref = hf_greedy(target, prompt, 40)[0].tolist()

    def run(confidence):
        t = HFModel(target, name="target")
        ds = [HFModel(pool[2], name="mid"), HFModel(pool[3], name="small"), MaG(table, k=4)]
        out = csdlib.generate(t, ds, prompt, k_matrix=[[4, 2, 2], [0, 3, 2], [0, 0, 2]], max_new_tokens=40,
                              confidence=confidence)
        assert out.sequences[0].tolist() == ref
        return out.stats

    full, tiny_c, dynamic = run(None), run(1e-9), run(0.9)
    assert tiny_c == full                                      # nothing is below a threshold of 1e-9
    drafted = lambda s: s.levels[0].drafted / s.levels[0].reviews    # noqa: E731
    assert drafted(dynamic) < drafted(full)
    assert dynamic.calls["small"] < full.calls["small"]


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.2, "0.5", True])
def test_confidence_must_be_a_probability(bad):
    target = HFModel(llama(0), name="target")
    with pytest.raises(ValueError, match="confidence: expected None or a number in"):
        csdlib.generate(target, [HFModel(llama(1), name="d")], [1, 2, 3], k_matrix=[[2]], confidence=bad)


def test_confidence_is_greedy_only():
    target = HFModel(llama(0), name="target")
    with pytest.raises(ValueError, match="confidence: dynamic draft length is implemented for greedy"):
        csdlib.generate(target, [HFModel(llama(1), name="d")], [1, 2, 3], k_matrix=[[2]], confidence=0.5,
                        do_sample=True, seed=0)


def test_common_prefix_equals_the_plain_loop():
    """`models.common_prefix` (compared in C first, then from 16 tokens before the end) against the loop."""
    import random

    from csdlib.models import common_prefix

    rng = random.Random(0)
    for _ in range(5000):
        a = [rng.randint(0, 2) for _ in range(rng.randint(0, 60))]
        b = a[:rng.randint(0, len(a))] + [rng.randint(0, 2) for _ in range(rng.randint(0, 30))]
        want = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
        assert common_prefix(a, b) == common_prefix(b, a) == want
